//! `lavic train base --describe FILE`: the stage-1 teacher texts of the demo (issue 15: "the
//! teacher descriptions are the stage-0 model's own descriptions where it can produce them").
//!
//! For every item of `WORLD/items.jsonl`, the model's greedy answer to the item's `distill` line
//! of `stage0.jsonl` (LaViC's stage-1 prompt with the image as patch tokens; worlds without one:
//! its `describe` question), from its patch tokens (lavic-train's batched generation).
//! FILE holds the items lines byte for byte, except that `description` is the model's text and
//! a field `"teacher": "model"` is added; where the model gives no usable text (empty, or no
//! `</s>` within the token budget) the generator's description stays, with `"teacher":
//! "generator"`. `lavic train distill --items FILE` reads it (the extra field is metadata).
//! FILE.summary.json counts the model's texts, those equal to the generator's, and those that
//! name each true attribute of the item's `look` ([`lavic_demo::vocab::Look::named_in`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use lavic_demo::vocab::Look;
use lavic_train::full::{stage0_prompt, FullModel};
use lavic_train::generate::Question;
use lavic_model::prompt::ANSWER_PREFIX;
use lavic_train::stage0::{item_views, read_lines, Stage0Filter};
use serde::{Deserialize, Serialize};

use crate::progress::{Progress, ProgressArg};

/// What `--describe` needs besides the model and the world.
#[derive(Debug, Clone)]
pub struct DescribeSettings {
    /// The items file to write (the summary goes to this path + `.summary.json`).
    pub out: PathBuf,
    /// Most tokens of a model description.
    pub max_tokens: usize,
    /// Items per generation pass.
    pub batch: usize,
    /// Use a model text only where it names every true attribute of the item (kind, both
    /// colours, pattern, detail); otherwise any usable text is used.
    pub require_correct: bool,
}

/// How many model texts name each true attribute.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NamedCounts {
    /// The kind.
    pub kind: usize,
    /// The main colour (as the first colour word).
    pub main: usize,
    /// The secondary colour.
    pub secondary: usize,
    /// The pattern.
    pub pattern: usize,
    /// The shape detail.
    pub detail: usize,
}

/// `FILE.summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DescribeSummary {
    /// The items file written.
    pub file: String,
    /// Items.
    pub items: usize,
    /// Items whose description is the model's (`"teacher": "model"`).
    pub from_model: usize,
    /// Items that kept the generator's description because the model's was empty.
    pub empty: usize,
    /// Items that kept the generator's description because the model gave no `</s>` in time.
    pub no_eos: usize,
    /// Usable model texts (non-empty, ended by `</s>`).
    pub usable: usize,
    /// Usable model texts not used because they miss a true attribute (with `require_correct`).
    pub not_correct: usize,
    /// Whether only model texts naming every true attribute were used.
    pub require_correct: bool,
    /// Usable model texts exactly equal to the generator's description.
    pub equal_to_generator: usize,
    /// Usable model texts naming each true attribute (out of `usable`).
    pub named: NamedCounts,
    /// Usable model texts naming every true attribute.
    pub all_named: usize,
    /// Token budget of a description.
    pub max_tokens: usize,
    /// Seconds the descriptions took.
    pub seconds: f64,
}

/// The fields of an items line that describing reads.
#[derive(Deserialize)]
struct ItemFields {
    id: String,
    description: String,
    look: Look,
}

/// Byte range of the string value of top-level key `key` in the JSON object `text`.
fn string_value_span(text: &str, key: &str) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    let string_end = |mut j: usize| -> Option<usize> {
        j += 1;
        while j < b.len() {
            match b[j] {
                b'\\' => j += 2,
                b'"' => return Some(j + 1),
                _ => j += 1,
            }
        }
        None
    };
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let (mut i, mut depth, mut at_key) = (0usize, 0usize, false);
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(i)?;
                if depth == 1 && at_key {
                    at_key = false;
                    let name: String = serde_json::from_str(&text[i..end]).ok()?;
                    let colon = skip_ws(end);
                    let v = skip_ws(colon + 1);
                    if b.get(colon) != Some(&b':') {
                        return None;
                    }
                    if name == key {
                        return (b.get(v) == Some(&b'"')).then(|| string_end(v).map(|e| (v, e))).flatten();
                    }
                    i = v;
                    continue;
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                at_key = depth == 1 && b[i] == b'{';
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b',' => at_key = depth == 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// `line` with its `description` string replaced by `text` and `"teacher": teacher` added at the
/// end (or its value replaced, if present); every other byte kept.
fn rewrite_line(line: &str, text: &str, teacher: &str) -> anyhow::Result<String> {
    let (s, e) = string_value_span(line, "description").context("no top-level \"description\" string")?;
    let mut out = format!("{}{}{}", &line[..s], serde_json::to_string(text)?, &line[e..]);
    let teacher_json = serde_json::to_string(teacher)?;
    match string_value_span(&out, "teacher") {
        Some((s, e)) => out.replace_range(s..e, &teacher_json),
        None => {
            let close = out.trim_end().len().checked_sub(1).filter(|&c| out.as_bytes()[c] == b'}').context("line does not end with }")?;
            out.insert_str(close, &format!(",\"teacher\":{teacher_json}"));
        }
    }
    Ok(out)
}

/// The teacher prompt of every item in `stage0.jsonl`: its `distill` line (LaViC's stage-1
/// prompt, the image as patch tokens: the teacher sees the student's prompt) where the world has
/// one, else its `describe` question.
fn describe_questions(world: &Path) -> anyhow::Result<HashMap<String, String>> {
    let f = Stage0Filter { tasks: vec!["describe".into(), "distill".into()], ..Stage0Filter::default() };
    let mut out = HashMap::new();
    for l in read_lines(world, &f)? {
        match l.task.as_str() {
            "distill" => {
                out.insert(l.id, format!("{}{ANSWER_PREFIX}", l.question));
            }
            _ => {
                out.entry(l.id).or_insert_with(|| stage0_prompt(&l.question));
            }
        }
    }
    Ok(out)
}

/// Reads `items.jsonl`: each non-empty line with its fields; a bad line names file and line.
fn read_items(path: &Path) -> anyhow::Result<Vec<(String, ItemFields)>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: ItemFields = serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1))?;
        out.push((line.to_string(), f));
    }
    if out.is_empty() {
        bail!("{}: no items", path.display());
    }
    Ok(out)
}

/// Writes the described items file and its summary (see the module docs).
pub fn run(model: &FullModel, world: &Path, s: &DescribeSettings) -> anyhow::Result<DescribeSummary> {
    let t0 = Instant::now();
    let items_path = world.join("items.jsonl");
    let items = read_items(&items_path)?;
    let questions = describe_questions(world)?;
    let mut sum = DescribeSummary {
        file: s.out.display().to_string(),
        items: items.len(),
        max_tokens: s.max_tokens,
        require_correct: s.require_correct,
        ..Default::default()
    };
    let mut lines = Vec::with_capacity(items.len());
    let mut progress = Progress::new("items", items.len(), ProgressArg::Auto);
    for chunk in items.chunks(s.batch.max(1)) {
        let mut batch = Vec::with_capacity(chunk.len());
        for (_, it) in chunk {
            let q = questions
                .get(&it.id)
                .with_context(|| format!("item {}: no describe line in {}", it.id, world.join("stage0.jsonl").display()))?;
            let views = item_views(world, &it.id, &model.anyres).with_context(|| format!("item {}", it.id))?;
            batch.push(Question { prompt: q.clone(), images: vec![views] });
        }
        for ((line, it), a) in chunk.iter().zip(model.generate_batch(&batch, s.max_tokens)?) {
            let text = a.text.trim();
            let usable = a.finished && !text.is_empty();
            sum.empty += (a.finished && text.is_empty()) as usize;
            sum.no_eos += !a.finished as usize;
            let mut correct = false;
            if usable {
                sum.usable += 1;
                sum.equal_to_generator += (text == it.description) as usize;
                let n = it.look.named_in(text);
                let c = &mut sum.named;
                (c.kind, c.main, c.secondary) = (c.kind + n.kind as usize, c.main + n.main as usize, c.secondary + n.secondary as usize);
                (c.pattern, c.detail) = (c.pattern + n.pattern as usize, c.detail + n.detail as usize);
                correct = n.kind && n.main && n.secondary && n.pattern && n.detail;
                sum.all_named += correct as usize;
            }
            let new = if usable && (correct || !s.require_correct) {
                sum.from_model += 1;
                rewrite_line(line, text, "model")
            } else {
                sum.not_correct += usable as usize;
                rewrite_line(line, &it.description, "generator")
            };
            lines.push(new.with_context(|| format!("{}: item {}", items_path.display(), it.id))?);
        }
        progress.inc(chunk.len());
    }
    progress.finish();
    sum.seconds = t0.elapsed().as_secs_f64();
    write_atomic(&s.out, (lines.join("\n") + "\n").as_bytes())?;
    let summary_path = PathBuf::from(format!("{}.summary.json", s.out.display()));
    write_atomic(&summary_path, (serde_json::to_string_pretty(&sum)? + "\n").as_bytes())?;
    Ok(sum)
}

/// Writes `path` through a temporary sibling and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrite_keeps_every_other_byte() {
        let line = r#"{"id":"B1","title":"A \"quoted\", title","description":"The old {text}, \"x\".","look":{"description":"inner"},"n":[1,{"a":"b"}]}"#;
        let out = rewrite_line(line, "A red bag.\nNew", "model").unwrap();
        assert_eq!(
            out,
            r#"{"id":"B1","title":"A \"quoted\", title","description":"A red bag.\nNew","look":{"description":"inner"},"n":[1,{"a":"b"}],"teacher":"model"}"#
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["description"], "A red bag.\nNew");
        // Rewriting again replaces the teacher instead of adding a second one.
        let again = rewrite_line(&out, "The old {text}, \"x\".", "generator").unwrap();
        assert_eq!(again, line.replace("]}", "],\"teacher\":\"generator\"}"));
        assert!(rewrite_line(r#"{"id":"B1","look":{"description":"x"}}"#, "t", "model").is_err());
        assert!(rewrite_line(r#"{"description":3}"#, "t", "model").is_err());
    }
}
