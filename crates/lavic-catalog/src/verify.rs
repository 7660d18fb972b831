//! `verify` (every checksum and structural rule of a catalog, problems listed rather than
//! stopping at the first) and `info` (what a catalog holds, for operators).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::build::read_report;
use crate::catalog::{Catalog, Slot};
use crate::delta;
use crate::error::{Error, Result};
use crate::format::{feature_bytes, Manifest, FLAG_IMAGE_MISSING};

/// Outcome of [`verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    /// The catalog folder.
    pub dir: PathBuf,
    /// Live items.
    pub items: usize,
    /// Entries checked in the base segment.
    pub base_entries: u64,
    /// Records checked in the delta log.
    pub delta_records: usize,
    /// Bytes after the committed end of the delta log (an interrupted write; ignored, harmless).
    pub uncommitted_delta_bytes: u64,
    /// Everything found wrong (empty = the catalog is intact).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// No problem found.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks every checksum of the catalog in `dir`: manifest, segment header, each record and its
/// data, id order, and every delta record. A catalog that cannot be opened is reported as a
/// problem; only a missing folder is an `Err`.
pub fn verify(dir: &Path) -> Result<VerifyReport> {
    if !dir.is_dir() {
        return Err(Error::not_catalog(dir, "no such folder"));
    }
    let mut r = VerifyReport { dir: dir.to_path_buf(), ..Default::default() };
    let cat = match Catalog::open(dir) {
        Ok(c) => c,
        Err(e) => {
            r.problems.push(e.to_string());
            return Ok(r);
        }
    };
    r.items = cat.len();
    let base = &cat.inner.base;
    base.advise_sequential();
    r.base_entries = base.len();
    let mut prev: Option<String> = None;
    let mut slots_seen = vec![false; base.header().slots as usize];
    for i in 0..base.len() {
        let v = match base.entry(i) {
            Ok(v) => v,
            Err(e) => {
                r.problems.push(e.to_string());
                continue;
            }
        };
        if let Ok(s) = base.slot_of(i) {
            slots_seen[s as usize] = true;
        }
        if let Err(e) = v.verify(base.path()).and_then(|_| v.strings(base.path()).map(|_| ())) {
            r.problems.push(e.to_string());
        }
        if prev.as_deref().is_some_and(|p| p >= v.id) {
            r.problems.push(format!("{}: entry {i} ({:?}) is out of id order", base.path().display(), v.id));
        }
        prev = Some(v.id.to_string());
    }
    if let Some(s) = slots_seen.iter().position(|seen| !seen) {
        r.problems.push(format!("{}: feature slot {s} is used by no entry", base.path().display()));
    }
    let m = &cat.inner.base_manifest;
    let path = dir.join(&m.delta_file);
    // `open` already replayed the committed records with their checksums; count them again.
    if let Ok(Some(map)) = delta::map(&path, m.delta_bytes) {
        match delta::replay(&map, &path) {
            Ok(ops) => r.delta_records = ops.len(),
            Err(e) => r.problems.push(e.to_string()),
        }
    }
    if let Ok(md) = std::fs::metadata(&path) {
        let committed = cat.inner.writer.lock().map(|w| w.delta_bytes).unwrap_or(m.delta_bytes);
        r.uncommitted_delta_bytes = md.len().saturating_sub(committed);
    }
    Ok(r)
}

/// What [`info`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct CatalogInfo {
    /// The catalog folder.
    pub dir: PathBuf,
    /// Live items.
    pub items: usize,
    /// Encoder fingerprint.
    pub fingerprint: String,
    /// `cls` or `projected`.
    pub form: String,
    /// Stored value type.
    pub dtype: String,
    /// Values per view.
    pub width: usize,
    /// Vision width of the encoder.
    pub vision_width: usize,
    /// Stored feature bytes per item (5 x width x 2).
    pub bytes_per_item: usize,
    /// Bytes of the catalog files on disk.
    pub disk_bytes: u64,
    /// Base generation.
    pub generation: u64,
    /// Entries in the base segment.
    pub base_items: u64,
    /// Committed bytes of the delta log (upserts and deletes since the base; `compact` folds them).
    pub delta_bytes: u64,
    /// Live items stored with the white image (missing image file).
    pub missing_images: usize,
    /// Up to 20 of their ids.
    pub missing_examples: Vec<String>,
    /// Items the last build left out (id, reason), from `build-report.json`.
    pub failed_images: Vec<(String, String)>,
    /// Seconds since the Unix epoch of the last change.
    pub updated_unix: u64,
}

/// Summarises the catalog in `dir` (reads the record table, not the features).
pub fn info(dir: &Path) -> Result<CatalogInfo> {
    let cat = Catalog::open(dir)?;
    let m: Manifest = cat.inner.writer.lock().map(|w| w.clone()).unwrap_or_else(|p| p.into_inner().clone());
    let mut missing = Vec::new();
    let base = &cat.inner.base;
    for i in 0..base.len() {
        if let Ok(v) = base.entry(i) {
            if v.flags & FLAG_IMAGE_MISSING != 0 && !cat.inner.overlay.contains_key(v.id) {
                missing.push(v.id.to_string());
            }
        }
    }
    for kv in cat.inner.overlay.iter() {
        if let Slot::Item(d) = kv.value() {
            if d.view().is_ok_and(|v| v.flags & FLAG_IMAGE_MISSING != 0) {
                missing.push(kv.key().to_string());
            }
        }
    }
    let disk_bytes = [m.base_file.as_str(), m.delta_file.as_str(), crate::format::MANIFEST]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|md| md.len())
        .sum();
    let failed = read_report(dir, m.generation).map(|r| r.failed).unwrap_or_default();
    Ok(CatalogInfo {
        dir: dir.to_path_buf(),
        items: cat.len(),
        fingerprint: m.fingerprint.clone(),
        form: m.form.to_string(),
        dtype: m.dtype.clone(),
        width: m.width,
        vision_width: m.vision_width,
        bytes_per_item: feature_bytes(m.width),
        disk_bytes,
        generation: m.generation,
        base_items: m.base_items,
        delta_bytes: m.delta_bytes,
        missing_images: missing.len(),
        missing_examples: missing.into_iter().take(20).collect(),
        failed_images: failed,
        updated_unix: m.updated_unix,
    })
}
