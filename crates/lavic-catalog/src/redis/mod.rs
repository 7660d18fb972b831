//! The fleet-wide catalog store: a catalog namespace in Redis that every replica reads and
//! writes, in front of it a per-replica cache kept right by invalidations. Key layout and value
//! format in `record` (and `FORMAT.md`); writes in `scripts`; lookups and writes in `core`; the
//! cache in `cache`; background subscriber and health check in `watch`; `lavic catalog push` in
//! `push`; a throw-away `redis-server` for tests and benchmarks in [`testing`].
//!
//! Client: redis-rs (`redis` crate) with tokio and its `ConnectionManager`: the most used Redis
//! client for Rust, maintained by the Redis project, a multiplexed connection with automatic
//! reconnection and backoff, pub/sub and rustls TLS. The store owns a small tokio runtime (two
//! threads, `lavic-redis`), so it can be used from plain threads (model workers, blocking
//! pools) through the synchronous methods, and from any async runtime through the `_async` ones.
//!
//! Guarantees on one Redis node (standalone, or a primary with replicas):
//! - a write batch (upsert or delete) is all-or-nothing and acknowledged only after Redis
//!   executed it (and, with `wait_replicas`, after that many replicas acknowledged it);
//! - `Consistency::Strict` (default): a lookup that starts after a write was acknowledged, on
//!   any replica, sees it;
//! - a value is served only after its checksum (covering id and encoder fingerprint) passed;
//! - with Redis unreachable, lookups whose items are all cached are served, others fail with
//!   [`Error::StoreUnavailable`] naming the store.

mod cache;
mod config;
mod conn;
mod core;
mod push;
pub(crate) mod record;
mod scripts;
pub mod testing;
mod watch;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use lavic_model::ImageEncoder;

pub use config::{Consistency, RedisConfig, RedisCredentials, ENV_PASSWORD, ENV_PASSWORD_FILE, ENV_USERNAME};
pub use conn::{StoreHealth, StoreObserver, StoreStats};
pub use push::{push, PushOptions, PushReport};
pub use record::Layout;

use crate::catalog::{CatalogItem, ItemInfo};
use crate::error::{Error, Result};
use crate::format::StoreForm;
use crate::plan::{plan_upsert, Current, PlanInput};
use crate::rules::check_id;
use crate::stored::{project_items, StoredItem};
use crate::update::{NewItem, UpsertReport};

use self::conn::{Conn, NoObserver};
use self::core::Core;

/// A catalog namespace in Redis. Cheap to clone (one `Arc`), `Send + Sync`. Dropping the last
/// clone stops its background tasks and closes its connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The store's runtime; `Option` so that `Drop` can shut it down without blocking.
    rt: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    core: Arc<Core>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = &self.inner.core;
        f.debug_struct("RedisStore").field("store", &c.conn.store).field("namespace", &c.keys.base).field("layout", &c.layout).finish()
    }
}

/// A fresh random-enough namespace instance id (time, process, address; no secret).
pub(crate) fn new_instance() -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = sha2::Sha256::new();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.update(now.as_nanos().to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    h.update((&COUNTER as *const _ as usize).to_le_bytes());
    crate::format::hex(&h.finalize()[..16])
}

/// How [`RedisStore::open`] treats the namespace's layout.
enum Expect {
    /// Exactly this layout (created if the namespace is new).
    Exact,
    /// Whatever form and width the namespace has (a new one gets the given layout).
    Any,
}

impl RedisStore {
    /// Opens (creating if new) the namespace of `layout.fingerprint`, requiring exactly this
    /// form and width: what `lavic catalog push` does with an mmap catalog's layout.
    pub fn open(cfg: &RedisConfig, layout: Layout, observer: Option<Arc<dyn StoreObserver>>) -> Result<Self> {
        Self::open_with(cfg, layout, Expect::Exact, observer)
    }

    /// Opens the namespace of `encoder`'s fingerprint, whatever it stores; a new namespace
    /// stores CLS features (what a server does).
    pub fn open_for_encoder(cfg: &RedisConfig, encoder: &ImageEncoder, observer: Option<Arc<dyn StoreObserver>>) -> Result<Self> {
        let layout = Layout {
            fingerprint: encoder.fingerprint().to_string(),
            form: StoreForm::Cls,
            width: encoder.vision_width(),
            vision_width: encoder.vision_width(),
        };
        Self::open_with(cfg, layout, Expect::Any, observer)
    }

    fn open_with(cfg: &RedisConfig, layout: Layout, expect: Expect, observer: Option<Arc<dyn StoreObserver>>) -> Result<Self> {
        cfg.validate()?;
        if layout.fingerprint.len() != 64 || !layout.fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::InvalidArgument(format!("encoder fingerprint {:?} is not 64 hex characters", layout.fingerprint)));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("lavic-redis")
            .enable_all()
            .build()
            .map_err(|e| Error::StoreUnavailable { store: cfg.url.clone(), reason: format!("cannot start the store's runtime: {e}") })?;
        let observer = observer.unwrap_or_else(|| Arc::new(NoObserver));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let cfg2 = cfg.clone();
        // Spawned and waited for rather than `block_on`, which panics inside another runtime.
        rt.spawn(async move {
            let opened = async {
                let conn = Conn::connect(&cfg2, observer).await?;
                let mut core = Core::new(conn, &cfg2, layout);
                let meta = core.ensure_meta(&new_instance()).await?;
                core.layout = core.check_meta(&meta, matches!(expect, Expect::Exact))?;
                core.count_now().await?;
                Ok::<_, Error>(Arc::new(core))
            };
            let _ = tx.send(opened.await);
        });
        let core = rx.recv().map_err(|_| Error::StoreUnavailable { store: cfg.url.clone(), reason: "the connection task ended".into() })??;
        let handle = rt.handle().clone();
        handle.spawn(watch::subscriber(core.clone()));
        handle.spawn(watch::health(core.clone()));
        tracing::info!(store = %core.conn.store, namespace = %core.keys.base, items = core.count.load(Ordering::Relaxed), form = %core.layout.form, "catalog store opened");
        Ok(RedisStore { inner: Arc::new(Inner { rt: Some(rt), handle, core }) })
    }

    fn core(&self) -> &Arc<Core> {
        &self.inner.core
    }

    /// Runs `f` on the store's runtime and waits for it (from any thread that may block).
    fn block<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.inner.handle.spawn(async move {
            let _ = tx.send(f.await);
        });
        rx.recv().map_err(|_| self.internal("the store's task ended without an answer"))?
    }

    /// Runs `f` on the store's runtime and awaits it (from any async runtime).
    async fn on_runtime<T: Send + 'static>(&self, f: impl Future<Output = Result<T>> + Send + 'static) -> Result<T> {
        self.inner.handle.spawn(f).await.map_err(|_| self.internal("the store's task ended without an answer"))?
    }

    fn internal(&self, what: &str) -> Error {
        Error::StoreUnavailable { store: self.core().conn.store.clone(), reason: what.to_string() }
    }

    /// The store as named in messages (the URL, without credentials).
    pub fn store(&self) -> &str {
        &self.core().conn.store
    }

    /// The namespace's key prefix (`PREFIX:{fingerprint}:`).
    pub fn namespace(&self) -> &str {
        &self.core().keys.base
    }

    /// What the namespace stores.
    pub fn layout(&self) -> &Layout {
        &self.core().layout
    }

    /// The encoder fingerprint of the namespace.
    pub fn fingerprint(&self) -> &str {
        &self.core().layout.fingerprint
    }

    /// Items in the namespace, as of the last write or health check (no round trip).
    pub fn len(&self) -> usize {
        self.core().count.load(Ordering::Relaxed) as usize
    }

    /// No items (as of the last write or health check).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Items in the namespace now (one round trip).
    pub fn count(&self) -> Result<usize> {
        let core = self.core().clone();
        self.block(async move { core.count_now().await.map(|n| n as usize) })
    }

    /// Refuses an encoder whose numbers differ from the namespace's.
    pub fn check_encoder(&self, encoder: &ImageEncoder) -> Result<()> {
        let l = &self.core().layout;
        if encoder.fingerprint() != l.fingerprint {
            return Err(Error::FingerprintMismatch { catalog: l.fingerprint.clone(), encoder: encoder.fingerprint().to_string() });
        }
        if encoder.vision_width() != l.vision_width {
            return Err(Error::Incompatible(format!("catalog vision width {} but the encoder's is {}", l.vision_width, encoder.vision_width())));
        }
        Ok(())
    }

    /// The stored items of `ids` (`None` for unknown ids): one round trip at most (none in
    /// eventual mode when all are cached). See the module docs for outages and checks.
    pub fn stored(&self, ids: &[&str]) -> Result<Vec<Option<Arc<StoredItem>>>> {
        if let Some(all) = self.core().cached_only(ids) {
            return Ok(all);
        }
        let core = self.core().clone();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.block(async move { core.lookup(&ids.iter().map(String::as_str).collect::<Vec<_>>()).await })
    }

    /// As [`RedisStore::stored`], from async code.
    pub async fn stored_async(&self, ids: &[&str]) -> Result<Vec<Option<Arc<StoredItem>>>> {
        let core = self.core().clone();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.on_runtime(async move { core.lookup(&ids.iter().map(String::as_str).collect::<Vec<_>>()).await }).await
    }

    /// The projected tokens of each id (`None` for unknown ids), all found items projected in
    /// one projector call, as [`Catalog::tokens`](crate::Catalog::tokens) does.
    pub fn tokens(&self, ids: &[&str], encoder: &ImageEncoder) -> Result<Vec<Option<CatalogItem>>> {
        self.check_encoder(encoder)?;
        let found = self.stored(ids)?;
        let l = &self.core().layout;
        project_items(&found, l.form, l.width, encoder)
    }

    /// What the namespace holds about `id`.
    pub fn get(&self, id: &str) -> Result<Option<ItemInfo>> {
        match self.stored(&[id])?.pop().flatten() {
            None => Ok(None),
            Some(it) => it.info().map(Some).map_err(|e| self.corrupt_meta(id, e)),
        }
    }

    /// As [`RedisStore::get`], from async code.
    pub async fn get_async(&self, id: &str) -> Result<Option<ItemInfo>> {
        match self.stored_async(&[id]).await?.pop().flatten() {
            None => Ok(None),
            Some(it) => it.info().map(Some).map_err(|e| self.corrupt_meta(id, e)),
        }
    }

    fn corrupt_meta(&self, id: &str, e: Error) -> Error {
        let c = self.core();
        Error::StoreCorrupt { store: c.conn.store.clone(), key: c.keys.item(id), detail: e.to_string() }
    }

    /// Writes already encoded items as one all-or-nothing batch (what `push` and
    /// [`RedisStore::upsert`] do). Returns when Redis acknowledged it.
    pub fn write(&self, items: Vec<StoredItem>) -> Result<()> {
        for it in &items {
            check_id(&it.id).map_err(|r| Error::InvalidArgument(format!("item {:?}: {r}", it.id)))?;
        }
        let core = self.core().clone();
        self.block(async move { core.write(&items, &new_instance()).await.map(|_| ()) })
    }

    /// Adds or replaces items: encodes, in the calling thread, only new or changed images
    /// (decided from what Redis holds now, not from the cache), then writes every changed item
    /// in one all-or-nothing batch. Per-item problems are reported, not raised.
    pub fn upsert(&self, items: &[NewItem], encoder: &ImageEncoder) -> Result<UpsertReport> {
        self.check_encoder(encoder)?;
        let mut ids: Vec<&str> = items.iter().map(|it| it.id.as_str()).filter(|id| check_id(id).is_ok()).collect();
        ids.sort_unstable();
        ids.dedup();
        let core = self.core().clone();
        let owned: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        let current = self.block(async move { core.read_current(&owned.iter().map(String::as_str).collect::<Vec<_>>()).await })?;
        let current: HashMap<&str, Current> = ids.iter().zip(current).filter_map(|(id, c)| c.map(|c| (*id, Current::from(&c)))).collect();
        let take = |id: &str| current.get(id).map(|c| Current { title: c.title.clone(), meta: c.meta.clone(), features: c.features.clone(), ..*c });
        let input = PlanInput { form: self.core().layout.form, white: &self.core().white, current: &take };
        let (ready, report) = plan_upsert(items, encoder, &input)?;
        self.write(ready)?;
        Ok(report)
    }

    /// Deletes items in one all-or-nothing batch; returns how many existed.
    pub fn delete(&self, ids: &[&str]) -> Result<usize> {
        let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        ids.sort_unstable();
        ids.dedup();
        let core = self.core().clone();
        self.block(async move { core.delete(&ids.iter().map(String::as_str).collect::<Vec<_>>()).await.map(|(n, _)| n) })
    }

    /// Whether the store can be reached (for readiness: see [`RedisStore::outage_for`]).
    pub fn health(&self) -> StoreHealth {
        let live = self.core().cache().position().live;
        self.core().conn.health(live)
    }

    /// How long the store has been unreachable (`None`: it is reachable). A server turns its
    /// readiness NOT_SERVING once this exceeds its configured outage limit.
    pub fn outage_for(&self) -> Option<Duration> {
        self.core().conn.outage_for()
    }

    /// The store's counters.
    pub fn stats(&self) -> StoreStats {
        let core = self.core();
        let c = &core.conn.counters;
        let cache = core.cache();
        StoreStats {
            round_trips: c.round_trips.load(Ordering::Relaxed),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            served_in_outage: c.served_in_outage.load(Ordering::Relaxed),
            errors_unavailable: c.unavailable.load(Ordering::Relaxed),
            errors_rejected: c.rejected.load(Ordering::Relaxed),
            errors_corrupt: c.corrupt.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            evictions: cache.evictions(),
            cache_bytes: cache.bytes() as u64,
            cache_entries: cache.len() as u64,
        }
    }

    /// Empties this replica's cache (benchmarks of cold lookups; operators never need it).
    pub fn clear_cache(&self) {
        self.core().cache().clear();
    }

    /// Index digests of `ids` (for `push`).
    pub(crate) fn digests(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let core = self.core().clone();
        let ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        self.block(async move { core.digests(&ids.iter().map(String::as_str).collect::<Vec<_>>()).await })
    }

    /// Every id in the namespace (for `push --prune`).
    pub(crate) fn all_ids(&self) -> Result<Vec<String>> {
        let core = self.core().clone();
        self.block(async move { core.all_ids().await })
    }

    /// Whether the invalidation subscription is live (tests wait for it).
    pub fn invalidations_live(&self) -> bool {
        self.core().cache().position().live
    }
}
