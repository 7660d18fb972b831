//! A fleet on one Redis: two `lavic serve` processes (the fixture demo model, `catalog_url` on a
//! throw-away `redis-server` with `appendfsync always`). An item upserted through one replica is
//! recommended by the other on its very next request; a delete through one is NOT_FOUND on the
//! other; while Redis is down, requests over cached items are answered, others get UNAVAILABLE
//! naming the store, and readiness turns NOT_SERVING past `catalog_outage_secs`; after a kill -9
//! of redis-server and a restart no acknowledged item is lost and both replicas serve again; a
//! replica killed -9 in the middle of an upsert leaves all of its batch or none of it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lavic_catalog::redis::testing::{RedisServer, ServerOptions};
use lavic_server::proto::{self, catalog_client::CatalogClient, recommender_client::RecommenderClient};
use tonic::transport::Channel;
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};

use crate::common;

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");
const TOKEN: &str = "fleet-test-token";

/// One `lavic serve` process on the Redis catalog.
struct Replica {
    child: Child,
    addr: String,
    metrics_addr: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts `lavic serve` with `catalog_url` and waits until it listens (not until SERVING).
    fn start(redis_url: &str) -> Self {
        let mut cmd = Command::new(LAVIC);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("LAVIC_")) {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .args(["serve", "--grpc-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0", "--log-format", "json"])
            .args(["--catalog-url", redis_url, "--catalog-outage-secs", "2", "--redis-timeout-ms", "500"])
            .args(["--shutdown-grace-secs", "2"])
            .env("LAVIC_CATALOG_TOKEN", TOKEN)
            // The tiny fixture model: fast to load, and the catalog is the fleet's, not a demo's.
            .env("LAVIC_DEMO", "fixture")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let keep = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || metrics_addr.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("no 'gRPC listening' line; logs:\n{}", logs.lock().unwrap().join("\n")));
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let found = v["addr"].as_str().map(str::to_string);
            match v["message"].as_str() {
                Some("gRPC listening") => addr = found,
                Some("metrics listening") => metrics_addr = found,
                _ => {}
            }
        }
        Replica { child, addr: addr.unwrap(), metrics_addr: metrics_addr.unwrap(), logs }
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    async fn recommender(&self) -> RecommenderClient<Channel> {
        RecommenderClient::new(self.channel().await)
    }

    async fn catalog(&self) -> CatalogClient<Channel> {
        CatalogClient::new(self.channel().await)
    }

    async fn health(&self) -> Option<ServingStatus> {
        let mut h = HealthClient::new(self.channel().await);
        let r = h.check(HealthCheckRequest { service: lavic_server::RECOMMENDER_SERVICE.into() }).await.ok()?;
        ServingStatus::try_from(r.into_inner().status).ok()
    }

    /// Waits (up to `secs`) for the Recommender's health to be `want`.
    async fn wait_for(&self, want: ServingStatus, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.health().await;
            if now == Some(want) {
                return;
            }
            assert!(Instant::now() < deadline, "{} never {want:?} (now {now:?}); logs:\n{}", self.addr, self.logs());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Items this replica served from its cache so far (`lavic_catalog_cache_lookups_total`).
    fn cache_hits(&self) -> f64 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&self.metrics_addr).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("lavic_catalog_cache_lookups_total{result=\"hit\"} "))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn authorized<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn item(id: &str, title: &str, image: &str) -> proto::NewItem {
    proto::NewItem { id: id.into(), title: title.into(), image: common::image(image), metadata_json: String::new() }
}

async fn upsert(r: &Replica, items: Vec<proto::NewItem>) -> proto::UpsertItemsResponse {
    let n = items.len();
    let resp = r.catalog().await.upsert_items(authorized(proto::UpsertItemsRequest { items })).await.expect("upsert").into_inner();
    assert!(resp.failed.is_empty(), "{:?}", resp.failed);
    assert_eq!((resp.encoded + resp.reused + resp.unchanged) as usize, n, "{resp:?}");
    assert!(!resp.memory_only, "a Redis write is durable and fleet-wide");
    resp
}

async fn recommend(r: &Replica, ids: &[&str]) -> Result<proto::RecommendResponse, tonic::Status> {
    r.recommender().await.recommend(common::request(ids)).await.map(|r| r.into_inner())
}

async fn get(r: &Replica, id: &str) -> Result<proto::GetItemResponse, tonic::Status> {
    r.catalog().await.get_item(proto::GetItemRequest { id: id.into() }).await.map(|r| r.into_inner())
}

fn redis() -> RedisServer {
    RedisServer::start_with(ServerOptions { aof: true, appendfsync: "always", extra: Vec::new() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_every_acknowledged_write_and_survive_a_redis_crash() {
    let mut redis = redis();
    let url = redis.url();
    let (mut a, mut b) = (Replica::start(&url), Replica::start(&url));
    a.wait_for(ServingStatus::Serving, 90).await;
    b.wait_for(ServingStatus::Serving, 90).await;
    let info = a.recommender().await.model_info(proto::ModelInfoRequest {}).await.unwrap().into_inner();
    assert!(info.catalog_dir.contains(&url), "ModelInfo names the store: {}", info.catalog_dir);

    // Not there yet: B says NOT_FOUND.
    let e = recommend(&b, &["FLEET0001", "FLEET0003"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Upserted through A, recommended by B on its very next request.
    upsert(
        &a,
        vec![
            item("FLEET0001", "Canvas Tote, Everyday Size", "wide2.png"),
            item("FLEET0002", "Stoneware Mug, 12 oz", "square.jpg"),
            item("FLEET0003", "Desk Light Bar", "wide3.jpg"),
        ],
    )
    .await;
    let r = recommend(&b, &["FLEET0001", "FLEET0002", "FLEET0003"]).await.expect("B serves A's items at once");
    assert!(["FLEET0001", "FLEET0002", "FLEET0003"].contains(&r.item_id.as_str()), "{r:?}");
    assert_eq!(get(&b, "FLEET0001").await.unwrap().title, "Canvas Tote, Everyday Size");

    // A title change through B is what A serves next.
    upsert(&b, vec![item("FLEET0003", "Desk Light Bar, Warm White", "wide3.jpg")]).await;
    assert_eq!(get(&a, "FLEET0003").await.unwrap().title, "Desk Light Bar, Warm White");

    // Deleted through A: NOT_FOUND on B, for GetItem and for Recommend.
    let d = a.catalog().await.delete_items(authorized(proto::DeleteItemsRequest { ids: vec!["FLEET0002".into()] })).await.unwrap().into_inner();
    assert_eq!(d.deleted, 1);
    assert_eq!(get(&b, "FLEET0002").await.unwrap_err().code(), tonic::Code::NotFound);
    let e = recommend(&b, &["FLEET0001", "FLEET0002"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("FLEET0002"), "{}", e.message());

    // Acknowledged through A, never looked up by B: B has it only in Redis.
    upsert(&a, vec![item("FLEET0004", "Enamel Pin", "small.png")]).await;
    // B's cache holds FLEET0001 and FLEET0003: ask until one request is served from the cache
    // alone (under load, invalidations may lag and a lookup then refreshes the cache first).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let before = b.cache_hits();
        recommend(&b, &["FLEET0001", "FLEET0003"]).await.unwrap();
        if b.cache_hits() - before == 2.0 {
            break;
        }
        assert!(Instant::now() < deadline, "B never served FLEET0001 and FLEET0003 from its cache");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Redis crashes (kill -9). Cached items are still served; uncached ones are UNAVAILABLE,
    // naming the store; nothing wrong is served.
    redis.kill9();
    let r = recommend(&b, &["FLEET0001", "FLEET0003"]).await.expect("cached items are served during the outage");
    assert!(["FLEET0001", "FLEET0003"].contains(&r.item_id.as_str()));
    let e = recommend(&b, &["FLEET0001", "FLEET0004"]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&format!("127.0.0.1:{}", redis.port())), "names the store: {}", e.message());
    let e = a.catalog().await.upsert_items(authorized(proto::UpsertItemsRequest { items: vec![item("FLEET0005", "Lamp", "tall.png")] })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "a write that Redis did not acknowledge is not acknowledged: {e:?}");
    // Past catalog_outage_secs (2 s): NOT_SERVING, while the processes keep running.
    b.wait_for(ServingStatus::NotServing, 20).await;
    a.wait_for(ServingStatus::NotServing, 20).await;
    assert!(a.alive() && b.alive());

    // Redis restarts from its AOF: both replicas serve again, and every acknowledged item is there.
    redis.restart();
    a.wait_for(ServingStatus::Serving, 30).await;
    b.wait_for(ServingStatus::Serving, 30).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        match recommend(&b, &["FLEET0001", "FLEET0004"]).await {
            Ok(r) => break r,
            Err(e) if e.code() == tonic::Code::Unavailable && Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("after the restart: {e:?}\n{}", b.logs()),
        }
    };
    assert!(["FLEET0001", "FLEET0004"].contains(&r.item_id.as_str()));
    for (id, title) in [("FLEET0001", "Canvas Tote, Everyday Size"), ("FLEET0003", "Desk Light Bar, Warm White"), ("FLEET0004", "Enamel Pin")] {
        assert_eq!(get(&a, id).await.unwrap().title, title, "{id} survived the crash");
    }
    assert_eq!(get(&a, "FLEET0002").await.unwrap_err().code(), tonic::Code::NotFound, "the delete survived too");
    assert_eq!(get(&a, "FLEET0005").await.unwrap_err().code(), tonic::Code::NotFound, "the refused write is not there");

    // Readiness changes are logged.
    let logs = b.logs();
    assert!(logs.contains("NOT_SERVING") && logs.contains("reachable again"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_upsert_leaves_all_of_its_batch_or_none() {
    let redis = redis();
    let url = redis.url();
    let b = Replica::start(&url);
    b.wait_for(ServingStatus::Serving, 90).await;
    let images = ["wide2.png", "square.jpg", "wide3.jpg", "tall.png", "small.png", "wide2.png"];
    let mut outcomes = Vec::new();
    for (round, kill_after_ms) in [0u64, 3, 8, 15, 60].into_iter().enumerate() {
        let mut a = Replica::start(&url);
        a.wait_for(ServingStatus::Serving, 90).await;
        let ids: Vec<String> = (0..images.len()).map(|i| format!("KILL{round}_{i}")).collect();
        let items: Vec<proto::NewItem> =
            ids.iter().zip(images).enumerate().map(|(i, (id, img))| item(id, &format!("Batch {round} item {i}"), img)).collect();
        let mut client = a.catalog().await;
        let call = tokio::spawn(async move { client.upsert_items(authorized(proto::UpsertItemsRequest { items })).await });
        tokio::time::sleep(Duration::from_millis(kill_after_ms)).await;
        a.kill9();
        let acknowledged = matches!(call.await.unwrap(), Ok(ref r) if r.get_ref().failed.is_empty());
        let mut present = 0;
        for id in &ids {
            match get(&b, id).await {
                Ok(info) => {
                    assert!(info.title.starts_with(&format!("Batch {round}")));
                    present += 1;
                }
                Err(e) => assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}"),
            }
        }
        assert!(present == 0 || present == ids.len(), "round {round} (kill after {kill_after_ms} ms): {present} of {} items visible", ids.len());
        if acknowledged {
            assert_eq!(present, ids.len(), "an acknowledged batch is all there");
        }
        outcomes.push(present);
    }
    eprintln!("items visible per kill point (0, 3, 8, 15, 60 ms): {outcomes:?}");
    // The store is not wedged by the dead writer: the same batch goes through B whole.
    let items: Vec<proto::NewItem> = (0..images.len()).map(|i| item(&format!("KILL0_{i}"), "Again", images[i])).collect();
    upsert(&b, items).await;
    assert_eq!(get(&b, "KILL0_5").await.unwrap().title, "Again");
}
