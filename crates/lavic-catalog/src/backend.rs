//! The one interface a server uses for its catalog, whichever store holds it: the memory-mapped
//! catalog folder (a single machine's default) or a Redis namespace shared by the fleet. Every
//! method behaves the same on both (the Redis arm adds store errors: unavailable, rejected,
//! corrupt); `tokens` of the same stored items gives the same tensors on both.

use std::sync::Arc;
use std::time::Duration;

use lavic_model::ImageEncoder;

use crate::catalog::{Catalog, CatalogItem, ItemInfo};
use crate::error::Result;
use crate::redis::{RedisStore, StoreHealth, StoreStats};
use crate::stored::StoredItem;
use crate::update::{NewItem, UpsertReport};

/// A catalog backend. Cheap to clone, `Send + Sync`.
#[derive(Debug, Clone)]
pub enum CatalogBackend {
    /// A catalog folder (`catalog_dir`), memory-mapped.
    Mmap(Catalog),
    /// A Redis namespace (`catalog_url = redis://...`).
    Redis(RedisStore),
}

impl CatalogBackend {
    /// The prompt-ready items of all candidates of a request (`None` for unknown ids), in one
    /// call: one projector pass, and at most one Redis round trip.
    pub fn tokens(&self, ids: &[&str], encoder: &ImageEncoder) -> Result<Vec<Option<CatalogItem>>> {
        match self {
            CatalogBackend::Mmap(c) => c.tokens(ids, encoder),
            CatalogBackend::Redis(r) => r.tokens(ids, encoder),
        }
    }

    /// The stored items of `ids`, unprojected (`None` for unknown ids).
    pub fn stored(&self, ids: &[&str]) -> Result<Vec<Option<Arc<StoredItem>>>> {
        match self {
            CatalogBackend::Mmap(c) => Ok(c.stored(ids)?.into_iter().map(|s| s.map(Arc::new)).collect()),
            CatalogBackend::Redis(r) => r.stored(ids),
        }
    }

    /// What the catalog holds about `id`.
    pub fn get(&self, id: &str) -> Result<Option<ItemInfo>> {
        match self {
            CatalogBackend::Mmap(c) => c.get(id),
            CatalogBackend::Redis(r) => r.get(id),
        }
    }

    /// Encodes (in the calling thread, only new or changed images) and stores items; durable
    /// and visible to every reader when it returns.
    pub fn upsert(&self, items: &[NewItem], encoder: &ImageEncoder) -> Result<UpsertReport> {
        match self {
            CatalogBackend::Mmap(c) => c.upsert(items, encoder),
            CatalogBackend::Redis(r) => r.upsert(items, encoder),
        }
    }

    /// Deletes items; returns how many existed.
    pub fn delete(&self, ids: &[&str]) -> Result<usize> {
        match self {
            CatalogBackend::Mmap(c) => c.delete(ids),
            CatalogBackend::Redis(r) => r.delete(ids),
        }
    }

    /// Live items (for Redis: as of the last write or health check, no round trip).
    pub fn len(&self) -> usize {
        match self {
            CatalogBackend::Mmap(c) => c.len(),
            CatalogBackend::Redis(r) => r.len(),
        }
    }

    /// No live items.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The encoder fingerprint the catalog was computed with.
    pub fn fingerprint(&self) -> &str {
        match self {
            CatalogBackend::Mmap(c) => c.fingerprint(),
            CatalogBackend::Redis(r) => r.fingerprint(),
        }
    }

    /// Refuses an encoder whose numbers differ from the catalog's.
    pub fn check_encoder(&self, encoder: &ImageEncoder) -> Result<()> {
        match self {
            CatalogBackend::Mmap(c) => c.check_encoder(encoder),
            CatalogBackend::Redis(r) => r.check_encoder(encoder),
        }
    }

    /// The store, for logs and `ModelInfo`: the folder, or the Redis URL and namespace.
    pub fn describe(&self) -> String {
        match self {
            CatalogBackend::Mmap(c) => c.dir().display().to_string(),
            CatalogBackend::Redis(r) => format!("{} ({})", r.store(), r.namespace()),
        }
    }

    /// Whether the catalog is shared by a fleet (Redis): writes through any replica are seen by
    /// all, and the store can be unreachable.
    pub fn is_shared(&self) -> bool {
        matches!(self, CatalogBackend::Redis(_))
    }

    /// How long the store has been unreachable (`None`: reachable; always `None` for a folder).
    pub fn outage_for(&self) -> Option<Duration> {
        match self {
            CatalogBackend::Mmap(_) => None,
            CatalogBackend::Redis(r) => r.outage_for(),
        }
    }

    /// Health of a Redis store (`None` for a folder).
    pub fn health(&self) -> Option<StoreHealth> {
        match self {
            CatalogBackend::Mmap(_) => None,
            CatalogBackend::Redis(r) => Some(r.health()),
        }
    }

    /// Counters of a Redis store (`None` for a folder).
    pub fn stats(&self) -> Option<StoreStats> {
        match self {
            CatalogBackend::Mmap(_) => None,
            CatalogBackend::Redis(r) => Some(r.stats()),
        }
    }

    /// Whether writes are made durable (a folder opened read-only keeps them in memory only).
    pub fn persists_updates(&self) -> bool {
        match self {
            CatalogBackend::Mmap(c) => c.persists_updates(),
            CatalogBackend::Redis(_) => true,
        }
    }
}
