//! Optional TLS: with a certificate and key configured the server speaks only TLS; the tonic
//! client and `lavic healthcheck --tls-ca` reach it, a plaintext client does not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::common::*;
use lavic_server::proto::recommender_client::RecommenderClient;
use lavic_server::{Config, Gate};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_when_configured() {
    let cfg = Config { tls_cert: Some(tls_dir().join("server.pem")), tls_key: Some(tls_dir().join("server.key")), ..config() };
    let server = start(cfg, Gate::default()).await;
    let port = server.addr.port();
    let ca = Certificate::from_pem(std::fs::read(tls_dir().join("ca.pem")).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost");

    // `lavic healthcheck` over TLS, until SERVING (also proves the server is up).
    let addr = format!("localhost:{port}");
    let ca_path = tls_dir().join("ca.pem");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lavic"))
            .args(["healthcheck", "--addr", &addr, "--tls-ca", ca_path.to_str().unwrap()])
            .output()
            .unwrap();
        if out.status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "healthcheck over TLS never passed: {}", String::from_utf8_lossy(&out.stderr));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let channel = Channel::from_shared(format!("https://localhost:{port}")).unwrap().tls_config(tls).unwrap().connect().await.unwrap();
    let r = RecommenderClient::new(channel).recommend(request(&DEMO[..2])).await.unwrap().into_inner();
    assert!(DEMO[..2].contains(&r.item_id.as_str()));

    // Plaintext is refused.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await;
    if let Ok(ch) = plain {
        assert!(RecommenderClient::new(ch).recommend(request(&DEMO[..2])).await.is_err());
    }
    server.stop().await;
}
