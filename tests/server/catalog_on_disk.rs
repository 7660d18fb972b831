//! Issue 11, item 6: a catalog folder changed under a running `lavic serve` (a separate process,
//! so that a crash is seen as one). Rebuilt in place by `lavic catalog build`: the server reopens
//! it (a removed item is gone, writes work again). A base segment cut short in place (a restore,
//! a sync tool): GetItem and Recommend answer UNAVAILABLE, the process stays alive (it used to die
//! of SIGBUS without a log line), health turns NOT_SERVING with an error line, and SERVING again
//! once the folder is rebuilt.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lavic_model::{DType, ImageEncoder, LoadOptions};
use lavic_server::proto::{self, catalog_client::CatalogClient, recommender_client::RecommenderClient};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::common::*;

const TOKEN: &str = "disk-token";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// The fixture model's image encoder with its stage-1 adapter (what the server loads), f32.
fn encoder() -> ImageEncoder {
    let f = fixtures();
    let mut opts = LoadOptions::new(f.join("tiny-mistral"));
    opts.vision_adapter = Some(f.join("adapters/mistral-vision"));
    opts.dtype = Some(DType::F32);
    ImageEncoder::load(&opts).unwrap()
}

/// Builds (or rebuilds in place) the catalog `dir` from `(id, fixture image)` items.
fn build(tmp: &Path, dir: &Path, items: &[(&str, &str)], enc: &ImageEncoder) {
    let input = tmp.join("items.jsonl");
    let lines: String = items.iter().map(|(id, img)| format!("{{\"id\":\"{id}\",\"title\":\"Item {id}\",\"image\":\"{img}\"}}\n")).collect();
    std::fs::write(&input, lines).unwrap();
    let mut opts = lavic_catalog::BuildOptions::new(&input, fixtures().join("images"), dir);
    opts.progress = lavic_catalog::ProgressMode::Off;
    lavic_catalog::build(&opts, enc).unwrap();
}

async fn get(cat: &mut CatalogClient<tonic::transport::Channel>, id: &str) -> Result<proto::GetItemResponse, tonic::Status> {
    cat.get_item(proto::GetItemRequest { id: id.into() }).await.map(|r| r.into_inner())
}

/// Waits (at most 20 s) until the Recommender service reports `want`.
async fn wait_health(lavic: &LavicProcess, want: ServingStatus) {
    let mut h = HealthClient::new(lavic.channel().await);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = HealthCheckRequest { service: lavic_server::RECOMMENDER_SERVICE.into() };
        if h.check(req).await.is_ok_and(|r| r.into_inner().status == want as i32) {
            return;
        }
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_changed_on_disk_is_reopened_or_refused_never_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("catalog");
    let enc = encoder();
    let three = [("B000000001", "square.jpg"), ("B000000002", "wide2.png"), ("B000000003", "tall.png")];
    build(tmp.path(), &dir, &three, &enc);
    let f = fixtures();
    let path = |p: &str| f.join(p).display().to_string();
    let (model, tokenizer, vision, lm) = (path("tiny-mistral"), path("tokenizer/tokenizer.json"), path("adapters/mistral-vision"), path("adapters/mistral-lm"));
    let args = ["--catalog-dir", dir.to_str().unwrap(), "--catalog-token", TOKEN, "--model-dir", &model, "--tokenizer", &tokenizer];
    let mut lavic = LavicProcess::start(&[&args[..], &["--vision-adapter", &vision, "--lm-adapter", &lm]].concat(), &[]).await;
    let mut cat = CatalogClient::new(lavic.channel().await);
    let mut rec = RecommenderClient::new(lavic.channel().await);
    assert_eq!(get(&mut cat, "B000000003").await.unwrap().title, "Item B000000003");

    // 1. Rebuilt in place without B000000003: reopened, the removed item is gone, writes work.
    build(tmp.path(), &dir, &three[..2], &enc);
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&mut cat, "B000000003").await.is_ok() {
        assert!(Instant::now() < deadline, "the removed item is still served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&mut cat, "B000000003").await.unwrap_err().code(), tonic::Code::NotFound);
    let mut up = tonic::Request::new(proto::UpsertItemsRequest {
        items: vec![proto::NewItem { id: "B0NEW00001".into(), title: "Lamp".into(), image: vec![], metadata_json: String::new() }],
    });
    up.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let r = cat.upsert_items(up).await.expect("a write after the rebuild is not refused as stale").into_inner();
    assert_eq!(r.catalog_items, 3);
    assert!(rec.recommend(request(&["B000000001", "B0NEW00001"])).await.is_ok());

    // 2. The base segment cut short in place: clean errors, the process lives, NOT_SERVING.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).unwrap()).unwrap();
    let base = dir.join(manifest["manifest"]["base_file"].as_str().unwrap());
    std::fs::OpenOptions::new().write(true).open(&base).unwrap().set_len(0).unwrap();
    let e = get(&mut cat, "B000000001").await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("changed on disk") && e.message().contains("cut short"), "{}", e.message());
    let e = rec.recommend(request(&["B000000001", "B000000002"])).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(lavic.child.try_wait().unwrap().is_none(), "the server died");
    wait_health(&lavic, ServingStatus::NotServing).await;
    assert!(lavic.child.try_wait().unwrap().is_none(), "the server died");
    let said = |lavic: &mut LavicProcess, what: &str| lavic.log_lines().iter().any(|l| l.contains(what));
    assert!(said(&mut lavic, "catalog changed on disk and cannot be reopened: NOT_SERVING"), "{:?}", lavic.log_lines());

    // 3. Rebuilt again: reopened, SERVING, answered.
    build(tmp.path(), &dir, &three, &enc);
    wait_health(&lavic, ServingStatus::Serving).await;
    assert_eq!(get(&mut cat, "B000000003").await.unwrap().title, "Item B000000003");
    assert!(rec.recommend(request(&["B000000001", "B000000003"])).await.is_ok());
    assert!(said(&mut lavic, "catalog changed on disk: reopened"), "{:?}", lavic.log_lines());
    let log = lavic.stop();
    assert!(!log.iter().any(|l| l.contains("panicked")), "{log:?}");
}
