//! Unknown candidate ids: NOT_FOUND listing them by default; the reference's fallback ("No Title",
//! white image) when the request or the server asks for it.

use crate::common::*;
use lavic_server::config::UnknownIds;
use lavic_server::proto;
use lavic_server::Config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_are_not_found_unless_the_request_asks_for_the_fallback() {
    let server = start_serving(config()).await;
    let mut client = server.recommender().await;

    let err = client.recommend(request(&["DEMO000001", "NOPE-1", "DEMO000002", "NOPE-2"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("NOPE-1") && err.message().contains("NOPE-2"), "{}", err.message());
    assert!(!err.message().contains("DEMO000001"), "{}", err.message());

    let mut req = request(&["DEMO000001", "NOPE-1", "NOPE-2"]);
    req.unknown_id_policy = proto::UnknownIdPolicy::Fallback as i32;
    req.include_scores = true;
    let r = client.recommend(req).await.unwrap().into_inner();
    assert_eq!(r.fallback_ids, ["NOPE-1", "NOPE-2"]);
    assert_eq!(r.scores.len(), 3);

    // An explicit REJECT in the request beats nothing; the server default is REJECT anyway.
    let mut req = request(&["DEMO000001", "NOPE-1"]);
    req.unknown_id_policy = proto::UnknownIdPolicy::Reject as i32;
    assert_eq!(client.recommend(req).await.unwrap_err().code(), tonic::Code::NotFound);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_option_makes_the_fallback_the_default() {
    let server = start_serving(Config { unknown_ids: UnknownIds::Fallback, ..config() }).await;
    let mut client = server.recommender().await;
    let r = client.recommend(request(&["NOPE-1", "DEMO000004"])).await.unwrap().into_inner();
    assert_eq!(r.fallback_ids, ["NOPE-1"]);
    // The request can still insist on REJECT.
    let mut req = request(&["NOPE-1", "DEMO000004"]);
    req.unknown_id_policy = proto::UnknownIdPolicy::Reject as i32;
    let err = client.recommend(req).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("NOPE-1"));
    server.stop().await;
}
