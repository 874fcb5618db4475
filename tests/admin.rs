//! The admin listener of the real binary (`[admin] listen`): `/livez`, `/readyz` with a line
//! per check, and `/metrics` counting what the gateway did (requests, challenges, payments,
//! revenue, facilitator and upstream timings); never proxied, never priced.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::time::Duration;

use common::*;

/// Starts the binary with an admin listener; returns (gateway port, admin port, process).
fn start(upstream: &str, facilitator: &str) -> (u16, u16, KillOnDrop) {
    let routes = "[[route]]\npath = \"/health\"\nprice = \"free\"\n[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n";
    let (port, admin, _log, process) = start_binary(upstream, facilitator, routes);
    (port, admin, process)
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_gateway_did_and_readyz_checks_every_part() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let (port, admin, _gw) = start(&upstream.url(), &facilitator.server.url());
    let admin_url = |p: &str| format!("http://127.0.0.1:{admin}{p}");

    let live = get_when_up(&admin_url("/livez")).await;
    assert_eq!(live.status(), 200);
    assert_eq!(live.text().await.unwrap(), "ok\n");
    let ready = http().get(admin_url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    for check in ["config", "facilitator", "upstream", "journal", "draining"] {
        assert!(body.contains(&format!("ok   {check}\n")), "{body}");
    }

    // A challenge, a paid request, a free one, a replay and an unmatched path.
    let gw = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let challenge = get_when_up(&gw("/paid/a")).await;
    assert_eq!(challenge.status(), 402);
    let required = decode_required(&challenge);
    let payment = x402_gateway::client::sign_v2(
        &payer(),
        &required,
        0,
        now(),
        x402_gateway::client::random_nonce(),
    )
    .unwrap();
    for expected in [200, 409] {
        let r = http()
            .get(gw("/paid/a"))
            .header("payment-signature", &payment)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected);
    }
    assert_eq!(
        http().get(gw("/health")).send().await.unwrap().status(),
        200
    );
    assert_eq!(http().get(gw("/other")).send().await.unwrap().status(), 200);

    // A request is counted when its log line is written, just after its answer went out:
    // scrape until all five are in.
    let mut m = String::new();
    for _ in 0..100 {
        let r = http().get(admin_url("/metrics")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        m = r.text().await.unwrap();
        let counted: f64 = m
            .lines()
            .filter(|l| l.starts_with("x402_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= 5.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let has = |series: &str, v: f64| {
        assert_eq!(sample(&m, series), Some(v), "{series} in:\n{m}");
    };
    has(
        r#"x402_requests_total{method="GET",route="/paid/**",status="402"}"#,
        1.0,
    );
    has(
        r#"x402_requests_total{method="GET",route="/paid/**",status="409"}"#,
        1.0,
    );
    has(
        r#"x402_requests_total{method="GET",route="/paid/**",status="200"}"#,
        1.0,
    );
    has(
        r#"x402_requests_total{method="GET",route="/health",status="200"}"#,
        1.0,
    );
    has(
        r#"x402_requests_total{method="GET",route="(unmatched)",status="200"}"#,
        1.0,
    );
    has(r#"x402_challenges_total{route="/paid/**"}"#, 1.0);
    has(
        r#"x402_payments_total{network="eip155:84532",outcome="settled",reason="",route="/paid/**"}"#,
        1.0,
    );
    has(
        r#"x402_payments_total{network="",outcome="rejected",reason="payment_already_redeemed",route="/paid/**"}"#,
        1.0,
    );
    // $0.001 in USDC's 6 decimals.
    has(
        r#"x402_revenue_atomic_total{asset="0x036CbD53842c5426634e7929541eC2318f3dCF7e",network="eip155:84532",route="/paid/**"}"#,
        1000.0,
    );
    has(
        r#"x402_facilitator_request_duration_seconds_count{endpoint="verify",outcome="ok"}"#,
        1.0,
    );
    has(
        r#"x402_facilitator_request_duration_seconds_count{endpoint="settle",outcome="ok"}"#,
        1.0,
    );
    has(
        r#"x402_upstream_request_duration_seconds_count{route="/paid/**"}"#,
        1.0,
    );
    has("x402_verdict_cache_misses_total", 1.0);
    has("x402_pending_payments", 1.0);
    assert!(m.contains("x402_build_info{version="), "{m}");
    // Raw request paths never become labels.
    assert!(!m.contains("/paid/a") && !m.contains("/other"), "{m}");
    assert_eq!(upstream.count(), 3, "the admin listener never proxies");

    let r = http().get(admin_url("/paid/a")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http().post(admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_the_upstream_refuses_connections() {
    let facilitator = MockFacilitator::start().await;
    // Nothing listens there.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (_port, admin, _gw) = start(&dead, &facilitator.server.url());
    let live = get_when_up(&format!("http://127.0.0.1:{admin}/livez")).await;
    assert_eq!(live.status(), 200);
    let ready = http()
        .get(format!("http://127.0.0.1:{admin}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let body = ready.text().await.unwrap();
    assert!(body.contains("fail upstream: 127.0.0.1:"), "{body}");
    assert!(body.contains("ok   facilitator\n"), "{body}");
}
