//! Planning an upsert, whatever the backend: per item, decide from its current stored version
//! whether it is unchanged, can reuse its features (same image bytes, new title or metadata),
//! shares an image encoded in the same call, takes the white image's features, or needs the
//! vision tower; decode and preprocess the new images on all cores, and encode them in batches of
//! 16. Runs in the process that takes the request; backends only store the result.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use lavic_model::ImageEncoder;

use crate::encode::{cpu_threads, encode_views, parallel_map, prepare_bytes, sha256, white_views, Prepared, MISSING_SHA};
use crate::error::{Error, Result};
use crate::format::{StoreForm, FLAG_IMAGE_MISSING};
use crate::stored::StoredItem;
use crate::rules::check_item;
use crate::update::{NewItem, UpsertReport};

/// The version of an item currently stored, as far as change detection needs it.
pub(crate) struct Current {
    pub sha: [u8; 32],
    pub flags: u32,
    pub title: String,
    pub meta: String,
    pub features: Vec<u8>,
}

impl From<&StoredItem> for Current {
    fn from(s: &StoredItem) -> Self {
        Current {
            sha: s.image_sha256,
            flags: if s.image_missing { FLAG_IMAGE_MISSING } else { 0 },
            title: s.title.clone(),
            meta: s.metadata.clone(),
            features: s.features.clone(),
        }
    }
}

/// What an upsert plan needs to know about the catalog it writes to.
pub(crate) struct PlanInput<'a> {
    /// What the catalog stores per view.
    pub form: StoreForm,
    /// Stored features of the white image, shared by every imageless item (computed once).
    pub white: &'a OnceLock<Vec<u8>>,
    /// The current version of an id (`None`: absent, or unreadable and to be replaced).
    pub current: &'a dyn Fn(&str) -> Option<Current>,
}

enum Plan {
    Features(Vec<u8>),
    /// Index into the batch of images to encode.
    Encode(usize),
}

/// An item that passed the item rules: the item, its image hash and its metadata text to store.
type Accepted<'a> = (&'a NewItem, [u8; 32], String);
/// Where each accepted item's features come from (by index), and the views of the distinct
/// images to encode (what [`Plan::Encode`] indexes).
type Plans = (Vec<(usize, Plan)>, Vec<Vec<f32>>);

/// Plans and encodes an upsert of `items`: returns the items to write (in input order, changed
/// ones only) and the report (unchanged, reused, encoded, failed, missing images).
pub(crate) fn plan_upsert(items: &[NewItem], encoder: &ImageEncoder, input: &PlanInput<'_>) -> Result<(Vec<StoredItem>, UpsertReport)> {
    let mut report = UpsertReport::default();
    // 1. The item rules, then per item: unchanged, reuse, encode, or failed.
    let accepted = accept(items, &mut report);
    let (plans, batch) = plan(&accepted, encoder, input, &mut report)?;
    // 2. One vision pass per batch of 16 images.
    let mut encoded: Vec<std::result::Result<Vec<u8>, String>> = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(16) {
        encoded.extend(encode_views(encoder, chunk, input.form)?);
    }
    // 3. The items to write.
    let out = assemble(&accepted, plans, &encoded, &mut report);
    Ok((out, report))
}

/// The items that follow the item rules, each id once; the others go to `report.failed`.
fn accept<'a>(items: &'a [NewItem], report: &mut UpsertReport) -> Vec<Accepted<'a>> {
    let mut seen = HashSet::new();
    let mut accepted = Vec::new();
    for it in items {
        match check_item(&it.id, &it.title, &it.metadata) {
            Err(reason) => report.failed.push((it.id.clone(), reason)),
            Ok(_) if !seen.insert(it.id.as_str()) => report.failed.push((it.id.clone(), "the same id twice in one upsert".into())),
            Ok(meta) => {
                let sha = it.image.as_deref().map(sha256).unwrap_or(MISSING_SHA);
                accepted.push((it, sha, meta));
            }
        }
    }
    accepted
}

/// Decides per accepted item (by index) where its features come from, decoding the images that
/// changed in parallel; returns the plans and the views of the distinct images to encode.
fn plan(
    accepted: &[Accepted<'_>],
    encoder: &ImageEncoder,
    input: &PlanInput<'_>,
    report: &mut UpsertReport,
) -> Result<Plans> {
    let currents: Vec<Option<Current>> = accepted.iter().map(|(it, _, _)| (input.current)(&it.id)).collect();
    let needs_decode: Vec<usize> = (0..accepted.len())
        .filter(|&k| accepted[k].0.image.is_some() && currents[k].as_ref().is_none_or(|c| c.sha != accepted[k].1))
        .collect();
    let prepared = parallel_map(&needs_decode, cpu_threads(), |&k| {
        prepare_bytes(encoder, accepted[k].0.image.as_deref().unwrap_or_default(), &|_| false)
    });
    let mut prepared: HashMap<usize, Prepared> = needs_decode.into_iter().zip(prepared).collect();

    let mut batch: Vec<Vec<f32>> = Vec::new();
    let mut batch_by_sha: HashMap<[u8; 32], usize> = HashMap::new();
    let mut plans: Vec<(usize, Plan)> = Vec::new();
    for (k, ((it, sha, meta), current)) in accepted.iter().zip(&currents).enumerate() {
        let flags = if it.image.is_none() { FLAG_IMAGE_MISSING } else { 0 };
        if it.image.is_none() {
            report.missing_images.push(it.id.clone());
        }
        if let Some(c) = current.as_ref().filter(|c| c.sha == *sha && c.flags == flags) {
            if c.title == it.title && c.meta == *meta {
                report.unchanged += 1;
            } else {
                report.reused += 1;
                plans.push((k, Plan::Features(c.features.clone())));
            }
            continue;
        }
        if it.image.is_none() {
            plans.push((k, Plan::Features(white_features(encoder, input, report)?)));
            continue;
        }
        match prepared.remove(&k) {
            Some(Prepared::Views { sha, views }) => match batch_by_sha.get(&sha) {
                Some(&b) => {
                    report.reused += 1;
                    plans.push((k, Plan::Encode(b)));
                }
                None => {
                    batch_by_sha.insert(sha, batch.len());
                    plans.push((k, Plan::Encode(batch.len())));
                    batch.push(views);
                    report.encoded += 1;
                }
            },
            Some(Prepared::Failed(reason)) => report.failed.push((it.id.clone(), reason)),
            Some(Prepared::Known { .. }) | Some(Prepared::Missing) | None => {
                report.failed.push((it.id.clone(), "internal: image was not prepared".into()))
            }
        }
    }
    Ok((plans, batch))
}

/// The items to write, in input order: an item whose image failed to encode goes to
/// `report.failed` instead.
fn assemble(
    accepted: &[Accepted<'_>],
    plans: Vec<(usize, Plan)>,
    encoded: &[std::result::Result<Vec<u8>, String>],
    report: &mut UpsertReport,
) -> Vec<StoredItem> {
    let mut out = Vec::with_capacity(plans.len());
    for (k, plan) in plans {
        let (it, sha, meta) = &accepted[k];
        let features = match plan {
            Plan::Features(f) => f,
            Plan::Encode(b) => match &encoded[b] {
                Ok(f) => f.clone(),
                Err(reason) => {
                    report.failed.push((it.id.clone(), reason.clone()));
                    continue;
                }
            },
        };
        out.push(StoredItem {
            id: it.id.clone(),
            title: it.title.clone(),
            metadata: meta.clone(),
            image_missing: it.image.is_none(),
            image_sha256: *sha,
            features,
        });
    }
    out
}

/// Stored features of the white image (encoded once per open catalog). Counts the item as
/// `encoded` when this ran the vision tower, else as `reused`.
fn white_features(encoder: &ImageEncoder, input: &PlanInput<'_>, report: &mut UpsertReport) -> Result<Vec<u8>> {
    if let Some(w) = input.white.get() {
        report.reused += 1;
        return Ok(w.clone());
    }
    let f = encode_views(encoder, &[white_views(encoder)], input.form)?
        .pop()
        .expect("one image in, one out")
        .map_err(|e| Error::InvalidArgument(format!("white image: {e}")))?;
    report.encoded += 1;
    Ok(input.white.get_or_init(|| f).clone())
}
