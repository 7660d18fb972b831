//! Live updates of an open catalog: upserts (encoding only new or changed images) and deletes,
//! appended to the delta log and committed by rewriting `catalog.json`, then made visible in the
//! overlay. Writers are serialised by the catalog's writer mutex (in-process) and the folder's
//! `.lock` (across processes); readers are never blocked.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::sync::Arc;

use lavic_model::ImageEncoder;

use crate::catalog::Catalog;
use crate::delta::{encode_delete, encode_upsert, Op};
use crate::error::{Error, Result};
use crate::format::{self, now_unix, Manifest, FLAG_IMAGE_MISSING};
use crate::plan::{plan_upsert, Current, PlanInput};
use crate::fsutil::{write_atomic, DirLock};

/// One item to add or replace.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// Item id (see `rules`: 1 to 1024 bytes, printable, no surrounding spaces).
    pub id: String,
    /// Title (may be empty).
    pub title: String,
    /// Encoded image bytes; `None` = missing, the reference's white image is used.
    pub image: Option<Vec<u8>>,
    /// Extra fields kept with the item: a JSON object's text (empty: `{}`), stored exactly as
    /// given.
    pub metadata: String,
}

/// What an upsert did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UpsertReport {
    /// Items whose image went through the vision tower.
    pub encoded: usize,
    /// Items written with features reused from their previous version (same image bytes,
    /// new title or metadata), sharing an image encoded in the same call, or without an image
    /// once the white image's features exist.
    pub reused: usize,
    /// Items identical to their current version (nothing written).
    pub unchanged: usize,
    /// Items refused, with the reason (an item rule of `rules`, an undecodable image...);
    /// nothing changed for them.
    pub failed: Vec<(String, String)>,
    /// Items stored with the white image because no image was given.
    pub missing_images: Vec<String>,
}

impl Catalog {
    /// Adds or replaces items. Only new or changed images (by sha256 of their bytes) go through
    /// the vision tower; per-item problems are reported, not raised. Durable when it returns, and
    /// visible to the next read.
    pub fn upsert(&self, items: &[NewItem], encoder: &ImageEncoder) -> Result<UpsertReport> {
        self.check_encoder(encoder)?;
        let mut writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock_for_write(&writer)?;
        let input = PlanInput { form: self.form(), white: &self.inner.white, current: &|id| self.current(id) };
        let (ready, report) = plan_upsert(items, encoder, &input)?;
        let mut buf = Vec::new();
        let mut ops = Vec::new();
        for it in ready {
            let flags = if it.image_missing { FLAG_IMAGE_MISSING } else { 0 };
            let (rec, item) = encode_upsert(&it.id, &it.title, &it.metadata, flags, it.image_sha256, &it.features)?;
            buf.extend_from_slice(&rec);
            ops.push((it.id, Op::Upsert(Arc::new(item))));
        }
        self.commit_ops(&mut writer, &buf, ops)?;
        Ok(report)
    }

    /// Deletes items; returns how many existed. Unknown ids are ignored.
    pub fn delete(&self, ids: &[&str]) -> Result<usize> {
        let mut writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = self.lock_for_write(&writer)?;
        let mut seen = HashSet::new();
        let mut buf = Vec::new();
        let mut ops = Vec::new();
        for id in ids {
            if seen.insert(*id) && self.contains(id) {
                buf.extend_from_slice(&encode_delete(id));
                ops.push((id.to_string(), Op::Delete));
            }
        }
        let n = ops.len();
        self.commit_ops(&mut writer, &buf, ops)?;
        Ok(n)
    }

    /// The stored version of `id`, or `None` when absent or unreadable (then it is re-encoded).
    fn current(&self, id: &str) -> Option<Current> {
        let res = self.locate(id).and_then(|loc| match loc {
            None => Ok(None),
            Some(loc) => self
                .with_loc(&loc, |v| {
                    let (title, meta) = v.strings(self.dir())?;
                    Ok(Current { sha: v.image_sha, flags: v.flags, title: title.into(), meta: meta.into(), features: v.features.to_vec() })
                })
                .map(Some),
        });
        res.unwrap_or_else(|e| {
            tracing::warn!(id, error = %e, "stored item is unreadable; it will be replaced");
            None
        })
    }

    /// Takes the folder's writer lock and refuses to write when another process replaced or
    /// extended the catalog since we opened it (nothing to do when updates stay in memory).
    fn lock_for_write(&self, ours: &Manifest) -> Result<Option<DirLock>> {
        if !self.inner.persist {
            return Ok(None);
        }
        let lock = DirLock::acquire(&self.inner.dir)?;
        let disk = Manifest::read(&self.inner.dir)?;
        if disk.generation != ours.generation || disk.delta_file != ours.delta_file || disk.delta_bytes != ours.delta_bytes {
            return Err(Error::Stale(self.inner.dir.clone()));
        }
        Ok(Some(lock))
    }

    /// Appends `buf` after the committed end of the delta log (cutting off any interrupted
    /// append first), fsyncs, commits the new length in `catalog.json`, then applies `ops`.
    fn commit_ops(&self, writer: &mut Manifest, buf: &[u8], ops: Vec<(String, Op)>) -> Result<()> {
        if buf.is_empty() || !self.inner.persist {
            for (id, op) in ops {
                self.apply(id, op);
            }
            return Ok(());
        }
        let dir = &self.inner.dir;
        let path = dir.join(&writer.delta_file);
        let io = |e| Error::io(&path, e);
        let mut f = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io)?;
        f.set_len(writer.delta_bytes).map_err(io)?;
        f.seek(SeekFrom::Start(writer.delta_bytes)).map_err(io)?;
        f.write_all(buf).map_err(io)?;
        f.sync_data().map_err(io)?;
        let mut next = writer.clone();
        next.delta_bytes += buf.len() as u64;
        next.updated_unix = now_unix();
        write_atomic(dir, format::MANIFEST, &next.to_file_bytes())?;
        *writer = next;
        for (id, op) in ops {
            self.apply(id, op);
        }
        Ok(())
    }
}
