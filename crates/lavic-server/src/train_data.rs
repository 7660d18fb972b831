//! Training samples of `lavic train` built from the data as distributed.
//!
//! Stage 1 (`LAVIC_REFERENCE.md` section 5): one sample per item with a teacher description
//! (`image_description_llava_cleaned` in `item2meta_valid.jsonl`, the entry of the item's image in
//! `image_descriptions_llava_cleaned` of `item2meta_train.json`, or a `description` string in our
//! items JSONL), the distillation prompt, the item's first image as 5 views (a missing file is the
//! reference's white image). Stage 2 (section 6): one sample per (conversation, ground-truth
//! item) pair; a ground truth that is not a candidate replaces the candidate in a seeded random
//! slot of a copy of the list (the reference mutated the stored list in place); the target is the
//! bare id (optionally followed by `</s>`); an over-long prompt is shortened from the front of the
//! dialogue as in serving, never cutting the candidates or the target.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use lavic_catalog::{InputFormat, InputItem};
use lavic_model::anyres::{self, AnyResConfig, DecodeLimits};
use lavic_model::prompt::distillation_prompt;
use lavic_model::{Device, LavicTokenizer, PromptCandidate, Tensor};
use lavic_train::model::{Encoded, Example, TrainModel};
use lavic_train::rng::Rng;
use serde_json::Value;

use crate::dataset::Conversation;

/// One stage-1 item.
#[derive(Debug, Clone)]
pub struct DistillItem {
    /// Item id.
    pub id: String,
    /// Title ("" when absent).
    pub title: String,
    /// The teacher's description (the target).
    pub description: String,
    /// Image file, when the item names one.
    pub image: Option<PathBuf>,
}

/// The stage-1 items of a file and what was left out.
#[derive(Debug, Clone, Default)]
pub struct DistillSet {
    /// Items with a description, in file order.
    pub items: Vec<DistillItem>,
    /// Ids of items without a (non-empty) description, skipped.
    pub no_description: Vec<String>,
}

/// The teacher description of an item, if it has a non-empty one.
pub fn description(it: &InputItem) -> Option<String> {
    // Metadata is the item's other fields as their exact JSON text (lavic_catalog::rules).
    let meta: serde_json::Map<String, Value> = serde_json::from_str(&it.metadata).ok()?;
    let text = match (meta.get("image_description_llava_cleaned"), meta.get("image_descriptions_llava_cleaned")) {
        (Some(Value::String(s)), _) => Some(s.clone()),
        (_, Some(Value::Object(per_image))) => {
            let file = it.image.as_deref().and_then(|p| Path::new(p).file_name()).and_then(|f| f.to_str());
            let hit = file.and_then(|f| per_image.get(f)).or_else(|| per_image.values().next());
            hit.and_then(Value::as_str).map(str::to_string)
        }
        _ => match meta.get("description") {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        },
    }?;
    (!text.trim().is_empty()).then_some(text)
}

/// Reads the stage-1 items of `path` (any layout lavic-catalog ingests); image paths are
/// relative to `images`.
pub fn read_distill_items(path: &Path, images: &Path) -> anyhow::Result<DistillSet> {
    let mut set = DistillSet::default();
    for it in lavic_catalog::read_items(path, InputFormat::Auto)? {
        match description(&it) {
            Some(description) => set.items.push(DistillItem {
                image: it.image.as_ref().map(|p| images.join(p)),
                id: it.id,
                title: it.title,
                description,
            }),
            None => set.no_description.push(it.id),
        }
    }
    Ok(set)
}

/// The 5 views `[5, C, S, S]` of an item's image and whether its file was missing (then the
/// reference's white image is used). An unreadable or undecodable file is an error naming the item.
pub fn item_views(item: &DistillItem, cfg: &AnyResConfig, device: &Device) -> anyhow::Result<(Tensor, bool)> {
    let (img, missing) = match &item.image {
        Some(p) if p.exists() => {
            let bytes = std::fs::read(p).with_context(|| format!("item {}: cannot read {}", item.id, p.display()))?;
            let img = anyres::decode_rgb(&bytes, &DecodeLimits::default())
                .with_context(|| format!("item {}: cannot decode {}", item.id, p.display()))?;
            (img, false)
        }
        _ => (anyres::white_image(cfg), true),
    };
    let views = anyres::preprocess(&img, cfg).0;
    Ok((anyres::stack_views(&[views], cfg, device)?, missing))
}

/// Encoded stage-1 samples (prompt + description, the item's 5 views) and the number of
/// items whose image file was missing.
pub fn distill_examples(model: &TrainModel, items: &[DistillItem]) -> anyhow::Result<(Vec<Encoded>, usize)> {
    let mut out = Vec::with_capacity(items.len());
    let mut missing = 0;
    for it in items {
        let (views, miss) = item_views(it, &model.anyres, &Device::Cpu)?;
        missing += miss as usize;
        let ex = Example { prompt: distillation_prompt(&it.title), target: it.description.clone(), images: vec![views] };
        out.push(model.encode(&ex).with_context(|| format!("item {}", it.id))?);
    }
    Ok((out, missing))
}

/// One stage-2 sample: a conversation, one of its ground truths and the candidate list it sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// Index of the conversation in its file.
    pub conversation: usize,
    /// The ground-truth item (the target).
    pub gt: String,
    /// The candidates shown, the ground truth among them.
    pub candidates: Vec<String>,
    /// The slot the ground truth was put into, when it was not a candidate.
    pub inserted_at: Option<usize>,
}

/// One sample per (conversation, ground truth) pair, in file order. A ground truth missing from
/// the candidates replaces the one at a slot drawn from `seed` and the pair's position, in a copy
/// of the list (other pairs of the conversation see the original list). Conversations without
/// ground truth are skipped.
pub fn pairs(convs: &[Conversation], seed: u64) -> Vec<Pair> {
    let mut out = Vec::new();
    for c in convs {
        for gt in &c.gt_items {
            let mut candidates = c.candidates.clone();
            let mut inserted_at = None;
            if !candidates.contains(gt) && !candidates.is_empty() {
                let mut rng = Rng::new(seed ^ 0x6A09_E667_F3BC_C908 ^ (out.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let slot = rng.below(candidates.len() as u64) as usize;
                candidates[slot] = gt.clone();
                inserted_at = Some(slot);
            }
            out.push(Pair { conversation: c.index, gt: gt.clone(), candidates, inserted_at });
        }
    }
    out
}

/// An item as the recommendation prompt shows it: title and projected image tokens `[5, H]`.
#[derive(Debug, Clone)]
pub struct ItemTokens {
    /// Title ("" = `No Title`).
    pub title: String,
    /// Projected image tokens.
    pub tokens: Tensor,
}

/// How stage-2 samples are built.
#[derive(Debug, Clone, Copy)]
pub struct PromptRules {
    /// Most tokens of prompt + target.
    pub max_length: usize,
    /// Append `</s>` to the target.
    pub eos: bool,
}

/// The encoded sample of `pair` and the dialogue tokens dropped to fit `rules.max_length`.
/// Every candidate must be in `items`.
pub fn recommend_example(
    model: &TrainModel,
    conv: &Conversation,
    pair: &Pair,
    items: &HashMap<String, ItemTokens>,
    rules: PromptRules,
) -> anyhow::Result<(Encoded, usize)> {
    let tok: &LavicTokenizer = &model.tokenizer;
    let found: Vec<&ItemTokens> = pair
        .candidates
        .iter()
        .map(|id| items.get(id).with_context(|| format!("conversation {}: unknown item id {id:?}", conv.index + 1)))
        .collect::<anyhow::Result<_>>()?;
    let cands: Vec<PromptCandidate<'_>> =
        pair.candidates.iter().zip(&found).map(|(id, it)| PromptCandidate { id, title: &it.title }).collect();
    let target = if rules.eos { format!("{}</s>", pair.gt) } else { pair.gt.clone() };
    let mut budget = rules.max_length.saturating_sub(tok.encode_plain(&target)?.len() + 1);
    for _ in 0..4 {
        let built = tok
            .build_recommendation_prompt(&conv.context, &cands, Some(budget))
            .with_context(|| format!("conversation {} (--max-length {})", conv.index + 1, rules.max_length))?;
        let ex = Example { prompt: built.text, target: target.clone(), images: found.iter().map(|i| i.tokens.clone()).collect() };
        let enc = model.encode(&ex).with_context(|| format!("conversation {}", conv.index + 1))?;
        if enc.ids.len() <= rules.max_length {
            return Ok((enc, built.shortened_tokens));
        }
        budget = budget.saturating_sub(enc.ids.len() - rules.max_length);
    }
    bail!("conversation {}: cannot fit the prompt and target into --max-length {}", conv.index + 1, rules.max_length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(index: usize, gt: &[&str], cands: &[&str]) -> Conversation {
        Conversation {
            index,
            context: "<submission>x</submission>\n".into(),
            gt_items: gt.iter().map(|s| s.to_string()).collect(),
            candidates: cands.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn pairs_insert_missing_ground_truth_into_a_copy() {
        let convs = [conv(0, &["B3", "B9", "B8"], &["B1", "B2", "B3", "B4"]), conv(1, &[], &["B1"])];
        let p = pairs(&convs, 42);
        assert_eq!(p.len(), 3, "one sample per pair; conversations without ground truth skipped");
        assert_eq!(p[0].candidates, convs[0].candidates, "a ground truth among the candidates changes nothing");
        assert_eq!(p[0].inserted_at, None);
        for q in &p[1..] {
            let slot = q.inserted_at.expect("inserted");
            assert_eq!(q.candidates[slot], q.gt);
            let mut expect = convs[0].candidates.clone();
            expect[slot] = q.gt.clone();
            assert_eq!(q.candidates, expect, "only the ground truth of this pair is inserted (the reference kept B9 in B8's list)");
        }
        assert_eq!(pairs(&convs, 42), p, "seeded");
    }

    #[test]
    fn description_from_each_layout() {
        let item = |meta: Value, image: Option<&str>| InputItem {
            id: "B1".into(),
            title: "t".into(),
            image: image.map(str::to_string),
            metadata: meta.to_string(),
            line: 1,
        };
        let v = serde_json::json!({"image_description_llava_cleaned": "A mug."});
        assert_eq!(description(&item(v, None)).as_deref(), Some("A mug."));
        let v = serde_json::json!({"image_descriptions_llava_cleaned": {"B1_0.jpg": "first", "B1_1.jpg": "second"}, "description": ["list"]});
        assert_eq!(description(&item(v, Some("x/B1_1.jpg"))).as_deref(), Some("second"));
        let v = serde_json::json!({"description": "Ours."});
        assert_eq!(description(&item(v, None)).as_deref(), Some("Ours."));
        for v in [serde_json::json!({"description": "  "}), serde_json::json!({"description": ["Amazon list"]}), serde_json::json!({})] {
            assert_eq!(description(&item(v, None)), None);
        }
    }
}

#[cfg(test)]
mod eos_tests {
    use lavic_model::LavicTokenizer;

    /// `--eos` appends the text `</s>`: it must become the EOS token, not the characters.
    #[test]
    fn eos_text_is_the_eos_token() {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tokenizer/tokenizer.json");
        let tok = LavicTokenizer::from_file(&p).unwrap();
        let with = tok.encode("\nAssistant:B07NRD1BPJ</s>").unwrap();
        let without = tok.encode("\nAssistant:B07NRD1BPJ").unwrap();
        assert_eq!(with.last(), Some(&tok.eos_id()));
        assert_eq!(&with[..with.len() - 1], &without[..]);
    }
}
