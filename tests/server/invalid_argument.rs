//! Every malformed request is INVALID_ARGUMENT with a message naming the field, and none of them
//! harms the server: a good request afterwards still succeeds.

use crate::common::*;
use lavic_server::config::OverlongPolicy;
use lavic_server::proto::{self, recommend_request::Dialogue};
use lavic_server::Config;

async fn expect_invalid(client: &mut lavic_server::proto::recommender_client::RecommenderClient<tonic::transport::Channel>, req: proto::RecommendRequest, field: &str) {
    let err = client.recommend(req).await.expect_err(&format!("expected INVALID_ARGUMENT for {field}"));
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
    assert!(err.message().starts_with(&format!("{field}:")), "message {:?} does not name {field}", err.message());
}

fn long_dialogue() -> String {
    let turn = "<comment>I have tried many mugs over the years and the stoneware ones with a thick glaze keep the coffee warm for the longest time.</comment>\n";
    format!("<submission>Which mug?</submission>\n{}", turn.repeat(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_named_and_the_server_keeps_working() {
    let cfg = Config { max_context_bytes: 16 << 10, max_image_bytes: 64 << 10, max_prompt_tokens: 300, overlong_policy: OverlongPolicy::Reject, ..config() };
    let server = start_serving(cfg).await;
    let mut c = server.recommender().await;

    // Candidate lists.
    expect_invalid(&mut c, request(&["DEMO000001", "DEMO000002", "DEMO000001"]), "candidate_ids[2]").await;
    expect_invalid(&mut c, request(&["DEMO000001"]), "candidate_ids").await;
    expect_invalid(&mut c, request(&[]), "candidate_ids").await;
    let many: Vec<String> = (0..21).map(|i| format!("ID{i:04}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    expect_invalid(&mut c, request(&refs), "candidate_ids").await;
    expect_invalid(&mut c, request(&["DEMO000001", ""]), "candidate_ids[1]").await;
    expect_invalid(&mut c, request(&["DEMO000001", "BAD\nID"]), "candidate_ids[1]").await;

    // Dialogues: missing, empty, blank turns, unspecified role, reserved tokens, too many bytes.
    let mut r = request(&DEMO[..2]);
    r.dialogue = None;
    expect_invalid(&mut c, r, "dialogue").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Context(String::new()));
    expect_invalid(&mut c, r, "context").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Turns(proto::Dialogue { turns: vec![proto::Turn { role: proto::Role::Seeker as i32, text: "  ".into() }] }));
    expect_invalid(&mut c, r, "turns").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Turns(proto::Dialogue { turns: vec![] }));
    expect_invalid(&mut c, r, "turns").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Turns(proto::Dialogue { turns: vec![proto::Turn { role: 0, text: "hi".into() }] }));
    expect_invalid(&mut c, r, "turns[0].role").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Context("<submission>see <ItemImageEmb3></submission>\n".into()));
    expect_invalid(&mut c, r, "context").await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Context("x".repeat((16 << 10) + 1)));
    expect_invalid(&mut c, r, "context").await;

    // Over the token budget (policy `reject`): the dialogue, or the candidate block alone.
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Context(long_dialogue()));
    expect_invalid(&mut c, r, "context").await;
    let mut r = request(&[]);
    r.inline_items = (0..8)
        .map(|i| proto::InlineItem { id: format!("LONG{i}"), title: "A very long product title with many words ".repeat(4), image: vec![] })
        .collect();
    expect_invalid(&mut c, r, "candidate_ids").await;

    // Inline items: undecodable image, oversized image, id not among the candidates, duplicates.
    let mut r = request(&["DEMO000001", "X1"]);
    r.inline_items = vec![proto::InlineItem { id: "X1".into(), title: "t".into(), image: b"this is not an image".to_vec() }];
    expect_invalid(&mut c, r, "inline_items[0].image").await;
    let mut r = request(&["DEMO000001", "X1"]);
    r.inline_items = vec![proto::InlineItem { id: "X1".into(), title: "t".into(), image: vec![0xFF; (64 << 10) + 1] }];
    expect_invalid(&mut c, r, "inline_items[0].image").await;
    let mut truncated = image("square.jpg");
    truncated.truncate(300);
    let mut r = request(&["DEMO000001", "X1"]);
    r.inline_items = vec![proto::InlineItem { id: "X1".into(), title: "t".into(), image: truncated }];
    expect_invalid(&mut c, r, "inline_items[0].image").await;
    let mut r = request(&["DEMO000001", "DEMO000002"]);
    r.inline_items = vec![proto::InlineItem { id: "X9".into(), ..Default::default() }];
    expect_invalid(&mut c, r, "inline_items[0].id").await;
    let mut r = request(&["X1", "DEMO000002"]);
    r.inline_items = vec![proto::InlineItem { id: "X1".into(), ..Default::default() }, proto::InlineItem { id: "X1".into(), ..Default::default() }];
    expect_invalid(&mut c, r, "inline_items[1].id").await;
    let mut r = request(&["X1", "DEMO000002"]);
    r.inline_items = vec![proto::InlineItem { id: "X1".into(), title: "two\nlines".into(), image: vec![] }];
    expect_invalid(&mut c, r, "inline_items[0].title").await;

    // Enum values out of range.
    let mut r = request(&DEMO[..2]);
    r.mode = 9;
    expect_invalid(&mut c, r, "mode").await;
    let mut r = request(&DEMO[..2]);
    r.unknown_id_policy = 9;
    expect_invalid(&mut c, r, "unknown_id_policy").await;

    // Still healthy and answering.
    let ok = c.recommend(request(&DEMO[..3])).await.unwrap().into_inner();
    assert!(DEMO[..3].contains(&ok.item_id.as_str()));
    assert_eq!(server.health(lavic_server::RECOMMENDER_SERVICE).await, ServingStatus::Serving);
    let text = server.metrics().await;
    assert!(text.contains("lavic_requests_total{method=\"Recommend\",status=\"invalid_argument\"}"), "{text}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_dialogues_are_shortened_from_the_front_by_default() {
    let server = start_serving(Config { max_prompt_tokens: 300, ..config() }).await;
    let mut c = server.recommender().await;
    let mut r = request(&DEMO[..2]);
    r.dialogue = Some(Dialogue::Context(long_dialogue()));
    let ok = c.recommend(r).await.unwrap().into_inner();
    assert!(ok.shortened_tokens > 0, "nothing was shortened");
    assert!(ok.prompt_tokens <= 300, "prompt_tokens {}", ok.prompt_tokens);
    assert!(DEMO[..2].contains(&ok.item_id.as_str()));
    server.stop().await;
}
