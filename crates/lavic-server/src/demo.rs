//! The embedded demos `lavic serve` runs when no model folder is configured ([`DemoKind`]):
//!
//! - `world`: the trained demo of issue 15, in a folder laid out as
//!   `model/` (llava-hf LLaVA-NeXT, f16 or f32 on disk), `adapters/vision/` (stage-1 PEFT
//!   adapter), `adapters/lm/` (stage-2 PEFT adapter) and `world/` (`lavic demo-world` output:
//!   `items.jsonl` and `images/`); every item of `world/items.jsonl` goes into the catalog, built
//!   at start-up (docs/DEMO.md);
//! - `fixture` (the default until a trained demo that meets issue 15's bar is shipped in
//!   `demo/`; see docs/DEMO.md): the tiny random checkpoint of `tests/fixtures` with both
//!   fixture adapters and the five items `DEMO000001`..`DEMO000005` (what the server tests use).
//!
//! Both are found next to the sources the binary was built from, then under the current folder;
//! the world demo's folder can be named instead (`demo_dir`, `LAVIC_DEMO_DIR`). When one is
//! missing, the error names every path looked at.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which embedded demo `lavic serve` runs when no model folder is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum DemoKind {
    /// The trained demo of issue 15 (`demo/`: model, both adapters, and a catalog of every item of
    /// the demo world, built at start-up).
    World,
    /// The tiny random fixture model of `tests/fixtures` and the five items
    /// `DEMO000001`..`DEMO000005` (meaningless answers, every code path real; fast to start,
    /// what the tests use). The default until `demo/` ships a trained model.
    #[default]
    Fixture,
}

impl DemoKind {
    /// `world` or `fixture`.
    pub fn as_str(self) -> &'static str {
        match self {
            DemoKind::World => "world",
            DemoKind::Fixture => "fixture",
        }
    }
}

/// Where the demo catalog's items come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoCatalog {
    /// The five fixture items embedded in the binary (`store::DEMO_ITEMS`).
    Fixture,
    /// Every item of a demo world's items file, images relative to `images`.
    World {
        /// `world/items.jsonl`.
        items: PathBuf,
        /// `world/images`.
        images: PathBuf,
    },
}

/// The files of an embedded demo.
#[derive(Debug, Clone)]
pub struct DemoModel {
    /// Which demo.
    pub kind: DemoKind,
    /// llava-hf checkpoint folder.
    pub model_dir: PathBuf,
    /// `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Stage-1 (vision) LoRA adapter folder.
    pub vision_adapter: PathBuf,
    /// Stage-2 (language model) LoRA adapter folder.
    pub lm_adapter: PathBuf,
    /// The items of the demo catalog.
    pub catalog: DemoCatalog,
}

/// The files a world demo folder must hold, relative to it, and what each is.
pub const WORLD_LAYOUT: [(&str, &str); 6] = [
    ("model/config.json", "the demo model (llava-hf LLaVA-NeXT folder)"),
    ("model/tokenizer.json", "the demo model's tokenizer"),
    ("adapters/vision/adapter_config.json", "the stage-1 (vision) adapter"),
    ("adapters/lm/adapter_config.json", "the stage-2 (language model) adapter"),
    ("world/items.jsonl", "the demo world's items"),
    ("world/images", "the demo world's images"),
];

/// The folders a demo is looked for in, in order: `dir` when given (and only it), else `name`
/// next to the sources the binary was built from, then under the current folder.
pub fn roots(name: &str, dir: Option<&Path>) -> Vec<PathBuf> {
    match dir {
        Some(d) => vec![d.to_path_buf()],
        None => vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(name), PathBuf::from(name)],
    }
}

fn canonical(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" or ")
}

impl DemoModel {
    /// Locates the demo `kind` (the world demo in `dir` when given), or explains where it looked.
    pub fn locate(kind: DemoKind, dir: Option<&Path>) -> Result<Self> {
        match kind {
            DemoKind::World => Self::world(dir),
            DemoKind::Fixture => Self::fixture(),
        }
    }

    /// The tiny fixture demo (`tests/fixtures`).
    pub fn fixture() -> Result<Self> {
        let roots = roots("tests/fixtures", None);
        let Some(root) = roots.iter().find(|r| r.join("tiny-mistral/config.json").is_file()) else {
            return Err(Error::Startup(format!(
                "no model configured (LAVIC_MODEL_DIR) and the fixture demo model (LAVIC_DEMO=fixture) is not at {}",
                list(&roots.iter().map(|r| r.join("tiny-mistral")).collect::<Vec<_>>())
            )));
        };
        let root = canonical(root);
        Ok(Self {
            kind: DemoKind::Fixture,
            model_dir: root.join("tiny-mistral"),
            tokenizer: root.join("tokenizer/tokenizer.json"),
            vision_adapter: root.join("adapters/mistral-vision"),
            lm_adapter: root.join("adapters/mistral-lm"),
            catalog: DemoCatalog::Fixture,
        })
    }

    /// The trained world demo: the first of [`roots`]`("demo", dir)` that is a folder, which must
    /// then hold every file of [`WORLD_LAYOUT`].
    pub fn world(dir: Option<&Path>) -> Result<Self> {
        let roots = roots("demo", dir);
        let Some(root) = roots.iter().find(|r| r.is_dir()) else {
            return Err(Error::Startup(format!(
                "no model configured (LAVIC_MODEL_DIR) and the world demo is not at {} (no such folder). \
                 Point LAVIC_DEMO_DIR at a folder with model/, adapters/vision/, adapters/lm/ and world/ (docs/DEMO.md), \
                 or serve the tiny fixture demo with LAVIC_DEMO=fixture",
                list(&roots)
            )));
        };
        let root = canonical(root);
        let missing: Vec<String> = WORLD_LAYOUT
            .iter()
            .filter(|(rel, _)| !root.join(rel).exists())
            .map(|(rel, what)| format!("{} ({what})", root.join(rel).display()))
            .collect();
        if !missing.is_empty() {
            return Err(Error::Startup(format!(
                "the world demo at {} is incomplete: missing {}. Looked at {}; LAVIC_DEMO=fixture serves the tiny fixture demo instead",
                root.display(),
                missing.join(", "),
                list(&roots)
            )));
        }
        Ok(Self {
            kind: DemoKind::World,
            model_dir: root.join("model"),
            tokenizer: root.join("model/tokenizer.json"),
            vision_adapter: root.join("adapters/vision"),
            lm_adapter: root.join("adapters/lm"),
            catalog: DemoCatalog::World { items: root.join("world/items.jsonl"), images: root.join("world/images") },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(root: &Path, rel: &str) {
        let p = root.join(rel);
        if rel.ends_with("images") {
            std::fs::create_dir_all(&p).unwrap();
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, "{}").unwrap();
        }
    }

    #[test]
    fn a_complete_world_folder_is_found_and_its_paths_are_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        for (rel, _) in WORLD_LAYOUT {
            touch(dir.path(), rel);
        }
        let d = DemoModel::locate(DemoKind::World, Some(dir.path())).unwrap();
        let root = dir.path().canonicalize().unwrap();
        assert_eq!(d.kind, DemoKind::World);
        assert_eq!(d.model_dir, root.join("model"));
        assert_eq!(d.tokenizer, root.join("model/tokenizer.json"));
        assert_eq!((d.vision_adapter, d.lm_adapter), (root.join("adapters/vision"), root.join("adapters/lm")));
        assert_eq!(d.catalog, DemoCatalog::World { items: root.join("world/items.jsonl"), images: root.join("world/images") });
    }

    #[test]
    fn a_missing_or_incomplete_world_names_the_paths() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("nowhere");
        let e = DemoModel::world(Some(&absent)).unwrap_err().to_string();
        assert!(e.contains(&absent.display().to_string()) && e.contains("LAVIC_DEMO=fixture"), "{e}");
        // Everything but the language-model adapter.
        for (rel, _) in WORLD_LAYOUT.iter().filter(|(r, _)| !r.starts_with("adapters/lm")) {
            touch(dir.path(), rel);
        }
        let e = DemoModel::world(Some(dir.path())).unwrap_err().to_string();
        assert!(e.contains("adapters/lm/adapter_config.json") && e.contains("stage-2"), "{e}");
        assert!(!e.contains("adapters/vision/adapter_config.json"), "only what is missing is named: {e}");
    }

    #[test]
    fn the_fixture_demo_is_the_tiny_model_and_the_five_items() {
        let d = DemoModel::locate(DemoKind::Fixture, None).unwrap();
        assert!(d.model_dir.ends_with("tiny-mistral") && d.model_dir.join("config.json").is_file());
        assert!(d.vision_adapter.ends_with("adapters/mistral-vision") && d.lm_adapter.ends_with("adapters/mistral-lm"));
        assert_eq!(d.catalog, DemoCatalog::Fixture);
    }
}
