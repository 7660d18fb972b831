//! The client's deadline (grpc-timeout) is honoured with DEADLINE_EXCEEDED, and the abandoned
//! request is dropped from the queue: the model never runs it.

use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::{Config, Gate, RECOMMENDER_SERVICE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_requests_answer_deadline_exceeded_and_never_run() {
    let gate = Gate::default();
    let server = start(Config { max_batch: 1, ..config() }, gate.clone()).await;
    server.wait_for(RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    let passed_before = gate.passed();

    // Hold the worker with a request that has no deadline.
    gate.close();
    let mut c = server.recommender().await;
    let held = tokio::spawn(async move { c.recommend(request(&DEMO[..2])).await });
    gate.wait_for_waiting(1).await;

    // This one waits in the queue past its 300 ms deadline.
    let mut req = tonic::Request::new(request(&DEMO[2..4]));
    req.set_timeout(Duration::from_millis(300));
    let t = Instant::now();
    let err = server.recommender().await.recommend(req).await.unwrap_err();
    let waited = t.elapsed();
    // The server answers DEADLINE_EXCEEDED a little before the deadline. (The tonic client also
    // runs its own timer and reports CANCELLED "Timeout expired" if the server's answer has not
    // arrived by then, which only a scheduling stall of tens of milliseconds can cause.)
    let own_timer = err.code() == tonic::Code::Cancelled && err.message().contains("Timeout expired");
    assert!(err.code() == tonic::Code::DeadlineExceeded || own_timer, "{err:?}");
    assert!(waited >= Duration::from_millis(250) && waited < Duration::from_secs(5), "answered after {waited:?}");

    // Release the worker: the held request runs, the expired one is dropped, the next one runs.
    gate.open();
    assert!(held.await.unwrap().is_ok());
    assert!(server.recommender().await.recommend(request(&DEMO[1..3])).await.is_ok());
    assert_eq!(gate.passed() - passed_before, 2, "the expired request must not reach the model");
    assert_eq!(server.metric("lavic_dropped_requests_total{reason=\"deadline\"}").await, 1.0);
    if !own_timer {
        assert_eq!(server.metric("lavic_requests_total{method=\"Recommend\",status=\"deadline_exceeded\"}").await, 1.0);
    }

    // A generous deadline is no problem.
    let mut req = tonic::Request::new(request(&DEMO[..3]));
    req.set_timeout(Duration::from_secs(30));
    assert!(server.recommender().await.recommend(req).await.is_ok());
    server.stop().await;
}
