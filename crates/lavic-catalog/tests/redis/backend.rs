//! The backend interface on both stores: the same upserts (encoded in the caller, only new or
//! changed images), deletes and reports, and exactly the same tokens for the same items, from an
//! mmap catalog and from Redis; credentials from the store's settings, a wrong one refused.

use lavic_catalog::redis::testing::{RedisServer, ServerOptions};
use lavic_catalog::{Catalog, CatalogBackend, Error, NewItem, RedisCredentials, RedisStore, StoreForm};

use crate::common::{encoder, image_bytes, max_abs};
use crate::support::*;

fn new_item(id: &str, image: Option<&str>, title: &str) -> NewItem {
    NewItem { id: id.into(), title: title.into(), image: image.map(image_bytes), metadata: format!(r#"{{"id": {id:?}, "n": 123456789012345678901234567890}}"#) }
}

#[test]
fn both_backends_give_the_same_answers() {
    let enc = encoder();
    let d = tempfile::tempdir().unwrap();
    let server = RedisServer::start();
    let mmap = CatalogBackend::Mmap(Catalog::create_empty(&d.path().join("cat"), &enc, StoreForm::Cls).unwrap());
    let redis = CatalogBackend::Redis(RedisStore::open_for_encoder(&config(&server), &enc, None).unwrap());
    assert_eq!(redis.fingerprint(), enc.fingerprint());
    redis.check_encoder(&enc).unwrap();
    let items = vec![
        new_item("a", Some("square.jpg"), "A"),
        new_item("b", Some("wide2.png"), "B"),
        new_item("c", Some("square.jpg"), "C"),
        new_item("w", None, "imageless"),
        new_item("", Some("tall.png"), "bad id"),
    ];
    let mut reports = Vec::new();
    for backend in [&mmap, &redis] {
        let before = enc.images_encoded();
        let r = backend.upsert(&items, &enc).unwrap();
        reports.push((r, enc.images_encoded() - before));
    }
    assert_eq!(reports[0], reports[1]);
    assert_eq!((reports[1].0.encoded, reports[1].0.reused, reports[1].0.failed.len()), (3, 1, 1), "{:?}", reports[1]);

    let ids = ["a", "b", "c", "w", "zzz"];
    let (tm, tr) = (mmap.tokens(&ids, &enc).unwrap(), redis.tokens(&ids, &enc).unwrap());
    for (m, r) in tm.iter().zip(&tr) {
        match (m, r) {
            (None, None) => {}
            (Some(m), Some(r)) => {
                assert_eq!((&m.id, &m.title, m.image_missing), (&r.id, &r.title, r.image_missing));
                assert_eq!(max_abs(&m.tokens, &r.tokens), 0.0, "item {}", m.id);
            }
            _ => panic!("found on one backend only: {m:?} / {r:?}"),
        }
    }
    for id in ids {
        assert_eq!(mmap.get(id).unwrap(), redis.get(id).unwrap(), "{id}");
    }
    assert_eq!(redis.get("a").unwrap().unwrap().metadata, r#"{"id": "a", "n": 123456789012345678901234567890}"#, "metadata kept exactly");

    // Second round: unchanged, a title change (no vision work), a new image, a delete.
    let changes = vec![new_item("a", Some("square.jpg"), "A"), new_item("b", Some("wide2.png"), "B renamed"), new_item("c", Some("tall.png"), "C")];
    for backend in [&mmap, &redis] {
        let before = enc.images_encoded();
        let r = backend.upsert(&changes, &enc).unwrap();
        assert_eq!((r.unchanged, r.reused, r.encoded), (1, 1, 1), "{r:?}");
        assert_eq!(enc.images_encoded() - before, 1);
        assert_eq!(backend.delete(&["w", "nope", "w"]).unwrap(), 1);
        assert_eq!(backend.len(), 3);
    }
    let (sm, sr) = (mmap.stored(&ids).unwrap(), redis.stored(&ids).unwrap());
    assert_eq!(sm, sr);
    assert!(redis.describe().contains(&server.url()) && redis.persists_updates());
    assert!(redis.health().unwrap().outage_since.is_none());
}

#[test]
fn credentials_are_used_and_wrong_ones_refused() {
    let server = RedisServer::start_with(ServerOptions {
        // The ACL of deploy/k8s/components/redis: lavic's keys and channels, no dangerous command.
        extra: ["--user", "default", "off", "--user", "lavic", "on", ">s3cret-pw", "~lavic:*", "&lavic:*", "+@all", "-@dangerous"].map(String::from).to_vec(),
        ..Default::default()
    });
    let mut cfg = config(&server);
    cfg.credentials = RedisCredentials::new(Some("lavic".into()), Some("s3cret-pw".into()));
    let s = RedisStore::open(&cfg, layout(), None).unwrap();
    s.write(vec![item("x", 0)]).unwrap();
    wait_live(&s);
    assert_eq!(s.stored(&["x"]).unwrap()[0].as_deref(), Some(&item("x", 0)));
    assert_eq!((s.count().unwrap(), s.delete(&["x"]).unwrap()), (1, 1));
    assert!(s.health().outage_since.is_none());
    for creds in [RedisCredentials::default(), RedisCredentials::new(Some("lavic".into()), Some("wrong-pw".into()))] {
        cfg.credentials = creds;
        let e = RedisStore::open(&cfg, layout(), None).unwrap_err();
        assert!(matches!(e, Error::StoreRejected { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains(&server.url()) && !msg.contains("pw"), "{msg}");
    }
}

/// A CA and a server certificate for `localhost`/127.0.0.1, made with the openssl CLI.
fn test_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (Debian's openssl package)");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    std::fs::write(dir.join("ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1").unwrap();
    run(&["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=lavic test CA"]);
    run(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost"]);
    run(&["x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "srv.pem", "-days", "1", "-extfile", "ext"]);
}

#[test]
fn rediss_with_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    test_certificates(certs.path());
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let p = |f: &str| certs.path().join(f).display().to_string();
    let server = RedisServer::start_with(ServerOptions {
        extra: vec!["--tls-port".into(), tls_port.to_string(), "--tls-cert-file".into(), p("srv.pem"), "--tls-key-file".into(), p("srv.key"), "--tls-auth-clients".into(), "no".into()],
        ..Default::default()
    });
    let mut cfg = config(&server);
    cfg.url = format!("rediss://localhost:{tls_port}");
    cfg.ca_file = Some(certs.path().join("ca.pem"));
    let s = RedisStore::open(&cfg, layout(), None).unwrap();
    let plain = store(&server);
    wait_live(&s);
    s.write(vec![item("x", 0)]).unwrap();
    assert_eq!(plain.stored(&["x"]).unwrap()[0].as_deref(), Some(&item("x", 0)), "one namespace, whichever port");
    plain.write(vec![item("x", 1)]).unwrap();
    assert_eq!(s.stored(&["x"]).unwrap()[0].as_deref(), Some(&item("x", 1)));
    // Without the private CA the server's certificate is not trusted.
    cfg.ca_file = None;
    let e = RedisStore::open(&cfg, layout(), None).unwrap_err();
    assert!(e.to_string().contains(&cfg.url), "{e}");
}
