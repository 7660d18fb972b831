//! Durability: with AOF and `appendfsync always`, no write the store acknowledged is lost when
//! redis-server is killed -9 and restarted; the store reconnects by itself (with backoff) and its
//! health record shows the outage while it lasts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lavic_catalog::redis::testing::{RedisServer, ServerOptions};
use lavic_catalog::Error;

use crate::support::*;

#[test]
fn acknowledged_writes_survive_kill_9_of_redis() {
    let mut server = RedisServer::start_with(ServerOptions { aof: true, appendfsync: "always", ..Default::default() });
    let s = store(&server);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (s, acked, failed, stop) = (s.clone(), acked.clone(), failed.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let batch = vec![item(&format!("a{n:05}"), 1), item(&format!("b{n:05}"), 1)];
                match s.write(batch) {
                    Ok(()) => acked.lock().unwrap().extend([format!("a{n:05}"), format!("b{n:05}")]),
                    Err(Error::StoreUnavailable { store, .. }) => {
                        assert!(store.contains("127.0.0.1"), "{store}");
                        *failed.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("unexpected error: {e}"),
                }
                n += 1;
            }
        })
    };
    assert!(wait_until(Duration::from_secs(10), || acked.lock().unwrap().len() >= 100));
    server.kill9();
    let before_restart = acked.lock().unwrap().len();
    assert!(wait_until(Duration::from_secs(5), || s.outage_for().is_some()), "no outage recorded");
    assert!(s.health().outage_since.is_some() && s.health().last_error.is_some());
    std::thread::sleep(Duration::from_millis(300));
    server.restart();
    assert!(
        wait_until(Duration::from_secs(15), || acked.lock().unwrap().len() >= before_restart + 100),
        "the store did not reconnect: {} acked before, {} now",
        before_restart,
        acked.lock().unwrap().len()
    );
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(*failed.lock().unwrap() > 0, "the kill happened while writing");
    assert!(wait_until(Duration::from_secs(5), || s.outage_for().is_none()), "outage never ended");

    // Kill once more and restart: everything acknowledged is there, intact.
    server.kill9();
    server.restart();
    let fresh = store(&server);
    let acked = acked.lock().unwrap().clone();
    let ids: Vec<&str> = acked.iter().map(String::as_str).collect();
    let got = fresh.stored(&ids).unwrap();
    let lost: Vec<&str> = ids.iter().zip(&got).filter(|(_, g)| g.is_none()).map(|(id, _)| *id).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged items lost, e.g. {:?}", lost.len(), ids.len(), &lost[..lost.len().min(5)]);
    for (id, g) in ids.iter().zip(&got) {
        assert_eq!(g.as_deref(), Some(&item(id, 1)));
    }
    assert!(fresh.count().unwrap() >= acked.len());
}

/// Replicas connected to the primary and done with their initial sync, from `INFO replication`.
fn connected_replicas(primary: &RedisServer) -> usize {
    let info: String = redis::cmd("INFO").arg("replication").query(&mut primary.connection()).unwrap();
    info.lines().filter(|l| l.starts_with("slave") && l.contains("state=online")).count()
}

#[test]
fn wait_for_replicas_acknowledges_only_what_replicas_hold() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start_with(ServerOptions {
        extra: vec!["--replicaof".into(), "127.0.0.1".into(), primary.port().to_string()],
        ..Default::default()
    });
    assert!(wait_until(Duration::from_secs(15), || connected_replicas(&primary) == 1), "the replica never connected");
    let mut cfg = config(&primary);
    cfg.wait_replicas = 1;
    cfg.wait_timeout = Duration::from_millis(1000);
    let s = lavic_catalog::RedisStore::open(&cfg, layout(), None).unwrap();

    // With the replica up: acknowledged, and the replica holds it.
    s.write(vec![item("w0001", 1)]).unwrap();
    let on_replica: Option<Vec<u8>> = redis::cmd("GET").arg(item_key("w0001")).query(&mut replica.connection()).unwrap();
    assert!(on_replica.is_some(), "an acknowledged write is on the replica");

    // Without it: the write is not acknowledged, and the error says why.
    replica.kill9();
    assert!(wait_until(Duration::from_secs(15), || connected_replicas(&primary) == 0), "the primary still sees its replica");
    let e = s.write(vec![item("w0002", 1)]).unwrap_err();
    assert!(matches!(&e, Error::StoreUnavailable { reason, .. } if reason.contains("0 of the 1 required replicas")), "{e}");
    let e = s.delete(&["w0001"]).unwrap_err();
    assert!(matches!(e, Error::StoreUnavailable { .. }), "{e}");
}
