//! Settlement after the response and before the upstream: receipts, failures that withhold the
//! content, released and burnt authorizations, replays.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use x402_gateway::{client, protocol};

const INSUFFICIENT: &str = "invalid_exact_evm_insufficient_balance";

/// Signs a fresh payment for `path` and sends it.
async fn pay(gw: &TestGateway, path: &str) -> (String, reqwest::Response) {
    let payment = pay_v2(gw, path).await;
    let resp = gw.send(path, &payment).await;
    (payment, resp)
}

/// Asserts a 402 whose `PAYMENT-REQUIRED` error contains `reason`.
fn assert_rejected(resp: &reqwest::Response, reason: &str) {
    assert_eq!(resp.status(), 402);
    let error = challenge_error(resp);
    assert!(error.contains(reason), "error {error:?} lacks {reason:?}");
}

/// Asserts a settled 200 with a successful v2 receipt.
fn assert_settled(resp: &reqwest::Response) {
    assert_eq!(resp.status(), 200);
    let receipt = decode_receipt(resp, "payment-response");
    assert_eq!(receipt.success, Some(true));
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
}

/// Asserts a settlement-failure 402: failed receipt with `reason` (when given), a complete body
/// that is the gateway's, never the upstream's. Returns the receipt's reason.
async fn assert_settle_failed(resp: reqwest::Response, reason: Option<&str>) -> String {
    assert_settle_failed_body(resp, reason, true).await
}

/// As [`assert_settle_failed`]; `with_body: false` for upstream answers that end at their header
/// (the 402 then has an empty body: the reason travels in the two headers).
async fn assert_settle_failed_body(
    resp: reqwest::Response,
    reason: Option<&str>,
    with_body: bool,
) -> String {
    if resp.status() != 402 {
        let status = resp.status();
        panic!("{status}: {:?}", resp.text().await);
    }
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.success, Some(false));
    let got = receipt.error_reason.unwrap_or_default();
    assert!(!got.is_empty(), "failed receipt without a reason");
    if let Some(r) = reason {
        assert_eq!(got, r);
    }
    assert!(challenge_error(&resp).contains(&got));
    let body = resp.text().await.expect("a complete 402 body");
    assert!(
        !body.contains("\"upstream\""),
        "upstream content released: {body}"
    );
    if with_body {
        assert!(body.contains(&got), "402 body lacks the reason: {body}");
    } else {
        assert!(body.is_empty(), "{body}");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_response_success() {
    let gw = TestGateway::start().await;
    let (_, resp) = pay(&gw, "/paid/x").await;
    assert_settled(&resp);
    let cc = resp.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cc.contains("private"), "cache-control {cc:?}");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        (body["upstream"].as_bool(), body["path"].as_str()),
        (Some(true), Some("/paid/x"))
    );
    assert_eq!(gw.counts(), (1, 1, 1));
    let forwarded = gw.upstream.last().unwrap();
    assert!(forwarded.header("payment-signature").is_none());
    assert!(forwarded.header("x-payment").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_payment_gets_a_v1_receipt() {
    let gw = TestGateway::start().await;
    let payment = pay_v1(&gw, "/paid/x").await;
    let resp = http()
        .get(gw.url("/paid/x"))
        .header("x-payment", payment)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("payment-response").is_none());
    let receipt = decode_receipt(&resp, "x-payment-response");
    assert_eq!(
        (receipt.success, receipt.network.as_deref()),
        (Some(true), Some("base-sepolia"))
    );
    assert_eq!(gw.counts(), (1, 1, 1));
    assert!(gw.upstream.last().unwrap().header("x-payment").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_response_settle_failure_withholds_the_content() {
    let gw = TestGateway::start().await;
    // (A garbled answer, or one without `success`, is an unknown outcome:
    // tests/unknown_outcomes.rs.)
    let scripts = [
        (SettleScript::Fail(INSUFFICIENT), Some(INSUFFICIENT)),
        (
            SettleScript::Fail("invalid_exact_evm_transaction_failed"),
            None,
        ),
    ];
    for (i, (script, reason)) in scripts.into_iter().enumerate() {
        gw.facilitator.set_settle(script.clone());
        let (_, resp) = pay(&gw, "/paid/x").await;
        assert_settle_failed(resp, reason).await;
        assert_eq!(gw.counts(), (i + 1, i + 1, i + 1), "{script:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_failure_on_an_empty_upstream_body_is_a_complete_402() {
    let gw = TestGateway::start().await;
    gw.facilitator.set_settle(SettleScript::Fail(INSUFFICIENT));
    let (_, resp) = pay(&gw, "/paid/empty").await;
    assert_settle_failed_body(resp, Some(INSUFFICIENT), false).await;
    assert_eq!(gw.counts(), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_error_releases_the_authorization() {
    let gw = TestGateway::start().await;
    let (payment, resp) = pay(&gw, "/status/500").await;
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().get("payment-response").is_none());
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["upstream"],
        true
    );
    assert_eq!(
        gw.counts(),
        (1, 0, 1),
        "nothing is settled for an upstream error"
    );

    let resp = gw.send("/status/200", &payment).await;
    assert_settled(&resp);
    assert_eq!(gw.facilitator.settle_calls(), 1);
    assert_eq!(gw.upstream.count_path("/status/200"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_upstream_settles_first() {
    let gw = TestGateway::start().await;
    let (_, resp) = pay(&gw, "/reports/r").await;
    assert_settled(&resp);
    assert_eq!(gw.counts(), (1, 1, 1));

    gw.facilitator.set_settle(SettleScript::Fail(INSUFFICIENT));
    let (_, resp) = pay(&gw, "/reports/r").await;
    assert_settle_failed(resp, Some(INSUFFICIENT)).await;
    assert_eq!(
        gw.counts(),
        (2, 2, 1),
        "a failed up-front settlement never reaches the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_overrides_are_stripped() {
    let gw = TestGateway::start().await;
    let (_, resp) = pay(&gw, "/paid/overrides").await;
    assert_settled(&resp);
    assert!(resp.headers().get("settlement-overrides").is_none());
    assert_eq!(gw.upstream.count_path("/paid/overrides"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_replay_is_refused() {
    let gw = TestGateway::start().await;
    let (payment, resp) = pay(&gw, "/paid/x").await;
    assert_settled(&resp);
    assert_already_redeemed(gw.send("/paid/x", &payment).await).await;
    assert_eq!(gw.counts(), (1, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replay_serves_once() {
    let gw = TestGateway::start().await;
    let payment = pay_v2(&gw, "/paid/x").await;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let req = http()
                .get(gw.url("/paid/x"))
                .header("payment-signature", payment.clone());
            tokio::spawn(async move { req.send().await.unwrap().status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    statuses.sort_unstable();
    // One is served; the others are refused: 503 while the winner is in flight (a retry of it
    // must not look like "pay again"), 409 once its answer went out.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| [200, 409, 503].contains(s)),
        "{statuses:?}"
    );
    assert_eq!((gw.facilitator.settle_calls(), gw.upstream.count()), (1, 1));
}

/// `[verification] mode = "local"`: no `/verify`; `/settle` still gates every release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_verification_settles_without_verify_and_still_gates_release() {
    let gw = TestGateway::start_with(ROUTES, "[verification]\nmode = \"local\"").await;
    // The facilitator would refuse; local mode never asks it.
    gw.facilitator.set_verify(VerifyScript::Invalid {
        status: 200,
        reason: INSUFFICIENT,
    });
    let (payment, resp) = pay(&gw, "/paid/x").await;
    assert_settled(&resp);
    assert_eq!(gw.counts(), (0, 1, 1));

    // A replay is refused locally.
    assert_already_redeemed(gw.send("/paid/x", &payment).await).await;
    assert_eq!(gw.counts(), (0, 1, 1));

    // A payment that cannot settle releases nothing, in either settlement mode.
    gw.facilitator.set_settle(SettleScript::Fail(INSUFFICIENT));
    let (_, resp) = pay(&gw, "/paid/x").await;
    assert_settle_failed(resp, Some(INSUFFICIENT)).await;
    assert_eq!(
        gw.counts(),
        (0, 2, 2),
        "after_response: upstream ran, answer withheld"
    );
    let (_, resp) = pay(&gw, "/reports/r").await;
    assert_settle_failed(resp, Some(INSUFFICIENT)).await;
    assert_eq!(
        gw.counts(),
        (0, 3, 2),
        "before_upstream: upstream never ran"
    );

    // Local rejections still never reach the facilitator.
    let cheap = pay_v2_tampered(
        &gw,
        "/paid/x",
        |r| r.accepts[0].amount = "1".to_owned(),
        now(),
        client::random_nonce(),
    )
    .await;
    assert_eq!(gw.send("/paid/x", &cheap).await.status(), 402);
    assert_eq!(gw.counts(), (0, 3, 2));
}

/// A signature the gateway cannot check itself (smart wallet) still goes to `/verify` in
/// local mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_verification_defers_smart_wallet_signatures_to_the_facilitator() {
    let gw = TestGateway::start_with(ROUTES, "[verification]\nmode = \"local\"").await;
    let wallet_payment = || async {
        let payment = pay_v2(&gw, "/paid/x").await;
        let mut json: serde_json::Value =
            serde_json::from_slice(&protocol::decode_header(payment.as_bytes()).unwrap()).unwrap();
        json["payload"]["signature"] = format!("0x{}", "ab".repeat(100)).into();
        protocol::encode_header(json.to_string().as_bytes())
    };

    gw.facilitator.set_verify(VerifyScript::Invalid {
        status: 200,
        reason: "invalid_exact_evm_payload_signature",
    });
    assert_rejected(
        &gw.send("/paid/x", &wallet_payment().await).await,
        "invalid_exact_evm_payload_signature",
    );
    assert_eq!(gw.counts(), (1, 0, 0));

    gw.facilitator.set_verify(VerifyScript::Valid);
    assert_settled(&gw.send("/paid/x", &wallet_payment().await).await);
    assert_eq!(gw.counts(), (2, 1, 1));
}
