//! How the gateway behaves when the facilitator refuses a payment, garbles its answer or does
//! not answer at all, and that local rejections never reach it.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const INSUFFICIENT: &str = "invalid_exact_evm_insufficient_balance";

/// Like [`send`], and asserts the upstream was not contacted.
async fn send_unforwarded(gw: &TestGateway, path: &str, payment: &str) -> reqwest::Response {
    let before = gw.upstream.count();
    let resp = gw.send(path, payment).await;
    assert_eq!(
        gw.upstream.count(),
        before,
        "upstream contacted for {path} ({})",
        resp.status()
    );
    resp
}

/// Asserts a 402 whose `PAYMENT-REQUIRED` error contains `reason`.
fn assert_rejected(resp: &reqwest::Response, reason: &str) {
    assert_eq!(resp.status(), 402);
    let error = challenge_error(resp);
    assert!(error.contains(reason), "error {error:?} lacks {reason:?}");
}

/// Asserts the gateway's 503 for a facilitator outage.
async fn assert_unavailable(resp: reqwest::Response) {
    assert_eq!(resp.status(), 503);
    assert!(
        resp.headers().contains_key("retry-after"),
        "no retry-after: {:?}",
        resp.headers()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "facilitator_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_verdict_with_any_http_status_is_a_402() {
    let gw = TestGateway::start().await;
    for (i, status) in [200, 400, 500].into_iter().enumerate() {
        gw.facilitator.set_verify(VerifyScript::Invalid {
            status,
            reason: INSUFFICIENT,
        });
        let payment = pay_v2(&gw, "/paid/x").await;
        let resp = send_unforwarded(&gw, "/paid/x", &payment).await;
        assert_rejected(&resp, INSUFFICIENT);
        assert_eq!(
            gw.counts(),
            (i + 1, 0, 0),
            "verdict delivered with HTTP {status}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_verdict_is_cached_per_payload() {
    let gw = TestGateway::start().await;
    gw.facilitator.set_verify(VerifyScript::Invalid {
        status: 200,
        reason: INSUFFICIENT,
    });
    let payment = pay_v2(&gw, "/paid/x").await;
    for _ in 0..2 {
        assert_rejected(
            &send_unforwarded(&gw, "/paid/x", &payment).await,
            INSUFFICIENT,
        );
        assert_eq!(
            gw.facilitator.verify_calls(),
            1,
            "the same payload is answered from the cache"
        );
    }
    let fresh = pay_v2(&gw, "/paid/x").await;
    assert_rejected(
        &send_unforwarded(&gw, "/paid/x", &fresh).await,
        INSUFFICIENT,
    );
    assert_eq!(
        gw.counts(),
        (2, 0, 0),
        "a new payment asks the facilitator again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbled_verify_answer_is_a_503_and_releases_the_authorization() {
    let gw = TestGateway::start().await;
    gw.facilitator.set_verify(VerifyScript::Garbage(502));
    let payment = pay_v2(&gw, "/paid/x").await;
    assert_unavailable(send_unforwarded(&gw, "/paid/x", &payment).await).await;
    assert_eq!(gw.counts(), (1, 0, 0));

    gw.facilitator.set_verify(VerifyScript::Valid);
    let resp = gw.send("/paid/x", &payment).await;
    assert_eq!(
        resp.status(),
        200,
        "the outage must not burn the authorization"
    );
    assert!(decode_receipt(&resp, "payment-response").success == Some(true));
    assert_eq!(
        gw.counts(),
        (2, 1, 1),
        "the outage was not cached as a verdict"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_timeout_is_a_503() {
    let gw = TestGateway::start().await;
    gw.facilitator
        .set_verify(VerifyScript::Slow(Duration::from_secs(3)));
    let payment = pay_v2(&gw, "/paid/x").await;
    assert_unavailable(send_unforwarded(&gw, "/paid/x", &payment).await).await;
    assert_eq!(gw.counts(), (1, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rejections_never_reach_the_facilitator() {
    let gw = TestGateway::start().await;
    assert_rejected(
        &send_unforwarded(&gw, "/paid/x", "garbage!!").await,
        "invalid_payload",
    );

    let tampered = pay_v2_tampered(
        &gw,
        "/paid/x",
        |r| r.accepts[0].amount = "2000".into(),
        now(),
        x402_gateway::client::random_nonce(),
    )
    .await;
    assert_rejected(
        &send_unforwarded(&gw, "/paid/x", &tampered).await,
        "invalid_exact_evm_authorization_value",
    );
    assert_eq!(gw.counts(), (0, 0, 0));
}
