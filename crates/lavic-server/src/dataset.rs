//! The Reddit-Amazon conversation files read unchanged (one JSON object per line: `context`,
//! `gt_items`, `candidates_st`, `candidates_gpt_large`, ...; `LAVIC_REFERENCE.md` section 10) and
//! item titles from any items file lavic-catalog ingests (our items JSONL, the reference's
//! `item2meta_train.json` or `item2meta_valid.jsonl`). Used by `lavic eval` and `lavic prompt`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::Value;

/// Which candidate list of a conversation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CandidateList {
    /// `candidates_st` (SBERT retrieval; the paper's main setting).
    #[default]
    #[value(name = "candidates_st")]
    St,
    /// `candidates_gpt_large`.
    #[value(name = "candidates_gpt_large")]
    GptLarge,
}

impl CandidateList {
    /// The field name in the conversation file.
    pub fn key(self) -> &'static str {
        match self {
            CandidateList::St => "candidates_st",
            CandidateList::GptLarge => "candidates_gpt_large",
        }
    }
}

/// One conversation of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// 0-based position among the conversations of the file.
    pub index: usize,
    /// The raw dialogue (`<submission>..</submission>\n<comment>..</comment>\n...`), unchanged.
    pub context: String,
    /// Ground-truth item ids as listed (duplicates kept: the reference counts each entry).
    pub gt_items: Vec<String>,
    /// The chosen candidate list, in file order.
    pub candidates: Vec<String>,
}

fn strings(obj: &serde_json::Map<String, Value>, key: &str, path: &Path, line: usize) -> anyhow::Result<Vec<String>> {
    match obj.get(key) {
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("{}:{line}: `{key}` must be an array of strings", path.display())),
        None | Some(Value::Null) => bail!("{}:{line}: no `{key}` field", path.display()),
        Some(_) => bail!("{}:{line}: `{key}` must be an array of strings", path.display()),
    }
}

/// Reads the first `limit` (all when None) conversations of `path` with the `list` candidates.
pub fn read_conversations(path: &Path, list: CandidateList, limit: Option<usize>) -> anyhow::Result<Vec<Conversation>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if raw.trim().is_empty() {
            continue;
        }
        let line = n + 1;
        let v: Value = serde_json::from_str(raw).with_context(|| format!("{}:{line}: invalid JSON", path.display()))?;
        let Value::Object(obj) = v else { bail!("{}:{line}: expected a JSON object", path.display()) };
        let context = match obj.get("context") {
            Some(Value::String(s)) => s.clone(),
            _ => bail!("{}:{line}: `context` must be a string", path.display()),
        };
        let gt_items = match obj.get("gt_items") {
            None | Some(Value::Null) => Vec::new(),
            Some(_) => strings(&obj, "gt_items", path, line)?,
        };
        let candidates = strings(&obj, list.key(), path, line)?;
        out.push(Conversation { index: out.len(), context, gt_items, candidates });
    }
    Ok(out)
}

/// Titles by item id from an items file (any layout lavic-catalog ingests); "" when an item has none.
pub fn read_titles(path: &Path) -> anyhow::Result<HashMap<String, String>> {
    let items = lavic_catalog::read_items(path, lavic_catalog::InputFormat::Auto)?;
    Ok(items.into_iter().map(|it| (it.id, it.title)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversations_keep_bytes_duplicates_and_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("valid.jsonl");
        let rows = [
            r#"{"context": "<submission>donâ€™t</submission>\n", "gt_items": ["B1", "B1"], "candidates_st": ["B1", "B2"], "candidates_gpt_large": ["B3", "B4"], "gt": "x"}"#,
            "",
            r#"{"context": "<submission>b</submission>\n", "gt_items": ["B9"], "candidates_st": ["B5", "B6"], "candidates_gpt_large": ["B7", "B8"]}"#,
        ];
        std::fs::write(&p, rows.join("\n")).unwrap();
        let c = read_conversations(&p, CandidateList::GptLarge, None).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].context, "<submission>donâ€™t</submission>\n");
        assert_eq!(c[0].gt_items, ["B1", "B1"]);
        assert_eq!(c[0].candidates, ["B3", "B4"]);
        assert_eq!(c[1].index, 1);
        assert_eq!(read_conversations(&p, CandidateList::St, Some(1)).unwrap()[0].candidates, ["B1", "B2"]);

        std::fs::write(&p, r#"{"context": "x", "candidates_st": ["B1", 2]}"#).unwrap();
        let e = read_conversations(&p, CandidateList::St, None).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("candidates_st"), "{e}");
        let e = read_conversations(&p, CandidateList::GptLarge, None).unwrap_err().to_string();
        assert!(e.contains("no `candidates_gpt_large`"), "{e}");
    }
}
