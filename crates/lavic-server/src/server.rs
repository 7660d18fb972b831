//! The server as a function of its listeners and a shutdown future ([`serve`], as mini-redis'
//! `server::run`): tests bind port 0 and stop it deterministically. Lifecycle:
//!
//! 1. health `""` SERVING and `lavic.v1.Recommender` / `lavic.v1.Catalog` NOT_SERVING; gRPC and
//!    metrics listen at once (calls answer UNAVAILABLE while loading);
//! 2. model + catalog load on a blocking thread, the workers start, a warm-up request runs
//!    through the whole path, then the services turn SERVING;
//! 3. on shutdown: NOT_SERVING, new calls UNAVAILABLE, in-flight calls finish (bounded by the
//!    grace period; the drain waits on the admission semaphore), then HTTP/2 GOAWAY and exit;
//!    the demo catalog's temporary folder is removed by a drop guard on every way out.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::Config;
use crate::conn::{ConnLimits, MetricsListener};
use crate::core::{Arrival, Core};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::{serve_metrics, Metrics};
use crate::proto::{catalog_server::CatalogServer, recommender_server::RecommenderServer};
use crate::queue::{Gate, Queue};
use crate::service::{CatalogService, RecommenderService};
use crate::worker::{self, BatchPolicy};

/// Health service name of the recommender (what readiness probes check).
pub const RECOMMENDER_SERVICE: &str = "lavic.v1.Recommender";
/// Health service name of the catalog.
pub const CATALOG_SERVICE: &str = "lavic.v1.Catalog";

/// The sockets the server answers on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// Prometheus `/metrics` (None: no metrics endpoint).
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Self> {
        let bind = |addr| async move {
            TcpListener::bind(addr).await.map_err(|e| Error::Startup(format!("cannot listen on {addr}: {e}")))
        };
        Ok(Self { grpc: bind(config.grpc_addr).await?, metrics: Some(bind(config.metrics_addr).await?) })
    }
}

/// Test hooks (all off in production).
#[derive(Clone, Default)]
pub struct Hooks {
    /// Holds every batch (the warm-up's included) until opened.
    pub gate: Option<Gate>,
    /// Holds every inline-image decoding before it starts, until opened.
    pub decode_gate: Option<Gate>,
    /// Holds every UpsertItems in the catalog lane before it runs, until opened.
    pub catalog_gate: Option<Gate>,
}

/// Removes the demo catalog's temporary folder when [`serve`] returns, however it returns (as
/// mini-redis' `DbDropGuard`): by then no request can use the catalog any more.
struct CatalogCleanup(Arc<Core>);

impl Drop for CatalogCleanup {
    fn drop(&mut self) {
        if let Some(engine) = self.0.loaded_engine() {
            engine.store.close();
        }
    }
}

/// Stamps each call's arrival time (the first layer of the stack).
fn stamp_arrival(mut req: tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> {
    req.extensions_mut().insert(Arrival(Instant::now()));
    Ok(req)
}

/// Builds the tonic server with its tower stack and services (one comment per layer) and
/// returns the future that serves `incoming` until `stop` resolves.
fn grpc_server(
    config: &Config,
    core: Arc<Core>,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    incoming: impl tokio_stream::Stream<Item = std::io::Result<crate::conn::Guarded>> + Send + 'static,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = std::result::Result<(), tonic::transport::Error>> + Send> {
    let mut server = Server::builder();
    // TLS, when a certificate and key are configured (otherwise plaintext h2c).
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| Error::Startup(format!("cannot read {}: {e}", p.display())));
        let identity = Identity::from_pem(read(cert)?, read(key)?);
        server = server
            .tls_config(ServerTlsConfig::new().identity(identity).timeout(Duration::from_secs(config.handshake_timeout_secs)))
            .map_err(|e| Error::Startup(format!("TLS configuration: {e}")))?;
    }
    let limit = config.max_message_bytes;
    let recommender = RecommenderServer::new(RecommenderService::new(core.clone()))
        // Compression: accept and answer gzip or zstd when the client asks for it.
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        // Message size limits, both directions.
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    let catalog = CatalogServer::new(CatalogService::new(core))
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(limit)
        .max_encoding_message_size(limit);
    // Server reflection, v1 and v1alpha (grpcurl and ghz use them). Both describe every service
    // served here: ours, health, and both reflection versions.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| Error::Startup(format!("reflection: {e}")))?;
    let router = server
        // Dead-peer detection on idle connections (HTTP/2 PING every 30 s, 10 s to answer).
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Bound the streams one connection may open (each may buffer a message of up to
        // max_message_bytes); admission bounds the model work itself.
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        // Bound the whole call, request body arrival included (a client that sends part of a
        // message and stalls), a second after our own deadline so that ours answers first.
        .timeout(Duration::from_secs(config.request_timeout_secs + 1))
        // First layer: stamp each call's arrival so deadlines count from it, not from when its
        // body was decoded.
        .layer(tonic::service::InterceptorLayer::new(stamp_arrival as fn(_) -> _))
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(recommender)
        .add_service(catalog);
    Ok(router.serve_with_incoming_shutdown(incoming, stop))
}

pub(crate) async fn set_services(health: &HealthReporter, status: ServingStatus) {
    for name in [RECOMMENDER_SERVICE, CATALOG_SERVICE] {
        health.set_service_status(name, status).await;
    }
}

/// Runs the server on `listeners` until `shutdown` resolves, then drains (see the module doc).
/// Returns an error if the model or catalog cannot be loaded or the warm-up fails.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    hooks: Hooks,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    config.validate()?;
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let (queue, jobs) = Queue::new(config.queue_capacity, metrics.clone());
    let queue = queue.with_pixel_budget(config.max_inflight_pixels);
    let mut core = Core::new(config.clone(), queue, metrics.clone());
    core.decode_gate = hooks.decode_gate.clone();
    let core = Arc::new(core);
    let _cleanup = CatalogCleanup(core.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    set_services(&health, ServingStatus::NotServing).await;

    // Metrics from the start, until the very end (the oneshot stops its HTTP server).
    let (stop_metrics, metrics_stopped) = oneshot::channel::<()>();
    let metrics_task = listeners.metrics.map(|l| {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listening");
        let limits = ConnLimits {
            max_connections: config.max_connections,
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            first_bytes: 1,
            idle_timeout: Some(Duration::from_secs(config.handshake_timeout_secs)),
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let listener = MetricsListener::new(l, limits)?;
            serve_metrics(listener, metrics, async move {
                let _ = metrics_stopped.await;
            })
            .await
        })
    });

    let grpc_addr = listeners.grpc.local_addr().map_err(|e| Error::Startup(e.to_string()))?;
    let (stop_grpc, grpc_stopped) = oneshot::channel::<()>();
    let incoming = crate::conn::incoming(
        listeners.grpc,
        ConnLimits {
            max_connections: config.max_connections,
            handshake_timeout: Duration::from_secs(config.handshake_timeout_secs),
            first_bytes: crate::conn::HTTP2_PREFACE_BYTES,
            idle_timeout: None,
        },
    );
    let grpc = grpc_server(&config, core.clone(), health_service, incoming, async move {
        let _ = grpc_stopped.await;
    })?;
    let grpc_task = tokio::spawn(grpc);
    tracing::info!(addr = %grpc_addr, tls = config.tls_cert.is_some(), "gRPC listening");
    let mut running =
        Running { core: core.clone(), health: health.clone(), stop_grpc, grpc_task, stop_metrics, metrics_task, workers: Vec::new(), store_watch: None };

    tokio::pin!(shutdown);
    let started = tokio::select! {
        r = start(&config, &core, &health, jobs, hooks, &mut running) => Some(r),
        _ = &mut shutdown => None,
    };
    match started {
        Some(Ok(())) => {
            tokio::select! {
                _ = &mut shutdown => {}
                r = &mut running.grpc_task => {
                    return Err(Error::Startup(format!("gRPC server stopped: {}", r.map_or_else(|e| e.to_string(), |r| format!("{r:?}")))));
                }
            }
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "start-up failed");
            running.stop_now();
            return Err(e);
        }
        None => tracing::info!("shutdown requested while loading"),
    }
    running.drain(Duration::from_secs(config.shutdown_grace_secs)).await;
    Ok(())
}

/// What a started server runs, for shutting it down in order.
struct Running {
    core: Arc<Core>,
    health: HealthReporter,
    /// Fired once draining is done: tonic then sends GOAWAY and finishes the open streams.
    stop_grpc: oneshot::Sender<()>,
    grpc_task: JoinHandle<std::result::Result<(), tonic::transport::Error>>,
    /// Stops the metrics HTTP server, which serves until the very end.
    stop_metrics: oneshot::Sender<()>,
    metrics_task: Option<JoinHandle<std::io::Result<()>>>,
    /// The model worker threads (they exit once the queue is closed and empty).
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Readiness following a shared catalog store (stopped before draining).
    store_watch: Option<JoinHandle<()>>,
}

impl Running {
    /// After a failed start: stop at once.
    fn stop_now(self) {
        if let Some(w) = &self.store_watch {
            w.abort();
        }
        self.core.close_queue();
        let _ = self.stop_grpc.send(());
        let _ = self.stop_metrics.send(());
    }

    /// Refuses new calls, lets admitted ones finish, closes connections, stops the workers and
    /// the metrics endpoint, all within `grace` (plus at most [`METRICS_STOP`]): what is still
    /// running then is left behind (an in-flight call's connection is reset, a busy worker thread
    /// is not waited for), so that shutdown never outlasts the grace period an orchestrator
    /// allows before SIGKILL.
    async fn drain(mut self, grace: Duration) {
        let until = tokio::time::Instant::now() + grace;
        if let Some(w) = self.store_watch.take() {
            w.abort();
        }
        let core = &self.core;
        core.start_draining();
        set_services(&self.health, ServingStatus::NotServing).await;
        tracing::info!(inflight = core.admitted(), grace_secs = grace.as_secs(), "draining");
        if !core.drained(until.into_std()).await {
            tracing::warn!(inflight = core.admitted(), "grace period over with requests still admitted");
        }
        // Close connections (GOAWAY) and wait for the streams still open, within what is left.
        let _ = self.stop_grpc.send(());
        if tokio::time::timeout_at(until, &mut self.grpc_task).await.is_err() {
            tracing::warn!("grace period over; closing the remaining connections");
            self.grpc_task.abort();
        }
        // Let the workers finish what they hold and exit, within what is left. They are joined
        // on a plain thread, not the blocking pool: the runtime waits for blocking tasks when it
        // shuts down, and a worker busy past the grace period must not hold the process.
        core.close_queue();
        let (joined, all_joined) = oneshot::channel::<()>();
        let workers = std::mem::take(&mut self.workers);
        let joiner = std::thread::Builder::new().name("lavic-join".into()).spawn(move || {
            workers.into_iter().for_each(|w| drop(w.join()));
            let _ = joined.send(());
        });
        if joiner.is_err() || tokio::time::timeout_at(until, all_joined).await.is_err() {
            tracing::warn!("model workers still busy at the end of the grace period; not waiting for them");
        }
        let _ = self.stop_metrics.send(());
        if let Some(t) = self.metrics_task {
            let _ = tokio::time::timeout_at(until.max(tokio::time::Instant::now()) + METRICS_STOP, t).await;
        }
        tracing::info!(unfinished = core.admitted(), "stopped");
    }
}

/// The most the metrics endpoint's stop may add to the grace period.
const METRICS_STOP: Duration = Duration::from_millis(100);

/// Loads the engine, starts the workers, warms up, and marks the services SERVING.
async fn start(
    config: &Arc<Config>,
    core: &Arc<Core>,
    health: &HealthReporter,
    jobs: crate::queue::Jobs,
    hooks: Hooks,
    running: &mut Running,
) -> Result<()> {
    let t = Instant::now();
    let (c, m) = (config.clone(), core.metrics.clone());
    let engine = tokio::task::spawn_blocking(move || Engine::load(&c, m))
        .await
        .map_err(|e| Error::Startup(format!("loading panicked: {e}")))??;
    let engine = Arc::new(engine);
    let policy = BatchPolicy { max_batch: config.max_batch, window: Duration::from_millis(config.batch_window_ms) };
    running.workers = worker::spawn(config.workers, engine.clone(), jobs, policy, hooks.gate, hooks.catalog_gate)
        .map_err(|e| Error::Startup(format!("cannot start the model workers: {e}")))?;
    core.set_engine(engine.clone());
    if config.warmup {
        let o = core.warm_up(&engine).await.map_err(|e| Error::Startup(format!("warm-up failed: {e}")))?;
        tracing::info!(ms = o.inference_time.as_millis() as u64, prompt_tokens = o.recommendation.prompt_tokens, "warm-up passed");
    }
    core.set_ready();
    set_services(health, ServingStatus::Serving).await;
    let limit = Duration::from_secs(config.catalog_outage_secs);
    running.store_watch = crate::readiness::spawn_store_watch(core.clone(), engine.clone(), health.clone(), limit);
    tracing::info!(secs = t.elapsed().as_secs_f32(), demo = config.is_demo(), "serving");
    Ok(())
}

/// A future that resolves on the first SIGTERM or SIGINT (Ctrl-C); a second signal then exits
/// the process at once. The handlers are installed when this function is called (not when the
/// future is first polled), so a signal can never hit the default disposition after it returns.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = signal(SignalKind::terminate()).and_then(|t| Ok((t, signal(SignalKind::interrupt())?)));
        async move {
            let Ok((mut term, mut int)) = handlers else {
                tracing::error!("cannot install signal handlers; only Ctrl-C will stop the server");
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutdown signal received; draining");
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                tracing::warn!("second signal: exiting without draining");
                std::process::exit(130);
            });
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
