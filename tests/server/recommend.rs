//! Recommendations through the real server and the generated tonic client: over catalog ids,
//! over inline items, as structured turns, in FREE mode, with compression; plus ModelInfo and
//! the metrics that one call leaves behind.

use crate::common::*;
use lavic_server::proto::{self, recommend_request::Dialogue};
use lavic_server::Config;
use tonic::codec::CompressionEncoding;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommends_over_catalog_ids_and_inline_items() {
    let server = start_serving(config()).await;
    let mut client = server.recommender().await;

    // Catalog ids, with scores.
    let mut req = request(&DEMO[..4]);
    req.request_id = "req-catalog-1".into();
    req.include_scores = true;
    let r = client.recommend(req).await.unwrap().into_inner();
    assert_eq!(r.request_id, "req-catalog-1");
    assert!(DEMO[..4].contains(&r.item_id.as_str()), "pick {} is not a candidate", r.item_id);
    assert_eq!(r.scores.len(), 4);
    assert!(r.scores.windows(2).all(|w| w[0].logprob >= w[1].logprob), "scores not sorted best first");
    assert!(r.scores.iter().all(|s| s.tokens > 0 && s.logprob <= 0.0));
    // 5 image tokens per candidate are in the prompt.
    assert!(r.prompt_tokens > 4 * 5, "prompt_tokens {}", r.prompt_tokens);
    assert_eq!(r.shortened_tokens, 0);
    assert!(r.fallback_ids.is_empty());
    assert_eq!(r.mode, proto::Mode::Default as i32);
    assert!(r.batch_size >= 1);
    let t = r.timings.unwrap();
    assert!(t.total_us >= t.inference_us && t.inference_us > 0);
    if !r.valid {
        assert_ne!(r.raw_answer, r.item_id, "an invalid answer is reported as such");
    }

    // The same dialogue as structured turns gives the same prompt, hence the same answer.
    let mut turns = request(&DEMO[..4]);
    turns.include_scores = true;
    turns.dialogue = Some(Dialogue::Turns(proto::Dialogue {
        turns: vec![
            proto::Turn {
                role: proto::Role::Seeker as i32,
                text: "Looking for a mug that keeps coffee warm on my desk. I like speckled glazes and nothing too big.".into(),
            },
            proto::Turn { role: proto::Role::Commenter as i32, text: "A 12 oz stoneware mug is a good size, the glaze holds heat well.".into() },
        ],
    }));
    let t = client.recommend(turns).await.unwrap().into_inner();
    assert_eq!((t.item_id.as_str(), t.prompt_tokens, t.valid), (r.item_id.as_str(), r.prompt_tokens, r.valid));
    assert_eq!(t.scores, r.scores);

    // Inline items only (one with an image, one without: the white image), no catalog lookup.
    let mut inline = request(&[]);
    inline.inline_items = vec![
        proto::InlineItem { id: "SKU-RED-BAG".into(), title: "Red canvas backpack".into(), image: image("wide2.png") },
        proto::InlineItem { id: "SKU-BLUE-MUG".into(), title: "Blue mug".into(), image: vec![] },
    ];
    let r = client.recommend(inline).await.unwrap().into_inner();
    assert!(["SKU-RED-BAG", "SKU-BLUE-MUG"].contains(&r.item_id.as_str()), "{}", r.item_id);

    // Inline items mixed with catalog ids, in candidate_ids order.
    let mut mixed = request(&["DEMO000001", "NEW-ITEM-1", "DEMO000003"]);
    mixed.inline_items = vec![proto::InlineItem { id: "NEW-ITEM-1".into(), title: "Travel mug".into(), image: image("square.jpg") }];
    mixed.include_scores = true;
    let r = client.recommend(mixed).await.unwrap().into_inner();
    let mut ids: Vec<_> = r.scores.iter().map(|s| s.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["DEMO000001", "DEMO000003", "NEW-ITEM-1"]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_mode_compression_model_info_and_metrics() {
    let server = start_serving(config()).await;
    let mut client = server
        .recommender()
        .await
        .send_compressed(CompressionEncoding::Zstd)
        .accept_compressed(CompressionEncoding::Gzip);

    // FREE mode: the reference's greedy generation; the tiny random model rarely names a
    // candidate, so the answer is either a candidate (valid) or empty (invalid).
    let mut req = request(&DEMO[..3]);
    req.mode = proto::Mode::Free as i32;
    let r = client.recommend(req).await.unwrap().into_inner();
    assert_eq!(r.mode, proto::Mode::Free as i32);
    assert_eq!(r.valid, !r.item_id.is_empty());
    assert!(r.valid || r.item_id.is_empty());
    assert!(r.scores.is_empty());

    let mut gz = server.recommender().await.send_compressed(CompressionEncoding::Gzip).accept_compressed(CompressionEncoding::Zstd);
    let r = gz.recommend(request(&DEMO[1..3])).await.unwrap().into_inner();
    assert!(DEMO[1..3].contains(&r.item_id.as_str()));

    let info = client.model_info(proto::ModelInfoRequest {}).await.unwrap().into_inner();
    assert!(info.demo && info.demo_kind == "fixture", "{info:?}");
    assert!(info.model_dir.ends_with("tiny-mistral"), "{}", info.model_dir);
    assert!(info.lm_adapter.ends_with("mistral-lm") && info.vision_adapter.ends_with("mistral-vision"));
    assert_eq!((info.dtype.as_str(), info.device.as_str()), ("f32", "cpu"));
    assert_eq!(info.catalog_items, 5);
    assert_eq!(info.catalog_fingerprint, info.encoder_fingerprint);
    assert_eq!((info.max_candidates, info.max_prompt_tokens), (20, 4096));

    let text = server.metrics().await;
    for needle in [
        "lavic_requests_total{method=\"Recommend\",status=\"ok\"} 2",
        "lavic_recommendations_total{mode=\"free\",valid=",
        "lavic_request_duration_seconds_bucket{",
        "lavic_queue_time_seconds_count",
        "lavic_inference_seconds_count",
        "lavic_batch_size_count",
        "lavic_prompt_tokens_count",
        "lavic_inflight_requests 0",
        "lavic_queue_depth 0",
        "lavic_ready 1",
        "lavic_catalog_items 5",
    ] {
        assert!(text.contains(needle), "{needle} missing from\n{text}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_share_a_forward_pass() {
    // The gate holds the worker while 4 requests queue up; then they run as one batch.
    let gate = lavic_server::Gate::default();
    let server = start(Config { max_batch: 4, ..config() }, gate.clone()).await;
    server.wait_for(lavic_server::RECOMMENDER_SERVICE, ServingStatus::Serving).await;
    gate.close();
    let blocker = {
        let mut c = server.recommender().await;
        tokio::spawn(async move { c.recommend(request(&DEMO[..2])).await })
    };
    gate.wait_for_waiting(1).await;
    let mut calls = Vec::new();
    for i in 0..4 {
        let mut c = server.recommender().await;
        calls.push(tokio::spawn(async move { c.recommend(request(&DEMO[i..i + 2])).await }));
    }
    while server.metric("lavic_queue_depth").await < 4.0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    gate.open();
    assert_eq!(blocker.await.unwrap().unwrap().into_inner().batch_size, 1);
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap().into_inner().batch_size, 4);
    }
    server.stop().await;
}
