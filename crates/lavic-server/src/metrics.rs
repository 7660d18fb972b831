//! Prometheus metrics (OpenMetrics text on `GET /metrics` of a separate plain-HTTP port, served
//! from the start, also while the model loads). Names are the contract of
//! `deploy/prometheus-adapter/values.yaml` and the HPA: `lavic_queue_depth`,
//! `lavic_inflight_requests`, `lavic_request_duration_seconds`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// gRPC method, e.g. `Recommend`.
    pub method: String,
    /// Outcome: `ok` or the error kind (`invalid_argument`, `resource_exhausted`...).
    pub status: String,
}

/// Labels of a recommendation's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `default` or `free`.
    pub mode: String,
    /// Whether the model's own answer was a candidate (`true`/`false`).
    pub valid: String,
}

/// Labels of requests dropped before the model ran them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// `deadline` (expired in the queue) or `cancelled` (the caller went away).
    pub reason: String,
}

/// Labels of call latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// gRPC method.
    pub method: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric the server exports. Cheap to update from any thread (atomics).
pub struct Metrics {
    registry: Registry,
    /// Call latency by method (arrival to answer).
    pub request_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Calls by method and outcome.
    pub requests: Family<CallLabels, Counter>,
    /// Recommendations by mode and validity.
    pub results: Family<ResultLabels, Counter>,
    /// Requests dropped from the queue without running.
    pub dropped: Family<DropLabels, Counter>,
    /// Time from entering the queue to a worker taking the request.
    pub queue_time: Histogram,
    /// Time a worker spends on one batch (image encoding + model).
    pub inference_time: Histogram,
    /// Requests per forward pass.
    pub batch_size: Histogram,
    /// Prompt tokens per request.
    pub prompt_tokens: Histogram,
    /// Dialogue tokens dropped to fit the budget.
    pub shortened_tokens: Counter,
    /// Recommend calls admitted and not yet answered (queued or in a batch).
    pub inflight: Gauge,
    /// Admitted requests waiting for a worker.
    pub queue_depth: Gauge,
    /// 1 once the model is loaded and warmed up, 0 while loading or draining.
    pub ready: Gauge,
    /// Items in the catalog.
    pub catalog_items: Gauge,
    /// The catalog store's metrics (Redis round trips, cache, errors, reachability).
    pub store: Arc<crate::store_metrics::StoreMetrics>,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("lavic");
        let m = Self {
            request_duration: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            requests: Family::default(),
            results: Family::default(),
            dropped: Family::default(),
            queue_time: latency_histogram(),
            inference_time: latency_histogram(),
            batch_size: Histogram::new([1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0]),
            prompt_tokens: Histogram::new(exponential_buckets(64.0, 2.0, 9)),
            shortened_tokens: Counter::default(),
            inflight: Gauge::default(),
            queue_depth: Gauge::default(),
            ready: Gauge::default(),
            catalog_items: Gauge::default(),
            store: Arc::new(crate::store_metrics::StoreMetrics::register(&mut registry)),
            registry: Registry::default(),
        };
        registry.register("request_duration_seconds", "gRPC call latency, arrival to answer", m.request_duration.clone());
        registry.register("requests", "gRPC calls by method and outcome", m.requests.clone());
        registry.register("recommendations", "Recommendations by mode and validity of the model's own answer", m.results.clone());
        registry.register("dropped_requests", "Requests dropped from the queue before running", m.dropped.clone());
        registry.register("queue_time_seconds", "Time from entering the queue to a worker taking the request", m.queue_time.clone());
        registry.register("inference_seconds", "Worker time per batch: image encoding and model", m.inference_time.clone());
        registry.register("batch_size", "Requests per forward pass", m.batch_size.clone());
        registry.register("prompt_tokens", "Prompt tokens per request", m.prompt_tokens.clone());
        registry.register("shortened_tokens", "Dialogue tokens dropped to fit the prompt budget", m.shortened_tokens.clone());
        registry.register("inflight_requests", "Recommend calls admitted and not yet answered", m.inflight.clone());
        registry.register("queue_depth", "Admitted requests waiting for a model worker", m.queue_depth.clone());
        registry.register("ready", "1 when the model is loaded, warmed up and not draining", m.ready.clone());
        registry.register("catalog_items", "Items in the catalog", m.catalog_items.clone());
        Self { registry, ..m }
    }

    /// Counts one finished call.
    pub fn observe_call(&self, method: &str, status: &str, elapsed: Duration) {
        self.requests.get_or_create(&CallLabels { method: method.into(), status: status.into() }).inc();
        self.request_duration.get_or_create(&MethodLabels { method: method.into() }).observe(elapsed.as_secs_f64());
    }

    /// Counts a request dropped from the queue.
    pub fn observe_drop(&self, reason: &str) {
        self.dropped.get_or_create(&DropLabels { reason: reason.into() }).inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve_metrics(
    listener: crate::conn::MetricsListener,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::http::header::CONTENT_TYPE;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                ([(CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], metrics.encode())
            }
        }),
    );
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hpa_metric_names_are_exported() {
        let m = Metrics::new();
        m.observe_call("Recommend", "ok", Duration::from_millis(3));
        m.queue_depth.set(2);
        let text = m.encode();
        for name in ["lavic_queue_depth 2", "lavic_inflight_requests", "lavic_request_duration_seconds_bucket"] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains("lavic_requests_total{method=\"Recommend\",status=\"ok\"} 1"), "{text}");
    }

    #[test]
    fn store_observations_become_metrics() {
        use lavic_catalog::redis::StoreObserver;
        let m = Metrics::new();
        m.store.round_trip("lookup", 0.0004, true);
        m.store.cache(7, 3);
        m.store.error("unavailable");
        m.store.error("unavailable");
        let text = m.encode();
        for line in [
            "lavic_catalog_cache_lookups_total{result=\"hit\"} 7",
            "lavic_catalog_cache_lookups_total{result=\"miss\"} 3",
            "lavic_catalog_store_errors_total{kind=\"unavailable\"} 2",
            "lavic_catalog_store_round_trip_seconds_count{op=\"lookup\",ok=\"true\"} 1",
            "lavic_catalog_store_up 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
