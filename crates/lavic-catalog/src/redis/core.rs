//! The store's async operations on one namespace: lookups (cache first, then one round trip
//! that reads the write epoch, the namespace instance and every missing value as one MULTI/EXEC
//! snapshot), batch writes and deletes (one script each, optionally followed by `WAIT`), the
//! item count and the namespace metadata. Runs on the store's own runtime.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use redis::Value;

use crate::error::{Error, Result};
use crate::format::{StoreForm, FORMAT_VERSION};
use crate::redis::cache::Cache;
use crate::redis::config::{Consistency, RedisConfig};
use crate::redis::conn::Conn;
use crate::redis::record::{self, Keys, Layout, DIGEST_LEN};
use crate::redis::scripts;
use crate::stored::StoredItem;

/// Everything one open namespace shares between callers and background tasks.
pub(crate) struct Core {
    pub conn: Conn,
    pub keys: Keys,
    pub layout: Layout,
    pub consistency: Consistency,
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    pub health_interval: Duration,
    pub resync_after: Duration,
    /// The item cache and where it stands; one mutex so that "check the epoch, then insert"
    /// and "apply an invalidation" never interleave.
    pub cache: Mutex<Cache>,
    /// Item count as of the last write or health check.
    pub count: AtomicU64,
    /// Stored features of the white image, computed on the first imageless upsert.
    pub white: OnceLock<Vec<u8>>,
}

/// What one snapshot read returned.
struct Snapshot {
    epoch: u64,
    instance: Option<String>,
    values: Vec<Option<Vec<u8>>>,
}

/// What a write batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// The epoch of the batch (0: nothing was written).
    pub epoch: u64,
    /// Items in the namespace afterwards.
    pub count: u64,
}

impl Core {
    pub fn new(conn: Conn, cfg: &RedisConfig, layout: Layout) -> Self {
        Core {
            keys: Keys::new(&cfg.key_prefix, &layout.fingerprint),
            conn,
            layout,
            consistency: cfg.consistency,
            wait_replicas: cfg.wait_replicas,
            wait_timeout: cfg.wait_timeout,
            health_interval: cfg.health_interval,
            resync_after: cfg.resync_after,
            cache: Mutex::new(Cache::new(cfg.cache_bytes, cfg.cache_ttl)),
            count: AtomicU64::new(0),
            white: OnceLock::new(),
        }
    }

    pub fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn corrupt(&self, id: &str, detail: String) -> Error {
        let e = Error::StoreCorrupt { store: self.conn.store.clone(), key: self.keys.item(id), detail };
        self.conn.record(&e);
        e
    }

    fn rejected(&self, reason: String) -> Error {
        let e = Error::StoreRejected { store: self.conn.store.clone(), reason };
        self.conn.record(&e);
        e
    }

    /// Creates the namespace's metadata unless it exists; returns what it holds.
    pub async fn ensure_meta(&self, instance: &str) -> Result<HashMap<String, String>> {
        let l = &self.layout;
        let mut p = redis::pipe();
        p.cmd("EVAL").arg(scripts::ENSURE).arg(1).arg(&self.keys.meta);
        p.arg(&l.fingerprint).arg(l.form.to_string()).arg(l.width).arg(l.vision_width).arg(FORMAT_VERSION).arg(instance);
        let (flat,): (Vec<String>,) = self.conn.query("meta", &p, Duration::ZERO).await?;
        Ok(flat.chunks_exact(2).map(|kv| (kv[0].clone(), kv[1].clone())).collect())
    }

    /// The item count (`HLEN` of the index), also remembered for [`Core::count`].
    pub async fn count_now(&self) -> Result<u64> {
        let mut p = redis::pipe();
        p.cmd("HLEN").arg(&self.keys.index);
        let (n,): (u64,) = self.conn.query("count", &p, Duration::ZERO).await?;
        self.count.store(n, Ordering::Relaxed);
        Ok(n)
    }

    /// The namespace's epoch and instance now.
    pub async fn position_now(&self) -> Result<(u64, Option<String>)> {
        let s = self.snapshot("position", &[]).await?;
        Ok((s.epoch, s.instance))
    }

    /// One MULTI/EXEC round trip: epoch, instance and the values of `ids`.
    async fn snapshot(&self, op: &'static str, ids: &[&str]) -> Result<Snapshot> {
        let mut p = redis::pipe();
        p.atomic().cmd("GET").arg(&self.keys.epoch).cmd("HGET").arg(&self.keys.meta).arg("instance");
        if !ids.is_empty() {
            p.cmd("MGET");
            for id in ids {
                p.arg(self.keys.item(id));
            }
        }
        let mut parts: Vec<Value> = self.conn.query(op, &p, Duration::ZERO).await?;
        let bad = |what: &str| self.rejected(format!("unexpected reply to the snapshot read: {what}"));
        let values = if ids.is_empty() {
            Vec::new()
        } else {
            let v = parts.pop().ok_or_else(|| bad("no values"))?;
            redis::from_redis_value::<Vec<Option<Vec<u8>>>>(v).map_err(|e| bad(&e.to_string()))?
        };
        if parts.len() != 2 || values.len() != ids.len() {
            return Err(bad("wrong number of results"));
        }
        let instance = redis::from_redis_value::<Option<String>>(parts.pop().expect("two parts")).map_err(|e| bad(&e.to_string()))?;
        let epoch = redis::from_redis_value::<Option<u64>>(parts.pop().expect("two parts")).map_err(|e| bad(&e.to_string()))?.unwrap_or(0);
        Ok(Snapshot { epoch, instance, values })
    }

    /// Plain MGET of `ids` (no snapshot): values as they are now.
    async fn mget(&self, op: &'static str, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut p = redis::pipe();
        p.cmd("MGET");
        for id in ids {
            p.arg(self.keys.item(id));
        }
        let (values,): (Vec<Option<Vec<u8>>>,) = self.conn.query(op, &p, Duration::ZERO).await?;
        Ok(values)
    }

    fn decode_all(&self, ids: &[&str], values: Vec<Option<Vec<u8>>>) -> Result<Vec<Option<Arc<StoredItem>>>> {
        ids.iter()
            .zip(values)
            .map(|(id, v)| match v {
                None => Ok(None),
                Some(v) => record::decode(id, &v, &self.layout).map(|it| Some(Arc::new(it))).map_err(|d| self.corrupt(id, d)),
            })
            .collect()
    }

    /// In eventual mode with a live subscription, the items of `ids` if all are cached (no round
    /// trip: answered in the caller's thread, without a hop to the store's runtime).
    pub fn cached_only(&self, ids: &[&str]) -> Option<Vec<Option<Arc<StoredItem>>>> {
        if self.consistency != Consistency::Eventual {
            return None;
        }
        let now = Instant::now();
        let found = {
            let mut c = self.cache();
            if !c.position().live {
                return None;
            }
            ids.iter().map(|id| c.get(id, now)).collect::<Option<Vec<_>>>()?
        };
        self.count_cache(ids.len(), 0);
        Some(found.into_iter().map(Some).collect())
    }

    /// The stored items of `ids` (`None`: unknown), through the cache. With Redis unreachable,
    /// a lookup whose items are all cached is served from the cache; any other fails naming
    /// the store. A value failing its checks is an error, never served.
    pub async fn lookup(&self, ids: &[&str]) -> Result<Vec<Option<Arc<StoredItem>>>> {
        let now = Instant::now();
        let (mut out, pos) = {
            let mut c = self.cache();
            let hits: Vec<Option<Arc<StoredItem>>> = ids.iter().map(|id| c.get(id, now)).collect();
            (hits, c.position().clone())
        };
        let hits = out.iter().filter(|h| h.is_some()).count();
        let all_cached = hits == ids.len();
        if all_cached && pos.live && self.consistency == Consistency::Eventual {
            self.count_cache(hits, 0);
            return Ok(out);
        }
        // Without a live subscription cached entries may be stale: fetch everything, keep the
        // cached copies only for an outage.
        let fetch: Vec<usize> = (0..ids.len()).filter(|&k| out[k].is_none() || !pos.live).collect();
        let fetch_ids: Vec<&str> = fetch.iter().map(|&k| ids[k]).collect();
        let snap = match self.snapshot("lookup", &fetch_ids).await {
            Ok(s) => s,
            Err(e @ Error::StoreUnavailable { .. }) if all_cached => {
                self.conn.counters.served_in_outage.fetch_add(ids.len() as u64, Ordering::Relaxed);
                self.count_cache(hits, 0);
                tracing::debug!(store = %self.conn.store, error = %e, items = ids.len(), "served cached items during a store outage");
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let fetched = self.decode_all(&fetch_ids, snap.values)?;
        // The cached copies were valid as of the cache's position when they were read: they are
        // current only if no write happened after it (an invalidation applied during this round
        // trip does not make copies taken before it any fresher).
        let stale_hits = snap.instance.is_none() || pos.instance != snap.instance || snap.epoch > pos.epoch;
        {
            let mut c = self.cache();
            let p = c.position().clone();
            if snap.instance.is_none() || p.instance != snap.instance {
                c.clear();
            } else if snap.epoch > p.epoch && c.note_behind(snap.epoch, Instant::now(), self.resync_after) {
                self.conn.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(store = %self.conn.store, epoch = snap.epoch, "cache invalidations fell behind; cache emptied");
            }
            if let Some(inst) = &snap.instance {
                let found: Vec<Arc<StoredItem>> = fetched.iter().flatten().cloned().collect();
                c.insert_from_snapshot(&found, snap.epoch, inst, Instant::now());
            }
        }
        for (k, v) in fetch.iter().zip(fetched) {
            out[*k] = v;
        }
        let refetch: Vec<usize> = if stale_hits { (0..ids.len()).filter(|k| !fetch.contains(k)).collect() } else { Vec::new() };
        if !refetch.is_empty() {
            // Cached entries older than the epoch this lookup saw: read them again.
            let re_ids: Vec<&str> = refetch.iter().map(|&k| ids[k]).collect();
            let values = self.mget("lookup", &re_ids).await?;
            for (k, v) in refetch.iter().zip(self.decode_all(&re_ids, values)?) {
                out[*k] = v;
            }
        }
        let from_redis = fetch.len() + refetch.len();
        self.count_cache(ids.len() - from_redis, from_redis);
        Ok(out)
    }

    fn count_cache(&self, hits: usize, misses: usize) {
        let c = &self.conn.counters;
        c.hits.fetch_add(hits as u64, Ordering::Relaxed);
        c.misses.fetch_add(misses as u64, Ordering::Relaxed);
        self.conn.observer.cache(hits as u64, misses as u64);
    }

    /// The stored items of `ids` as Redis holds them now, bypassing the cache (what an upsert
    /// decides from). Unreadable values come back as `None`, to be replaced.
    pub async fn read_current(&self, ids: &[&str]) -> Result<Vec<Option<StoredItem>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let values = self.mget("read", ids).await?;
        Ok(ids
            .iter()
            .zip(values)
            .map(|(id, v)| {
                v.and_then(|v| match record::decode(id, &v, &self.layout) {
                    Ok(it) => Some(it),
                    Err(d) => {
                        tracing::warn!(id, detail = %d, "stored item is unreadable; it will be replaced");
                        None
                    }
                })
            })
            .collect())
    }

    /// The index digests of `ids` (`None`: not stored).
    pub async fn digests(&self, ids: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = redis::pipe();
        p.cmd("HMGET").arg(&self.keys.index);
        for id in ids {
            p.arg(*id);
        }
        let (d,): (Vec<Option<Vec<u8>>>,) = self.conn.query("digests", &p, Duration::ZERO).await?;
        Ok(d.into_iter().map(|d| d.filter(|d| d.len() == DIGEST_LEN)).collect())
    }

    /// Every id in the namespace (`HKEYS` of the index).
    pub async fn all_ids(&self) -> Result<Vec<String>> {
        let mut p = redis::pipe();
        p.cmd("HKEYS").arg(&self.keys.index);
        let (ids,): (Vec<String>,) = self.conn.query("ids", &p, Duration::from_secs(30)).await?;
        Ok(ids)
    }

    /// Writes `items` in one script: all of them or none. Answers once Redis acknowledged (and,
    /// with `wait_replicas`, that many replicas did).
    pub async fn write(&self, items: &[StoredItem], instance: &str) -> Result<Written> {
        if items.is_empty() {
            return Ok(Written { epoch: 0, count: self.count.load(Ordering::Relaxed) });
        }
        let mut values = Vec::with_capacity(items.len());
        for it in items {
            values.push(record::encode(it, &self.layout).map_err(Error::InvalidArgument)?);
        }
        let l = &self.layout;
        let k = &self.keys;
        let mut p = redis::pipe();
        p.cmd("EVAL").arg(scripts::WRITE).arg(3 + items.len()).arg(&k.meta).arg(&k.index).arg(&k.epoch);
        for it in items {
            p.arg(k.item(&it.id));
        }
        p.arg(&k.channel).arg(&l.fingerprint).arg(l.form.to_string()).arg(l.width).arg(l.vision_width).arg(FORMAT_VERSION).arg(instance);
        p.arg(items.len());
        for it in items {
            p.arg(&it.id);
        }
        for v in &values {
            p.arg(v.as_slice());
        }
        for it in items {
            p.arg(&record::digest(it)[..]);
        }
        p.arg(scripts::id_list(items.iter().map(|it| it.id.as_str())));
        let (epoch, count) = self.run_write("write", p).await?;
        Ok(Written { epoch, count })
    }

    /// Deletes `ids` in one script; returns how many existed and the epoch.
    pub async fn delete(&self, ids: &[&str]) -> Result<(usize, Written)> {
        if ids.is_empty() {
            return Ok((0, Written { epoch: 0, count: self.count.load(Ordering::Relaxed) }));
        }
        let k = &self.keys;
        let mut p = redis::pipe();
        p.cmd("EVAL").arg(scripts::DELETE).arg(2 + ids.len()).arg(&k.index).arg(&k.epoch);
        for id in ids {
            p.arg(k.item(id));
        }
        p.arg(&k.channel).arg(ids.len());
        for id in ids {
            p.arg(*id);
        }
        p.arg(scripts::id_list(ids.iter().copied()));
        let (epoch, count, removed) = self.run_delete(p).await?;
        Ok((removed as usize, Written { epoch, count }))
    }

    async fn run_write(&self, op: &'static str, mut p: redis::Pipeline) -> Result<(u64, u64)> {
        if self.wait_replicas == 0 {
            let ((epoch, count),): ((u64, u64),) = self.conn.query(op, &p, Duration::ZERO).await?;
            self.count.store(count, Ordering::Relaxed);
            return Ok((epoch, count));
        }
        p.cmd("WAIT").arg(self.wait_replicas).arg(self.wait_timeout.as_millis() as u64);
        let ((epoch, count), acked): ((u64, u64), u32) = self.conn.query(op, &p, self.wait_timeout).await?;
        self.count.store(count, Ordering::Relaxed);
        self.check_acked(acked)?;
        Ok((epoch, count))
    }

    async fn run_delete(&self, mut p: redis::Pipeline) -> Result<(u64, u64, u64)> {
        if self.wait_replicas == 0 {
            let ((epoch, removed, count),): ((u64, u64, u64),) = self.conn.query("delete", &p, Duration::ZERO).await?;
            self.count.store(count, Ordering::Relaxed);
            return Ok((epoch, count, removed));
        }
        p.cmd("WAIT").arg(self.wait_replicas).arg(self.wait_timeout.as_millis() as u64);
        let ((epoch, removed, count), acked): ((u64, u64, u64), u32) = self.conn.query("delete", &p, self.wait_timeout).await?;
        self.count.store(count, Ordering::Relaxed);
        self.check_acked(acked)?;
        Ok((epoch, count, removed))
    }

    fn check_acked(&self, acked: u32) -> Result<()> {
        if acked >= self.wait_replicas {
            return Ok(());
        }
        let e = Error::StoreUnavailable {
            store: self.conn.store.clone(),
            reason: format!(
                "the primary applied the write but only {acked} of the {} required replicas acknowledged it within {:?}; \
                 it is not acknowledged (it may be lost on a failover): retry it",
                self.wait_replicas, self.wait_timeout
            ),
        };
        self.conn.record(&e);
        Err(e)
    }

    /// Checks the namespace metadata against the layout this store was opened with.
    pub fn check_meta(&self, meta: &HashMap<String, String>, exact: bool) -> Result<Layout> {
        let get = |k: &str| meta.get(k).cloned().unwrap_or_default();
        let bad = |m: String| Err(self.rejected(format!("namespace {}: {m}", self.keys.base)));
        if get("fingerprint") != self.layout.fingerprint {
            return bad(format!("fingerprint {:?} in its metadata", get("fingerprint")));
        }
        if get("format") != FORMAT_VERSION.to_string() {
            return bad(format!("format {:?}, this build reads {FORMAT_VERSION}", get("format")));
        }
        let form: StoreForm = match get("form").parse() {
            Ok(f) => f,
            Err(_) => return bad(format!("form {:?}", get("form"))),
        };
        let (width, vision_width) = match (get("width").parse::<usize>(), get("vision_width").parse::<usize>()) {
            (Ok(w), Ok(v)) if w > 0 => (w, v),
            _ => return bad("width or vision width missing".into()),
        };
        let found = Layout { fingerprint: self.layout.fingerprint.clone(), form, width, vision_width };
        if vision_width != self.layout.vision_width || (exact && found != self.layout) {
            return bad(format!(
                "it stores {form} x {width} (vision width {vision_width}); this catalog is {} x {} (vision width {})",
                self.layout.form, self.layout.width, self.layout.vision_width
            ));
        }
        Ok(found)
    }
}
