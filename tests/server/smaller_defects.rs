//! Issue 11, item 10: shutdown is bounded by `shutdown_grace_secs` even with a call that does
//! not finish in time; UpsertItems' catalog encoding runs in its own lane, so a Recommend with a
//! deadline is answered while an upsert is being encoded; a flood of invalid requests writes a
//! few log lines and counts the rest.

use std::time::{Duration, Instant};

use lavic_server::proto::{self, catalog_client::CatalogClient, recommender_client::RecommenderClient};
use lavic_server::{Config, Gate, Hooks, RECOMMENDER_SERVICE};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_never_outlasts_the_grace_period() {
    let grace = Duration::from_secs(2);
    let gate = Gate::default();
    let mut server = start(Config { shutdown_grace_secs: grace.as_secs(), ..config() }, gate.clone()).await;
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    // A call held in the model worker: it cannot finish within the grace period.
    gate.close();
    let mut c = server.recommender().await;
    let inflight = tokio::spawn(async move { c.recommend(request(&DEMO[..2])).await });
    gate.wait_for_waiting(1).await;

    let t = Instant::now();
    let _ = server.stop_signal().send(());
    server.join().await;
    let took = t.elapsed();
    gate.open();
    assert!(took >= grace - Duration::from_millis(100), "the in-flight call was not given the grace period: {took:?}");
    assert!(took < grace + Duration::from_millis(500), "shutdown took {took:?} with a grace of {grace:?}");
    inflight.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recommend_is_answered_while_an_upsert_is_being_encoded() {
    let catalog_gate = Gate::closed();
    let hooks = Hooks { catalog_gate: Some(catalog_gate.clone()), ..Hooks::default() };
    let config = Config { catalog_token: Some(lavic_server::config::Secret("lane".into())), workers: 1, ..config() };
    let server = start_serving_with_hooks(config, hooks).await;

    // An upsert of four images, held in the catalog lane (where its encoding runs).
    let items = ["square.jpg", "wide2.png", "wide3.jpg", "tall.png"]
        .iter()
        .enumerate()
        .map(|(i, img)| proto::NewItem { id: format!("LANE00000{i}"), title: "t".into(), image: image(img), metadata_json: String::new() })
        .collect();
    let mut up = tonic::Request::new(proto::UpsertItemsRequest { items });
    up.metadata_mut().insert("authorization", "Bearer lane".parse().unwrap());
    let mut cat: CatalogClient<_> = server.catalog().await;
    let upsert = tokio::spawn(async move { cat.upsert_items(up).await });
    catalog_gate.wait_for_waiting(1).await;

    // The single model worker still answers recommendations, deadline and all.
    let mut rec: RecommenderClient<_> = server.recommender().await;
    for _ in 0..3 {
        let mut req = tonic::Request::new(request(&DEMO[..3]));
        req.set_timeout(Duration::from_secs(20));
        rec.recommend(req).await.expect("a Recommend waits behind an upsert");
    }
    assert_eq!(catalog_gate.waiting(), 1, "the upsert is still held");
    assert!(!upsert.is_finished());

    catalog_gate.open();
    let r = upsert.await.unwrap().unwrap().into_inner();
    assert_eq!((r.encoded, r.failed.len(), r.catalog_items), (4, 0, 9), "{r:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_invalid_requests_writes_few_log_lines_and_counts_the_rest() {
    let mut lavic = LavicProcess::start(&["--log-format", "json"], &[]).await;
    let n = 1000;
    let channel = lavic.channel().await;
    let mut tasks = Vec::new();
    for k in 0..8 {
        let mut rec = RecommenderClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                let mut req = request(&["DEMO000001"]); // one candidate: INVALID_ARGUMENT
                req.request_id = format!("flood-{k}-{i}");
                assert_eq!(rec.recommend(req).await.unwrap_err().code(), tonic::Code::InvalidArgument);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // One more after the window: its line reports what was left out since the last one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut req = request(&["DEMO000001"]);
    req.request_id = "flood-last".into();
    assert!(RecommenderClient::new(channel).recommend(req).await.is_err());

    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let lines: Vec<serde_json::Value> = lavic
            .log_lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == "refused" && v["request_id"].as_str().is_some_and(|r| r.starts_with("flood-")))
            .collect();
        if lines.iter().any(|v| v["request_id"] == "flood-last") || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let suppressed: u64 = refused.iter().map(|v| v["suppressed"].as_u64().expect("every error line says how many were left out")).sum();
    assert!(refused.len() < n / 10, "{} log lines for {n} invalid requests", refused.len());
    assert_eq!(refused.len() as u64 + suppressed, n as u64 + 1, "every refused call is written or counted");
    assert!(refused.iter().any(|v| v["request_id"] == "flood-last" && v["suppressed"].as_u64() > Some(0)));
    lavic.stop();
}
