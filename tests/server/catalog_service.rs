//! lavic.v1.Catalog: mutating calls need the bearer token (refused without one configured);
//! upserted items are encoded and usable by Recommend at once; GetItem and DeleteItems.

use crate::common::*;
use lavic_server::config::Secret;
use lavic_server::proto;
use lavic_server::Config;

fn authed<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// Metadata with an integer beyond 64 bits (issue 11 item 8: it came back as a float).
const BIG_META: &str = r#"{"brand": "Acme", "sku": 123456789012345678901234567890}"#;

fn item(id: &str, title: &str, image: Vec<u8>, metadata: &str) -> proto::NewItem {
    proto::NewItem { id: id.into(), title: title.into(), image, metadata_json: metadata.into() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_get_delete_with_the_token() {
    let server = start_serving(Config { catalog_token: Some(Secret("s3cret".into())), ..config() }).await;
    let mut cat = server.catalog().await;
    let upsert = proto::UpsertItemsRequest {
        items: vec![
            item("NEWITEM01", "Speckled travel mug", image("square.jpg"), BIG_META),
            item("NEWITEM02", "Mystery box", vec![], ""),
            item("BADIMAGE1", "Broken", b"not an image".to_vec(), ""),
        ],
    };

    // No token, a wrong token: UNAUTHENTICATED; nothing changes.
    let err = cat.upsert_items(upsert.clone()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    let err = cat.upsert_items(authed(upsert.clone(), "guess")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let err = cat.delete_items(proto::DeleteItemsRequest { ids: vec!["DEMO000001".into()] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // With it: one encoded, one without image, one refused (the call itself succeeds).
    let r = cat.upsert_items(authed(upsert, "s3cret")).await.unwrap().into_inner();
    assert_eq!((r.encoded + r.reused, r.missing_images, r.catalog_items), (2, 1, 7), "{r:?}");
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].id, "BADIMAGE1");

    // Malformed upserts are INVALID_ARGUMENT naming the field.
    let bad = proto::UpsertItemsRequest { items: vec![item("X", "t", vec![], "[1,2]")] };
    let err = cat.upsert_items(authed(bad, "s3cret")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().starts_with("items[0].metadata_json"), "{}", err.message());

    // Reads need no token.
    let got = cat.get_item(proto::GetItemRequest { id: "NEWITEM01".into() }).await.unwrap().into_inner();
    assert_eq!(got.title, "Speckled travel mug");
    assert!(!got.image_missing && got.image_sha256.len() == 64);
    assert_eq!(got.metadata_json, BIG_META, "metadata comes back exactly as sent (no float rounding)");
    assert!(cat.get_item(proto::GetItemRequest { id: "NEWITEM02".into() }).await.unwrap().into_inner().image_missing);
    let err = cat.get_item(proto::GetItemRequest { id: "BADIMAGE1".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The new items are candidates right away.
    let mut rec = server.recommender().await;
    let r = rec.recommend(request(&["NEWITEM01", "NEWITEM02", "DEMO000001"])).await.unwrap().into_inner();
    assert!(r.fallback_ids.is_empty());

    // Delete, then the id is unknown again.
    let d = cat.delete_items(authed(proto::DeleteItemsRequest { ids: vec!["NEWITEM01".into(), "NEVER".into()] }, "s3cret")).await.unwrap().into_inner();
    assert_eq!((d.deleted, d.catalog_items), (1, 6));
    let err = rec.recommend(request(&["NEWITEM01", "DEMO000001"])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(err.message().contains("NEWITEM01"));
    let info = rec.model_info(proto::ModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.catalog_items, 6);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_changes_are_refused() {
    let server = start_serving(config()).await;
    let mut cat = server.catalog().await;
    let req = proto::UpsertItemsRequest { items: vec![item("NEWITEM01", "t", vec![], "")] };
    let err = cat.upsert_items(authed(req, "anything")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let err = cat.delete_items(authed(proto::DeleteItemsRequest { ids: vec!["DEMO000001".into()] }, "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied);
    assert_eq!(cat.get_item(proto::GetItemRequest { id: "DEMO000001".into() }).await.unwrap().into_inner().id, "DEMO000001");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_catalog_calls_name_the_field_and_change_nothing() {
    let server = start_serving(Config { catalog_token: Some(Secret("s3cret".into())), max_image_bytes: 64 << 10, ..config() }).await;
    let mut cat = server.catalog().await;
    let invalid = |err: tonic::Status, field: &str| {
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "message {:?} does not name {field}", err.message());
    };
    let upserts = [
        (vec![], "items"),
        (vec![item("GOOD1", "t", vec![], ""), item("", "t", vec![], "")], "items[1].id"),
        (vec![item(" PADDED", "t", vec![], "")], "items[0].id"),
        (vec![item(&"x".repeat(1025), "t", vec![], "")], "items[0].id"),
        (vec![item("GOOD1", "two\nlines", vec![], "")], "items[0].title"),
        (vec![item("GOOD1", "<ItemImageEmb1>", vec![], "")], "items[0].title"),
        (vec![item("GOOD1", "t", vec![0xFF; (64 << 10) + 1], "")], "items[0].image"),
        (vec![item("GOOD1", "t", vec![], ""), item("GOOD1", "u", vec![], "")], "items[1].id"),
        (vec![item("GOOD1", "t", vec![], "not json")], "items[0].metadata_json"),
        (vec![item("GOOD1", "t", vec![], &format!(r#"{{"a":"{}"}}"#, "m".repeat(64 << 10)))], "items[0].metadata_json"),
    ];
    for (items, field) in upserts {
        invalid(cat.upsert_items(authed(proto::UpsertItemsRequest { items }, "s3cret")).await.unwrap_err(), field);
    }
    invalid(cat.delete_items(authed(proto::DeleteItemsRequest { ids: vec![] }, "s3cret")).await.unwrap_err(), "ids");
    let ids = vec!["DEMO000001".into(), "BAD\tID".into()];
    invalid(cat.delete_items(authed(proto::DeleteItemsRequest { ids }, "s3cret")).await.unwrap_err(), "ids[1]");
    invalid(cat.get_item(proto::GetItemRequest { id: String::new() }).await.unwrap_err(), "id");
    // The token is checked before the message: a bad message without it is UNAUTHENTICATED.
    let err = cat.upsert_items(proto::UpsertItemsRequest { items: vec![] }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Nothing was stored or deleted; the refusals are counted.
    let info = server.recommender().await.model_info(proto::ModelInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.catalog_items, 5);
    assert!(cat.get_item(proto::GetItemRequest { id: "GOOD1".into() }).await.is_err());
    assert_eq!(server.metric("lavic_requests_total{method=\"UpsertItems\",status=\"invalid_argument\"}").await, 10.0);
    assert_eq!(server.metric("lavic_catalog_items").await, 5.0);
    server.stop().await;
}
