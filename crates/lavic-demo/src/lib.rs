#![warn(missing_docs)]
//! lavic-demo: a deterministic generator of the demo world (issue 15), a small product world whose
//! truth we know, so the whole LaViC pipeline can be trained and checked on it.
//!
//! - [`vocab`]: kinds, colours, patterns, shape details and their words;
//! - [`draw`]: the procedural images;
//! - [`items`]: product lines of visual twins (one title, several looks), framing for 3/4/5
//!   AnyRes views, teacher descriptions;
//! - [`dialogue`]: Reddit-Amazon-shaped conversations with held-out test templates;
//! - [`write`]: the output folder (`lavic demo-world --seed N --out DIR`);
//! - [`stage0`]: image questions with known answers, to pre-train the base model;
//! - [`bpe`] + [`base`]: the tiny base model's files before training (random init, a BPE
//!   vocabulary learned from the world's text, in the llava-hf layout lavic-model loads).
//!
//! Everything is a function of [`WorldConfig`]: the same settings give byte-identical files.

pub mod base;
pub mod bpe;
pub mod dialogue;
pub mod draw;
pub mod error;
pub mod items;
pub mod rng;
pub mod stage0;
pub mod vocab;
pub mod write;

use serde::Serialize;

pub use dialogue::{Conversation, DialogueConfig};
pub use error::{Error, Result};
pub use items::{Catalog, CatalogConfig, Item, Split};
pub use write::{write, Summary};

/// Settings of a world.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WorldConfig {
    /// The seed everything derives from.
    pub seed: u64,
    /// Catalog size and image framing.
    pub catalog: CatalogConfig,
    /// Conversation style.
    pub dialogue: DialogueConfig,
    /// Conversations per split: train, valid, test.
    pub conversations: [usize; 3],
}

impl WorldConfig {
    /// The shipped demo's settings for `seed`: 6 kinds x 12 lines (8 train, 2 valid, 2 test) of
    /// 4-5 items (about 320), a 64-pixel tile, 2000 / 200 / 300 conversations.
    pub fn new(seed: u64) -> Self {
        WorldConfig {
            seed,
            catalog: CatalogConfig { lines_per_kind: 12, valid_lines: 2, test_lines: 2, tile: 64 },
            dialogue: DialogueConfig { held_out_share: 0.5, follow_up: 0.3, distracting_comment: 0.15 },
            conversations: [2000, 200, 300],
        }
    }

    /// Refuses settings that cannot give ten valid candidates per conversation.
    pub fn validate(&self) -> Result<()> {
        let c = &self.catalog;
        if c.valid_lines == 0 || c.test_lines == 0 || c.lines_per_kind < c.valid_lines + c.test_lines + 1 {
            return Err(Error::InvalidConfig(format!(
                "lines per kind ({}) must exceed valid lines ({}) + test lines ({}), each at least 1",
                c.lines_per_kind, c.valid_lines, c.test_lines
            )));
        }
        if !(16..=1024).contains(&c.tile) {
            return Err(Error::InvalidConfig(format!("tile {} is outside 16..=1024 pixels", c.tile)));
        }
        let d = &self.dialogue;
        for (name, p) in [("held-out share", d.held_out_share), ("follow-up", d.follow_up), ("distracting comment", d.distracting_comment)]
        {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::InvalidConfig(format!("{name} probability {p} is outside 0..=1")));
            }
        }
        Ok(())
    }
}

/// A generated world.
#[derive(Debug, Clone, PartialEq)]
pub struct World {
    /// Its settings.
    pub config: WorldConfig,
    /// Items and product lines.
    pub catalog: Catalog,
    /// Conversations of train, valid and test.
    pub conversations: [Vec<Conversation>; 3],
}

impl World {
    /// Expected HR@1 of the best model that sees titles and text but not images, on `split`:
    /// the mean over its conversations of 1 / (candidates sharing the ground truth's title). It
    /// can find the product line at best, and the twins in it are told apart only by the image.
    pub fn title_only_bound(&self, split: Split) -> f64 {
        let convs = &self.conversations[split as usize];
        let items = &self.catalog.items;
        let sum: f64 =
            convs.iter().map(|c| 1.0 / c.candidates_st.iter().filter(|i| items[**i].title == items[c.gt_item].title).count() as f64).sum();
        sum / convs.len().max(1) as f64
    }
}

/// Generates the world of `config`.
pub fn generate(config: &WorldConfig) -> Result<World> {
    config.validate()?;
    let catalog = items::generate(config.seed, &config.catalog);
    let conversations =
        Split::ALL.map(|s| dialogue::conversations(config.seed, &catalog, s, config.conversations[s as usize], &config.dialogue));
    Ok(World { config: *config, catalog, conversations })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_settings_are_refused_by_name() {
        let mut c = WorldConfig::new(1);
        c.catalog.lines_per_kind = 3;
        assert!(generate(&c).unwrap_err().to_string().contains("lines per kind (3)"));
        let mut c = WorldConfig::new(1);
        c.catalog.tile = 8;
        assert!(generate(&c).unwrap_err().to_string().contains("tile 8"));
        let mut c = WorldConfig::new(1);
        c.dialogue.follow_up = 1.5;
        assert!(generate(&c).unwrap_err().to_string().contains("follow-up"));
    }

    #[test]
    fn the_default_world_has_the_documented_size() {
        let w = generate(&WorldConfig::new(0)).unwrap();
        assert_eq!(w.catalog.lines.len(), 72);
        assert!((288..=360).contains(&w.catalog.items.len()), "{}", w.catalog.items.len());
        assert_eq!(w.conversations.each_ref().map(|c| c.len()), [2000, 200, 300]);
        // Titles alone: about one in 4.5 at best, so a titles-only model stays far below LaViC.
        for s in Split::ALL {
            let b = w.title_only_bound(s);
            assert!((0.2..=0.25).contains(&b), "{s:?}: {b}");
        }
    }
}
