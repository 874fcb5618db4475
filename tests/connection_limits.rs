//! The listener's connection limits (`[limits] max_connections`, `header_timeout`): a client
//! trickling its request head one byte at a time is closed once the head has taken longer than
//! `header_timeout`, although each single read is far inside `client_timeout` (slowloris); past
//! `max_connections` open connections a new one is closed as it arrives, and a place freed is
//! taken again. Requests that behave are untouched, on reused connections too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ROUTES: &str = "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n";

/// Reads one whole answer of the mock upstream on `s` (its head, then `content-length` bytes).
async fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed mid-answer");
        got.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&got).to_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    head
}

/// Whether the gateway closed `s` (EOF or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_trickled_past_header_timeout_is_closed() {
    let gw = TestGateway::start_full(
        ROUTES,
        "",
        "[limits]\nheader_timeout = \"1s\"\n[server]\nclient_timeout = \"60s\"\n",
    )
    .await;
    // A request that behaves, twice on one connection: untouched.
    let mut ok = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        ok.write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        assert!(read_answer(&mut ok).await.starts_with("http/1.1 200"));
    }

    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n")
        .await
        .unwrap();
    let started = x402_gateway::clock::instant();
    // One byte of a header every 200 ms: every read is quick, the head never ends.
    let mut closed = false;
    for b in b"x-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        .iter()
        .cycle()
    {
        if slow.write_all(&[*b]).await.is_err()
            || closed_within(&mut slow, Duration::from_millis(200)).await
        {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let took = started.elapsed();
    assert!(closed, "a trickled head held its connection for {took:?}");
    assert!(
        took >= Duration::from_millis(900),
        "closed before header_timeout: {took:?}"
    );
    let metrics = gw.payments.metrics().render(0);
    assert!(
        metrics.contains("x402_request_head_timeouts_total 1"),
        "{metrics}"
    );
    // The connection that behaves is still served.
    ok.write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await
        .unwrap();
    assert!(read_answer(&mut ok).await.starts_with("http/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_connection_is_closed_until_a_place_frees() {
    let gw = TestGateway::start_full(ROUTES, "", "[limits]\nmax_connections = 2\n").await;
    // Two connections, each answered once and kept open: both places are taken.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        assert!(read_answer(&mut s).await.starts_with("http/1.1 200"));
        held.push(s);
    }
    let mut third = TcpStream::connect(gw.addr).await.unwrap();
    let _ = third
        .write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut third, Duration::from_secs(10)).await,
        "a third connection was served past max_connections = 2"
    );
    let metrics = gw.payments.metrics().render(0);
    assert!(
        metrics.contains("x402_connections_refused_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("x402_connections_open 2"), "{metrics}");
    // One closes: its place is free again (once the gateway has seen it go).
    drop(held.pop());
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /free HTTP/1.1\r\nhost: gw\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 12];
        if s.read_exact(&mut first).await.is_ok() {
            assert_eq!(&first, b"HTTP/1.1 200");
            break;
        }
        assert!(
            x402_gateway::clock::instant() < deadline,
            "the freed place was never taken again"
        );
        tokio::task::yield_now().await;
    }
}
