//! grpc.health.v1 through the server's life: the overall service "" is SERVING as soon as the
//! process listens; `lavic.v1.Recommender` is NOT_SERVING until the model is loaded and the
//! warm-up passed, SERVING then, and NOT_SERVING again from the shutdown signal on.

use crate::common::*;
use lavic_server::{Gate, CATALOG_SERVICE, RECOMMENDER_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_loading_warm_up_and_draining() {
    // The closed gate holds the warm-up request in the worker.
    let gate = Gate::closed();
    let server = start(config(), gate.clone()).await;
    gate.wait_for_waiting(1).await;

    // Before warm-up: process up, recommender not serving, calls refused as UNAVAILABLE.
    assert_eq!(server.health("").await, ServingStatus::Serving);
    assert_eq!(server.health(RECOMMENDER_SERVICE).await, ServingStatus::NotServing);
    assert_eq!(server.health(CATALOG_SERVICE).await, ServingStatus::NotServing);
    let err = server.recommender().await.recommend(request(&DEMO[..2])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("loading"), "{}", err.message());
    // Metrics are served while loading.
    assert!(server.metrics().await.contains("lavic_ready 0"));

    // Warm-up passes: serving.
    gate.open();
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    assert_eq!(server.health(CATALOG_SERVICE).await, ServingStatus::Serving);
    assert!(server.recommender().await.recommend(request(&DEMO[..2])).await.is_ok());

    // Draining: hold one request in the worker, then signal shutdown.
    gate.close();
    let mut client = server.recommender().await;
    let inflight = tokio::spawn(async move { client.recommend(request(&DEMO[1..4])).await });
    gate.wait_for_waiting(1).await;
    let health_channel = server.channel().await;
    let mut server = server;
    let stop = server.stop_signal();
    stop.send(()).unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(health_channel);
    let check = |name: &'static str| tonic_health::pb::HealthCheckRequest { service: name.into() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = health.check(check(RECOMMENDER_SERVICE)).await.unwrap().into_inner().status;
        if s == ServingStatus::NotServing as i32 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "recommender never went NOT_SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The process itself stays live while draining (liveness must not kill a draining pod).
    assert_eq!(health.check(check("")).await.unwrap().into_inner().status, ServingStatus::Serving as i32);
    gate.open();
    assert!(inflight.await.unwrap().is_ok(), "the in-flight call must complete");
    server.join().await;
}
