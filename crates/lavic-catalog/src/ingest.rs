//! Build inputs: our items JSONL (`id`, `title`, `image` relative to the images folder, other
//! fields kept as metadata) and, unchanged, the reference's metadata files: `item2meta_train.json`
//! (a dict keyed by id; `images[i]` was saved as `{id}_{i}.jpg`, the first one is used) and
//! `item2meta_valid.jsonl` (one line per image, `image_name` = `{id}_{i}.jpg`; the line with the
//! lowest `i` is the item's). Also the `--shard I/N` selection.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::rules::{object_members, object_text};

/// Layout of the items file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InputFormat {
    /// `.json` -> `Train`; otherwise one JSON object per line, each `Items` (has `id`) or
    /// `Valid` (has `image_name`).
    #[default]
    Auto,
    /// Our JSONL: `{"id", "title", "image", ...}`.
    Items,
    /// The reference's `item2meta_train.json`.
    Train,
    /// The reference's `item2meta_valid.jsonl`.
    Valid,
}

impl FromStr for InputFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "items" => Ok(Self::Items),
            "train" => Ok(Self::Train),
            "valid" => Ok(Self::Valid),
            o => Err(Error::InvalidArgument(format!("input format {o:?} (expected auto, items, train or valid)"))),
        }
    }
}

/// One item to build.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    /// Item id.
    pub id: String,
    /// Title ("" when absent).
    pub title: String,
    /// Image path relative to the images folder; `None` = no image (white image).
    pub image: Option<String>,
    /// Remaining fields: a JSON object's text, each value exactly as in the input (integers
    /// beyond 64 bits intact).
    pub metadata: String,
    /// 1-based line of the input where the item was defined (0 for `Train`).
    pub line: usize,
}

/// `I/N`: this build handles the items at 0-based input positions `p` with `p % N == I`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard (0-based).
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

impl Shard {
    /// Whether the item at input position `pos` belongs to this shard.
    pub fn selects(&self, pos: usize) -> bool {
        pos % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidArgument(format!("shard {s:?} (expected I/N with 0 <= I < N, e.g. 0/4)"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Reads the items of `path`, in input order, refusing malformed lines and duplicate ids
/// (errors name the line). The item rules (`rules`) are not applied here: a build reports an
/// item that breaks them per item and goes on.
pub fn read_items(path: &Path, format: InputFormat) -> Result<Vec<InputItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let format = match format {
        InputFormat::Auto if path.extension().is_some_and(|e| e == "json") => InputFormat::Train,
        f => f,
    };
    let items = match format {
        InputFormat::Train => read_train(path, &text)?,
        f => read_lines(path, &text, f)?,
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for it in &items {
        if let Some(first) = seen.insert(&it.id, it.line) {
            return Err(Error::input(path, Some(it.line).filter(|l| *l > 0), format!("duplicate item id {:?} (first on line {first})", it.id)));
        }
    }
    Ok(items)
}

fn opt_string(obj: &mut Map<String, Value>, key: &str, path: &Path, line: Option<usize>) -> Result<Option<String>> {
    match obj.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(Error::input(path, line, format!("`{key}` must be a string, not {other}"))),
    }
}

fn read_lines(path: &Path, text: &str, format: InputFormat) -> Result<Vec<InputItem>> {
    let mut items = Vec::new();
    // Valid-format lines grouped by id: (index in `items`, image number of the chosen line).
    let mut valid_at: HashMap<String, (usize, u64)> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let ln = Some(n + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| Error::input(path, ln, format!("invalid JSON: {e}")))?;
        let (Value::Object(mut obj), Some(members)) = (value, object_members(line)) else {
            return Err(Error::input(path, ln, "expected a JSON object"));
        };
        let is_valid = match format {
            InputFormat::Items => false,
            InputFormat::Valid => true,
            _ => !obj.contains_key("id") && obj.contains_key("image_name"),
        };
        if !is_valid {
            let id = match obj.remove("id") {
                Some(Value::String(s)) => s,
                Some(other) => return Err(Error::input(path, ln, format!("`id` must be a string, not {other}"))),
                None => return Err(Error::input(path, ln, "no `id` field")),
            };
            let title = opt_string(&mut obj, "title", path, ln)?.unwrap_or_default();
            let image = opt_string(&mut obj, "image", path, ln)?;
            let metadata = rest(&members, &["id", "title", "image"]);
            items.push(InputItem { id, title, image, metadata, line: n + 1 });
            continue;
        }
        let name = match obj.get("image_name") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Error::input(path, ln, "`image_name` must be a string")),
        };
        let (id, number) = split_image_name(&name).ok_or_else(|| Error::input(path, ln, format!("image_name {name:?} is not {{id}}_{{i}}.jpg")))?;
        let title = opt_string(&mut obj, "title", path, ln)?.unwrap_or_default();
        let item = InputItem { id: id.clone(), title, image: Some(name), metadata: rest(&members, &["title"]), line: n + 1 };
        match valid_at.get_mut(&id) {
            Some((at, best)) if number < *best => {
                *best = number;
                let first_line = items[*at].line;
                items[*at] = InputItem { line: first_line, ..item };
            }
            Some(_) => {}
            None => {
                valid_at.insert(id, (items.len(), number));
                items.push(item);
            }
        }
    }
    Ok(items)
}

/// The metadata text of an object's `members` without the fields in `taken`.
fn rest(members: &[(String, &str)], taken: &[&str]) -> String {
    object_text(members.iter().filter(|(k, _)| !taken.contains(&k.as_str())).map(|(k, v)| (k.as_str(), *v)))
}

/// `B08LYS9WYD_4.jpg` -> (`B08LYS9WYD`, 4).
fn split_image_name(name: &str) -> Option<(String, u64)> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let (id, i) = stem.rsplit_once('_')?;
    Some((id.to_string(), i.parse().ok()?)).filter(|(id, _)| !id.is_empty())
}

fn read_train(path: &Path, text: &str) -> Result<Vec<InputItem>> {
    serde_json::from_str::<serde::de::IgnoredAny>(text)
        .map_err(|e| Error::input(path, Some(e.line()).filter(|l| *l > 0), format!("invalid JSON: {e}")))?;
    let entries = object_members(text).ok_or_else(|| Error::input(path, None, "expected a JSON object keyed by item id"))?;
    let mut items = Vec::with_capacity(entries.len());
    for (id, raw) in entries {
        let (Ok(Value::Object(mut obj)), Some(members)) = (serde_json::from_str::<Value>(raw), object_members(raw)) else {
            return Err(Error::input(path, None, format!("item {id:?}: expected an object")));
        };
        let title = opt_string(&mut obj, "title", path, None).map_err(|e| Error::input(path, None, format!("item {id:?}: {e}")))?;
        let has_image = matches!(obj.get("images"), Some(Value::Array(a)) if !a.is_empty());
        let image = has_image.then(|| format!("{id}_0.jpg"));
        items.push(InputItem { id, title: title.unwrap_or_default(), image, metadata: rest(&members, &["title"]), line: 0 });
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn items_jsonl_keeps_extra_fields_as_metadata() {
        let (_d, p) = write("items.jsonl", "{\"id\":\"a\",\"title\":\"T\",\"image\":\"a.jpg\",\"price\":3}\n\n{\"id\":\"b\"}\n");
        let items = read_items(&p, InputFormat::Auto).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].image.as_deref(), Some("a.jpg"));
        assert_eq!(items[0].metadata, r#"{"price":3}"#);
        assert_eq!((items[1].title.as_str(), items[1].image.as_deref(), items[1].line), ("", None, 3));
    }

    #[test]
    fn bad_lines_are_named() {
        let (_d, p) = write("items.jsonl", "{\"id\":\"a\"}\n{\"id\": oops}\n");
        let e = read_items(&p, InputFormat::Auto).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let (_d, p) = write("items.jsonl", "{\"id\":\"a\"}\n{\"id\":\"a\"}\n");
        let e = read_items(&p, InputFormat::Items).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("duplicate") && e.contains("line 1"), "{e}");
        let (_d, p) = write("items.jsonl", "[1]\n");
        assert!(read_items(&p, InputFormat::Auto).is_err());
        let (_d, p) = write("items.jsonl", "{\"id\":5}\n");
        assert!(read_items(&p, InputFormat::Auto).unwrap_err().to_string().contains("`id` must be a string"));
    }

    #[test]
    fn reference_train_dict_keeps_file_order_and_uses_first_image() {
        let (_d, p) = write(
            "item2meta_train.json",
            r#"{"Z1": {"title": "z", "images": [{"large": "u"}, {"large": "v"}]}, "A1": {"title": null, "images": []}}"#,
        );
        let items = read_items(&p, InputFormat::Auto).unwrap();
        assert_eq!(items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["Z1", "A1"]);
        assert_eq!(items[0].image.as_deref(), Some("Z1_0.jpg"));
        assert_eq!(items[1].image, None);
        assert!(items[0].metadata.starts_with(r#"{"images":[{"large": "u"}"#), "{}", items[0].metadata);
    }

    #[test]
    fn reference_valid_lines_group_by_id_lowest_image_wins() {
        let (_d, p) = write(
            "item2meta_valid.jsonl",
            "{\"title\":\"t\",\"image_name\":\"B1_4.jpg\",\"image\":\"u4\"}\n{\"title\":\"t\",\"image_name\":\"B2_0.jpg\"}\n{\"title\":\"t\",\"image_name\":\"B1_2.jpg\",\"image\":\"u2\"}\n",
        );
        let items = read_items(&p, InputFormat::Auto).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].id.as_str(), items[0].image.as_deref(), items[0].line), ("B1", Some("B1_2.jpg"), 1));
        assert_eq!(items[0].metadata, r#"{"image_name":"B1_2.jpg","image":"u2"}"#);
    }

    #[test]
    fn the_real_valid_file_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/reddit-amazon/item2meta_valid.jsonl");
        if !p.exists() {
            return;
        }
        let items = read_items(&p, InputFormat::Auto).unwrap();
        assert_eq!(items.len(), 508);
        assert!(items.iter().all(|i| i.image.as_deref().is_some_and(|n| n.starts_with(&i.id))));
    }

    #[test]
    fn shards_parse_and_select() {
        let s: Shard = "1/3".parse().unwrap();
        assert_eq!(s, Shard { index: 1, count: 3 });
        assert_eq!((0..7).filter(|p| s.selects(*p)).collect::<Vec<_>>(), [1, 4]);
        for bad in ["3/3", "1", "a/2", "0/0", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
