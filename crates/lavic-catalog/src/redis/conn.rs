//! The connection to Redis: redis-rs's `ConnectionManager` (one multiplexed connection,
//! reconnected in the background with exponential backoff and jitter), every round trip bounded
//! by the configured timeout and timed, each failure classified (unavailable: retry later;
//! rejected: a configuration problem) and counted, and the health record ("outage since") that
//! readiness is derived from.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, IntoConnectionInfo, Pipeline, RedisError};

use crate::error::{Error, Result};
use crate::redis::config::RedisConfig;

/// Hooks the server exports as metrics. Every method has a no-op default; calls come from the
/// store's own threads and from the callers' threads, so implementations must be cheap.
pub trait StoreObserver: Send + Sync + 'static {
    /// One round trip to Redis took `seconds` (`op`: `lookup`, `write`, `delete`, `count`,
    /// `health`, ...), successfully or not.
    fn round_trip(&self, op: &'static str, seconds: f64, ok: bool) {
        let _ = (op, seconds, ok);
    }
    /// A lookup found `hits` items in the cache and needed `misses` from Redis.
    fn cache(&self, hits: u64, misses: u64) {
        let _ = (hits, misses);
    }
    /// A store error of `kind`: `unavailable`, `rejected` or `corrupt`.
    fn error(&self, kind: &'static str) {
        let _ = kind;
    }
}

/// The observer that observes nothing.
pub(crate) struct NoObserver;
impl StoreObserver for NoObserver {}

/// Counters of a store since it was opened (plain numbers, for metrics and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Round trips made (all operations).
    pub round_trips: u64,
    /// Lookups of items served from the cache.
    pub cache_hits: u64,
    /// Lookups of items that needed Redis.
    pub cache_misses: u64,
    /// Items served from the cache while Redis could not be reached.
    pub served_in_outage: u64,
    /// Errors: Redis unreachable, timed out or not serving.
    pub errors_unavailable: u64,
    /// Errors: Redis refused (credentials, permissions, layout).
    pub errors_rejected: u64,
    /// Values that failed their checks (never served).
    pub errors_corrupt: u64,
    /// Invalidation messages applied.
    pub invalidations: u64,
    /// Times the cache was emptied and resynchronised (subscription (re)established, lost
    /// messages, another Redis instance).
    pub resyncs: u64,
    /// Cache entries evicted to stay under the byte bound.
    pub evictions: u64,
    /// Bytes and entries held by the cache now.
    pub cache_bytes: u64,
    /// Entries held by the cache now.
    pub cache_entries: u64,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub round_trips: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub served_in_outage: AtomicU64,
    pub unavailable: AtomicU64,
    pub rejected: AtomicU64,
    pub corrupt: AtomicU64,
    pub invalidations: AtomicU64,
    pub resyncs: AtomicU64,
}

/// Whether the store can be reached, for readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreHealth {
    /// When the current outage began (`None`: the last round trip or health check succeeded).
    pub outage_since: Option<SystemTime>,
    /// The last error seen, if the store is in an outage.
    pub last_error: Option<String>,
    /// Invalidation messages are being received (the pub/sub subscription is live).
    pub invalidations_live: bool,
}

#[derive(Default)]
struct HealthState {
    since: Option<(SystemTime, Instant)>,
    last_error: Option<String>,
}

/// The connection, its name for messages, and what it records.
pub(crate) struct Conn {
    /// The store as named in errors and logs (URL without credentials).
    pub store: String,
    pub client: redis::Client,
    cm: ConnectionManager,
    pub timeout: Duration,
    health: Mutex<HealthState>,
    pub counters: Counters,
    pub observer: Arc<dyn StoreObserver>,
}

impl Conn {
    /// Connects (one attempt within the timeout); an unreachable Redis is an error naming it.
    pub async fn connect(cfg: &RedisConfig, observer: Arc<dyn StoreObserver>) -> Result<Conn> {
        let store = cfg.validate()?;
        let client = client(cfg, &store)?;
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout + cfg.wait_timeout))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(2))
            .set_number_of_retries(3);
        let cm = tokio::time::timeout(cfg.timeout * 2, ConnectionManager::new_with_config(client.clone(), mcfg))
            .await
            .map_err(|_| Error::StoreUnavailable { store: store.clone(), reason: format!("no connection within {:?}", cfg.timeout * 2) })?
            .map_err(|e| classify(&store, &e))?;
        Ok(Conn { store, client, cm, timeout: cfg.timeout, health: Mutex::default(), counters: Counters::default(), observer })
    }

    /// Runs `p` in one round trip (within the timeout plus `extra`), timing and classifying it.
    pub async fn query<T: FromRedisValue>(&self, op: &'static str, p: &Pipeline, extra: Duration) -> Result<T> {
        let mut cm = self.cm.clone();
        let start = Instant::now();
        let res = match tokio::time::timeout(self.timeout + extra, p.query_async::<T>(&mut cm)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify(&self.store, &e)),
            Err(_) => Err(Error::StoreUnavailable { store: self.store.clone(), reason: format!("no answer within {:?}", self.timeout + extra) }),
        };
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        self.observer.round_trip(op, start.elapsed().as_secs_f64(), res.is_ok());
        match &res {
            Ok(_) => self.mark_up(),
            Err(e) => self.record(e),
        }
        res
    }

    /// Counts an error and, when it means the store cannot serve, starts (or continues) an outage.
    pub fn record(&self, e: &Error) {
        let (kind, outage) = match e {
            Error::StoreUnavailable { .. } => (&self.counters.unavailable, true),
            Error::StoreRejected { .. } => (&self.counters.rejected, false),
            Error::StoreCorrupt { .. } => (&self.counters.corrupt, false),
            _ => return,
        };
        kind.fetch_add(1, Ordering::Relaxed);
        self.observer.error(error_kind(e));
        if outage {
            self.mark_down(e.to_string());
        }
    }

    /// Records a failed health check (any error: a store we cannot use is an outage).
    pub fn mark_down(&self, error: String) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if h.since.is_none() {
            tracing::warn!(store = %self.store, error = %error, "catalog store outage began");
            h.since = Some((SystemTime::now(), Instant::now()));
        }
        h.last_error = Some(error);
    }

    /// Records a successful round trip: any outage is over.
    pub fn mark_up(&self) {
        let mut h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, at)) = h.since.take() {
            tracing::info!(store = %self.store, seconds = at.elapsed().as_secs_f64(), "catalog store reachable again");
        }
        h.last_error = None;
    }

    /// The outage record.
    pub fn health(&self, invalidations_live: bool) -> StoreHealth {
        let h = self.health.lock().unwrap_or_else(|p| p.into_inner());
        StoreHealth { outage_since: h.since.map(|(t, _)| t), last_error: h.last_error.clone(), invalidations_live }
    }

    /// How long the current outage has lasted.
    pub fn outage_for(&self) -> Option<Duration> {
        self.health.lock().unwrap_or_else(|p| p.into_inner()).since.map(|(_, at)| at.elapsed())
    }
}

/// The metric label of a store error.
pub(crate) fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::StoreUnavailable { .. } => "unavailable",
        Error::StoreRejected { .. } => "rejected",
        _ => "corrupt",
    }
}

fn client(cfg: &RedisConfig, store: &str) -> Result<redis::Client> {
    let rejected = |reason: String| Error::StoreRejected { store: store.to_string(), reason };
    let info = cfg.url.as_str().into_connection_info().map_err(|e| rejected(e.to_string()))?;
    let mut redis_info = info.redis_settings().clone().set_lib_name("lavic", env!("CARGO_PKG_VERSION"));
    if let Some(u) = &cfg.credentials.username {
        redis_info = redis_info.set_username(u);
    }
    if let Some(p) = cfg.credentials.password() {
        redis_info = redis_info.set_password(p);
    }
    let info = info.set_redis_settings(redis_info);
    match &cfg.ca_file {
        None => redis::Client::open(info).map_err(|e| rejected(e.to_string())),
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| Error::InvalidArgument(format!("Redis CA file {}: {e}", ca.display())))?;
            let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            redis::Client::build_with_tls(info, certs).map_err(|e| rejected(format!("CA file {}: {e}", ca.display())))
        }
    }
}

/// Server error codes that mean "not now": the store is loading, failing over, out of memory,
/// refusing writes after a failed save, or busy with a script.
const TRANSIENT_CODES: [&str; 9] = ["LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "OOM", "MISCONF", "BUSY", "NOREPLICAS"];

/// Sorts a client error into unavailable (retry later) or rejected (fix the configuration).
pub(crate) fn classify(store: &str, e: &RedisError) -> Error {
    let store = store.to_string();
    let reason = e.to_string();
    // A server error inside a pipeline or transaction carries its code on the inner error.
    let code = e.code().map(str::to_string).or_else(|| {
        e.clone().into_server_errors().and_then(|errs| errs.first().map(|(_, s)| s.code().to_string()))
    });
    match code.as_deref() {
        Some(code) if TRANSIENT_CODES.contains(&code) => Error::StoreUnavailable { store, reason },
        Some(_) => Error::StoreRejected { store, reason },
        None if matches!(e.kind(), redis::ErrorKind::AuthenticationFailed | redis::ErrorKind::InvalidClientConfig) => {
            Error::StoreRejected { store, reason }
        }
        None => Error::StoreUnavailable { store, reason },
    }
}
