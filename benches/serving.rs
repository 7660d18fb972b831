//! Serving overhead: the same Recommend request answered (a) in-process by the engine, which is
//! what a model worker does (catalog lookup, prompt, model) after validation, and (b) end to end
//! over gRPC on loopback through the real server (HTTP/2, tonic, the tower stack, admission,
//! queue, worker thread, response). (b) - (a) is what serving adds. The request is the first of
//! `benches/scenarios/recommend-p50-{10,20}.json` (a median-length Reddit-Amazon dialogue; the
//! 5 demo-catalog items plus inline items with titles and no image), with the fixture demo model
//! (`demo = "fixture"`: tiny fixture, f32, CPU), in default and FREE mode. One request at a time (no batching).
//!
//! Run: `cargo bench -p lavic-bench --bench serving`. Numbers go to docs/PERFORMANCE.md.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use lavic_server::engine::Engine;
use lavic_server::metrics::Metrics;
use lavic_server::proto::{self, recommend_request::Dialogue, recommender_client::RecommenderClient};
use lavic_server::decode::decode_images;
use lavic_server::validation::{self, Limits};
use lavic_server::{Config, Hooks, Listeners};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first request of a scenario file, as a message.
fn scenario(name: &str, mode: proto::Mode) -> proto::RecommendRequest {
    let text = std::fs::read_to_string(root().join("benches/scenarios").join(name)).expect("scenario file");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let r = &v[0];
    let strs = |x: &serde_json::Value| x.as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect::<Vec<_>>();
    proto::RecommendRequest {
        dialogue: Some(Dialogue::Context(r["context"].as_str().unwrap().into())),
        candidate_ids: strs(&r["candidate_ids"]),
        inline_items: r["inline_items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| proto::InlineItem { id: i["id"].as_str().unwrap().into(), title: i["title"].as_str().unwrap().into(), image: vec![] })
            .collect(),
        mode: mode as i32,
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let config = Config { shutdown_grace_secs: 5, demo: lavic_server::config::DemoKind::Fixture, ..Config::default() };
    let engine = Engine::load(&config, Arc::new(Metrics::new())).expect("demo model");
    let limits = Limits::from(&config);

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = rt.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = grpc.local_addr().unwrap();
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        (addr, tokio::spawn(lavic_server::serve(Listeners { grpc, metrics: None }, config.clone(), Hooks::default(), shutdown)))
    });
    let mut client = rt.block_on(async {
        loop {
            if let Ok(ch) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await {
                let mut client = RecommenderClient::new(ch);
                if client.model_info(proto::ModelInfoRequest {}).await.is_ok() {
                    break client;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    let mut group = c.benchmark_group("serving");
    for n in [10, 20] {
        for (name, mode) in [("default", proto::Mode::Default), ("free", proto::Mode::Free)] {
            let req = scenario(&format!("recommend-p50-{n}.json"), mode);
            // Wait for the server's warm-up to pass (UNAVAILABLE until then).
            while rt.block_on(client.recommend(req.clone())).is_err() {
                std::thread::sleep(Duration::from_millis(50));
            }
            group.bench_function(format!("{n} candidates, {name} mode: in-process engine"), |b| {
                b.iter(|| {
                    let v = validation::recommend(req.clone(), &limits).unwrap();
                    let v = decode_images(v, &engine.model.encoder).unwrap();
                    let out = engine.recommend(&[&v]);
                    assert!(out[0].is_ok());
                })
            });
            group.bench_function(format!("{n} candidates, {name} mode: gRPC loopback end to end"), |b| {
                b.iter(|| rt.block_on(client.recommend(req.clone())).unwrap())
            });
        }
    }
    group.finish();
    let _ = stop_tx.send(());
    rt.block_on(server).unwrap().unwrap();
}

criterion_group! {
    name = serving;
    config = Criterion::default().sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    targets = benches
}
criterion_main!(serving);
