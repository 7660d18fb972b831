//! `lavic catalog push`: an mmap catalog into Redis, incrementally (items whose image, title,
//! metadata and flags are unchanged are skipped; `--prune` removes the others), with the same
//! content as the catalog; through the library and through the binary.

use std::process::Command;

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::redis::{push, PushOptions};
use lavic_catalog::{synthetic_id, write_synthetic, NewItem, RedisConfig, RedisStore, StoreForm};

use crate::common::{encoder, image_bytes};

fn same_content(cat: &lavic_catalog::Catalog, s: &RedisStore, ids: &[String]) {
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (m, r) = (cat.stored(&refs).unwrap(), s.stored(&refs).unwrap());
    for ((id, m), r) in ids.iter().zip(m).zip(r) {
        assert_eq!(m.as_ref(), r.as_deref(), "{id}");
    }
}

#[test]
fn push_is_incremental_and_mirrors_the_catalog() {
    let enc = encoder();
    let server = RedisServer::start();
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("cat");
    let cat = write_synthetic(&dir, 40, enc.vision_width(), StoreForm::Cls, enc.fingerprint()).unwrap();
    let cfg = RedisConfig::new(server.url());
    let opts = PushOptions { batch_size: 16, prune: false };
    let r = push(&dir, &cfg, &opts).unwrap();
    assert_eq!((r.items, r.added, r.updated, r.unchanged, r.batches, r.namespace_items), (40, 40, 0, 0, 3, 40), "{r:?}");
    let r = push(&dir, &cfg, &opts).unwrap();
    assert_eq!((r.added, r.updated, r.unchanged, r.batches), (0, 0, 40, 0), "{r:?}");

    // Change the catalog: a new image, an item that loses its image, a new item, a deleted item.
    let it = |id: String, img: &str, title: &str| NewItem { id, title: title.into(), image: Some(image_bytes(img)), metadata: "{}".into() };
    cat.upsert(&[it(synthetic_id(0), "square.jpg", "Item 0"), it("NEW0000001".into(), "wide2.png", "new")], &enc).unwrap();
    let renamed = NewItem { title: "Item 1, renamed".into(), image: None, ..it(synthetic_id(1), "tall.png", "") };
    cat.upsert(&[renamed], &enc).unwrap();
    cat.delete(&[&synthetic_id(2)]).unwrap();
    drop(cat);
    let r = push(&dir, &cfg, &opts).unwrap();
    assert_eq!((r.items, r.added, r.updated, r.unchanged, r.removed), (40, 1, 2, 37, 0), "{r:?}");
    assert_eq!(r.namespace_items, 41, "without --prune the deleted item stays");

    // The binary, with --prune: removes it and reports JSON.
    let out = Command::new(env!("CARGO_BIN_EXE_lavic-catalog"))
        .args(["push", dir.to_str().unwrap(), &server.url(), "--prune", "--json"])
        .env("LAVIC_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["unchanged"].as_u64(), j["removed"].as_u64(), j["namespace_items"].as_u64()), (Some(40), Some(1), Some(40)), "{j}");

    let cat = lavic_catalog::Catalog::open(&dir).unwrap();
    let s = RedisStore::open_for_encoder(&cfg, &enc, None).unwrap();
    let mut ids: Vec<String> = (0..40).map(synthetic_id).collect();
    ids.push("NEW0000001".into());
    same_content(&cat, &s, &ids);
    assert!(s.stored(&[&synthetic_id(2)]).unwrap()[0].is_none());
    // Redis serves the pushed catalog's tokens exactly as the folder does.
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (tm, tr) = (cat.tokens(&refs, &enc).unwrap(), s.tokens(&refs, &enc).unwrap());
    for (m, r) in tm.iter().zip(&tr) {
        match (m, r) {
            (Some(m), Some(r)) => assert_eq!(crate::common::max_abs(&m.tokens, &r.tokens), 0.0),
            (None, None) => {}
            _ => panic!("differs"),
        }
    }
}

#[test]
fn push_refuses_a_password_in_the_url_and_names_missing_catalogs() {
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_lavic-catalog"))
        .args(["push", d.path().to_str().unwrap(), "redis://u:pw@127.0.0.1:1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("LAVIC_REDIS_PASSWORD") && !err.contains(":pw@"), "{err}");
    let r = push(&d.path().join("none"), &RedisConfig::new("redis://127.0.0.1:1"), &PushOptions::default());
    assert!(r.unwrap_err().to_string().contains("not a lavic catalog"));
}
