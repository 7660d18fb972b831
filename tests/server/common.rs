//! Shared helpers of the server integration tests: start the real server on 127.0.0.1:0 with the
//! embedded demo (tiny fixture model, demo catalog DEMO000001..DEMO000005), connect the generated
//! tonic clients, read health and metrics, stop it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lavic_server::proto::{self, recommend_request::Dialogue, recommender_client::RecommenderClient};
use lavic_server::{Config, Gate, Hooks, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
pub use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// The demo catalog's ids.
pub const DEMO: [&str; 5] = ["DEMO000001", "DEMO000002", "DEMO000003", "DEMO000004", "DEMO000005"];

/// A real Reddit-Amazon style dialogue (two turns).
pub const DIALOGUE: &str = "<submission>Looking for a mug that keeps coffee warm on my desk. I like speckled glazes and nothing too big.</submission>\n<comment>A 12 oz stoneware mug is a good size, the glaze holds heat well.</comment>\n";

/// A running test server.
pub struct TestServer {
    /// gRPC address.
    pub addr: SocketAddr,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// The worker gate (open unless the test closed it).
    pub gate: Gate,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The `serve` task.
    pub task: Option<tokio::task::JoinHandle<lavic_server::Result<()>>>,
}

/// Test defaults: the embedded demo, a short grace period.
pub fn config() -> Config {
    Config { shutdown_grace_secs: 10, ..Config::default() }
}

/// Starts a server whose shutdown is a oneshot the test fires with [`TestServer::stop`].
pub async fn start(config: Config, gate: Gate) -> TestServer {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    start_with(config, gate, async move {
        let _ = rx.await;
    }, Some(tx))
    .await
}

/// Starts a server with the given shutdown future.
pub async fn start_with(
    config: Config,
    gate: Gate,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
) -> TestServer {
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let hooks = Hooks { gate: Some(gate.clone()) };
    let task = tokio::spawn(lavic_server::serve(Listeners { grpc, metrics: Some(metrics) }, config, hooks, shutdown));
    TestServer { addr, metrics_addr, gate, stop, task: Some(task) }
}

/// Starts a server with an open gate and waits until it is SERVING.
pub async fn start_serving(config: Config) -> TestServer {
    let s = start(config, Gate::default()).await;
    s.wait_for(lavic_server::RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    s
}

impl TestServer {
    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await {
                Ok(c) => return c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot connect to {}: {e}", self.addr),
            }
        }
    }

    /// A Recommender client.
    pub async fn recommender(&self) -> RecommenderClient<Channel> {
        RecommenderClient::new(self.channel().await)
    }

    /// A Catalog client.
    pub async fn catalog(&self) -> proto::catalog_client::CatalogClient<Channel> {
        proto::catalog_client::CatalogClient::new(self.channel().await)
    }

    /// The health status of `service`.
    pub async fn health(&self, service: &str) -> ServingStatus {
        let mut h = HealthClient::new(self.channel().await);
        let s = h.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status;
        ServingStatus::try_from(s).unwrap()
    }

    /// Waits (at most 60 s) until `service` reports `want`.
    pub async fn wait_for(&self, service: &str, want: ServingStatus) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = self.health(service).await;
            if now == want {
                return;
            }
            if let Some(t) = &self.task {
                assert!(!t.is_finished(), "the server stopped while waiting for {service} to be {want:?}");
            }
            assert!(Instant::now() < deadline, "{service} is {now:?}, expected {want:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let mut s = tokio::net::TcpStream::connect(self.metrics_addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    }

    /// The value of one metric line (exact name with labels), or 0.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or(0.0)
    }

    /// Takes the sender that fires the shutdown future (to signal without waiting).
    pub fn stop_signal(&mut self) -> tokio::sync::oneshot::Sender<()> {
        self.stop.take().expect("no stop sender")
    }

    /// Fires the shutdown future and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.join().await;
    }

    /// Waits (at most 30 s) for `serve` to return and checks it returned Ok.
    pub async fn join(&mut self) {
        let task = self.task.take().expect("already joined");
        let r = tokio::time::timeout(Duration::from_secs(30), task).await.expect("serve did not return");
        r.unwrap().unwrap();
    }
}

/// A recommendation request over `ids` with the test dialogue.
pub fn request(ids: &[&str]) -> proto::RecommendRequest {
    proto::RecommendRequest {
        dialogue: Some(Dialogue::Context(DIALOGUE.into())),
        candidate_ids: ids.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// A fixture image's bytes.
pub fn image(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/images").join(name)).unwrap()
}
