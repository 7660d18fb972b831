//! The catalog as the server uses it: a [`lavic_catalog::Catalog`] (lock-free reads, serialised
//! writes, both on `&self`) with errors mapped to ours, plus the embedded demo catalog built at
//! start-up from the fixture images. The store is the one writer of `lavic_catalog_items`: it
//! sets it when opened and after each write.

use std::path::{Path, PathBuf};

use lavic_catalog::{Catalog, CatalogItem, ItemInfo, NewItem, StoreForm, UpsertReport};
use lavic_model::ImageEncoder;
use prometheus_client::metrics::gauge::Gauge;

use crate::error::{Error, Result};

/// Items of the demo catalog: id, made-up title, image (the fixture images, embedded).
pub const DEMO_ITEMS: [(&str, &str, &[u8]); 5] = [
    ("DEMO000001", "Stoneware Coffee Mug, 12 oz, Speckled Glaze", include_bytes!("../../../tests/fixtures/images/square.jpg")),
    ("DEMO000002", "Canvas Messenger Bag with Red Shoulder Strap", include_bytes!("../../../tests/fixtures/images/wide2.png")),
    ("DEMO000003", "Slim LED Light Bar for Desks, Warm White", include_bytes!("../../../tests/fixtures/images/wide3.jpg")),
    ("DEMO000004", "Insulated Water Bottle, 750 ml, Matte Finish", include_bytes!("../../../tests/fixtures/images/tall.png")),
    ("DEMO000005", "Enamel Pin, Retro Pixel Heart", include_bytes!("../../../tests/fixtures/images/small.png")),
];

/// The catalog shared by handlers and workers.
pub struct Store {
    dir: PathBuf,
    catalog: Catalog,
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
    /// read-only: Catalog upserts and deletes then apply in memory only and are lost on restart.
    /// `items` is the gauge the store keeps at its item count.
    pub fn open(dir: &Path, encoder: &ImageEncoder, items: Gauge) -> Result<Self> {
        let writable = tempfile::tempfile_in(dir).is_ok();
        let catalog = if writable {
            Catalog::open(dir)
        } else {
            tracing::warn!(
                dir = %dir.display(),
                "catalog folder is not writable: Catalog.UpsertItems/DeleteItems apply in memory only and are lost on restart"
            );
            Catalog::open_read_only(dir)
        }
        .map_err(catalog_err)?;
        catalog.check_encoder(encoder).map_err(catalog_err)?;
        Ok(Self::with(dir.to_path_buf(), catalog, None, items))
    }

    fn with(dir: PathBuf, catalog: Catalog, temp: Option<tempfile::TempDir>, items: Gauge) -> Self {
        let store = Self { dir, catalog, temp: std::sync::Mutex::new(temp), items };
        store.count();
        store
    }

    /// Sets `lavic_catalog_items` to the item count.
    fn count(&self) {
        self.items.set(self.len() as i64);
    }

    /// Builds the demo catalog in a new temporary folder (under the system temp dir).
    pub fn demo(encoder: &ImageEncoder, items: Gauge) -> Result<Self> {
        let temp = tempfile::Builder::new()
            .prefix("lavic-demo-catalog-")
            .tempdir()
            .map_err(|e| Error::Startup(format!("cannot create a temporary folder for the demo catalog: {e}")))?;
        let dir = temp.path().join("catalog");
        let catalog = Catalog::create_empty(&dir, encoder, StoreForm::Cls).map_err(catalog_err)?;
        let demo: Vec<NewItem> = DEMO_ITEMS
            .iter()
            .map(|(id, title, image)| NewItem {
                id: id.to_string(),
                title: title.to_string(),
                image: Some(image.to_vec()),
                metadata: serde_json::json!({ "demo": true }),
            })
            .collect();
        let report = catalog.upsert(&demo, encoder).map_err(catalog_err)?;
        if let Some((id, why)) = report.failed.first() {
            return Err(Error::Startup(format!("demo item {id}: {why}")));
        }
        Ok(Self::with(dir, catalog, Some(temp), items))
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

    /// The catalog folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.catalog.len()
    }

    /// Whether the catalog has no items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The catalog's encoder fingerprint.
    pub fn fingerprint(&self) -> String {
        self.catalog.fingerprint().to_string()
    }

    /// Whether `id` is a live item (cheap: an index lookup).
    pub fn contains(&self, id: &str) -> bool {
        self.catalog.contains(id)
    }

    /// Image tokens of `ids` (None for unknown ids).
    pub fn tokens(&self, ids: &[&str], encoder: &ImageEncoder) -> Result<Vec<Option<CatalogItem>>> {
        self.catalog.tokens(ids, encoder).map_err(catalog_err)
    }

    /// One item's stored description.
    pub fn get(&self, id: &str) -> Result<Option<ItemInfo>> {
        self.catalog.get(id).map_err(catalog_err)
    }

    /// Encodes and stores items.
    pub fn upsert(&self, items: &[NewItem], encoder: &ImageEncoder) -> Result<UpsertReport> {
        let report = self.catalog.upsert(items, encoder).map_err(catalog_err);
        self.count();
        report
    }

    /// Deletes items; returns how many existed.
    pub fn delete(&self, ids: &[&str]) -> Result<usize> {
        let deleted = self.catalog.delete(ids).map_err(catalog_err);
        self.count();
        deleted
    }
}
