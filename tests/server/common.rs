//! Shared helpers of the server integration tests: start the real server on 127.0.0.1:0 with the
//! fixture demo, chosen explicitly (`demo = "fixture"`: tiny fixture model, demo catalog
//! DEMO000001..DEMO000005; the default world demo is tested in `demo_serve`), connect the
//! generated tonic clients, read health and metrics, stop it.
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

/// Test defaults: the fixture demo, a short grace period.
pub fn config() -> Config {
    Config { shutdown_grace_secs: 10, demo: lavic_server::config::DemoKind::Fixture, ..Config::default() }
}

/// Starts a server whose shutdown is a oneshot the test fires with [`TestServer::stop`].
pub async fn start(config: Config, gate: Gate) -> TestServer {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    start_with(config, gate, async move {
        let _ = rx.await;
    }, Some(tx))
    .await
}

/// Starts a server with these test hooks (the worker gate is `hooks.gate`, or a new open one)
/// and waits until it is SERVING.
pub async fn start_serving_with_hooks(config: Config, mut hooks: Hooks) -> TestServer {
    let gate = hooks.gate.get_or_insert_with(Gate::default).clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let metrics_addr = metrics.local_addr().unwrap();
    let shutdown = async move {
        let _ = rx.await;
    };
    let task = tokio::spawn(lavic_server::serve(Listeners { grpc, metrics: Some(metrics) }, config, hooks, shutdown));
    let s = TestServer { addr, metrics_addr, gate, stop: Some(tx), task: Some(task) };
    s.wait_for(lavic_server::RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    s
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
    let hooks = Hooks { gate: Some(gate.clone()), ..Hooks::default() };
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

// ---------------------------------------------------------------------------------------------
// Hostile inputs and the `lavic` binary as a separate process (issue 11).

/// CRC-32 (PNG chunks).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// LSB-first bit writer for a deflate stream.
struct Bits {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    fn put(&mut self, value: u64, bits: u32) {
        self.acc |= value << self.n;
        self.n += bits;
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    /// A Huffman code (sent most significant bit first).
    fn code(&mut self, code: u64, bits: u32) {
        let mut rev = 0;
        for i in 0..bits {
            rev |= ((code >> i) & 1) << (bits - 1 - i);
        }
        self.put(rev, bits);
    }
}

/// A valid, black RGB PNG of `width` x `height` pixels whose pixel data is a zlib stream
/// written by hand (fixed Huffman: one literal zero, then matches of 258 at distance 1), so a
/// 16384 x 10922 bomb (537 MB once decoded) is ~3.4 MB and built without holding its pixels.
pub fn bomb_png(width: u32, height: u32) -> Vec<u8> {
    let raw = height as u64 * (1 + 3 * width as u64);
    let mut z = Bits { out: vec![0x78, 0x01], acc: 0, n: 0 };
    z.put(1, 1); // BFINAL
    z.put(1, 2); // fixed Huffman
    z.code(0x30, 8); // literal 0
    let mut left = raw - 1;
    while left >= 258 {
        z.code(0xC5, 8); // length 258 (symbol 285)
        z.code(0, 5); // distance 1
        left -= 258;
    }
    for _ in 0..left {
        z.code(0x30, 8);
    }
    z.code(0, 7); // end of block
    if z.n > 0 {
        z.put(0, 8 - z.n);
    }
    let adler = (((raw % 65521) as u32) << 16) | 1;
    z.out.extend_from_slice(&adler.to_be_bytes());

    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        png.extend_from_slice(&body);
        png.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter method, no interlace
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &z.out);
    chunk(b"IEND", &[]);
    png
}

/// A field of `/proc/PID/status` in kB (`VmHWM`: the peak resident set).
pub fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// `lavic serve` (the fixture demo unless `env` sets `LAVIC_DEMO`) as a child process on free
/// loopback ports, with every stderr line kept.
pub struct LavicProcess {
    /// The child.
    pub child: std::process::Child,
    /// Its gRPC address.
    pub addr: String,
    lines: std::sync::mpsc::Receiver<String>,
    /// Stderr lines read so far.
    pub log: Vec<String>,
}

impl LavicProcess {
    /// Starts `lavic serve` with `args` (after the loopback addresses) and waits until SERVING.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_demo(Some("fixture"), args, env).await
    }

    /// As [`LavicProcess::start`] with `LAVIC_DEMO` set to `demo` (`None`: unset, so the default
    /// world demo is served).
    pub async fn start_demo(demo: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        // `option_env!`: lavic-bench's test includes this file and has no `lavic` binary of its own.
        let Some(exe) = option_env!("CARGO_BIN_EXE_lavic") else { panic!("LavicProcess needs the lavic binary (the server tests build it)") };
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0"]).args(args);
        for k in ["LAVIC_MODEL_DIR", "LAVIC_CATALOG_DIR", "LAVIC_CONFIG", "LAVIC_CATALOG_TOKEN", "LAVIC_LOG_FORMAT", "LAVIC_DEMO", "LAVIC_DEMO_DIR"] {
            cmd.env_remove(k);
        }
        if let Some(demo) = demo {
            cmd.env("LAVIC_DEMO", demo);
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut log = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let line = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no 'gRPC listening' log line");
            let found = if line.contains("gRPC listening") {
                match serde_json::from_str::<serde_json::Value>(&line) {
                    Ok(v) => v["addr"].as_str().map(str::to_string),
                    Err(_) => line.split("addr=").nth(1).and_then(|r| r.split_whitespace().next()).map(str::to_string),
                }
            } else {
                None
            };
            log.push(line);
            if let Some(a) = found {
                break a;
            }
        };
        let p = Self { child, addr, lines, log };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(c) = Channel::from_shared(format!("http://{}", p.addr)).unwrap().connect().await {
                let mut h = HealthClient::new(c);
                let req = HealthCheckRequest { service: lavic_server::RECOMMENDER_SERVICE.into() };
                if h.check(req).await.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return p;
                }
            }
            assert!(Instant::now() < deadline, "lavic never became SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A channel to it.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    /// Its peak resident set so far, in MB.
    pub fn peak_rss_mb(&self) -> f64 {
        proc_status_kb(self.child.id(), "VmHWM").expect("VmHWM") as f64 / 1024.0
    }

    /// Every stderr line so far.
    pub fn log_lines(&mut self) -> &[String] {
        self.log.extend(self.lines.try_iter());
        &self.log
    }

    /// SIGTERM, then waits (at most 30 s) and returns every stderr line.
    pub fn stop(mut self) -> Vec<String> {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(50));
        self.log.extend(self.lines.try_iter());
        std::mem::take(&mut self.log)
    }
}

impl Drop for LavicProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
