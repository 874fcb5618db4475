//! OTLP span export (cargo feature `otlp`, `[logging] otlp_endpoint`): every request through
//! the proxy is one server span at the collector; a client's trace is continued, with the
//! gateway's span as the upstream's parent; a request without a `traceparent` starts a trace.
//! Run by `scripts/test.sh` as `cargo test --features otlp --test otlp`.

#![cfg(feature = "otlp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::Duration;

use common::*;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Every span the collector received, once there are at least `n` (up to 5 s).
async fn spans(collector: &MockServer, n: usize) -> (Vec<serde_json::Value>, serde_json::Value) {
    let started = x402_gateway::clock::instant();
    loop {
        let bodies: Vec<serde_json::Value> = collector
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == "/v1/traces")
            .map(|r| serde_json::from_slice(&r.body).unwrap())
            .collect();
        let all: Vec<serde_json::Value> = bodies
            .iter()
            .flat_map(|b| {
                b["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if all.len() >= n {
            return (all, bodies[0]["resourceSpans"][0]["resource"].clone());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{} spans exported, {n} expected",
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map_or(&serde_json::Value::Null, |a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_span_and_its_context_goes_upstream() {
    let collector = MockServer::start(|_| Response::json(200, "{}")).await;
    let sections = format!(
        "[logging]\notlp_endpoint = \"{}/v1/traces\"\notlp_service_name = \"edge-1\"\n",
        collector.url()
    );
    let gw = TestGateway::start_full(ROUTES, "", &sections).await;

    // The client's trace continues through the gateway's own span.
    let r = http()
        .get(gw.url("/health"))
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let sent = gw.upstream.last().unwrap();
    let tp = sent.header("traceparent").unwrap().to_owned();
    assert!(tp.starts_with(&format!("00-{CLIENT_TRACE}-")), "{tp}");
    let gateway_span = tp[36..52].to_owned();
    assert_ne!(
        gateway_span, CLIENT_SPAN,
        "the upstream's parent is the gateway's span"
    );

    // No traceparent: a new trace, also sent upstream; a paid request's span says its outcome.
    let payment = pay_v2(&gw, "/weather/paris").await;
    let r = gw.send("/weather/paris", &payment).await;
    assert_eq!(r.status(), 200);
    let tp = gw
        .upstream
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_owned();
    let new_trace = tp[3..35].to_owned();
    assert_ne!(new_trace, CLIENT_TRACE);

    // Three requests: the free one, the 402, the paid one.
    let (spans, resource) = spans(&collector, 3).await;
    assert_eq!(resource["attributes"][0]["value"]["stringValue"], "edge-1");
    let free = spans
        .iter()
        .find(|s| s["spanId"] == gateway_span.as_str())
        .expect("the free request's span");
    assert_eq!(free["traceId"], CLIENT_TRACE);
    assert_eq!(free["parentSpanId"], CLIENT_SPAN);
    assert_eq!(free["name"], "GET /health");
    assert_eq!(free["kind"], 2);
    assert_eq!(
        attribute(free, "http.response.status_code")["intValue"],
        "200"
    );
    let paid = spans
        .iter()
        .find(|s| s["traceId"] == new_trace.as_str())
        .expect("the paid request's span");
    assert_eq!(
        paid["name"], "GET /weather/*",
        "named by route, never by raw path"
    );
    assert!(paid.get("parentSpanId").is_none());
    assert_eq!(
        attribute(paid, "x402.payment.outcome")["stringValue"],
        "settled"
    );
    assert!(spans.iter().any(|s| {
        s["name"] == "GET /weather/*"
            && attribute(s, "http.response.status_code")["intValue"] == "402"
    }));
}
