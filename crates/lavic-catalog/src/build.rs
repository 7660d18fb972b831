//! Catalog builds: read the items, reuse the features of every image whose bytes the previous
//! catalog in `--out` already encoded (same fingerprint), run the others through the vision
//! tower in batches while the next chunk is read and decoded on the other cores, and commit a
//! new base generation atomically. Also `merge` (shards -> one catalog) and `compact`.

use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use lavic_model::ImageEncoder;
use serde::{Deserialize, Serialize};

use crate::catalog::{commit_generation, new_manifest, Catalog, Loc};
use crate::encode::{cpu_threads, encode_views, parallel_map, prepare_bytes, stored_width, white_views, Prepared, Progress, ProgressMode, MISSING_SHA};
use crate::error::{Error, Result};
use crate::format::{Manifest, StoreForm, FLAG_IMAGE_MISSING, REPORT};
use crate::fsutil::{folder_state, write_atomic, DirLock, FolderState};
use crate::ingest::{read_items, InputFormat, InputItem, Shard};
use crate::rules::check_item;
use crate::segment::{EntryFields, SegmentWriter};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Items file (our JSONL, or the reference's `item2meta_train.json` / `item2meta_valid.jsonl`).
    pub items: PathBuf,
    /// Folder the image paths are relative to.
    pub images: PathBuf,
    /// Catalog folder: created if absent; a catalog already there is updated incrementally.
    pub out: PathBuf,
    /// Layout of `items`.
    pub format: InputFormat,
    /// What to store (CLS features by default).
    pub form: StoreForm,
    /// Only this shard of the input.
    pub shard: Option<Shard>,
    /// Images per vision pass.
    pub batch_size: usize,
    /// Progress reporting.
    pub progress: ProgressMode,
}

impl BuildOptions {
    /// CLS form, whole input, batches of 16, automatic progress.
    pub fn new(items: impl Into<PathBuf>, images: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        Self {
            items: items.into(),
            images: images.into(),
            out: out.into(),
            format: InputFormat::Auto,
            form: StoreForm::Cls,
            shard: None,
            batch_size: 16,
            progress: ProgressMode::Auto,
        }
    }
}

/// What a build did; also saved as `build-report.json` in the catalog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    /// Generation written.
    pub generation: u64,
    /// Encoder fingerprint of the catalog.
    pub fingerprint: String,
    /// `I/N` when this was a shard build.
    pub shard: Option<String>,
    /// Items read from the input (after shard selection).
    pub input_items: usize,
    /// Items in the catalog now.
    pub items: usize,
    /// Images run through the vision tower.
    pub encoded: usize,
    /// Items whose features were copied from the previous catalog (unchanged image bytes).
    pub reused: usize,
    /// Items sharing the features of another item of this build (identical image bytes).
    pub shared: usize,
    /// Items of the previous catalog that are no longer in the input (removed).
    pub removed: usize,
    /// Items whose image file was missing (stored with the white image).
    pub missing_images: Vec<String>,
    /// Items left out: id and reason (an item rule of `rules`, undecodable, over the limits,
    /// unreadable).
    pub failed: Vec<(String, String)>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// What a merge or compaction did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MergeReport {
    /// Generation written.
    pub generation: u64,
    /// Items in the result.
    pub items: usize,
    /// Catalogs read.
    pub sources: usize,
}

/// Builds (or incrementally updates) the catalog `opts.out` with `encoder`.
pub fn build(opts: &BuildOptions, encoder: &ImageEncoder) -> Result<BuildReport> {
    let start = Instant::now();
    if opts.batch_size == 0 {
        return Err(Error::InvalidArgument("batch size must be at least 1".into()));
    }
    let mut refused = Vec::new();
    let items: Vec<InputItem> = read_items(&opts.items, opts.format)?
        .into_iter()
        .enumerate()
        .filter(|(pos, _)| opts.shard.is_none_or(|s| s.selects(*pos)))
        .filter_map(|(_, it)| match check_item(&it.id, &it.title, &it.metadata) {
            Ok(_) => Some(it),
            Err(reason) => {
                let at = if it.line > 0 { format!("line {}: ", it.line) } else { String::new() };
                refused.push((it.id, format!("{at}{reason}")));
                None
            }
        })
        .collect();
    let out = &opts.out;
    let _lock = prepare_out(out)?;
    let previous = open_previous(out);
    let generation = next_generation(out);
    let fingerprint = encoder.fingerprint().to_string();
    let width = stored_width(encoder, opts.form)?;

    let mut report = BuildReport { generation, fingerprint: fingerprint.clone(), shard: opts.shard.map(|s| s.to_string()), input_items: items.len() + refused.len(), failed: refused, ..Default::default() };
    let mut reuse: HashMap<[u8; 32], Loc> = HashMap::new();
    if let Some(prev) = &previous {
        let input_ids: HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
        let compatible = prev.fingerprint() == fingerprint && prev.form() == opts.form && prev.width() == width;
        if !compatible {
            tracing::info!(catalog = %out.display(), "previous catalog was built with another encoder or form; re-encoding everything");
        }
        for (id, loc) in prev.live_locations() {
            if !input_ids.contains(id.as_str()) {
                report.removed += 1;
            }
            if compatible {
                if let Ok(sha) = prev.with_loc_unverified_sha(&loc) {
                    reuse.entry(sha).or_insert(loc);
                }
            }
        }
    }

    let writer = SegmentWriter::create(out, generation, opts.form, width, &fingerprint)?;
    let mut st = BuildState { encoder, opts, writer, previous: previous.as_ref(), reuse: &reuse, batch: Vec::new(), report, progress: Progress::new(items.len() as u64, opts.progress) };
    let threads = cpu_threads();
    let chunk = (opts.batch_size * 4).max(threads);
    let known = |sha: &[u8; 32]| reuse.contains_key(sha);
    std::thread::scope(|s| -> Result<()> {
        // Reading + decoding of the next chunk overlaps the vision passes of this one.
        let (tx, rx) = sync_channel::<Vec<Prepared>>(1);
        let items_ref = &items;
        let known = &known;
        s.spawn(move || {
            for c in items_ref.chunks(chunk) {
                let prepared = parallel_map(c, threads, |it| prepare_item(encoder, &opts.images, it, known));
                if tx.send(prepared).is_err() {
                    break;
                }
            }
        });
        for (c, prepared) in items.chunks(chunk).zip(rx.iter()) {
            for (it, p) in c.iter().zip(prepared) {
                st.add(it, p)?;
            }
        }
        st.flush()
    })?;
    let BuildState { writer, mut report, progress, .. } = st;
    progress.finish();
    let written = writer.finish(&[opts.items.display().to_string()])?;
    report.items = written.items as usize;
    report.seconds = start.elapsed().as_secs_f64();
    write_atomic(out, REPORT, &serde_json::to_vec_pretty(&report).expect("report serialises"))?;
    commit_generation(out, new_manifest(generation, &fingerprint, opts.form, width, encoder.vision_width(), &written))?;
    if !report.missing_images.is_empty() {
        tracing::warn!(count = report.missing_images.len(), first = ?report.missing_images.iter().take(5).collect::<Vec<_>>(), "items with a missing image file (white image used)");
    }
    for (id, reason) in report.failed.iter().take(20) {
        tracing::warn!(id, reason, "item left out");
    }
    tracing::info!(items = report.items, encoded = report.encoded, reused = report.reused, removed = report.removed, failed = report.failed.len(), seconds = format!("{:.1}", report.seconds), "catalog built");
    Ok(report)
}

/// Checks `out` may be written (absent, empty, leftovers, or a catalog), creates it and takes
/// its writer lock.
fn prepare_out(out: &Path) -> Result<DirLock> {
    if let FolderState::Foreign(f) = folder_state(out)? {
        return Err(Error::not_catalog(out, format!("the folder is not empty (it holds {f:?}); refusing to write into it")));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    DirLock::acquire(out)
}

fn open_previous(out: &Path) -> Option<Catalog> {
    if !out.join(crate::format::MANIFEST).exists() {
        return None;
    }
    match Catalog::open(out) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(catalog = %out.display(), error = %e, "previous catalog is unreadable; rebuilding everything");
            None
        }
    }
}

/// One more than any generation named by the manifest or by files in `dir`.
fn next_generation(dir: &Path) -> u64 {
    let mut max = Manifest::read(dir).map(|m| m.generation).unwrap_or(0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let digits = name.strip_prefix("base-").or_else(|| name.strip_prefix("delta-")).and_then(|r| r.get(..8));
            if let Some(g) = digits.and_then(|d| d.parse::<u64>().ok()) {
                max = max.max(g);
            }
        }
    }
    max + 1
}

/// Reads, hashes and (unless its features are known) decodes one item's image.
fn prepare_item(encoder: &ImageEncoder, images: &Path, it: &InputItem, known: &(dyn Fn(&[u8; 32]) -> bool + Sync)) -> Prepared {
    let Some(rel) = &it.image else { return Prepared::Missing };
    let rel_path = Path::new(rel);
    if rel_path.components().any(|c| !matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Prepared::Failed(format!("image path {rel:?} leaves the images folder"));
    }
    let path = images.join(rel_path);
    match std::fs::read(&path) {
        Ok(bytes) => prepare_bytes(encoder, &bytes, known),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Prepared::Missing,
        Err(e) => Prepared::Failed(format!("cannot read {}: {e}", path.display())),
    }
}

/// An image waiting for the vision tower and the items that use it.
struct Waiting<'a> {
    sha: [u8; 32],
    views: Vec<f32>,
    members: Vec<(&'a InputItem, u32)>,
}

struct BuildState<'a> {
    encoder: &'a ImageEncoder,
    opts: &'a BuildOptions,
    writer: SegmentWriter,
    previous: Option<&'a Catalog>,
    reuse: &'a HashMap<[u8; 32], Loc>,
    batch: Vec<Waiting<'a>>,
    report: BuildReport,
    progress: Progress,
}

impl<'a> BuildState<'a> {
    fn add(&mut self, it: &'a InputItem, p: Prepared) -> Result<()> {
        self.progress.inc(1);
        let (sha, flags, views) = match p {
            Prepared::Failed(reason) => {
                self.report.failed.push((it.id.clone(), reason));
                return Ok(());
            }
            Prepared::Missing => {
                self.report.missing_images.push(it.id.clone());
                (MISSING_SHA, FLAG_IMAGE_MISSING, None)
            }
            Prepared::Known { sha } => (sha, 0, None),
            Prepared::Views { sha, views } => (sha, 0, Some(views)),
        };
        if let Some(slot) = self.writer.slot_for(&sha) {
            self.report.shared += 1;
            return self.push(it, flags, sha, slot);
        }
        if let Some(w) = self.batch.iter_mut().find(|w| w.sha == sha) {
            self.report.shared += 1;
            w.members.push((it, flags));
            return Ok(());
        }
        if let (Some(prev), Some(loc)) = (self.previous, self.reuse.get(&sha)) {
            match prev.with_loc(loc, |v| Ok(v.features.to_vec())) {
                Ok(features) => {
                    let slot = self.writer.add_slot(sha, &features)?;
                    self.report.reused += 1;
                    return self.push(it, flags, sha, slot);
                }
                Err(e) => tracing::warn!(id = it.id, error = %e, "previous features unreadable; re-encoding"),
            }
        }
        let views = match views {
            Some(v) => v,
            None if flags & FLAG_IMAGE_MISSING != 0 => white_views(self.encoder),
            None => match prepare_item(self.encoder, &self.opts.images, it, &|_| false) {
                Prepared::Views { views, .. } => views,
                Prepared::Failed(reason) => {
                    self.report.failed.push((it.id.clone(), reason));
                    return Ok(());
                }
                _ => {
                    self.report.failed.push((it.id.clone(), "image changed during the build".into()));
                    return Ok(());
                }
            },
        };
        self.batch.push(Waiting { sha, views, members: vec![(it, flags)] });
        if self.batch.len() >= self.opts.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        let views: Vec<Vec<f32>> = batch.iter().map(|w| w.views.clone()).collect();
        let results = encode_views(self.encoder, &views, self.opts.form)?;
        self.report.encoded += batch.len();
        for (w, r) in batch.into_iter().zip(results) {
            match r {
                Ok(features) => {
                    let slot = self.writer.add_slot(w.sha, &features)?;
                    for (it, flags) in w.members {
                        self.push(it, flags, w.sha, slot)?;
                    }
                }
                Err(reason) => {
                    for (it, _) in w.members {
                        self.report.failed.push((it.id.clone(), reason.clone()));
                    }
                }
            }
        }
        Ok(())
    }

    fn push(&mut self, it: &InputItem, flags: u32, sha: [u8; 32], slot: u64) -> Result<()> {
        self.writer.push(EntryFields { id: &it.id, title: &it.title, meta: &it.metadata, flags, image_sha: sha }, slot, 0)
    }
}

/// Merges shard catalogs into one catalog at `out` (created with its parents). Refuses shards
/// with different fingerprints or forms, duplicate ids, and a non-empty `out` that is not a
/// catalog; an existing catalog at `out` is replaced atomically, so re-running is safe.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<MergeReport> {
    if shards.is_empty() {
        return Err(Error::InvalidArgument("no shard catalogs to merge".into()));
    }
    let cats: Vec<Catalog> = shards.iter().map(|p| Catalog::open(p)).collect::<Result<_>>()?;
    let first = &cats[0];
    for (p, c) in shards.iter().zip(&cats).skip(1) {
        if c.fingerprint() != first.fingerprint() {
            return Err(Error::Incompatible(format!(
                "{} has fingerprint {} but {} has {}",
                shards[0].display(),
                first.fingerprint(),
                p.display(),
                c.fingerprint()
            )));
        }
        if c.form() != first.form() || c.width() != first.width() {
            return Err(Error::Incompatible(format!("{} stores {} x {} but {} stores {} x {}", shards[0].display(), first.form(), first.width(), p.display(), c.form(), c.width())));
        }
    }
    let _lock = prepare_out(out)?;
    let generation = next_generation(out);
    let m0 = &first.inner.base_manifest;
    let mut writer = SegmentWriter::create(out, generation, m0.form, m0.width, &m0.fingerprint)?;
    let mut report = BuildReport { generation, fingerprint: m0.fingerprint.clone(), ..Default::default() };
    for (s, (cat, dir)) in cats.iter().zip(shards).enumerate() {
        cat.inner.base.advise_sequential();
        for (_, loc) in cat.live_locations() {
            cat.with_loc(&loc, |v| {
                let (title, meta) = v.strings(dir)?;
                let slot = match writer.slot_for(&v.image_sha) {
                    Some(slot) => slot,
                    None => writer.add_slot(v.image_sha, v.features)?,
                };
                writer.push(EntryFields { id: v.id, title, meta, flags: v.flags, image_sha: v.image_sha }, slot, s as u32)
            })?;
        }
        if let Some(r) = read_report(dir, cat.generation()) {
            report.input_items += r.input_items;
            report.encoded += r.encoded;
            report.reused += r.reused;
            report.missing_images.extend(r.missing_images.into_iter().filter(|id| cat.contains(id)));
            report.failed.extend(r.failed);
        }
    }
    let sources: Vec<String> = shards.iter().map(|p| p.display().to_string()).collect();
    let written = writer.finish(&sources)?;
    report.items = written.items as usize;
    write_atomic(out, REPORT, &serde_json::to_vec_pretty(&report).expect("report serialises"))?;
    commit_generation(out, new_manifest(generation, &m0.fingerprint, m0.form, m0.width, m0.vision_width, &written))?;
    Ok(MergeReport { generation, items: written.items as usize, sources: shards.len() })
}

/// Rewrites a catalog's base segment and delta log into one new base segment.
pub fn compact(dir: &Path) -> Result<MergeReport> {
    merge(&[dir.to_path_buf()], dir)
}

/// The build report of `dir`, if it describes `generation`.
pub(crate) fn read_report(dir: &Path, generation: u64) -> Option<BuildReport> {
    let bytes = std::fs::read(dir.join(REPORT)).ok()?;
    serde_json::from_slice::<BuildReport>(&bytes).ok().filter(|r| r.generation == generation)
}

impl Catalog {
    /// The image sha256 of the entry at `loc`, from its checksummed record (data not read).
    pub(crate) fn with_loc_unverified_sha(&self, loc: &Loc) -> Result<[u8; 32]> {
        match loc {
            Loc::Base(i) => Ok(self.inner.base.entry(*i)?.image_sha),
            Loc::Delta(d) => Ok(d.view()?.image_sha),
        }
    }
}
