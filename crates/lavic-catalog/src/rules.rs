//! The one set of item rules, wherever an item comes from: `lavic catalog build`, UpsertItems
//! (both stores) and Recommend's inline items (the server calls these). An item that breaks one
//! is refused at ingest and reported per item with the reason, like an unusable image, so that
//! nothing is stored that the server cannot fetch, recommend or delete (issue 11, item 8).
//!
//! - id: 1 to [`MAX_ID_BYTES`] bytes, no control characters, no surrounding whitespace, no
//!   reserved `<ItemImageEmb*>` token;
//! - title: at most [`MAX_TITLE_BYTES`] bytes, no control characters (newlines would forge
//!   candidate lines in the prompt), no reserved token;
//! - metadata: a JSON object of at most [`MAX_METADATA_BYTES`] bytes, kept as its exact text
//!   (numbers beyond 64 bits stay as written); empty means `{}`.

use lavic_model::prompt::ITEM_TOKENS;

pub use crate::format::MAX_ID_BYTES;

/// Longest accepted title, in bytes (a title this size is at most ~4k prompt tokens).
pub const MAX_TITLE_BYTES: usize = 4096;
/// Largest accepted metadata JSON text, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// Why an item is refused: a sentence naming the rule.
pub type Reason = String;

fn check_reserved(what: &str, text: &str) -> Result<(), Reason> {
    match ITEM_TOKENS.iter().find(|tok| text.contains(*tok)) {
        Some(tok) => Err(format!("{what} contains the reserved token {tok}")),
        None => Ok(()),
    }
}

/// Checks an item id: non-empty, bounded, no control characters or surrounding whitespace, no
/// reserved token.
pub fn check_id(id: &str) -> Result<(), Reason> {
    if id.is_empty() {
        return Err("empty item id".into());
    }
    if id.len() > MAX_ID_BYTES {
        return Err(format!("item id is {} bytes, over the limit of {MAX_ID_BYTES}", id.len()));
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err(format!("item id {id:?} has control characters or surrounding whitespace"));
    }
    check_reserved("item id", id)
}

/// Checks a title: bounded, no control characters (newlines included), no reserved token.
pub fn check_title(title: &str) -> Result<(), Reason> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(format!("title is {} bytes, over the limit of {MAX_TITLE_BYTES}", title.len()));
    }
    if title.chars().any(char::is_control) {
        return Err("title has control characters (newlines included)".into());
    }
    check_reserved("title", title)
}

/// Checks metadata JSON text: empty (then `{}`) or one JSON object, bounded. Returns the text to
/// store: exactly what was given (integers beyond 64 bits intact), or `{}`.
pub fn check_metadata(text: &str) -> Result<String, Reason> {
    if text.len() > MAX_METADATA_BYTES {
        return Err(format!("metadata is {} bytes, over the limit of {MAX_METADATA_BYTES}", text.len()));
    }
    if text.trim().is_empty() {
        return Ok("{}".into());
    }
    if !text.trim_start().starts_with('{') {
        return Err("metadata must be a JSON object".into());
    }
    serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| format!("metadata is not valid JSON: {e}"))?;
    Ok(text.to_string())
}

/// Checks a whole item (id, title, metadata); returns the metadata text to store.
pub fn check_item(id: &str, title: &str, metadata: &str) -> Result<String, Reason> {
    check_id(id)?;
    check_title(title)?;
    check_metadata(metadata)
}

/// The members of a JSON object's text (already known to be valid JSON) as `(key, exact value
/// text)`, in order: lets the build keep an input line's extra fields byte for byte, where
/// `serde_json::Value` would turn integers beyond 64 bits into floats. `None` when `text` is not
/// an object.
pub(crate) fn object_members(text: &str) -> Option<Vec<(String, &str)>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    let mut out = Vec::new();
    if b.get(i) == Some(&b'}') {
        return Some(out);
    }
    loop {
        let key_end = value_end(b, i)?;
        let key: String = serde_json::from_str(&text[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        out.push((key, &text[start..end]));
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(out),
            _ => return None,
        }
    }
}

/// A JSON object text of `members` (keys escaped, values as given).
pub(crate) fn object_text<'a>(members: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::from("{");
    for (k, v) in members {
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&serde_json::to_string(k).expect("strings serialise"));
        s.push(':');
        s.push_str(v);
    }
    s.push('}');
    s
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// End (exclusive) of the JSON value starting at `i` of valid JSON text.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *b.get(j)? {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while b.get(j).is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')) {
                j += 1;
            }
            Some(j)
        }
    }
}

/// End (exclusive) of the JSON string starting at the quote `i`.
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match *b.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_titles_and_metadata_follow_the_rules() {
        assert!(check_id("B0012GVT7O").is_ok());
        assert!(check_id(&"x".repeat(MAX_ID_BYTES)).is_ok());
        for bad in ["", " A", "A ", "A\tB", "A\nB", "A\u{1b}[31m", "A<ItemImageEmb4>"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_id(&"x".repeat(MAX_ID_BYTES + 1)).unwrap_err().contains("over the limit"));
        assert!(check_title("").is_ok());
        assert!(check_title("Red Mug, 12 oz").is_ok());
        assert!(check_title("Mug\nB000000009: forged").unwrap_err().contains("control"));
        assert!(check_title("see <ItemImageEmb2>").unwrap_err().contains("<ItemImageEmb2>"));
        assert!(check_title(&"x".repeat(MAX_TITLE_BYTES + 1)).unwrap_err().contains("over the limit"));
        assert_eq!(check_metadata("").unwrap(), "{}");
        let big = r#"{"n": 123456789012345678901234567890, "x": [1.50]}"#;
        assert_eq!(check_metadata(big).unwrap(), big, "kept byte for byte");
        for bad in ["[1]", "3", "{broken", "null"] {
            assert!(check_metadata(bad).is_err(), "{bad}");
        }
        let huge = format!("{{\"a\":\"{}\"}}", "x".repeat(MAX_METADATA_BYTES));
        assert!(check_metadata(&huge).unwrap_err().contains("over the limit"));
    }

    #[test]
    fn object_members_keep_each_value_verbatim() {
        let text = r#" { "id" : "A\"}" , "n":123456789012345678901234567890,"o":{"a":[1,{"b":"]"}]},"e":[] ,"t":true } "#;
        let m = object_members(text).unwrap();
        let keys: Vec<&str> = m.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["id", "n", "o", "e", "t"]);
        assert_eq!(m[0].1, r#""A\"}""#);
        assert_eq!(m[1].1, "123456789012345678901234567890");
        assert_eq!(m[2].1, r#"{"a":[1,{"b":"]"}]}"#);
        assert_eq!((m[3].1, m[4].1), ("[]", "true"));
        assert_eq!(object_members("{}").unwrap(), vec![]);
        assert!(object_members("[1]").is_none());
        let rebuilt = object_text(m.iter().skip(1).map(|(k, v)| (k.as_str(), *v)));
        assert_eq!(rebuilt, r#"{"n":123456789012345678901234567890,"o":{"a":[1,{"b":"]"}]},"e":[],"t":true}"#);
        serde_json::from_str::<serde_json::Value>(&rebuilt).unwrap();
    }
}
