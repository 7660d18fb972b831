//! SIGTERM drains: the real signal handler (`lavic_server::shutdown_signal`, as `lavic serve`
//! uses it) receives a SIGTERM sent to this test process; the in-flight call completes, the next
//! call is refused, and `serve` returns within the grace period.

use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::{Gate, RECOMMENDER_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_calls_and_refuses_new_ones() {
    let gate = Gate::default();
    let mut server = start_with(config(), gate.clone(), lavic_server::shutdown_signal(), None).await;
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::Serving).await;

    gate.close();
    let mut c = server.recommender().await;
    let inflight = tokio::spawn(async move { c.recommend(request(&DEMO[..3])).await });
    gate.wait_for_waiting(1).await;
    let mut late = server.recommender().await;

    let status = std::process::Command::new("kill").args(["-TERM", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::NotServing).await;

    // A new call on an open connection is refused while the old one is still running.
    let err = late.recommend(request(&DEMO[1..3])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("shutting down"), "{}", err.message());

    let t = Instant::now();
    gate.open();
    let done = inflight.await.unwrap().expect("the in-flight call must complete");
    assert!(DEMO[..3].contains(&done.into_inner().item_id.as_str()));
    server.join().await;
    assert!(t.elapsed() < Duration::from_secs(10), "drain took {:?}", t.elapsed());

    // Gone: new connections fail.
    let dial = tonic::transport::Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await;
    assert!(dial.is_err(), "the server still accepts connections after draining");
}
