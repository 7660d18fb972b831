//! A batch is all-or-nothing: a write cut off in the middle of its command (the connection dies,
//! as when the writing process is killed) leaves nothing of it visible, and a `lavic catalog push`
//! killed -9 part-way leaves only whole batches.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use lavic_catalog::redis::testing::RedisServer;
use lavic_catalog::{synthetic_id, write_synthetic, RedisConfig, RedisStore, StoreForm};

use crate::support::*;

/// A loopback proxy to `target` that forwards at most `limit` bytes from each client connection
/// to the server, then closes both sides (a writer dying in the middle of a command).
fn cutting_proxy(target: u16, limit: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let mut sent = 0;
                let mut buf = [0u8; 16384];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let take = n.min(limit - sent);
                    if s_out.write_all(&buf[..take]).is_err() {
                        break;
                    }
                    sent += take;
                    if sent >= limit {
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Both);
                let _ = c_in.shutdown(Shutdown::Both);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut s_in, &mut c_out);
                let _ = c_out.shutdown(Shutdown::Both);
            });
        }
    });
    port
}

#[test]
fn a_write_cut_off_mid_command_leaves_nothing_visible() {
    let server = RedisServer::start();
    let direct = store(&server);
    direct.write(vec![item("before", 0)]).unwrap();
    // The batch is ~2 MB (400 items x 5 KB); small commands (handshake, metadata, health checks) pass the proxy.
    let proxy = cutting_proxy(server.port(), 256 << 10);
    let mut cfg = config(&server);
    cfg.url = format!("redis://127.0.0.1:{proxy}");
    let wide = lavic_catalog::redis::Layout { fingerprint: "cd".repeat(32), form: StoreForm::Cls, width: 512, vision_width: 512 };
    let via_proxy_wide = RedisStore::open(&cfg, wide.clone(), None).unwrap();
    let batch: Vec<_> = (0..400).map(|i| item_w(&format!("cut{i:04}"), 1, 512)).collect();
    let err = via_proxy_wide.write(batch).unwrap_err();
    assert!(matches!(err, lavic_catalog::Error::StoreUnavailable { .. }), "{err}");
    let mut con = server.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("lavic:{{{}}}:item:*", "cd".repeat(32))).query(&mut con).unwrap();
    assert!(keys.is_empty(), "{} items of the cut batch are visible", keys.len());
    let hlen: u64 = redis::cmd("HLEN").arg(format!("lavic:{{{}}}:index", "cd".repeat(32))).query(&mut con).unwrap();
    let epoch: Option<u64> = redis::cmd("GET").arg(format!("lavic:{{{}}}:epoch", "cd".repeat(32))).query(&mut con).unwrap();
    assert_eq!((hlen, epoch), (0, None));
    // The first namespace is untouched and still readable through a direct connection.
    assert_eq!(direct.stored(&["before"]).unwrap()[0].as_deref(), Some(&item("before", 0)));
}

#[test]
fn a_push_killed_part_way_leaves_only_whole_batches() {
    let server = RedisServer::start();
    let d = tempfile::tempdir().unwrap();
    let (n, width, batch) = (3000, 512, 250);
    write_synthetic(&d.path().join("cat"), n, width, StoreForm::Cls, FP).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lavic-catalog"))
        .args(["push", d.path().join("cat").to_str().unwrap(), &server.url(), "--batch-size", &batch.to_string()])
        .env("LAVIC_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut con = server.connection();
    let index = format!("lavic:{{{FP}}}:index");
    let landed = wait_until(Duration::from_secs(30), || redis::cmd("HLEN").arg(&index).query::<u64>(&mut con).unwrap_or(0) > 0);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(landed, "no batch landed");
    let cfg = RedisConfig::new(server.url());
    let layout = lavic_catalog::redis::Layout { fingerprint: FP.into(), form: StoreForm::Cls, width, vision_width: width };
    let s = RedisStore::open(&cfg, layout, None).unwrap();
    let ids: Vec<String> = (0..n).map(synthetic_id).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let got = s.stored(&refs).unwrap();
    let mut whole = 0;
    for (b, chunk) in got.chunks(batch).enumerate() {
        let present = chunk.iter().filter(|g| g.is_some()).count();
        assert!(present == 0 || present == batch, "batch {b}: {present} of {batch} items visible");
        whole += usize::from(present == batch);
    }
    assert_eq!(s.count().unwrap(), whole * batch);
    eprintln!("push killed after {whole} of {} batches", n / batch);
}
