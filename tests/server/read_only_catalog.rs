//! A server whose catalog folder it cannot write (the read-only volume of our Kubernetes
//! manifests) never acknowledges a write it cannot keep: UpsertItems and DeleteItems are
//! FAILED_PRECONDITION naming the reason and change nothing; with `allow_memory_only_writes`
//! they apply in memory and the response says `memory_only`. The folder is made unwritable with
//! the immutable attribute (`chattr +i`), which holds for root too.

use std::path::{Path, PathBuf};
use std::process::Command;

use lavic_model::{DType, ImageEncoder, LoadOptions};
use lavic_server::proto;

use crate::common;

const TOKEN: &str = "ro-token";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Makes a folder immutable until dropped.
struct Immutable(PathBuf);

impl Immutable {
    fn set(dir: &Path) -> Self {
        let out = Command::new("chattr").arg("+i").arg(dir).output().expect("chattr (e2fsprogs) is needed by this test");
        assert!(out.status.success(), "chattr +i {} failed: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        assert!(tempfile::tempfile_in(dir).is_err(), "the folder is still writable");
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

fn authed<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

fn new_item() -> proto::NewItem {
    proto::NewItem { id: "B0NEW00001".into(), title: "Lamp".into(), image: common::image("tall.png"), metadata_json: String::new() }
}

#[tokio::test]
async fn writes_to_a_read_only_catalog_are_refused_unless_memory_only_is_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let items = tmp.path().join("items.jsonl");
    std::fs::write(&items, "{\"id\":\"B000000001\",\"title\":\"Mug\",\"image\":\"square.jpg\"}\n{\"id\":\"B000000002\",\"title\":\"Bag\",\"image\":\"wide2.png\"}\n").unwrap();
    let f = fixtures();
    let mut opts = LoadOptions::new(f.join("tiny-mistral"));
    opts.dtype = Some(DType::F32);
    let encoder = ImageEncoder::load(&opts).unwrap();
    let dir = tmp.path().join("catalog");
    let mut build = lavic_catalog::BuildOptions::new(&items, f.join("images"), &dir);
    build.progress = lavic_catalog::ProgressMode::Off;
    lavic_catalog::build(&build, &encoder).unwrap();
    let _ro = Immutable::set(&dir);

    let mut config = common::config();
    config.model_dir = Some(f.join("tiny-mistral"));
    config.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    config.lm_adapter = Some(f.join("adapters/mistral-lm"));
    config.catalog_dir = Some(dir.clone());
    config.catalog_token = Some(lavic_server::config::Secret(TOKEN.into()));

    // Refused: nothing is acknowledged, nothing changes.
    let server = common::start_serving(config.clone()).await;
    let mut catalog = server.catalog().await;
    let e = catalog.upsert_items(authed(proto::UpsertItemsRequest { items: vec![new_item()] })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("not writable") && e.message().contains(&dir.display().to_string()), "{}", e.message());
    let e = catalog.delete_items(authed(proto::DeleteItemsRequest { ids: vec!["B000000001".into()] })).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert_eq!(catalog.get_item(proto::GetItemRequest { id: "B0NEW00001".into() }).await.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(catalog.get_item(proto::GetItemRequest { id: "B000000001".into() }).await.unwrap().into_inner().title, "Mug");
    let r = server.recommender().await.recommend(common::request(&["B000000001", "B000000002"])).await;
    assert!(r.is_ok(), "reads are served: {r:?}");
    server.stop().await;

    // Allowed in memory only: applied, and the responses say so.
    config.allow_memory_only_writes = true;
    let server = common::start_serving(config).await;
    let mut catalog = server.catalog().await;
    let r = catalog.upsert_items(authed(proto::UpsertItemsRequest { items: vec![new_item()] })).await.unwrap().into_inner();
    assert!(r.memory_only && r.encoded == 1 && r.failed.is_empty(), "{r:?}");
    assert_eq!(catalog.get_item(proto::GetItemRequest { id: "B0NEW00001".into() }).await.unwrap().into_inner().title, "Lamp");
    let d = catalog.delete_items(authed(proto::DeleteItemsRequest { ids: vec!["B000000002".into()] })).await.unwrap().into_inner();
    assert!(d.memory_only && d.deleted == 1, "{d:?}");
    server.stop().await;
}
