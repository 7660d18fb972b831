//! Server reflection, v1 and v1alpha (grpcurl and ghz use it): both lavic services, health and
//! reflection itself are listed, and the Recommend method's message types can be resolved.

use crate::common::*;

macro_rules! list_services {
    ($pb:path, $channel:expr) => {{
        use $pb as pb;
        use pb::server_reflection_request::MessageRequest;
        use pb::server_reflection_response::MessageResponse;
        let mut client = pb::server_reflection_client::ServerReflectionClient::new($channel);
        let reqs = vec![
            pb::ServerReflectionRequest { host: String::new(), message_request: Some(MessageRequest::ListServices(String::new())) },
            pb::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol("lavic.v1.Recommender".into())),
            },
        ];
        let mut stream = client.server_reflection_info(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let mut names = Vec::new();
        let mut files = 0;
        while let Some(resp) = stream.message().await.unwrap() {
            match resp.message_response.unwrap() {
                MessageResponse::ListServicesResponse(l) => names.extend(l.service.into_iter().map(|s| s.name)),
                MessageResponse::FileDescriptorResponse(f) => files += f.file_descriptor_proto.len(),
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
        names.sort();
        (names, files)
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_both_services() {
    let server = start_serving(config()).await;
    let (v1, files) = list_services!(tonic_reflection::pb::v1, server.channel().await);
    for name in [
        "lavic.v1.Recommender",
        "lavic.v1.Catalog",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(v1.iter().any(|n| n == name), "v1 reflection lacks {name}: {v1:?}");
    }
    assert!(files >= 1, "no file descriptor for lavic.v1.Recommender");
    let (v1alpha, files) = list_services!(tonic_reflection::pb::v1alpha, server.channel().await);
    assert_eq!(v1alpha, v1);
    assert!(files >= 1);
    server.stop().await;
}
