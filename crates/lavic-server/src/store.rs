//! The catalog as the server uses it: a [`lavic_catalog::CatalogBackend`] (the memory-mapped
//! catalog folder, or the fleet-wide Redis store) with errors mapped to ours, plus the embedded
//! demos' catalogs built at start-up (the fixture images, or every item of the demo world). The
//! store is the one writer of `lavic_catalog_items`: it sets it when opened and after each write.
//!
//! Writes are acknowledged only when they are durable: a catalog folder the process cannot write
//! (the read-only volume of a Kubernetes manifest) refuses them with FAILED_PRECONDITION, unless
//! `allow_memory_only_writes` is set, and then every write response says `memory_only`.
//!
//! A catalog folder changed under the running server (rebuilt in place by `lavic catalog build`,
//! a file cut short by a restore) is found by [`Store::check_folder`], which the readiness watch
//! runs every second: the folder is reopened and swapped in atomically (calls already running
//! finish on the old catalog), or, while it cannot be reopened, the services go NOT_SERVING and
//! reads of what changed answer UNAVAILABLE (never a crash: see `lavic_catalog`'s checked maps).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use lavic_catalog::{
    BuildOptions, Catalog, CatalogBackend, CatalogItem, InputFormat, ItemInfo, NewItem, ProgressMode, RedisConfig, RedisStore, StoreForm,
    UpsertReport,
};
use lavic_model::ImageEncoder;
use prometheus_client::metrics::gauge::Gauge;

use crate::demo::DemoCatalog;
use crate::error::{Error, Result};

/// Items of the demo catalog: id, made-up title, image (the fixture images, embedded).
pub const DEMO_ITEMS: [(&str, &str, &[u8]); 5] = [
    ("DEMO000001", "Stoneware Coffee Mug, 12 oz, Speckled Glaze", include_bytes!("../../../tests/fixtures/images/square.jpg")),
    ("DEMO000002", "Canvas Messenger Bag with Red Shoulder Strap", include_bytes!("../../../tests/fixtures/images/wide2.png")),
    ("DEMO000003", "Slim LED Light Bar for Desks, Warm White", include_bytes!("../../../tests/fixtures/images/wide3.jpg")),
    ("DEMO000004", "Insulated Water Bottle, 750 ml, Matte Finish", include_bytes!("../../../tests/fixtures/images/tall.png")),
    ("DEMO000005", "Enamel Pin, Retro Pixel Heart", include_bytes!("../../../tests/fixtures/images/small.png")),
];

/// The five fixture items, upserted into a new catalog at `dir`.
fn fixture_catalog(dir: &Path, encoder: &ImageEncoder) -> Result<Catalog> {
    let catalog = Catalog::create_empty(dir, encoder, StoreForm::Cls).map_err(catalog_err)?;
    let demo: Vec<NewItem> = DEMO_ITEMS
        .iter()
        .map(|(id, title, image)| NewItem {
            id: id.to_string(),
            title: title.to_string(),
            image: Some(image.to_vec()),
            metadata: r#"{"demo":true}"#.into(),
        })
        .collect();
    let report = catalog.upsert(&demo, encoder).map_err(catalog_err)?;
    if let Some((id, why)) = report.failed.first() {
        return Err(Error::Startup(format!("demo item {id}: {why}")));
    }
    Ok(catalog)
}

/// Every item of a demo world's items file, built into a new catalog at `dir` as `lavic catalog
/// build` would. A demo must be whole: an item left out or stored without its image is an error.
fn world_catalog(items: &Path, images: &Path, dir: &Path, encoder: &ImageEncoder) -> Result<Catalog> {
    let mut opts = BuildOptions::new(items, images, dir);
    opts.format = InputFormat::Items;
    opts.progress = ProgressMode::Off;
    let report = lavic_catalog::build(&opts, encoder).map_err(|e| Error::Startup(format!("demo catalog from {}: {e}", items.display())))?;
    if let Some((id, why)) = report.failed.first() {
        return Err(Error::Startup(format!("demo catalog from {}: item {id} left out: {why}", items.display())));
    }
    if let Some(id) = report.missing_images.first() {
        return Err(Error::Startup(format!(
            "demo catalog from {}: item {id} has no image file under {} ({} items without one)",
            items.display(),
            images.display(),
            report.missing_images.len()
        )));
    }
    Catalog::open(dir).map_err(catalog_err)
}

/// What the store does with Catalog writes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Writes {
    /// Written durably (a writable folder, or Redis).
    Durable,
    /// Applied in this replica's memory only (`allow_memory_only_writes` on a read-only folder).
    MemoryOnly,
    /// Refused with FAILED_PRECONDITION, for this reason.
    Refused(String),
}

/// A catalog folder and how it was opened, to reopen it the same way.
#[derive(Debug, Clone)]
struct Folder {
    dir: PathBuf,
    /// Opened with [`Catalog::open`] (else [`Catalog::open_read_only`]).
    writable: bool,
}

impl Folder {
    fn open(&self) -> lavic_catalog::Result<Catalog> {
        if self.writable {
            Catalog::open(&self.dir)
        } else {
            Catalog::open_read_only(&self.dir)
        }
    }
}

/// What [`Store::check_folder`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FolderCheck {
    /// Not a folder, or the folder still holds what was opened.
    Unchanged,
    /// The folder changed (what changed is said) and was reopened.
    Reloaded(String),
    /// The folder changed and cannot be reopened (why is said): nothing of what changed is read.
    Broken(String),
}

/// The catalog shared by handlers and workers.
pub struct Store {
    /// The current catalog, swapped whole when its folder changed and was reopened.
    catalog: RwLock<Arc<CatalogBackend>>,
    /// The catalog folder (`None`: Redis).
    folder: Option<Folder>,
    writes: Writes,
    /// The demo catalog's temporary folder (removed by [`Store::close`] or on drop); in a mutex
    /// so that `close` can take it through the shared reference.
    temp: std::sync::Mutex<Option<tempfile::TempDir>>,
    /// `lavic_catalog_items`.
    items: Gauge,
}

fn catalog_err(e: lavic_catalog::Error) -> Error {
    match e {
        lavic_catalog::Error::InvalidArgument(m) => Error::invalid("items", m),
        other => Error::Catalog(other),
    }
}

impl Store {
    /// Opens the catalog at `dir` and checks it was built by `encoder`'s numbers. A folder the
    /// process cannot write (the read-only volume of the Kubernetes manifests) is opened
    /// read-only; its writes are refused, or with `allow_memory_only` applied in memory only.
    /// `items` is the gauge the store keeps at its item count.
    pub fn open(dir: &Path, encoder: &ImageEncoder, items: Gauge, allow_memory_only: bool) -> Result<Self> {
        let writable = tempfile::tempfile_in(dir).is_ok();
        let folder = Folder { dir: dir.to_path_buf(), writable };
        let (catalog, writes) = if writable {
            (folder.open(), Writes::Durable)
        } else if allow_memory_only {
            tracing::warn!(
                dir = %dir.display(),
                "catalog folder is not writable: Catalog.UpsertItems/DeleteItems apply in memory only (allow_memory_only_writes), are seen by this replica only and are lost on restart"
            );
            (folder.open(), Writes::MemoryOnly)
        } else {
            let why = format!(
                "the catalog folder {} is not writable by the server, so a write could not be made durable; \
                 use a writable folder, a shared store (catalog_url = redis://...), or set allow_memory_only_writes",
                dir.display()
            );
            tracing::warn!(dir = %dir.display(), "catalog folder is not writable: Catalog.UpsertItems/DeleteItems are refused");
            (folder.open(), Writes::Refused(why))
        };
        let catalog = catalog.map_err(catalog_err)?;
        catalog.check_encoder(encoder).map_err(catalog_err)?;
        Ok(Self::with(CatalogBackend::Mmap(catalog), Some(folder), writes, None, items))
    }

    /// Opens the fleet-wide catalog in Redis: the namespace of `encoder`'s fingerprint (created
    /// empty if new). `observer` receives the store's round trips, cache hits and errors.
    pub fn open_redis(
        config: &RedisConfig,
        encoder: &ImageEncoder,
        items: Gauge,
        observer: Arc<dyn lavic_catalog::redis::StoreObserver>,
    ) -> Result<Self> {
        let store = RedisStore::open_for_encoder(config, encoder, Some(observer)).map_err(catalog_err)?;
        Ok(Self::with(CatalogBackend::Redis(store), None, Writes::Durable, None, items))
    }

    fn with(catalog: CatalogBackend, folder: Option<Folder>, writes: Writes, temp: Option<tempfile::TempDir>, items: Gauge) -> Self {
        let catalog = RwLock::new(Arc::new(catalog));
        let store = Self { catalog, folder, writes, temp: std::sync::Mutex::new(temp), items };
        store.count();
        store
    }

    /// Sets `lavic_catalog_items` to the item count.
    pub fn count(&self) {
        self.items.set(self.len() as i64);
    }

    /// Builds a demo catalog in a new temporary folder (under the system temp dir): the five
    /// fixture items, or every item of a demo world (a start-up error names any item that could
    /// not be stored, or stored without its image).
    pub fn demo(items: &DemoCatalog, encoder: &ImageEncoder, gauge: Gauge) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("lavic-demo-catalog-")
            .tempdir()
            .map_err(|e| Error::Startup(format!("cannot create a temporary folder for the demo catalog: {e}")))?;
        let dir = temp.path().join("catalog");
        let t = std::time::Instant::now();
        let catalog = match items {
            DemoCatalog::Fixture => fixture_catalog(&dir, encoder)?,
            DemoCatalog::World { items, images } => world_catalog(items, images, &dir, encoder)?,
        };
        tracing::info!(items = catalog.len(), secs = t.elapsed().as_secs_f32(), "demo catalog built");
        let folder = Folder { dir, writable: true };
        Ok(Self::with(CatalogBackend::Mmap(catalog), Some(folder), Writes::Durable, Some(temp), gauge))
    }

    /// Removes the demo catalog's temporary folder (nothing for a real catalog). Call it once
    /// no request can use the catalog any more.
    pub fn close(&self) {
        if let Some(t) = self.temp.lock().unwrap_or_else(|e| e.into_inner()).take() {
            if let Err(e) = t.close() {
                tracing::warn!(error = %e, "cannot remove the demo catalog folder");
            }
        }
    }

    /// The current backend (folder or Redis).
    pub fn backend(&self) -> Arc<CatalogBackend> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// For a catalog folder: checks it still holds the catalog that was opened (same
    /// generation, no file cut short); when it changed, reopens it (same mode, same encoder
    /// check) and swaps it in atomically. Blocking (reads `catalog.json`; a reopen replays the
    /// delta log).
    pub fn check_folder(&self, encoder: &ImageEncoder) -> FolderCheck {
        let Some(folder) = &self.folder else { return FolderCheck::Unchanged };
        let current = self.backend();
        let CatalogBackend::Mmap(cat) = &*current else { return FolderCheck::Unchanged };
        let changed = match cat.check_on_disk() {
            Ok(()) => return FolderCheck::Unchanged,
            Err(e) => e.to_string(),
        };
        match folder.open().and_then(|c| c.check_encoder(encoder).map(|_| c)) {
            Ok(c) => {
                *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(CatalogBackend::Mmap(c));
                self.count();
                FolderCheck::Reloaded(changed)
            }
            Err(e) => FolderCheck::Broken(format!("{changed}; reopening it failed: {e}")),
        }
    }

    /// The store, for logs and `ModelInfo`: the folder, or the Redis URL and namespace.
    pub fn describe(&self) -> String {
        self.backend().describe()
    }

    /// Whether writes through this replica are kept in its memory only (lost on restart).
    pub fn memory_only(&self) -> bool {
        self.writes == Writes::MemoryOnly
    }

    /// How long the catalog store has been unreachable (`None`: reachable, or a folder).
    pub fn outage_for(&self) -> Option<Duration> {
        self.backend().outage_for()
    }

    /// Number of items (for Redis: as of the last write or health check).
    pub fn len(&self) -> usize {
        self.backend().len()
    }

    /// Whether the catalog has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The catalog's encoder fingerprint.
    pub fn fingerprint(&self) -> String {
        self.backend().fingerprint().to_string()
    }

    /// Whether `id` is a live item, when that is known without a round trip: `Some` for a
    /// folder (an index lookup), `None` for Redis (the lookup itself will tell).
    pub fn contains(&self, id: &str) -> Option<bool> {
        match &*self.backend() {
            CatalogBackend::Mmap(c) => Some(c.contains(id)),
            CatalogBackend::Redis(_) => None,
        }
    }

    /// Image tokens of `ids` (None for unknown ids), in one lookup.
    pub fn tokens(&self, ids: &[&str], encoder: &ImageEncoder) -> Result<Vec<Option<CatalogItem>>> {
        self.backend().tokens(ids, encoder).map_err(catalog_err)
    }

    /// One item's stored description.
    pub fn get(&self, id: &str) -> Result<Option<ItemInfo>> {
        self.backend().get(id).map_err(catalog_err)
    }

    fn check_writable(&self) -> Result<()> {
        match &self.writes {
            Writes::Refused(why) => Err(Error::NotDurable(why.clone())),
            Writes::Durable | Writes::MemoryOnly => Ok(()),
        }
    }

    /// Encodes and stores items.
    pub fn upsert(&self, items: &[NewItem], encoder: &ImageEncoder) -> Result<UpsertReport> {
        self.check_writable()?;
        let report = self.backend().upsert(items, encoder).map_err(catalog_err);
        self.count();
        report
    }

    /// Deletes items; returns how many existed.
    pub fn delete(&self, ids: &[&str]) -> Result<usize> {
        self.check_writable()?;
        let deleted = self.backend().delete(ids).map_err(catalog_err);
        self.count();
        deleted
    }
}
