//! The access log and request identity of the real binary: one line per request (target
//! `x402_gateway::access`) with its id, route, status, timings and payment outcome; the
//! request id goes upstream and back (the client's, or a generated one), and the client's
//! `traceparent` reaches the upstream unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::Path;
use std::time::Duration;

use common::*;

/// The access line of request `id` in `log`, once it is written (up to 5 s).
async fn access_line(log: &Path, id: &str) -> String {
    let needle = format!("request_id=\"{id}\"");
    let started = x402_gateway::clock::instant();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(l) = text
            .lines()
            .find(|l| l.contains("x402_gateway::access") && l.contains(&needle))
        {
            return l.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no access line for {id} in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_id_a_trace_and_one_access_line() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let routes = "[[route]]\npath = \"/health\"\nprice = \"free\"\n[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n";
    let (port, _admin, log, _gw) = start_binary(&upstream.url(), &facilitator.server.url(), routes);
    let gw = |p: &str| format!("http://127.0.0.1:{port}{p}");
    get_when_up(&gw("/health")).await;

    // The client's id and trace context: kept, sent upstream, id returned.
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let r = http()
        .get(gw("/health"))
        .header("x-request-id", "client-id-1")
        .header("traceparent", trace)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "client-id-1");
    let seen = upstream.last().unwrap();
    assert_eq!(seen.header("x-request-id"), Some("client-id-1"));
    assert_eq!(seen.header("traceparent"), Some(trace));
    let line = access_line(&log, "client-id-1").await;
    for field in [
        "route=\"/health\"",
        "method=\"GET\"",
        "path=\"/health\"",
        "status=200",
        "trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"",
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }

    // No id (or an unusable one): a generated one, the same upstream and back.
    let r = http()
        .get(gw("/health"))
        .header("x-request-id", "has spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        upstream.last().unwrap().header("x-request-id"),
        Some(id.as_str())
    );
    access_line(&log, &id).await;

    // The 402 and the paid request: statuses, payment outcome, payer and timings.
    let challenge = http()
        .get(gw("/paid/a"))
        .header("x-request-id", "unpaid-1")
        .send()
        .await
        .unwrap();
    assert_eq!(challenge.status(), 402);
    assert_eq!(challenge.headers()["x-request-id"], "unpaid-1");
    let line = access_line(&log, "unpaid-1").await;
    assert!(
        line.contains("status=402") && line.contains("route=\"/paid/**\""),
        "{line}"
    );
    let payment = x402_gateway::client::sign_v2(
        &payer(),
        &decode_required(&challenge),
        0,
        now(),
        x402_gateway::client::random_nonce(),
    )
    .unwrap();
    let r = http()
        .get(gw("/paid/a"))
        .header("x-request-id", "paid-1")
        .header("payment-signature", &payment)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = access_line(&log, "paid-1").await;
    for field in [
        "status=200",
        "outcome=\"settled\"",
        &format!("payer=\"{}\"", payer().address()),
        "amount=\"1000\"",
        &format!("transaction=\"{TX_HASH}\""),
    ] {
        assert!(line.contains(field), "{field} missing: {line}");
    }
    let ms = |name: &str| -> f64 {
        let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
        line[start..].split(' ').next().unwrap().parse().unwrap()
    };
    assert!(ms("facilitator_ms") > 0.0, "{line}");
    assert!(ms("upstream_ms") > 0.0, "{line}");
    assert!(ms("duration_ms") >= ms("facilitator_ms"), "{line}");
    // One line per request: the paid request is not logged twice.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.matches("request_id=\"paid-1\"").count(), 1, "{text}");
}
