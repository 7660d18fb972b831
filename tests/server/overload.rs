//! Load shedding: beyond LAVIC_QUEUE_CAPACITY admitted requests, Recommend answers
//! RESOURCE_EXHAUSTED at once, while health, ModelInfo and the admitted requests keep working.

use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::proto;
use lavic_server::{Config, Gate, RECOMMENDER_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excess_load_is_shed_and_the_server_keeps_answering() {
    let gate = Gate::default();
    let server = start(Config { queue_capacity: 2, max_batch: 1, ..config() }, gate.clone()).await;
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::Serving).await;

    // One request held in the worker (1 of 2 slots)...
    gate.close();
    let mut c = server.recommender().await;
    let first = tokio::spawn(async move { c.recommend(request(&DEMO[..2])).await });
    gate.wait_for_waiting(1).await;

    // ...then 5 at once: exactly one gets the last slot, four are shed.
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut c = server.recommender().await;
        calls.push(tokio::spawn(async move { c.recommend(request(&DEMO[i % 4..i % 4 + 2])).await }));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls.iter().filter(|c| c.is_finished()).count() < 4 {
        assert!(Instant::now() < deadline, "the excess requests were not shed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (done, mut waiting): (Vec<_>, Vec<_>) = calls.into_iter().partition(|c| c.is_finished());
    assert_eq!(waiting.len(), 1);
    for call in done {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    }

    // While overloaded, everything else still answers.
    assert_eq!(server.health(RECOMMENDER_SERVICE).await, ServingStatus::Serving);
    assert_eq!(server.health("").await, ServingStatus::Serving);
    let info = server.recommender().await.model_info(proto::ModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.catalog_items, 5);
    assert_eq!(server.metric("lavic_inflight_requests").await, 2.0);
    assert_eq!(server.metric("lavic_requests_total{method=\"Recommend\",status=\"resource_exhausted\"}").await, 4.0);

    // The admitted requests complete, and new ones are admitted again.
    gate.open();
    assert!(first.await.unwrap().is_ok());
    assert!(waiting.pop().unwrap().await.unwrap().is_ok());
    assert!(server.recommender().await.recommend(request(&DEMO[2..4])).await.is_ok());
    assert_eq!(server.metric("lavic_inflight_requests").await, 0.0);
    server.stop().await;
}
