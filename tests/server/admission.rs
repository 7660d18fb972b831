//! Issue 11, item 3: admitted work holds its slot until it has really stopped. A call whose
//! deadline passes while its images are still being decoded stops waiting, but its queue slot
//! (and its share of the decoded-pixel budget) stays taken until the decoding ends, and
//! `lavic_inflight_requests` says so. Decoding is held at a test gate, so the count is exact.

use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::proto::{self, recommender_client::RecommenderClient};
use lavic_server::{Config, Gate, Hooks};

fn with_image(id: &str, image: Vec<u8>) -> proto::RecommendRequest {
    let mut r = request(&[]);
    r.inline_items = vec![
        proto::InlineItem {
            id: id.into(),
            title: "One".into(),
            image,
        },
        proto::InlineItem {
            id: format!("{id}-2"),
            title: "Two".into(),
            image: vec![],
        },
    ];
    r
}

async fn wait_for_metric(server: &TestServer, series: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric(series).await != want {
        assert!(
            Instant::now() < deadline,
            "{series} is {}, expected {want}",
            server.metric(series).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_decode_keeps_its_slot_until_it_stops() {
    let decode = Gate::closed();
    let hooks = Hooks {
        decode_gate: Some(decode.clone()),
        ..Hooks::default()
    };
    let server = start_serving_with_hooks(
        Config {
            queue_capacity: 1,
            ..config()
        },
        hooks,
    )
    .await;
    let mut rec: RecommenderClient<_> = server.recommender().await;

    // Six calls with a 50 ms deadline, one after the other, each with an image to decode.
    let mut codes = Vec::new();
    for i in 0..6 {
        let mut req = tonic::Request::new(with_image(&format!("X{i}"), image("square.jpg")));
        req.set_timeout(Duration::from_millis(50));
        codes.push(rec.recommend(req).await.unwrap_err().code());
    }
    let timed_out =
        |c: &tonic::Code| matches!(c, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled);
    assert!(timed_out(&codes[0]), "{codes:?}");
    assert_eq!(
        &codes[1..],
        &[tonic::Code::ResourceExhausted; 5],
        "only one call may be admitted: {codes:?}"
    );
    decode.wait_for_waiting(1).await;
    assert_eq!(decode.waiting(), 1, "one decode admitted");
    assert_eq!(
        server.metric("lavic_inflight_requests").await,
        1.0,
        "the metric counts the decode still running"
    );

    // The decode ends: the slot comes back, and new calls are admitted again.
    decode.open();
    wait_for_metric(&server, "lavic_inflight_requests", 0.0).await;
    assert_eq!(decode.passed(), 1, "exactly one decode ran");
    assert!(rec
        .recommend(with_image("Y", image("square.jpg")))
        .await
        .is_ok());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decoded_pixels_of_admitted_requests_are_bounded() {
    let decode = Gate::closed();
    let hooks = Hooks {
        decode_gate: Some(decode.clone()),
        ..Hooks::default()
    };
    let px = 1_000_000;
    let config = Config {
        queue_capacity: 8,
        max_image_pixels: px,
        max_request_pixels: px,
        max_inflight_pixels: px,
        ..config()
    };
    let server = start_serving_with_hooks(config, hooks).await;

    // A request that takes the whole pixel budget is admitted and held at decoding...
    let mut c = server.recommender().await;
    let first =
        tokio::spawn(async move { c.recommend(with_image("A", bomb_png(1000, 1000))).await });
    decode.wait_for_waiting(1).await;
    // ...so another with any image is shed, while one without images still runs.
    let mut rec = server.recommender().await;
    let err = rec
        .recommend(with_image("B", image("square.jpg")))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("max_inflight_pixels"),
        "{}",
        err.message()
    );
    assert!(rec.recommend(request(&DEMO[..2])).await.is_ok());

    decode.open();
    assert!(first.await.unwrap().is_ok());
    assert!(rec
        .recommend(with_image("B", image("square.jpg")))
        .await
        .is_ok());
    assert_eq!(decode.passed(), 2);
    server.stop().await;
}
