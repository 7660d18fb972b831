//! Issue 11, item 1: an empty catalog token is a configuration error from every source (the
//! TOML file, `LAVIC_CATALOG_TOKEN`, `--catalog-token`), never a token that a request without
//! an `authorization` header matches; a configured token still works.

use std::process::Command;

use crate::common::*;
use lavic_server::config::Secret;
use lavic_server::{proto, Config};

const LAVIC: &str = env!("CARGO_BIN_EXE_lavic");

fn print_config(extra: &[&str], env: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(LAVIC);
    cmd.args(["serve", "--print-config"])
        .args(extra)
        .env_remove("LAVIC_CATALOG_TOKEN")
        .env_remove("LAVIC_CONFIG");
    if let Some(v) = env {
        cmd.env("LAVIC_CATALOG_TOKEN", v);
    }
    cmd.output().unwrap()
}

#[test]
fn an_empty_token_is_refused_from_toml_env_and_flag() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("lavic.toml");
    std::fs::write(&toml, "catalog_token = \"\"\n").unwrap();
    let toml = toml.to_str().unwrap();
    let cases: [(&str, Vec<&str>, Option<&str>); 4] = [
        ("TOML", vec!["--config", toml], None),
        ("environment", vec![], Some("")),
        ("flag", vec!["--catalog-token", ""], None),
        ("whitespace flag", vec!["--catalog-token", "  "], None),
    ];
    for (source, args, env) in cases {
        let out = print_config(&args, env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{source}: an empty token was accepted:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.contains("catalog_token") && stderr.contains("empty"),
            "{source}: {stderr}"
        );
    }
    // No token at all is fine (catalog changes are then refused), and a real one is redacted.
    let out = print_config(&[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("catalog_token"));
    let out = print_config(&[], Some("s3cret"));
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("catalog_token = \"***\"") && !stdout.contains("s3cret"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_header_never_match_the_configured_token() {
    let server = start_serving(Config {
        catalog_token: Some(Secret("s3cret".into())),
        ..config()
    })
    .await;
    let mut cat = server.catalog().await;
    let del = || proto::DeleteItemsRequest {
        ids: vec!["DEMO000001".into()],
    };
    for header in [
        None,
        Some(""),
        Some("Bearer "),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("s3cret"),
    ] {
        let mut r = tonic::Request::new(del());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        let err = cat.delete_items(r).await.unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::Unauthenticated,
            "{header:?}: {err:?}"
        );
    }
    assert_eq!(
        server
            .recommender()
            .await
            .model_info(proto::ModelInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .catalog_items,
        5
    );
    let mut r = tonic::Request::new(del());
    r.metadata_mut()
        .insert("authorization", "Bearer s3cret".parse().unwrap());
    assert_eq!(cat.delete_items(r).await.unwrap().into_inner().deleted, 1);
    server.stop().await;
}
