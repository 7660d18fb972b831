//! Validation of a `RecommendRequest` into a [`Validated`] request: the dialogue (raw context or
//! structured turns rendered to the reference's `<submission>..</submission>\n<comment>..`
//! text), the candidates in prompt order and the options. Every refusal is an
//! INVALID_ARGUMENT naming the field. Image bytes are only size-checked here; they are decoded
//! in a blocking task ([`decode_images`]) once the request is admitted.

use std::collections::HashSet;

use lavic_model::prompt::ITEM_TOKENS;
use lavic_model::{ImageEncoder, Mode, Rgb8};

use crate::config::{Config, UnknownIds};
use crate::error::{Error, Result};
use crate::proto::{self, recommend_request::Dialogue as DialogueField, Role};

/// Longest accepted item id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest accepted title, in bytes.
pub const MAX_TITLE_BYTES: usize = 4096;

/// The request limits that validation enforces (from [`Config`]).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most candidates.
    pub max_candidates: usize,
    /// Largest dialogue in bytes.
    pub max_context_bytes: usize,
    /// Largest image in bytes.
    pub max_image_bytes: usize,
    /// Policy when the request does not choose one.
    pub unknown_ids: UnknownIds,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_candidates: c.max_candidates,
            max_context_bytes: c.max_context_bytes,
            max_image_bytes: c.max_image_bytes,
            unknown_ids: c.unknown_ids,
        }
    }
}

/// Where a candidate's title and image come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Looked up in the catalog by id (or the fallback, if allowed and unknown).
    Catalog,
    /// Given with the request; `image` is the encoded bytes until decoded.
    Inline {
        /// Position in `inline_items` (for error messages).
        index: usize,
        /// Title (empty: "No Title").
        title: String,
        /// Encoded image bytes (None: the white image).
        bytes: Option<Vec<u8>>,
        /// Decoded image, set by [`decode_images`].
        image: Option<Rgb8>,
    },
}

/// One candidate in prompt order.
#[derive(Debug, Clone)]
pub struct CandidateSpec {
    /// Item id.
    pub id: String,
    /// Where its data comes from.
    pub source: Source,
}

/// A request that passed validation.
#[derive(Debug, Clone)]
pub struct Validated {
    /// The dialogue as the reference's context string.
    pub context: String,
    /// Candidates in prompt order.
    pub candidates: Vec<CandidateSpec>,
    /// Decoding mode.
    pub mode: Mode,
    /// Return per-candidate scores.
    pub include_scores: bool,
    /// Unknown-id policy in force for this request.
    pub unknown_ids: UnknownIds,
    /// Which field held the dialogue (`context` or `turns`), for error messages.
    pub dialogue_field: &'static str,
}

/// Renders structured turns to the reference's context text.
pub fn render_turns(turns: &[proto::Turn]) -> Result<String> {
    let mut out = String::new();
    for (i, t) in turns.iter().enumerate() {
        let tag = match Role::try_from(t.role) {
            Ok(Role::Seeker) => "submission",
            Ok(Role::Commenter) => "comment",
            Ok(Role::Unspecified) | Err(_) => {
                return Err(Error::invalid(format!("turns[{i}].role"), "must be ROLE_SEEKER or ROLE_COMMENTER"))
            }
        };
        out.push_str(&format!("<{tag}>{}</{tag}>\n", t.text));
    }
    Ok(out)
}

fn check_reserved(field: &str, text: &str) -> Result<()> {
    for tok in ITEM_TOKENS {
        if text.contains(tok) {
            return Err(Error::invalid(field, format!("contains the reserved token {tok}")));
        }
    }
    Ok(())
}

/// Checks an item id: non-empty, bounded, no control characters or surrounding spaces.
pub fn check_id(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid(field, "empty id"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(Error::invalid(field, format!("id is {} bytes, over the limit of {MAX_ID_BYTES}", id.len())));
    }
    if id.chars().any(char::is_control) || id.trim() != id {
        return Err(Error::invalid(field, format!("id {id:?} has control characters or surrounding whitespace")));
    }
    check_reserved(field, id)
}

/// Checks a title: bounded, no control characters, no reserved tokens.
pub fn check_title(field: &str, title: &str) -> Result<()> {
    if title.len() > MAX_TITLE_BYTES {
        return Err(Error::invalid(field, format!("title is {} bytes, over the limit of {MAX_TITLE_BYTES}", title.len())));
    }
    if title.chars().any(char::is_control) {
        return Err(Error::invalid(field, "title has control characters (newlines included)"));
    }
    check_reserved(field, title)
}

/// Checks every field of `req` (cheap: no image decoding) and returns the validated request.
pub fn validate(req: proto::RecommendRequest, limits: &Limits) -> Result<Validated> {
    let context = match &req.dialogue {
        None => return Err(Error::invalid("dialogue", "set either context or turns")),
        Some(DialogueField::Context(c)) => {
            if c.len() > limits.max_context_bytes {
                return Err(too_long("context", c.len(), limits));
            }
            c.clone()
        }
        Some(DialogueField::Turns(d)) => {
            let text = render_turns(&d.turns)?;
            if text.len() > limits.max_context_bytes {
                return Err(too_long("turns", text.len(), limits));
            }
            if d.turns.iter().all(|t| t.text.trim().is_empty()) {
                return Err(Error::invalid("turns", "the dialogue is empty"));
            }
            text
        }
    };
    let field_name = if matches!(req.dialogue, Some(DialogueField::Turns(_))) { "turns" } else { "context" };
    if context.trim().is_empty() {
        return Err(Error::invalid(field_name, "the dialogue is empty"));
    }
    check_reserved(field_name, &context)?;

    let mode = match proto::Mode::try_from(req.mode) {
        Ok(proto::Mode::Default) => Mode::Default,
        Ok(proto::Mode::Free) => Mode::Free,
        Err(_) => return Err(Error::invalid("mode", format!("unknown mode {}", req.mode))),
    };
    let unknown_ids = match proto::UnknownIdPolicy::try_from(req.unknown_id_policy) {
        Ok(proto::UnknownIdPolicy::Unspecified) => limits.unknown_ids,
        Ok(proto::UnknownIdPolicy::Reject) => UnknownIds::Reject,
        Ok(proto::UnknownIdPolicy::Fallback) => UnknownIds::Fallback,
        Err(_) => return Err(Error::invalid("unknown_id_policy", format!("unknown policy {}", req.unknown_id_policy))),
    };

    // Inline items first: unique ids, sane titles, bounded images.
    if req.inline_items.len() > limits.max_candidates {
        return Err(Error::invalid(
            "inline_items",
            format!("{} items, more than the maximum of {} candidates", req.inline_items.len(), limits.max_candidates),
        ));
    }
    let mut inline = std::collections::HashMap::new();
    for (i, item) in req.inline_items.iter().enumerate() {
        check_id(&format!("inline_items[{i}].id"), &item.id)?;
        check_title(&format!("inline_items[{i}].title"), &item.title)?;
        if item.image.len() > limits.max_image_bytes {
            return Err(Error::invalid(
                format!("inline_items[{i}].image"),
                format!("{} bytes, over the limit of {}", item.image.len(), limits.max_image_bytes),
            ));
        }
        if inline.insert(item.id.as_str(), i).is_some() {
            return Err(Error::invalid(format!("inline_items[{i}].id"), format!("duplicate id {}", item.id)));
        }
    }

    // Candidate ids in prompt order (the inline items' order when none are listed).
    let (ids, field): (Vec<&str>, &str) = if req.candidate_ids.is_empty() && !req.inline_items.is_empty() {
        (req.inline_items.iter().map(|i| i.id.as_str()).collect(), "inline_items")
    } else {
        (req.candidate_ids.iter().map(String::as_str).collect(), "candidate_ids")
    };
    if ids.len() < 2 || ids.len() > limits.max_candidates {
        return Err(Error::invalid(
            field,
            format!("{} candidates; between 2 and {} are needed", ids.len(), limits.max_candidates),
        ));
    }
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        check_id(&format!("{field}[{i}]"), id)?;
        if !seen.insert(*id) {
            return Err(Error::invalid(format!("{field}[{i}]"), format!("duplicate id {id}")));
        }
    }
    if let Some((i, item)) = req.inline_items.iter().enumerate().find(|(_, it)| !seen.contains(it.id.as_str())) {
        return Err(Error::invalid(format!("inline_items[{i}].id"), format!("{} is not in candidate_ids", item.id)));
    }

    let candidates = ids
        .iter()
        .map(|id| CandidateSpec {
            id: id.to_string(),
            source: match inline.get(id) {
                None => Source::Catalog,
                Some(&i) => {
                    let it = &req.inline_items[i];
                    Source::Inline {
                        index: i,
                        title: it.title.clone(),
                        bytes: (!it.image.is_empty()).then(|| it.image.clone()),
                        image: None,
                    }
                }
            },
        })
        .collect();
    Ok(Validated { context, candidates, mode, include_scores: req.include_scores, unknown_ids, dialogue_field: field_name })
}

fn too_long(field: &str, n: usize, limits: &Limits) -> Error {
    Error::invalid(field, format!("the dialogue is {n} bytes, over the limit of {}", limits.max_context_bytes))
}

/// Decodes the inline images (CPU work: call it from a blocking task). A bad image is an
/// INVALID_ARGUMENT naming the inline item.
pub fn decode_images(v: &mut Validated, encoder: &ImageEncoder) -> Result<()> {
    for c in &mut v.candidates {
        if let Source::Inline { index, bytes: Some(b), image, .. } = &mut c.source {
            let decoded =
                encoder.decode(b).map_err(|e| Error::invalid(format!("inline_items[{index}].image"), e.to_string()))?;
            *image = Some(decoded);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits { max_candidates: 4, max_context_bytes: 200, max_image_bytes: 10, unknown_ids: UnknownIds::Reject }
    }

    fn req(ids: &[&str]) -> proto::RecommendRequest {
        proto::RecommendRequest {
            dialogue: Some(DialogueField::Context("<submission>hi</submission>\n".into())),
            candidate_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn field_of(r: Result<Validated>) -> String {
        match r {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn turns_render_like_the_dataset() {
        let turns = vec![
            proto::Turn { role: Role::Seeker as i32, text: "Need a bag".into() },
            proto::Turn { role: Role::Commenter as i32, text: "Try X".into() },
        ];
        assert_eq!(render_turns(&turns).unwrap(), "<submission>Need a bag</submission>\n<comment>Try X</comment>\n");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(validate(req(&["A"]), &limits())), "candidate_ids");
        assert_eq!(field_of(validate(req(&["A", "B", "C", "D", "E"]), &limits())), "candidate_ids");
        assert_eq!(field_of(validate(req(&["A", "B", "A"]), &limits())), "candidate_ids[2]");
        assert_eq!(field_of(validate(req(&["A", ""]), &limits())), "candidate_ids[1]");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("  \n".into()));
        assert_eq!(field_of(validate(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("x".repeat(201)));
        assert_eq!(field_of(validate(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = None;
        assert_eq!(field_of(validate(r, &limits())), "dialogue");
        let mut r = req(&["A", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "A".into(), title: "t".into(), image: vec![0; 11] }];
        assert_eq!(field_of(validate(r, &limits())), "inline_items[0].image");
        let mut r = req(&["A", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "C".into(), ..Default::default() }];
        assert_eq!(field_of(validate(r, &limits())), "inline_items[0].id");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("<ItemImageEmb1>".into()));
        assert_eq!(field_of(validate(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Turns(proto::Dialogue { turns: vec![proto::Turn { role: 0, text: "x".into() }] }));
        assert_eq!(field_of(validate(r, &limits())), "turns[0].role");
        let mut r = req(&["A", "B"]);
        r.mode = 7;
        assert_eq!(field_of(validate(r, &limits())), "mode");
    }

    #[test]
    fn inline_items_alone_are_the_candidates() {
        let mut r = req(&[]);
        r.inline_items = vec![
            proto::InlineItem { id: "X1".into(), title: "One".into(), image: vec![] },
            proto::InlineItem { id: "X2".into(), title: "Two".into(), image: vec![1] },
        ];
        let v = validate(r, &limits()).unwrap();
        let ids: Vec<&str> = v.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["X1", "X2"]);
        assert!(matches!(&v.candidates[1].source, Source::Inline { bytes: Some(b), .. } if b == &[1]));
    }
}
