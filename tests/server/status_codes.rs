//! Issue 11, item 9: status codes say whose fault a failure is. A request that is not valid
//! protobuf, or whose string field is not UTF-8, is INVALID_ARGUMENT (not INTERNAL, which means
//! "our bug, retry"); a write to a catalog that another process changed on disk is
//! FAILED_PRECONDITION (retrying the same call cannot help). Disk full (RESOURCE_EXHAUSTED) is
//! checked in `error.rs`'s unit tests, by its errno.

use std::path::PathBuf;

use prost::bytes::{Buf, BufMut};
use lavic_model::{DType, ImageEncoder, LoadOptions};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::common;
use lavic_server::config::Secret;
use lavic_server::proto;

/// Sends and receives raw bytes as the gRPC message.
#[derive(Default)]
struct RawCodec;

struct Raw;

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .expect_err("a malformed message must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_invalid_argument() {
    let server = common::start_serving(common::config()).await;
    // A truncated varint, a reserved wire type, and request_id (field 1) holding bytes that are
    // not UTF-8.
    let bodies: [(&str, Vec<u8>); 3] = [
        ("truncated", vec![0x08, 0xFF]),
        ("wire type 7", vec![0x0F, 0x01]),
        ("not UTF-8", vec![0x0A, 0x02, 0xFF, 0xFE]),
    ];
    for (what, body) in bodies {
        let st = raw_call(
            server.channel().await,
            "/lavic.v1.Recommender/Recommend",
            body.clone(),
        )
        .await;
        assert_eq!(
            st.code(),
            tonic::Code::InvalidArgument,
            "Recommend, {what}: {st:?}"
        );
        assert!(
            st.message().contains("RecommendRequest"),
            "{}",
            st.message()
        );
        let st = raw_call(server.channel().await, "/lavic.v1.Catalog/GetItem", body).await;
        assert_eq!(
            st.code(),
            tonic::Code::InvalidArgument,
            "GetItem, {what}: {st:?}"
        );
    }
    // The server is fine afterwards.
    assert!(server
        .recommender()
        .await
        .recommend(common::request(&common::DEMO[..2]))
        .await
        .is_ok());
    server.stop().await;
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_a_catalog_changed_on_disk_is_failed_precondition() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fixtures();
    let mut opts = LoadOptions::new(f.join("tiny-mistral"));
    opts.dtype = Some(DType::F32);
    opts.vision_adapter = Some(f.join("adapters/mistral-vision"));
    let encoder = ImageEncoder::load(&opts).unwrap();
    let dir = tmp.path().join("catalog");
    let item = |id: &str| lavic_catalog::NewItem {
        id: id.into(),
        title: "Mug".into(),
        image: None,
        metadata: "{}".into(),
    };
    lavic_catalog::Catalog::create_empty(&dir, &encoder, lavic_catalog::StoreForm::Cls)
        .unwrap()
        .upsert(&[item("B000000001")], &encoder)
        .unwrap();

    let mut config = common::config();
    config.model_dir = Some(f.join("tiny-mistral"));
    config.tokenizer = Some(f.join("tokenizer/tokenizer.json"));
    config.vision_adapter = Some(f.join("adapters/mistral-vision"));
    config.lm_adapter = Some(f.join("adapters/mistral-lm"));
    config.catalog_dir = Some(dir.clone());
    config.catalog_token = Some(Secret("s3cret".into()));
    let server = common::start_serving(config).await;

    // Another process (here: this one, through its own handle) writes the catalog.
    lavic_catalog::Catalog::open(&dir)
        .unwrap()
        .upsert(&[item("B000000002")], &encoder)
        .unwrap();

    let mut r = tonic::Request::new(proto::DeleteItemsRequest {
        ids: vec!["B000000001".into()],
    });
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    let err = server.catalog().await.delete_items(r).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("changed on disk"),
        "{}",
        err.message()
    );
    assert_eq!(
        server
            .metric("lavic_requests_total{method=\"DeleteItems\",status=\"failed_precondition\"}")
            .await,
        1.0
    );
    server.stop().await;
}
