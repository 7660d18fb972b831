//! The catalog a server opens: the memory-mapped base segment (id index = its sorted record
//! table) plus an in-memory overlay (`DashMap`) of the upserts and deletes since the base was
//! written. Reads never take a global lock; writes (see `update.rs`) are serialised.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::Tensor;
use dashmap::DashMap;
use half::f16;
use lavic_model::ImageEncoder;

use crate::delta::{self, DeltaItem, Op};
use crate::encode::stored_width;
use crate::error::{Error, Result};
use crate::format::{self, delta_name, feature_bytes, hex, Manifest, StoreForm, FLAG_IMAGE_MISSING, VIEWS};
use crate::fsutil::{folder_state, remove_unreferenced, write_atomic, DirLock, FolderState};
use crate::mapped::MappedFile;
use crate::segment::{EntryView, Segment, SegmentWriter};
use crate::stored::StoredItem;

/// One catalog item ready for a prompt.
#[derive(Debug, Clone)]
pub struct CatalogItem {
    /// Item id.
    pub id: String,
    /// Title (empty: the prompt shows `No Title`).
    pub title: String,
    /// The 5 projected image tokens `[5, text_hidden]`, in the encoder's dtype, on its device.
    pub tokens: Tensor,
    /// The image was missing at build time; these are the white image's tokens.
    pub image_missing: bool,
}

/// What the catalog knows about an item (for `Catalog.GetItem`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ItemInfo {
    /// Item id.
    pub id: String,
    /// Title.
    pub title: String,
    /// Hex sha256 of the image bytes the tokens were computed from; empty when the image was missing.
    pub image_sha256: String,
    /// The image was missing (white image used).
    pub image_missing: bool,
    /// Extra fields of the input: a JSON object's text, exactly as stored (integers beyond 64
    /// bits intact).
    pub metadata: String,
}

/// An overlay slot: a newer version of an item, or its deletion.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    Item(Arc<DeltaItem>),
    Deleted,
}

/// Where an item's current version lives (used by builds to reuse features).
#[derive(Debug, Clone)]
pub(crate) enum Loc {
    Base(u64),
    Delta(Arc<DeltaItem>),
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub base: Segment,
    pub base_manifest: Manifest,
    /// Upserts and deletes newer than the base. DashMap shards its locks by key, so readers of
    /// different items never contend and no reader waits on a catalog-wide lock.
    pub overlay: DashMap<Box<str>, Slot>,
    pub len: AtomicUsize,
    /// Serialises writers of this process (other processes are kept out by the folder's
    /// `.lock`); holds the manifest as last committed by this process.
    pub writer: Mutex<Manifest>,
    /// Stored features of the white image, computed on first need.
    pub white: OnceLock<Vec<u8>>,
    /// Upserts and deletes are written to disk (false: kept in memory only).
    pub persist: bool,
    /// The committed part of the delta log as mapped at open (checked by `check_on_disk`).
    pub delta_map: Option<Arc<MappedFile>>,
}

/// A catalog. Cheap to clone (one `Arc`), `Send + Sync`.
#[derive(Clone)]
pub struct Catalog {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("dir", &self.inner.dir).field("items", &self.len()).field("form", &self.form()).finish()
    }
}

impl Catalog {
    /// Opens the catalog in `dir`: reads `catalog.json`, maps the base segment and checks its
    /// header checksum (O(1) in the number of items), and replays the delta log (each record's
    /// checksums are checked). Entries of the base are checked when read.
    pub fn open(dir: &Path) -> Result<Catalog> {
        Self::open_with(dir, true)
    }

    /// Opens a catalog without ever writing to its folder (for read-only volumes): upserts and
    /// deletes apply in memory only and are lost when the process exits.
    pub fn open_read_only(dir: &Path) -> Result<Catalog> {
        Self::open_with(dir, false)
    }

    /// Whether upserts and deletes are persisted (see [`Catalog::open_read_only`]).
    pub fn persists_updates(&self) -> bool {
        self.inner.persist
    }

    fn open_with(dir: &Path, persist: bool) -> Result<Catalog> {
        let m = Manifest::read(dir)?;
        let base = Segment::open(dir, &m)?;
        let path = dir.join(&m.delta_file);
        let delta_map = delta::map(&path, m.delta_bytes)?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            len: AtomicUsize::new(base.len() as usize),
            base,
            base_manifest: m.clone(),
            overlay: DashMap::new(),
            writer: Mutex::new(m.clone()),
            white: OnceLock::new(),
            persist,
            delta_map: delta_map.clone(),
        };
        let cat = Catalog { inner: Arc::new(inner) };
        if let Some(map) = delta_map {
            for (id, op) in delta::replay(&map, &path)? {
                cat.apply(id, op);
            }
        }
        Ok(cat)
    }

    /// Checks that the folder still holds the catalog this process opened: `catalog.json`
    /// names the same generation and files, and no mapped file was cut short. Otherwise
    /// [`Error::ChangedOnDisk`] says what changed: reopen the catalog (a server does so, or goes
    /// NOT_SERVING while that fails). Cheap: reads `catalog.json` and `fstat`s two files.
    pub fn check_on_disk(&self) -> Result<()> {
        let dir = &self.inner.dir;
        let ours = &self.inner.base_manifest;
        let changed = |detail: String| Error::ChangedOnDisk { path: dir.clone(), detail };
        let disk = Manifest::read(dir).map_err(|e| changed(format!("catalog.json cannot be read any more: {e}")))?;
        if (disk.generation, &disk.base_file, &disk.delta_file) != (ours.generation, &ours.base_file, &ours.delta_file) {
            return Err(changed(format!(
                "catalog.json now names generation {} ({}), this process opened generation {} ({}); \
                 it was rebuilt, merged or compacted by another process",
                disk.generation, disk.base_file, ours.generation, ours.base_file
            )));
        }
        self.inner.base.check()?;
        if let Some(d) = &self.inner.delta_map {
            d.check()?;
        }
        Ok(())
    }

    /// Creates an empty catalog for `encoder` in `dir` (absent or empty) and opens it.
    pub fn create_empty(dir: &Path, encoder: &ImageEncoder, form: StoreForm) -> Result<Catalog> {
        match folder_state(dir)? {
            FolderState::Empty => {}
            FolderState::Catalog => {
                return Err(Error::InvalidArgument(format!("{} already holds a catalog; open it instead", dir.display())))
            }
            FolderState::Foreign(f) => return Err(Error::not_catalog(dir, format!("folder is not empty (it holds {f:?})"))),
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let _lock = DirLock::acquire(dir)?;
        let width = stored_width(encoder, form)?;
        let w = SegmentWriter::create(dir, 1, form, width, encoder.fingerprint())?;
        let written = w.finish(&[])?;
        commit_generation(dir, new_manifest(1, encoder.fingerprint(), form, width, encoder.vision_width(), &written))?;
        Catalog::open(dir)
    }

    /// Refuses an encoder whose numbers differ from the ones this catalog was built with.
    pub fn check_encoder(&self, encoder: &ImageEncoder) -> Result<()> {
        let m = &self.inner.base_manifest;
        if encoder.fingerprint() != m.fingerprint {
            return Err(Error::FingerprintMismatch { catalog: m.fingerprint.clone(), encoder: encoder.fingerprint().to_string() });
        }
        if encoder.vision_width() != m.vision_width {
            return Err(Error::Incompatible(format!("catalog vision width {} but the encoder's is {}", m.vision_width, encoder.vision_width())));
        }
        Ok(())
    }

    /// Hex sha256 of everything that changes the stored numbers (see `ImageEncoder::fingerprint`).
    pub fn fingerprint(&self) -> &str {
        &self.inner.base_manifest.fingerprint
    }

    /// Live items.
    pub fn len(&self) -> usize {
        self.inner.len.load(Ordering::Relaxed)
    }

    /// No live items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What is stored per view.
    pub fn form(&self) -> StoreForm {
        self.inner.base_manifest.form
    }

    /// Values per stored view (vision width, or text hidden size for the projected form).
    pub fn width(&self) -> usize {
        self.inner.base_manifest.width
    }

    /// Bytes of stored features per item: `5 x width x 2` (f16).
    pub fn bytes_per_item(&self) -> usize {
        feature_bytes(self.width())
    }

    /// The catalog folder.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Generation of the base segment (incremented by every build, merge and compaction).
    pub fn generation(&self) -> u64 {
        self.inner.base_manifest.generation
    }

    /// Whether `id` is a live item (an unreadable entry counts as present).
    pub fn contains(&self, id: &str) -> bool {
        match self.inner.overlay.get(id).map(|s| s.clone()) {
            Some(Slot::Item(_)) => true,
            Some(Slot::Deleted) => false,
            None => !matches!(self.inner.base.find(id), Ok(None)),
        }
    }

    /// Current version of `id`, or `None` when absent or deleted.
    pub(crate) fn locate(&self, id: &str) -> Result<Option<Loc>> {
        // Clone the slot out so the shard's read guard is released at once.
        match self.inner.overlay.get(id).map(|s| s.clone()) {
            Some(Slot::Item(d)) => Ok(Some(Loc::Delta(d))),
            Some(Slot::Deleted) => Ok(None),
            None => Ok(self.inner.base.find(id)?.map(Loc::Base)),
        }
    }

    /// Runs `f` on the verified entry at `loc`.
    pub(crate) fn with_loc<R>(&self, loc: &Loc, f: impl FnOnce(EntryView<'_>) -> Result<R>) -> Result<R> {
        match loc {
            Loc::Base(i) => {
                let v = self.inner.base.entry(*i)?;
                v.verify(self.inner.base.path())?;
                f(v)
            }
            Loc::Delta(d) => {
                let path = self.delta_path();
                let v = d.view().map_err(|e| Error::corrupt(&path, e.to_string()))?;
                v.verify(&path)?;
                f(v)
            }
        }
    }

    pub(crate) fn delta_path(&self) -> PathBuf {
        self.inner.dir.join(&self.inner.base_manifest.delta_file)
    }

    /// Runs `f` on the verified current entry of `id`.
    fn with_entry<R>(&self, id: &str, f: impl FnOnce(EntryView<'_>) -> Result<R>) -> Result<Option<R>> {
        match self.locate(id)? {
            None => Ok(None),
            Some(loc) => self.with_loc(&loc, f).map(Some),
        }
    }

    /// The projected tokens of each id (`None` for unknown ids), all found items projected in one
    /// projector call. A checksum failure is an error naming the id: damaged data is never served.
    pub fn tokens(&self, ids: &[&str], encoder: &ImageEncoder) -> Result<Vec<Option<CatalogItem>>> {
        self.check_encoder(encoder)?;
        let width = self.width();
        let mut values: Vec<f16> = Vec::new();
        let mut found: Vec<Option<(String, bool)>> = Vec::with_capacity(ids.len());
        for id in ids {
            let hit = self.with_entry(id, |v| {
                let (title, _) = v.strings(self.inner.base.path())?;
                values.extend(v.features.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])));
                Ok((title.to_string(), v.flags & FLAG_IMAGE_MISSING != 0))
            })?;
            found.push(hit);
        }
        let m = found.iter().filter(|f| f.is_some()).count();
        if m == 0 {
            return Ok(ids.iter().map(|_| None).collect());
        }
        let tokens = crate::stored::project_values(values, m, self.form(), width, encoder)?;
        let mut k = 0;
        let mut out = Vec::with_capacity(ids.len());
        for (id, f) in ids.iter().zip(found) {
            out.push(match f {
                None => None,
                Some((title, image_missing)) => {
                    let t = tokens.get(k)?;
                    k += 1;
                    Some(CatalogItem { id: id.to_string(), title, tokens: t, image_missing })
                }
            });
        }
        Ok(out)
    }

    /// The stored features of `id` as a `[5, width]` f16 CPU tensor (CLS or projected, see
    /// [`Catalog::form`]), checksum verified. Needs no encoder.
    pub fn stored_features(&self, id: &str) -> Result<Option<Tensor>> {
        let width = self.width();
        self.with_entry(id, |v| {
            let vals: Vec<f16> = v.features.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]])).collect();
            Ok(Tensor::from_vec(vals, (VIEWS, width), &candle_core::Device::Cpu)?)
        })
    }

    /// The stored items of `ids` (`None` for unknown ids), checksums verified: what a backend
    /// keeps per item, without projecting anything.
    pub fn stored(&self, ids: &[&str]) -> Result<Vec<Option<StoredItem>>> {
        ids.iter().map(|id| self.with_entry(id, |v| self.entry_item(v))).collect()
    }

    /// The stored item at `loc` (checksum verified).
    pub(crate) fn stored_at(&self, loc: &Loc) -> Result<StoredItem> {
        self.with_loc(loc, |v| self.entry_item(v))
    }

    fn entry_item(&self, v: EntryView<'_>) -> Result<StoredItem> {
        let (title, meta) = v.strings(self.inner.base.path())?;
        Ok(StoredItem {
            id: v.id.to_string(),
            title: title.to_string(),
            metadata: meta.to_string(),
            image_missing: v.flags & FLAG_IMAGE_MISSING != 0,
            image_sha256: v.image_sha,
            features: v.features.to_vec(),
        })
    }

    /// What the catalog holds about `id`.
    pub fn get(&self, id: &str) -> Result<Option<ItemInfo>> {
        let path = self.inner.base.path().to_path_buf();
        self.with_entry(id, |v| {
            let (title, meta) = v.strings(&path)?;
            let missing = v.flags & FLAG_IMAGE_MISSING != 0;
            Ok(ItemInfo {
                id: id.to_string(),
                title: title.to_string(),
                image_sha256: if missing { String::new() } else { hex(&v.image_sha) },
                image_missing: missing,
                metadata: meta.to_string(),
            })
        })
    }

    /// Every live item's location, base entries first (in id order), then overlay items.
    pub(crate) fn live_locations(&self) -> Vec<(String, Loc)> {
        let mut out = Vec::with_capacity(self.len());
        let base = &self.inner.base;
        for i in 0..base.len() {
            match base.entry(i) {
                Ok(v) if self.inner.overlay.contains_key(v.id) => {}
                Ok(v) => out.push((v.id.to_string(), Loc::Base(i))),
                // Unreadable record: keep it so the consumer reports it on read.
                Err(_) => out.push((format!("<entry {i}>"), Loc::Base(i))),
            }
        }
        for kv in self.inner.overlay.iter() {
            if let Slot::Item(d) = kv.value() {
                out.push((kv.key().to_string(), Loc::Delta(d.clone())));
            }
        }
        out
    }

    /// Applies one replayed or freshly committed operation to the overlay and the item count.
    pub(crate) fn apply(&self, id: String, op: Op) {
        let inner = &self.inner;
        let live_before = self.contains(&id);
        match op {
            Op::Upsert(d) => {
                inner.overlay.insert(id.into_boxed_str(), Slot::Item(d));
                if !live_before {
                    inner.len.fetch_add(1, Ordering::Relaxed);
                }
            }
            Op::Delete => {
                if matches!(inner.base.find(&id), Ok(None)) {
                    inner.overlay.remove(id.as_str());
                } else {
                    inner.overlay.insert(id.into_boxed_str(), Slot::Deleted);
                }
                if live_before {
                    inner.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The manifest of a fresh generation with an empty delta log.
pub(crate) fn new_manifest(
    generation: u64,
    fingerprint: &str,
    form: StoreForm,
    width: usize,
    vision_width: usize,
    base: &crate::segment::WrittenSegment,
) -> Manifest {
    Manifest {
        format: format::FORMAT_NAME.into(),
        version: format::FORMAT_VERSION,
        generation,
        fingerprint: fingerprint.into(),
        form,
        dtype: "f16".into(),
        views: VIEWS,
        width,
        vision_width,
        base_file: base.file.clone(),
        base_bytes: base.bytes,
        base_items: base.items,
        delta_file: delta_name(generation),
        delta_bytes: 0,
        updated_unix: format::now_unix(),
    }
}

/// Commits a new generation whose base segment is already in place: creates its empty delta
/// log, replaces `catalog.json` (the commit point) and removes the previous generation's files.
/// Call with the folder's [`DirLock`] held.
pub(crate) fn commit_generation(dir: &Path, m: Manifest) -> Result<()> {
    let delta = dir.join(&m.delta_file);
    std::fs::File::create(&delta).and_then(|f| f.sync_all()).map_err(|e| Error::io(&delta, e))?;
    write_atomic(dir, format::MANIFEST, &m.to_file_bytes())?;
    remove_unreferenced(dir, &[&m.base_file, &m.delta_file, format::REPORT]);
    Ok(())
}
