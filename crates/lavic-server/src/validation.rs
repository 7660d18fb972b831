//! All request validation, as TGI's `validation.rs`: the one owner of every rule a message must
//! pass before it costs anything, for every RPC. Recommend: the dialogue (raw context or
//! structured turns rendered to the reference's `<submission>..</submission>\n<comment>..`
//! text), the candidates in prompt order and the options. Catalog: the items of UpsertItems
//! (the same item rules as Recommend's inline items), the ids of GetItem and DeleteItems. Every
//! refusal is an INVALID_ARGUMENT naming the field.
//!
//! Nothing here decodes an image: a validated request ([`Validated`]) holds the encoded bytes,
//! checked for size only; [`crate::decode`] turns it into a [`Decoded`] one once it is admitted.

use std::collections::HashMap;

use lavic_model::prompt::ITEM_TOKENS;
use lavic_model::{Mode, Rgb8};

use crate::config::{Config, UnknownIds};
use crate::error::{Error, Result};
use crate::proto::{self, recommend_request::Dialogue as DialogueField, Role};

/// Longest accepted item id, in bytes: the catalog's limit, so that every id a catalog can hold
/// can also be asked for, fetched and deleted.
pub const MAX_ID_BYTES: usize = lavic_catalog::rules::MAX_ID_BYTES;
/// Longest accepted title, in bytes (the catalog's rule).
pub const MAX_TITLE_BYTES: usize = lavic_catalog::rules::MAX_TITLE_BYTES;

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
    /// Largest image in pixels (from its header).
    pub max_image_pixels: u64,
    /// Most pixels of all images of one request.
    pub max_request_pixels: u64,
}

impl From<&Config> for Limits {
    fn from(c: &Config) -> Self {
        Self {
            max_candidates: c.max_candidates,
            max_context_bytes: c.max_context_bytes,
            max_image_bytes: c.max_image_bytes,
            unknown_ids: c.unknown_ids,
            max_image_pixels: c.max_image_pixels,
            max_request_pixels: c.max_request_pixels,
        }
    }
}

/// Where a candidate's title and image come from. `I` is an inline item's image: its encoded
/// bytes in a [`Validated`] request, its pixels in a [`Decoded`] one.
#[derive(Debug, Clone)]
pub enum Source<I> {
    /// Looked up in the catalog by id (or the fallback, if allowed and unknown).
    Catalog,
    /// Given with the request.
    Inline {
        /// Position in `inline_items` (for error messages).
        index: usize,
        /// Title (empty: "No Title").
        title: String,
        /// The image (None: the reference's white image).
        image: Option<I>,
    },
}

/// One candidate in prompt order.
#[derive(Debug, Clone)]
pub struct CandidateSpec<I> {
    /// Item id.
    pub id: String,
    /// Where its data comes from.
    pub source: Source<I>,
}

/// A Recommend request that passed validation; `I` is the form of its inline images.
#[derive(Debug, Clone)]
pub struct ValidRequest<I> {
    /// The dialogue as the reference's context string.
    pub context: String,
    /// Candidates in prompt order.
    pub candidates: Vec<CandidateSpec<I>>,
    /// Decoding mode.
    pub mode: Mode,
    /// Return per-candidate scores.
    pub include_scores: bool,
    /// Unknown-id policy in force for this request.
    pub unknown_ids: UnknownIds,
    /// Which field held the dialogue (`context` or `turns`), for error messages.
    pub dialogue_field: &'static str,
    /// Pixels of all inline images (from their headers): what decoding them will hold.
    pub image_pixels: u64,
}

/// A validated request: inline images are still encoded bytes (size-checked only).
pub type Validated = ValidRequest<Vec<u8>>;
/// A request whose inline images are decoded: what the model workers take.
pub type Decoded = ValidRequest<Rgb8>;

impl<I> ValidRequest<I> {
    /// Whether some inline item brings an image.
    pub fn has_images(&self) -> bool {
        self.candidates.iter().any(|c| matches!(c.source, Source::Inline { image: Some(_), .. }))
    }

    /// The same request with each inline image turned by `f(index in inline_items, image)`.
    pub fn map_images<J>(self, mut f: impl FnMut(usize, I) -> Result<J>) -> Result<ValidRequest<J>> {
        let candidates = self
            .candidates
            .into_iter()
            .map(|c| {
                let source = match c.source {
                    Source::Catalog => Source::Catalog,
                    Source::Inline { index, title, image } => {
                        Source::Inline { index, title, image: image.map(|i| f(index, i)).transpose()? }
                    }
                };
                Ok(CandidateSpec { id: c.id, source })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ValidRequest {
            context: self.context,
            candidates,
            mode: self.mode,
            include_scores: self.include_scores,
            unknown_ids: self.unknown_ids,
            dialogue_field: self.dialogue_field,
            image_pixels: self.image_pixels,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Item rules: ids, titles, images, uniqueness. One set for inline items and UpsertItems, and
// the same as `lavic catalog build`'s: the rules themselves live in `lavic_catalog::rules`.

fn check_reserved(field: &str, text: &str) -> Result<()> {
    for tok in ITEM_TOKENS {
        if text.contains(tok) {
            return Err(Error::invalid(field, format!("contains the reserved token {tok}")));
        }
    }
    Ok(())
}

/// Checks an item id (`lavic_catalog::rules::check_id`): non-empty, bounded, no control
/// characters or surrounding spaces, no reserved token.
pub fn check_id(field: &str, id: &str) -> Result<()> {
    lavic_catalog::rules::check_id(id).map_err(|reason| Error::invalid(field, reason))
}

/// Checks a title (`lavic_catalog::rules::check_title`): bounded, no control characters, no
/// reserved tokens.
pub fn check_title(field: &str, title: &str) -> Result<()> {
    lavic_catalog::rules::check_title(title).map_err(|reason| Error::invalid(field, reason))
}

/// The rules every item follows wherever it comes from (Recommend's inline items,
/// UpsertItems): `at` is the item's field (`inline_items[2]`, `items[0]`). Id, title, then the
/// image's size (it is decoded later, once admitted).
pub fn check_item(at: &str, id: &str, title: &str, image_bytes: usize, limits: &Limits) -> Result<()> {
    check_id(&format!("{at}.id"), id)?;
    check_title(&format!("{at}.title"), title)?;
    if image_bytes > limits.max_image_bytes {
        return Err(Error::invalid(
            format!("{at}.image"),
            format!("{image_bytes} bytes, over the limit of {}", limits.max_image_bytes),
        ));
    }
    Ok(())
}

/// Pixels of an encoded image from its header (0 when unreadable: decoding then fails before
/// allocating anything).
pub fn image_pixels(bytes: &[u8]) -> u64 {
    lavic_model::anyres::image_dimensions(bytes).map_or(0, |(w, h)| w as u64 * h as u64)
}

/// Adds up the decoded size of a request's images from their headers, before anything is
/// decoded: each image within `max_image_pixels`, all of them within `max_request_pixels`
/// (decompression bombs: a small PNG can declare 16384 x 10922 pixels). `images` are
/// `(field, bytes)`; returns the total.
pub fn check_pixels<'a>(images: impl IntoIterator<Item = (String, &'a [u8])>, limits: &Limits) -> Result<u64> {
    let mut total = 0u64;
    for (field, bytes) in images {
        let Some((w, h)) = lavic_model::anyres::image_dimensions(bytes) else { continue };
        let px = w as u64 * h as u64;
        if px > limits.max_image_pixels {
            return Err(Error::invalid(
                field,
                format!("image is {w}x{h} ({px} pixels), over the limit of {} pixels (max_image_pixels)", limits.max_image_pixels),
            ));
        }
        total += px;
        if total > limits.max_request_pixels {
            return Err(Error::invalid(
                field,
                format!(
                    "the request's images come to {total} pixels or more, over the limit of {} pixels per request (max_request_pixels)",
                    limits.max_request_pixels
                ),
            ));
        }
    }
    Ok(total)
}

/// The ids of one list seen so far, with their positions: the first repeat is refused.
#[derive(Default)]
struct Seen<'a>(HashMap<&'a str, usize>);

impl<'a> Seen<'a> {
    /// Records `id` at `index`, or refuses it as a duplicate naming `field`.
    fn add(&mut self, id: &'a str, index: usize, field: impl FnOnce() -> String) -> Result<()> {
        match self.0.insert(id, index) {
            None => Ok(()),
            Some(_) => Err(Error::invalid(field(), format!("duplicate id {id}"))),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Recommend.

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

/// Checks every field of a Recommend message (cheap: no image decoding).
pub fn recommend(req: proto::RecommendRequest, limits: &Limits) -> Result<Validated> {
    let (context, dialogue_field) = dialogue(req.dialogue.as_ref(), limits)?;
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
    let image_pixels = check_pixels(
        req.inline_items.iter().enumerate().filter(|(_, it)| !it.image.is_empty()).map(|(i, it)| (format!("inline_items[{i}].image"), it.image.as_slice())),
        limits,
    );
    let candidates = candidates(req.candidate_ids, req.inline_items, limits)?;
    let image_pixels = image_pixels?;
    Ok(ValidRequest { context, candidates, mode, include_scores: req.include_scores, unknown_ids, dialogue_field, image_pixels })
}

/// The dialogue as the reference's context text, and the field it came in.
fn dialogue(field: Option<&DialogueField>, limits: &Limits) -> Result<(String, &'static str)> {
    let too_long = |field: &str, n: usize| {
        Error::invalid(field, format!("the dialogue is {n} bytes, over the limit of {}", limits.max_context_bytes))
    };
    let (context, name) = match field {
        None => return Err(Error::invalid("dialogue", "set either context or turns")),
        Some(DialogueField::Context(c)) => {
            if c.len() > limits.max_context_bytes {
                return Err(too_long("context", c.len()));
            }
            (c.clone(), "context")
        }
        Some(DialogueField::Turns(d)) => {
            let text = render_turns(&d.turns)?;
            if text.len() > limits.max_context_bytes {
                return Err(too_long("turns", text.len()));
            }
            if d.turns.iter().all(|t| t.text.trim().is_empty()) {
                return Err(Error::invalid("turns", "the dialogue is empty"));
            }
            (text, "turns")
        }
    };
    if context.trim().is_empty() {
        return Err(Error::invalid(name, "the dialogue is empty"));
    }
    check_reserved(name, &context)?;
    Ok((context, name))
}

/// The candidates in prompt order: `candidate_ids` (catalog ids, or inline items' ids), or the
/// inline items' order when no ids are listed.
fn candidates(ids: Vec<String>, inline: Vec<proto::InlineItem>, limits: &Limits) -> Result<Vec<CandidateSpec<Vec<u8>>>> {
    if inline.len() > limits.max_candidates {
        return Err(Error::invalid(
            "inline_items",
            format!("{} items, more than the maximum of {} candidates", inline.len(), limits.max_candidates),
        ));
    }
    let mut by_id = Seen::default();
    for (i, item) in inline.iter().enumerate() {
        check_item(&format!("inline_items[{i}]"), &item.id, &item.title, item.image.len(), limits)?;
        by_id.add(&item.id, i, || format!("inline_items[{i}].id"))?;
    }
    let from_inline = ids.is_empty() && !inline.is_empty();
    let (order, field): (Vec<String>, &str) =
        if from_inline { (inline.iter().map(|i| i.id.clone()).collect(), "inline_items") } else { (ids, "candidate_ids") };
    if order.len() < 2 || order.len() > limits.max_candidates {
        return Err(Error::invalid(
            field,
            format!("{} candidates; between 2 and {} are needed", order.len(), limits.max_candidates),
        ));
    }
    // Inline ids passed the item rules above; listed ids are checked here.
    if !from_inline {
        let mut listed = Seen::default();
        for (i, id) in order.iter().enumerate() {
            check_id(&format!("{field}[{i}]"), id)?;
            listed.add(id, i, || format!("{field}[{i}]"))?;
        }
        if let Some((i, item)) = inline.iter().enumerate().find(|(_, it)| !listed.0.contains_key(it.id.as_str())) {
            return Err(Error::invalid(format!("inline_items[{i}].id"), format!("{} is not in candidate_ids", item.id)));
        }
    }
    let inline_at: HashMap<String, usize> = by_id.0.into_iter().map(|(id, i)| (id.to_string(), i)).collect();
    let mut inline: Vec<Option<proto::InlineItem>> = inline.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|id| {
            let source = match inline_at.get(&id).and_then(|&i| Some((i, inline[i].take()?))) {
                None => Source::Catalog,
                Some((index, it)) => Source::Inline { index, title: it.title, image: (!it.image.is_empty()).then_some(it.image) },
            };
            CandidateSpec { id, source }
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Catalog.

/// Checks an UpsertItems message: at least one item, each following the item rules, unique
/// ids, metadata a JSON object (or empty).
pub fn upsert_items(req: proto::UpsertItemsRequest, limits: &Limits) -> Result<Vec<lavic_catalog::NewItem>> {
    if req.items.is_empty() {
        return Err(Error::invalid("items", "no items"));
    }
    let mut seen = Seen::default();
    for (i, it) in req.items.iter().enumerate() {
        check_item(&format!("items[{i}]"), &it.id, &it.title, it.image.len(), limits)?;
        seen.add(&it.id, i, || format!("items[{i}].id"))?;
    }
    check_pixels(
        req.items.iter().enumerate().filter(|(_, it)| !it.image.is_empty()).map(|(i, it)| (format!("items[{i}].image"), it.image.as_slice())),
        limits,
    )?;
    req.items
        .into_iter()
        .enumerate()
        .map(|(i, it)| {
            let metadata = metadata(&format!("items[{i}].metadata_json"), &it.metadata_json)?;
            Ok(lavic_catalog::NewItem { id: it.id, title: it.title, image: (!it.image.is_empty()).then_some(it.image), metadata })
        })
        .collect()
}

/// An item's metadata (`lavic_catalog::rules::check_metadata`): a bounded JSON object kept as
/// its exact text, `{}` when empty.
fn metadata(field: &str, text: &str) -> Result<String> {
    lavic_catalog::rules::check_metadata(text).map_err(|reason| Error::invalid(field, reason))
}

/// Checks a GetItem message; returns the id.
pub fn get_item(req: proto::GetItemRequest) -> Result<String> {
    check_id("id", &req.id)?;
    Ok(req.id)
}

/// Checks a DeleteItems message: at least one id, each a valid id; returns the ids.
pub fn delete_items(req: proto::DeleteItemsRequest) -> Result<Vec<String>> {
    if req.ids.is_empty() {
        return Err(Error::invalid("ids", "no ids"));
    }
    for (i, id) in req.ids.iter().enumerate() {
        check_id(&format!("ids[{i}]"), id)?;
    }
    Ok(req.ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_candidates: 4,
            max_context_bytes: 200,
            max_image_bytes: 10,
            unknown_ids: UnknownIds::Reject,
            max_image_pixels: 1 << 24,
            max_request_pixels: 1 << 25,
        }
    }

    fn req(ids: &[&str]) -> proto::RecommendRequest {
        proto::RecommendRequest {
            dialogue: Some(DialogueField::Context("<submission>hi</submission>\n".into())),
            candidate_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn field_of<T: std::fmt::Debug>(r: Result<T>) -> String {
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
        assert_eq!(field_of(recommend(req(&["A"]), &limits())), "candidate_ids");
        assert_eq!(field_of(recommend(req(&["A", "B", "C", "D", "E"]), &limits())), "candidate_ids");
        assert_eq!(field_of(recommend(req(&["A", "B", "A"]), &limits())), "candidate_ids[2]");
        assert_eq!(field_of(recommend(req(&["A", ""]), &limits())), "candidate_ids[1]");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("  \n".into()));
        assert_eq!(field_of(recommend(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("x".repeat(201)));
        assert_eq!(field_of(recommend(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = None;
        assert_eq!(field_of(recommend(r, &limits())), "dialogue");
        let mut r = req(&["A", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "A".into(), title: "t".into(), image: vec![0; 11] }];
        assert_eq!(field_of(recommend(r, &limits())), "inline_items[0].image");
        let mut r = req(&["A", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "C".into(), ..Default::default() }];
        assert_eq!(field_of(recommend(r, &limits())), "inline_items[0].id");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Context("<ItemImageEmb1>".into()));
        assert_eq!(field_of(recommend(r, &limits())), "context");
        let mut r = req(&["A", "B"]);
        r.dialogue = Some(DialogueField::Turns(proto::Dialogue { turns: vec![proto::Turn { role: 0, text: "x".into() }] }));
        assert_eq!(field_of(recommend(r, &limits())), "turns[0].role");
        let mut r = req(&["A", "B"]);
        r.mode = 7;
        assert_eq!(field_of(recommend(r, &limits())), "mode");
    }

    #[test]
    fn inline_items_alone_are_the_candidates() {
        let mut r = req(&[]);
        r.inline_items = vec![
            proto::InlineItem { id: "X1".into(), title: "One".into(), image: vec![] },
            proto::InlineItem { id: "X2".into(), title: "Two".into(), image: vec![1] },
        ];
        let v = recommend(r, &limits()).unwrap();
        let ids: Vec<&str> = v.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["X1", "X2"]);
        assert!(matches!(&v.candidates[1].source, Source::Inline { image: Some(b), .. } if b == &[1]));
        assert!(matches!(&v.candidates[0].source, Source::Inline { image: None, index: 0, .. }));
        assert!(v.has_images());
    }

    #[test]
    fn inline_items_take_their_place_in_candidate_ids_and_duplicates_are_named_once() {
        let mut r = req(&["A", "X1", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "X1".into(), title: "One".into(), image: vec![1, 2] }];
        let v = recommend(r, &limits()).unwrap();
        assert!(matches!(v.candidates[0].source, Source::Catalog));
        assert!(matches!(&v.candidates[1].source, Source::Inline { index: 0, title, .. } if title == "One"));
        assert!(matches!(v.candidates[2].source, Source::Catalog));
        let mut r = req(&["X1", "B"]);
        r.inline_items = vec![proto::InlineItem { id: "X1".into(), ..Default::default() }, proto::InlineItem { id: "X1".into(), ..Default::default() }];
        assert_eq!(field_of(recommend(r, &limits())), "inline_items[1].id");
        let mut r = req(&[]);
        r.inline_items = vec![proto::InlineItem { id: "X1".into(), ..Default::default() }, proto::InlineItem { id: "X1".into(), ..Default::default() }];
        assert_eq!(field_of(recommend(r, &limits())), "inline_items[1].id");
    }

    #[test]
    fn decoding_maps_only_inline_images_and_keeps_the_rest() {
        let mut r = req(&["A", "X1", "X2"]);
        r.inline_items = vec![
            proto::InlineItem { id: "X1".into(), title: "One".into(), image: vec![1, 2, 3] },
            proto::InlineItem { id: "X2".into(), title: "Two".into(), image: vec![] },
        ];
        let v = recommend(r, &limits()).unwrap();
        let mut seen = Vec::new();
        let d = v
            .clone()
            .map_images(|index, bytes| {
                seen.push(index);
                Ok(bytes.len())
            })
            .unwrap();
        assert_eq!(seen, [0], "only the item with an image is decoded");
        assert!(matches!(&d.candidates[1].source, Source::Inline { image: Some(3), .. }));
        assert!(matches!(&d.candidates[2].source, Source::Inline { image: None, .. }));
        assert_eq!((d.context, d.dialogue_field), (v.context.clone(), "context"));
        let err = v.map_images(|index, _| Err::<(), _>(Error::invalid(format!("inline_items[{index}].image"), "bad")));
        assert_eq!(field_of(err), "inline_items[0].image");
    }

    #[test]
    fn ids_follow_the_catalog_format_limit() {
        let long = "x".repeat(MAX_ID_BYTES);
        assert!(check_id("id", &long).is_ok(), "every id the catalog can store is accepted");
        assert_eq!(field_of(check_id("id", &format!("{long}x"))), "id");
        for bad in [" A", "A ", "A\tB", "A<ItemImageEmb4>"] {
            assert_eq!(field_of(check_id("ids[0]", bad)), "ids[0]", "{bad:?}");
        }
    }

    fn item(id: &str, title: &str, image: Vec<u8>, metadata: &str) -> proto::NewItem {
        proto::NewItem { id: id.into(), title: title.into(), image, metadata_json: metadata.into() }
    }

    fn upsert(items: Vec<proto::NewItem>) -> Result<Vec<lavic_catalog::NewItem>> {
        upsert_items(proto::UpsertItemsRequest { items }, &limits())
    }

    #[test]
    fn upserted_items_follow_the_item_rules_naming_the_field() {
        assert_eq!(field_of(upsert(vec![])), "items");
        assert_eq!(field_of(upsert(vec![item("A", "t", vec![], ""), item("", "t", vec![], "")])), "items[1].id");
        assert_eq!(field_of(upsert(vec![item("A\n", "t", vec![], "")])), "items[0].id");
        assert_eq!(field_of(upsert(vec![item("A", "two\nlines", vec![], "")])), "items[0].title");
        assert_eq!(field_of(upsert(vec![item("A", "<ItemImageEmb5>", vec![], "")])), "items[0].title");
        assert_eq!(field_of(upsert(vec![item("A", &"t".repeat(MAX_TITLE_BYTES + 1), vec![], "")])), "items[0].title");
        assert_eq!(field_of(upsert(vec![item("A", "t", vec![0; 11], "")])), "items[0].image");
        assert_eq!(field_of(upsert(vec![item("A", "t", vec![], ""), item("B", "t", vec![], ""), item("A", "u", vec![], "")])), "items[2].id");
        assert_eq!(field_of(upsert(vec![item("A", "t", vec![], "[1,2]")])), "items[0].metadata_json");
        assert_eq!(field_of(upsert(vec![item("A", "t", vec![], "{broken")])), "items[0].metadata_json");
    }

    #[test]
    fn good_upserts_become_catalog_items() {
        let items = upsert(vec![item("A", "Mug", vec![1, 2], r#"{"brand":"Acme"}"#), item("B", "", vec![], " ")]).unwrap();
        assert_eq!(items[0].id, "A");
        assert_eq!(items[0].image.as_deref(), Some(&[1u8, 2][..]));
        assert_eq!(items[0].metadata, r#"{"brand":"Acme"}"#);
        assert_eq!(items[1].image, None, "no bytes: the white image");
        assert_eq!(items[1].metadata, "{}");
    }

    #[test]
    fn get_and_delete_ids_are_checked() {
        assert_eq!(get_item(proto::GetItemRequest { id: "DEMO1".into() }).unwrap(), "DEMO1");
        assert_eq!(field_of(get_item(proto::GetItemRequest { id: String::new() })), "id");
        assert_eq!(field_of(delete_items(proto::DeleteItemsRequest { ids: vec![] })), "ids");
        assert_eq!(field_of(delete_items(proto::DeleteItemsRequest { ids: vec!["A".into(), " B".into()] })), "ids[1]");
        let ids = delete_items(proto::DeleteItemsRequest { ids: vec!["A".into(), "A".into()] }).unwrap();
        assert_eq!(ids, ["A", "A"], "deleting an id twice is harmless");
    }
}
