//! Stage-0 data: the demo world's `stage0.jsonl` (`{"id", "split", "task", "question",
//! "answer"}`, written by `lavic demo-world`) read into [`PatchExample`]s, each item's image
//! (`images/ID.png`) preprocessed once with the checkpoint's AnyRes settings into its 5 views.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use lavic_model::anyres::{decode_rgb, preprocess, AnyResConfig, DecodeLimits, NUM_VIEWS};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::full::{stage0_prompt, PatchExample};
use lavic_model::prompt::ANSWER_PREFIX;

/// One line of `stage0.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Stage0Line {
    /// Item id (its image is `images/ID.png`).
    pub id: String,
    /// The item's split.
    pub split: String,
    /// Task name (describe, kind, main, trim, pattern, detail, yes_no).
    pub task: String,
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// A multi-image question's images (ids, in the order of its `<image>` markers); empty: the
    /// question is about `id`'s image.
    #[serde(default)]
    pub images: Vec<String>,
    /// A question without any image: the prompt is the question and `\nAssistant:`.
    #[serde(default)]
    pub text_only: bool,
    /// A multi-image question's line ids, one per image in `images` order (what each image's
    /// tokens recite under [`crate::full::FullModel::encode_reciting`]).
    #[serde(default)]
    pub listed: Vec<String>,
    /// Follow-up questions about the same prompt, each answered (a `quiz` line): after the
    /// answer, `</s>`, then each turn's question, `\nAssistant:` and its answer.
    #[serde(default)]
    pub turns: Vec<Turn>,
}

/// A follow-up question of a [`Stage0Line`] and its answer.
#[derive(Debug, Clone, Deserialize)]
pub struct Turn {
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
}

/// Which lines to read.
#[derive(Debug, Clone, Default)]
pub struct Stage0Filter {
    /// Keep only these splits (empty: all).
    pub splits: Vec<String>,
    /// Keep only these tasks (empty: all).
    pub tasks: Vec<String>,
    /// Keep at most this many lines (after filtering), in file order.
    pub limit: Option<usize>,
}

/// Reads and filters `world/stage0.jsonl`; a bad line is an error naming the file and line.
pub fn read_lines(world: &Path, filter: &Stage0Filter) -> Result<Vec<Stage0Line>> {
    let path = world.join("stage0.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let l: Stage0Line =
            serde_json::from_str(line).map_err(|e| Error::Input(format!("{} line {}: {e}", path.display(), i + 1)))?;
        let keep = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        if keep(&filter.splits, &l.split) && keep(&filter.tasks, &l.task) {
            out.push(l);
        }
        if filter.limit.is_some_and(|n| out.len() >= n) {
            break;
        }
    }
    Ok(out)
}

/// The 5 normalised views `[5, 3, S, S]` of `images/ID.png`.
pub fn item_views(world: &Path, id: &str, anyres: &AnyResConfig) -> Result<Tensor> {
    let path = world.join("images").join(format!("{id}.png"));
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let img = decode_rgb(&bytes, &DecodeLimits::default()).map_err(|e| Error::Input(format!("{}: {e}", path.display())))?;
    let (px, _) = preprocess(&img, anyres);
    let t = anyres.tile;
    Ok(Tensor::from_vec(px, (NUM_VIEWS, 3, t, t), &Device::Cpu)?)
}

/// Stage-0 examples of `lines`: prompt [`stage0_prompt`]`(question)`, target the answer,
/// directly after `Assistant:` as in LaViC's stage-1 prompt, and the item's views.
/// A multi-image line (`images`) is its question with one `<image>` per image, then
/// `\nAssistant:` (the question carries its own markers). Follow-up `turns` become
/// `(question + "\nAssistant:", answer)` pairs.
pub fn examples<'a>(world: &Path, lines: &'a [Stage0Line], anyres: &AnyResConfig) -> Result<Vec<PatchExample>> {
    let mut views: HashMap<&'a str, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        let mut view = |id: &'a str| -> Result<Tensor> {
            if let Some(v) = views.get(id) {
                return Ok(v.clone());
            }
            let v = item_views(world, id, anyres)?;
            views.insert(id, v.clone());
            Ok(v)
        };
        let turns: Vec<(String, String)> = l.turns.iter().map(|t| (format!("{}{ANSWER_PREFIX}", t.question), t.answer.clone())).collect();
        let ex = if l.text_only {
            PatchExample { prompt: format!("{}{ANSWER_PREFIX}", l.question), target: l.answer.clone(), images: Vec::new(), listed: Vec::new(), turns }
        } else if l.images.is_empty() {
            PatchExample { prompt: stage0_prompt(&l.question), target: l.answer.clone(), images: vec![view(&l.id)?], listed: Vec::new(), turns }
        } else {
            let images = l.images.iter().map(|id| view(id)).collect::<Result<Vec<_>>>()?;
            if !l.listed.is_empty() && l.listed.len() != images.len() {
                return Err(Error::Input(format!(
                    "stage-0 line of {} ({}): {} listed ids for {} images",
                    l.id,
                    l.task,
                    l.listed.len(),
                    images.len()
                )));
            }
            PatchExample { prompt: format!("{}{ANSWER_PREFIX}", l.question), target: l.answer.clone(), images, listed: l.listed.clone(), turns }
        };
        out.push(ex);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_filters_and_names_a_bad_line() {
        let d = tempfile::tempdir().unwrap();
        let line = |id: &str, split: &str, task: &str| {
            format!(r#"{{"id":"{id}","split":"{split}","task":"{task}","question":"q","answer":"a"}}"#)
        };
        let text = [line("A", "train", "main"), line("B", "test", "main"), String::new(), line("C", "train", "kind")].join("\n");
        std::fs::write(d.path().join("stage0.jsonl"), text).unwrap();
        let f = Stage0Filter { splits: vec!["train".into()], ..Stage0Filter::default() };
        let ids: Vec<String> = read_lines(d.path(), &f).unwrap().into_iter().map(|l| l.id).collect();
        assert_eq!(ids, ["A", "C"]);
        let f = Stage0Filter { tasks: vec!["main".into()], limit: Some(1), ..Stage0Filter::default() };
        assert_eq!(read_lines(d.path(), &f).unwrap().len(), 1);
        std::fs::write(d.path().join("stage0.jsonl"), format!("{}\n{{\"id\": 3}}\n", line("A", "train", "main"))).unwrap();
        let e = read_lines(d.path(), &Stage0Filter::default()).unwrap_err().to_string();
        assert!(e.contains("stage0.jsonl line 2"), "{e}");
        let e = item_views(
            d.path(),
            "NOPE",
            &lavic_model::anyres::AnyResConfig {
                tile: 32,
                shortest_edge: 32,
                pinpoints: vec![(32, 64)],
                mean: [0.0; 3],
                std: [1.0; 3],
                rescale: 1.0 / 255.0,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("NOPE.png"), "{e}");
    }
}
