//! Metrics of the catalog store (Redis): round-trip latency by operation and outcome, cache hits
//! and misses, store errors by kind, and whether the store is reachable. The Redis store calls
//! [`StoreMetrics`] through its [`StoreObserver`] hooks; the readiness watch sets the gauges.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use lavic_catalog::redis::StoreObserver;

/// Labels of a store round trip.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoundTripLabels {
    /// `lookup`, `write`, `delete`, `count`, `health`...
    pub op: String,
    /// `true` or `false`.
    pub ok: String,
}

/// Labels of cache lookups.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: String,
}

/// Labels of store errors.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreErrorLabels {
    /// `unavailable`, `rejected` or `corrupt`.
    pub kind: String,
}

fn round_trip_histogram() -> Histogram {
    // 50 us .. ~3.3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

/// The catalog store's metrics (all zero for a catalog folder).
pub struct StoreMetrics {
    /// `lavic_catalog_store_round_trip_seconds{op,ok}`.
    pub round_trip: Family<RoundTripLabels, Histogram, fn() -> Histogram>,
    /// `lavic_catalog_cache_lookups_total{result}` (items, not requests).
    pub cache: Family<CacheLabels, Counter>,
    /// `lavic_catalog_store_errors_total{kind}`.
    pub errors: Family<StoreErrorLabels, Counter>,
    /// `lavic_catalog_store_up`: 1 while the store answers, 0 during an outage.
    pub up: Gauge,
    /// `lavic_catalog_store_outage_seconds`: how long the current outage has lasted (0: none).
    pub outage_seconds: Gauge,
    /// `lavic_catalog_cache_bytes`: bytes held by this replica's item cache.
    pub cache_bytes: Gauge,
    /// `lavic_catalog_cache_entries`: items held by this replica's item cache.
    pub cache_entries: Gauge,
}

impl StoreMetrics {
    /// Creates the metrics and registers them in `registry` (prefix `lavic` already applied).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            round_trip: Family::new_with_constructor(round_trip_histogram as fn() -> Histogram),
            cache: Family::default(),
            errors: Family::default(),
            up: Gauge::default(),
            outage_seconds: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
        };
        registry.register("catalog_store_round_trip_seconds", "Catalog store (Redis) round trips by operation and outcome", m.round_trip.clone());
        registry.register("catalog_cache_lookups", "Catalog items looked up in the replica's cache: hit or miss", m.cache.clone());
        registry.register("catalog_store_errors", "Catalog store errors by kind (unavailable, rejected, corrupt)", m.errors.clone());
        registry.register("catalog_store_up", "1 while the catalog store answers, 0 during an outage", m.up.clone());
        registry.register("catalog_store_outage_seconds", "Length of the current catalog store outage (0: none)", m.outage_seconds.clone());
        registry.register("catalog_cache_bytes", "Bytes held by this replica's catalog item cache", m.cache_bytes.clone());
        registry.register("catalog_cache_entries", "Items held by this replica's catalog item cache", m.cache_entries.clone());
        m.up.set(1);
        m
    }
}

impl StoreObserver for StoreMetrics {
    fn round_trip(&self, op: &'static str, seconds: f64, ok: bool) {
        let labels = RoundTripLabels { op: op.into(), ok: if ok { "true" } else { "false" }.into() };
        self.round_trip.get_or_create(&labels).observe(seconds);
    }

    fn cache(&self, hits: u64, misses: u64) {
        if hits > 0 {
            self.cache.get_or_create(&CacheLabels { result: "hit".into() }).inc_by(hits);
        }
        if misses > 0 {
            self.cache.get_or_create(&CacheLabels { result: "miss".into() }).inc_by(misses);
        }
    }

    fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&StoreErrorLabels { kind: kind.into() }).inc();
    }
}
