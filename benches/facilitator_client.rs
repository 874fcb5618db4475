//! Per-call cost of a facilitator `POST` over a kept-alive loopback connection: the gateway's
//! own HTTP/1.1 client (`verify::http1`, one prepared buffer per call) against Pingora's pooled
//! HTTP/1 connector (what replacing it would mean), both talking to the same local server that
//! answers a fixed `/settle` result. `cargo bench --bench facilitator_client`.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use x402_gateway::verify::http1::Http1Client;

const ANSWER: &str = r#"{"success":true,"transaction":"0x1111111111111111111111111111111111111111111111111111111111111111","network":"eip155:84532","payer":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}"#;

/// A keep-alive server answering every request with `ANSWER`.
async fn server() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{ANSWER}",
                    ANSWER.len()
                );
                let mut buf = vec![0u8; 16384];
                let mut have = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    have.extend_from_slice(&buf[..n]);
                    // One request = head + content-length body.
                    while let Some(end) = have.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&have[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if have.len() < end + 4 + len {
                            break;
                        }
                        have.drain(..end + 4 + len);
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn body() -> String {
    format!(
        r#"{{"x402Version":2,"paymentPayload":{{"payload":"{}"}},"paymentRequirements":{{}}}}"#,
        "a".repeat(900)
    )
}

async fn pingora_post(c: &Connector, peer: &HttpPeer, body: &[u8]) -> (u16, usize) {
    let (mut s, _reused) = c.get_http_session(peer).await.unwrap();
    let mut req = RequestHeader::build("POST", b"/settle", Some(4)).unwrap();
    req.insert_header("host", "127.0.0.1").unwrap();
    req.insert_header("content-type", "application/json")
        .unwrap();
    req.insert_header("content-length", body.len()).unwrap();
    s.write_request_header(Box::new(req)).await.unwrap();
    s.write_body(body).await.unwrap();
    s.finish_body().await.unwrap();
    s.read_response().await.unwrap();
    let status = s.resp_header().map_or(0, |h| h.status.as_u16());
    let mut out = BytesMut::new();
    while let Some(b) = s.read_body_bytes().await.unwrap() {
        out.extend_from_slice(&b);
    }
    c.release_http_session(s, peer, Some(Duration::from_secs(60)))
        .await;
    (status, out.len())
}

fn benches(c: &mut Criterion) {
    x402_gateway::verify::facilitator::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(server());
    let body = body();

    let own = Http1Client::new(&format!("http://{addr}"), Duration::from_secs(2)).unwrap();
    let endpoint = own.endpoint("/settle", &[], false);
    c.bench_function("facilitator_post_own_http1", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (status, answer) = own.post(&endpoint, &body).await.unwrap();
                assert_eq!((status, answer.len()), (200, ANSWER.len()));
            })
        })
    });

    let connector = Connector::new(None);
    let peer = HttpPeer::new(addr, false, String::new());
    c.bench_function("facilitator_post_pingora_connector", |b| {
        b.iter(|| {
            rt.block_on(async {
                let (status, len) = pingora_post(&connector, &peer, body.as_bytes()).await;
                assert_eq!((status, len), (200, ANSWER.len()));
            })
        })
    });
}

criterion_group!(facilitator_client, benches);
criterion_main!(facilitator_client);
