//! Two store instances (two replicas) on one Redis see each other's writes: an upsert or delete
//! through one is seen by the other's very next lookup (strict mode), by invalidation rather than
//! by the TTL (an hour here); in eventual mode a fully cached lookup makes no round trip and the
//! pub/sub message refreshes it.

use std::time::Duration;

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::{Consistency, RedisStore};

use crate::support::*;

#[test]
fn a_write_on_one_replica_is_seen_by_the_others_next_lookup() {
    let server = RedisServer::start();
    let (a, b) = (store(&server), store(&server));
    wait_live(&b);
    a.write(vec![item("x", 0), item("y", 0), item("z", 0)]).unwrap();
    // B caches x, y, z (once its cache has applied that write's invalidation: a value read at a
    // newer epoch than the cache stands at is served but not cached).
    let got = b.stored(&["x", "y", "z"]).unwrap();
    assert_eq!(got[0].as_deref(), Some(&item("x", 0)));
    assert!(wait_until(Duration::from_secs(2), || {
        b.stored(&["x", "y", "z"]).unwrap();
        b.stats().cache_entries == 3
    }));
    for v in 1..=30 {
        a.write(vec![item("x", v)]).unwrap();
        // The very next lookup on B, with x cached at the previous version.
        let got = b.stored(&["x", "z"]).unwrap();
        assert_eq!(got[0].as_deref(), Some(&item("x", v)), "version {v}");
        assert_eq!(got[1].as_deref(), Some(&item("z", 0)));
    }
    assert_eq!(a.delete(&["y", "nope"]).unwrap(), 1);
    assert!(b.stored(&["y"]).unwrap()[0].is_none(), "a delete is seen at once");
    assert!(b.get("y").unwrap().is_none());
    // The cache did serve: z was never refetched after it was cached.
    let before = b.stats();
    b.stored(&["z"]).unwrap();
    let after = b.stats();
    assert_eq!(after.cache_hits, before.cache_hits + 1, "{after:?}");
    assert!(after.invalidations >= 30, "{after:?}");
    assert_eq!((a.count().unwrap(), b.count().unwrap()), (2, 2));
    // The subscription stays up across keep-alive pings (health checks every 100 ms here): the
    // cache was synchronised once, never emptied since.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(b.stats().resyncs, 1, "{:?}", b.stats());
}

#[test]
fn eventual_mode_serves_from_the_cache_and_is_refreshed_by_pub_sub() {
    let server = RedisServer::start();
    let a = store(&server);
    let mut cfg = config(&server);
    cfg.consistency = Consistency::Eventual;
    let b = RedisStore::open(&cfg, layout(), None).unwrap();
    wait_live(&b);
    a.write(vec![item("x", 0)]).unwrap();
    assert_eq!(b.stored(&["x"]).unwrap()[0].as_deref(), Some(&item("x", 0)));
    assert!(wait_until(Duration::from_secs(2), || {
        b.stored(&["x"]).unwrap();
        b.stats().cache_entries == 1
    }));
    // Cached: served without Redis (count only our round trips; background checks interleave).
    let start = b.stats();
    let mut ours = 0;
    for _ in 0..20 {
        let before = b.stats().round_trips;
        assert_eq!(b.stored(&["x"]).unwrap()[0].as_deref(), Some(&item("x", 0)));
        ours += b.stats().round_trips - before;
    }
    let end = b.stats();
    assert_eq!((end.cache_hits - start.cache_hits, end.cache_misses - start.cache_misses), (20, 0), "{end:?}");
    assert!(ours <= 4, "{ours} round trips during 20 cached lookups");
    a.write(vec![item("x", 1)]).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || b.stored(&["x"]).unwrap()[0].as_deref() == Some(&item("x", 1))),
        "the invalidation never arrived (the TTL is an hour)"
    );
}
