//! `lavic catalog push DIR redis://...`: loads an mmap catalog (a build, or the merge of a
//! sharded build) into the Redis namespace of its fingerprint, incrementally: per batch of ids
//! one round trip reads the index digests, items whose digest (image sha256, flags, title,
//! metadata) is unchanged are skipped, the others are written in one all-or-nothing script.
//! `prune` then deletes the namespace's items that the catalog no longer has.

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::redis::record::{digest, Layout};
use crate::redis::{RedisConfig, RedisStore};
use crate::stored::StoredItem;

/// How to push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Items per write batch (each batch is one script: all of it lands or none).
    pub batch_size: usize,
    /// Delete the namespace's items that are not in the catalog.
    pub prune: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { batch_size: 256, prune: false }
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PushReport {
    /// The store (URL without credentials).
    pub store: String,
    /// The namespace's key prefix.
    pub namespace: String,
    /// Live items of the catalog.
    pub items: usize,
    /// Items new to the namespace.
    pub added: usize,
    /// Items whose stored version differed (image, title, metadata or flags).
    pub updated: usize,
    /// Items skipped: identical in the namespace.
    pub unchanged: usize,
    /// Items deleted from the namespace (`prune`).
    pub removed: usize,
    /// Catalog entries that failed their checks (not pushed): id and reason.
    pub failed: Vec<(String, String)>,
    /// Items in the namespace afterwards.
    pub namespace_items: usize,
    /// Write batches sent.
    pub batches: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Pushes the catalog in `dir` into Redis (see the module docs). The catalog is opened
/// read-only; the namespace is created with its layout, or must already have it.
pub fn push(dir: &Path, cfg: &RedisConfig, opts: &PushOptions) -> Result<PushReport> {
    let start = Instant::now();
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument("batch size must be at least 1".into()));
    }
    cfg.validate()?;
    let cat = Catalog::open_read_only(dir)?;
    let layout = Layout {
        fingerprint: cat.fingerprint().to_string(),
        form: cat.form(),
        width: cat.width(),
        vision_width: cat.inner.base_manifest.vision_width,
    };
    let store = RedisStore::open(cfg, layout, None)?;
    let mut r = PushReport { store: store.store().to_string(), namespace: store.namespace().to_string(), ..Default::default() };
    let mut locs = cat.live_locations();
    locs.sort_by(|a, b| a.0.cmp(&b.0));
    r.items = locs.len();
    cat.inner.base.advise_sequential();
    for chunk in locs.chunks(opts.batch_size) {
        let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
        let have = store.digests(&ids)?;
        let mut batch: Vec<StoredItem> = Vec::new();
        for ((id, loc), have) in chunk.iter().zip(have) {
            let it = match cat.stored_at(loc) {
                Ok(it) => it,
                Err(e) => {
                    r.failed.push((id.clone(), e.to_string()));
                    continue;
                }
            };
            match have {
                Some(d) if d[..] == digest(&it)[..] => r.unchanged += 1,
                Some(_) => {
                    r.updated += 1;
                    batch.push(it);
                }
                None => {
                    r.added += 1;
                    batch.push(it);
                }
            }
        }
        if !batch.is_empty() {
            store.write(batch)?;
            r.batches += 1;
        }
    }
    if opts.prune {
        let keep: HashSet<&str> = locs.iter().map(|(id, _)| id.as_str()).collect();
        let gone: Vec<String> = store.all_ids()?.into_iter().filter(|id| !keep.contains(id.as_str())).collect();
        for chunk in gone.chunks(opts.batch_size) {
            let ids: Vec<&str> = chunk.iter().map(String::as_str).collect();
            r.removed += store.delete(&ids)?;
            r.batches += 1;
        }
    }
    r.namespace_items = store.count()?;
    r.seconds = start.elapsed().as_secs_f64();
    tracing::info!(store = %r.store, added = r.added, updated = r.updated, unchanged = r.unchanged, removed = r.removed, failed = r.failed.len(), "catalog pushed");
    Ok(r)
}
