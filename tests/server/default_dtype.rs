//! Issue 11, item 11: `lavic catalog build` and `lavic serve` default to the same compute dtype
//! (f32 on CPU; the fixture checkpoint is bf16), so a catalog built and served with the defaults
//! is accepted; a catalog built with another dtype is refused with a message naming the setting
//! that differs.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// `lavic catalog build` of two fixture items into `out`, with `extra` flags.
fn build(tmp: &Path, out: &Path, extra: &[&str]) {
    let items = tmp.join("items.jsonl");
    std::fs::write(&items, "{\"id\":\"B000000001\",\"title\":\"Mug\",\"image\":\"square.jpg\"}\n{\"id\":\"B000000002\",\"title\":\"Lamp\",\"image\":\"wide2.png\"}\n").unwrap();
    let f = fixtures();
    let o = Command::new(env!("CARGO_BIN_EXE_lavic"))
        .args([
            "catalog",
            "build",
            "--items",
            items.to_str().unwrap(),
            "--images",
            f.join("images").to_str().unwrap(),
        ])
        .args([
            "--model",
            f.join("tiny-mistral").to_str().unwrap(),
            "--vision-adapter",
            f.join("adapters/mistral-vision").to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap(), "--progress", "off"])
        .args(extra)
        .env("LAVIC_LOG", "error")
        .env_remove("LAVIC_DTYPE")
        .env_remove("LAVIC_DEVICE")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn config(catalog: &Path) -> lavic_server::Config {
    let f = fixtures();
    let mut c = common::config();
    c.model_dir = Some(f.join("tiny-mistral"));
    c.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    c.vision_adapter = Some(f.join("adapters/mistral-vision"));
    c.lm_adapter = Some(f.join("adapters/mistral-lm"));
    c.catalog_dir = Some(catalog.to_path_buf());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_built_and_served_with_the_defaults_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = tmp.path().join("defaults");
    build(tmp.path(), &defaults, &[]);
    let server = common::start_serving(config(&defaults)).await;
    let info = server
        .recommender()
        .await
        .model_info(lavic_server::proto::ModelInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.dtype.as_str(), info.catalog_items), ("f32", 2));
    server.stop().await;

    // A catalog built with the checkpoint's bf16: refused, naming the dtype on both sides.
    let bf16 = tmp.path().join("bf16");
    build(tmp.path(), &bf16, &["--dtype", "bf16"]);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = lavic_server::Listeners {
        grpc,
        metrics: None,
    };
    let serve = lavic_server::serve(
        listeners,
        config(&bf16),
        lavic_server::Hooks::default(),
        std::future::pending(),
    );
    let err = tokio::time::timeout(std::time::Duration::from_secs(120), serve)
        .await
        .expect("serve must fail")
        .unwrap_err()
        .to_string();
    assert!(err.contains("fingerprint"), "{err}");
    assert!(
        err.contains("built with dtype bf16") && err.contains("this server runs dtype f32"),
        "{err}"
    );
}
