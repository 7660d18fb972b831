//! Redis unreachable: lookups whose items are all cached are still served, the others (and every
//! write) fail with StoreUnavailable naming the store; the health record says since when; once
//! Redis is back, everything works again without reopening the store.

use std::time::Duration;

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::Error;

use crate::support::*;

#[test]
fn an_outage_serves_cached_items_and_fails_the_others_naming_the_store() {
    let mut server = RedisServer::start();
    let s = store(&server);
    wait_live(&s);
    s.write(vec![item("x", 0), item("y", 0), item("z", 0)]).unwrap();
    assert_eq!(s.stored(&["x", "y"]).unwrap().len(), 2); // now cached
    assert!(s.health().outage_since.is_none());
    server.kill9();

    let got = s.stored(&["x", "y"]).unwrap();
    assert_eq!((got[0].as_deref(), got[1].as_deref()), (Some(&item("x", 0)), Some(&item("y", 0))));
    let unavailable = |e: Error| match e {
        Error::StoreUnavailable { store, .. } => assert_eq!(store, server.url()),
        other => panic!("expected StoreUnavailable, got {other}"),
    };
    unavailable(s.stored(&["x", "z"]).unwrap_err());
    unavailable(s.stored(&["unknown"]).unwrap_err());
    unavailable(s.write(vec![item("w", 0)]).unwrap_err());
    unavailable(s.delete(&["x"]).unwrap_err());
    let msg = s.stored(&["z"]).unwrap_err().to_string();
    assert!(msg.contains(&server.url()) && msg.contains("unavailable"), "{msg}");
    assert!(s.stats().served_in_outage >= 2);
    let h = s.health();
    assert!(h.outage_since.is_some() && h.last_error.is_some(), "{h:?}");
    assert!(wait_until(Duration::from_secs(3), || s.outage_for().is_some_and(|d| d >= Duration::from_millis(300))));

    server.restart();
    assert!(wait_until(Duration::from_secs(15), || s.stored(&["x", "z"]).is_ok()), "no reconnect");
    assert!(wait_until(Duration::from_secs(5), || s.outage_for().is_none()));
    s.write(vec![item("w", 0)]).unwrap();
    assert_eq!(s.count().unwrap(), 4);
    wait_live(&s);
}

#[test]
fn an_unreachable_store_at_open_is_an_error_naming_it() {
    let server = RedisServer::start();
    let mut cfg = config(&server);
    drop(server);
    cfg.timeout = Duration::from_millis(300);
    let e = lavic_catalog::RedisStore::open(&cfg, layout(), None).unwrap_err();
    assert!(matches!(e, Error::StoreUnavailable { .. }) && e.to_string().contains(&cfg.url), "{e}");
}
