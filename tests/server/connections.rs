//! Issue 11, items 4 and 5: connections that never talk are closed after the handshake timeout
//! on both ports, the connection cap keeps them from locking clients out for longer than that,
//! a request body that stops arriving ends the call within request_timeout_secs, and one HTTP/2
//! connection may open only `max_concurrent_streams` calls. Hostile clients are raw sockets and
//! a raw HTTP/2 client, all on 127.0.0.1.

use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use lavic_server::Config;

/// Waits (at most `limit`) until the server closes `s`; returns how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Duration {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("the server kept an idle connection open for {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return t.elapsed(),
            // A server may write (HTTP/2 SETTINGS, GOAWAY, an HTTP/1 408) before closing.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_cannot_lock_clients_out() {
    let server = start_serving(Config {
        handshake_timeout_secs: 1,
        max_connections: 4,
        ..config()
    })
    .await;
    // Four silent gRPC connections fill the cap; a fifth client connects behind them.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let half = {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap(); // part of the preface, then nothing
        s
    };
    let t = Instant::now();
    let mut rec = server.recommender().await;
    let answered =
        tokio::time::timeout(Duration::from_secs(20), rec.recommend(request(&DEMO[..2]))).await;
    assert!(answered.expect("a real client was locked out").is_ok());
    eprintln!(
        "a real client behind 4 silent connections was answered after {:?}",
        t.elapsed()
    );
    for s in idle.iter_mut() {
        let took = closed_within(s, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(5));
    }
    let mut half = half;
    closed_within(&mut half, Duration::from_secs(5)).await;

    // The metrics port: a request head that never ends, and a silent connection.
    let mut partial = TcpStream::connect(server.metrics_addr).await.unwrap();
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let mut silent = TcpStream::connect(server.metrics_addr).await.unwrap();
    let took = closed_within(&mut partial, Duration::from_secs(5)).await;
    closed_within(&mut silent, Duration::from_secs(5)).await;
    eprintln!("metrics port closed a stalled request head after {took:?}");
    assert!(
        server.metrics().await.contains("lavic_inflight_requests"),
        "metrics still served"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_ends_the_call_and_streams_are_bounded() {
    let server = start_serving(Config {
        request_timeout_secs: 1,
        max_concurrent_streams: 4,
        ..config()
    })
    .await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    // The server's SETTINGS arrive after the handshake.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.current_max_send_streams() != 4 {
        assert!(
            Instant::now() < deadline,
            "max concurrent streams is {}, expected 4",
            client.current_max_send_streams()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A gRPC message announced as 4 MB, of which 1 MB is sent; then the client stalls.
    let req = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/lavic.v1.Recommender/Recommend",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(req, false).unwrap();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(4u32 << 20).to_be_bytes());
    frame.extend(std::iter::repeat_n(0x41u8, 1 << 20));
    body.reserve_capacity(frame.len());
    body.send_data(Bytes::from(frame), false).unwrap();
    let t = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the stalled call was never ended");
    let took = t.elapsed();
    eprintln!("a stalled body was answered after {took:?}");
    match answer {
        Ok(r) => {
            let status = r
                .headers()
                .get("grpc-status")
                .map(|v| v.to_str().unwrap().to_string());
            assert!(
                matches!(status.as_deref(), Some("1" | "4")),
                "expected CANCELLED or DEADLINE_EXCEEDED: {r:?}"
            );
        }
        // A reset stream also ends it.
        Err(e) => assert!(e.is_reset() || e.is_remote(), "{e:?}"),
    }
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    drop(body);
    server.stop().await;
}
