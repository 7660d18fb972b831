//! The server refuses a catalog built by other numbers (here: without the stage-1 adapter the
//! server loads), with a message naming the fingerprints, instead of serving wrong tokens; the
//! same catalog is accepted by a server whose encoder matches.

use std::path::PathBuf;

use lavic_model::{DType, ImageEncoder, LoadOptions};

use crate::common;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[tokio::test]
async fn a_catalog_from_another_encoder_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let items = tmp.path().join("items.jsonl");
    std::fs::write(&items, "{\"id\":\"B000000001\",\"title\":\"Mug\",\"image\":\"square.jpg\"}\n{\"id\":\"B000000002\",\"title\":\"Lamp\",\"image\":\"wide2.png\"}\n").unwrap();
    let mut opts = LoadOptions::new(fixtures().join("tiny-mistral"));
    opts.dtype = Some(DType::F32);
    let encoder = ImageEncoder::load(&opts).unwrap(); // no vision adapter
    let out = tmp.path().join("catalog");
    let mut build = lavic_catalog::BuildOptions::new(&items, fixtures().join("images"), &out);
    build.progress = lavic_catalog::ProgressMode::Off;
    lavic_catalog::build(&build, &encoder).unwrap();

    let f = fixtures();
    let mut config = common::config();
    config.model_dir = Some(f.join("tiny-mistral"));
    config.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    config.lm_adapter = Some(f.join("adapters/mistral-lm"));
    config.catalog_dir = Some(out.clone());
    config.vision_adapter = Some(f.join("adapters/mistral-vision"));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listeners = lavic_server::Listeners { grpc, metrics: None };
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        lavic_server::serve(listeners, config.clone(), lavic_server::Hooks::default(), std::future::pending()),
    )
    .await
    .expect("serve must stop with an error, not run");
    let err = result.expect_err("a catalog from another encoder must be refused").to_string();
    assert!(err.contains("fingerprint") && err.contains(encoder.fingerprint()), "{err}");

    // Without the adapter the encoder matches and the server serves that catalog.
    config.vision_adapter = None;
    let server = common::start_serving(config).await;
    server.stop().await;
}
