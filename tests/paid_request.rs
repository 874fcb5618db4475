//! Paid requests: both protocol versions, header precedence, and every local rejection
//! (which must never reach the facilitator or the upstream), malformed headers included.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use alloy::primitives::B256;
use common::*;
use x402_gateway::client;
use x402_gateway::protocol::encode_header;

async fn get_with(gw: &TestGateway, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut req = http().get(gw.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v2_payment_is_served_with_a_receipt() {
    let gw = TestGateway::start().await;
    let payment = pay_v2(&gw, "/weather/paris").await;
    let resp = get_with(&gw, "/weather/paris", &[("payment-signature", &payment)]).await;
    assert_eq!(resp.status(), 200);
    let receipt = decode_receipt(&resp, "payment-response");
    assert!(receipt.is_success());
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
    assert_eq!(receipt.network.as_deref(), Some("eip155:84532"));
    assert_eq!(
        receipt.payer.as_deref(),
        Some(payer().address().to_checksum(None).as_str())
    );
    assert!(resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("PAYMENT-RESPONSE"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["upstream"], true);
    let seen = gw.upstream.last().unwrap();
    assert!(seen.header("payment-signature").is_none() && seen.header("x-payment").is_none());
    assert_eq!(
        (gw.facilitator.verify_calls(), gw.facilitator.settle_calls()),
        (1, 1)
    );
    // The facilitator got the version-2 shapes, with our own requirements.
    let body = gw.facilitator.last_body("/verify");
    assert_eq!(body["x402Version"], 2);
    assert_eq!(body["paymentRequirements"]["amount"], "1000");
    assert_eq!(
        body["paymentPayload"]["accepted"]["network"],
        "eip155:84532"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_payment_is_served_with_a_v1_receipt() {
    let gw = TestGateway::start().await;
    let payment = pay_v1(&gw, "/weather/paris").await;
    let resp = get_with(&gw, "/weather/paris", &[("x-payment", &payment)]).await;
    assert_eq!(resp.status(), 200);
    let receipt = decode_receipt(&resp, "x-payment-response");
    assert!(receipt.is_success());
    assert_eq!(receipt.network.as_deref(), Some("base-sepolia"));
    let body = gw.facilitator.last_body("/verify");
    assert_eq!(body["x402Version"], 1);
    assert_eq!(body["paymentRequirements"]["maxAmountRequired"], "1000");
    assert_eq!(
        body["paymentRequirements"]["resource"],
        gw.url("/weather/paris")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_signature_wins_over_x_payment() {
    let gw = TestGateway::start().await;
    let good = pay_v2(&gw, "/weather/paris").await;
    let resp = get_with(
        &gw,
        "/weather/paris",
        &[("payment-signature", &good), ("x-payment", "garbage")],
    )
    .await;
    assert_eq!(resp.status(), 200);
    // A v2 payload sent under X-PAYMENT is read as v2 (the version inside decides).
    let other = pay_v2(&gw, "/weather/paris").await;
    let resp = get_with(&gw, "/weather/paris", &[("x-payment", &other)]).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("payment-response"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_rejections_never_reach_facilitator_or_upstream() {
    let gw = TestGateway::start().await;
    let n = now();
    let fresh = client::random_nonce;
    let cases: Vec<(String, &str)> = vec![
        (
            pay_v2_tampered(
                &gw,
                "/weather/paris",
                |r| r.accepts[0].amount = "999".into(),
                n,
                fresh(),
            )
            .await,
            "authorization_value",
        ),
        (
            pay_v2_tampered(
                &gw,
                "/weather/paris",
                |r| r.accepts[0].pay_to = "0x000000000000000000000000000000000000dEaD".into(),
                n,
                fresh(),
            )
            .await,
            "recipient_mismatch",
        ),
        (
            pay_v2_tampered(
                &gw,
                "/weather/paris",
                |r| r.accepts[0].max_timeout_seconds = 3,
                n,
                fresh(),
            )
            .await,
            "valid_before",
        ),
        (
            pay_v2_tampered(&gw, "/weather/paris", |_| {}, n + 3600, fresh()).await,
            "valid_after",
        ),
        (
            pay_v2_tampered(
                &gw,
                "/weather/paris",
                |r| r.accepts[0].extra.name = "USD Coin".into(),
                n,
                fresh(),
            )
            .await,
            "invalid_exact_evm_signature",
        ),
        (
            pay_v2_tampered(
                &gw,
                "/weather/paris",
                |r| r.accepts[0].network = "eip155:8453".into(),
                n,
                fresh(),
            )
            .await,
            "network_mismatch",
        ),
        ("not base64 !!".to_owned(), "invalid_payload"),
        (encode_header(b"{\"x402Version\":2}"), "invalid_payload"),
        (encode_header(b"[]"), "invalid_payload"),
        (
            encode_header(br#"{"x402Version":7,"payload":{}}"#),
            "invalid_payload",
        ),
        ("A".repeat(20_000), "invalid_payload"),
    ];
    for (header, reason) in cases {
        let resp = get_with(&gw, "/weather/paris", &[("payment-signature", &header)]).await;
        assert_eq!(resp.status(), 402, "{reason}");
        let error = challenge_error(&resp);
        assert!(error.contains(reason), "expected {reason}, got {error}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert!(body["error"].as_str().unwrap().contains(reason));
    }
    assert_eq!(
        gw.facilitator.verify_calls(),
        0,
        "a local rejection reached the facilitator"
    );
    assert_eq!(
        gw.upstream.count(),
        0,
        "a rejected payment reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_signature_is_rejected_locally() {
    let gw = TestGateway::start().await;
    let good = pay_v2(&gw, "/weather/paris").await;
    let mut json: serde_json::Value =
        serde_json::from_slice(&x402_gateway::protocol::decode_header(good.as_bytes()).unwrap())
            .unwrap();
    // Pay a different nonce than the one signed.
    json["payload"]["authorization"]["nonce"] =
        serde_json::Value::String(B256::repeat_byte(7).to_string());
    let bad = encode_header(json.to_string().as_bytes());
    let resp = get_with(&gw, "/weather/paris", &[("payment-signature", &bad)]).await;
    assert_eq!(resp.status(), 402);
    assert!(challenge_error(&resp).contains("invalid_exact_evm_signature"));
    assert_eq!((gw.facilitator.verify_calls(), gw.upstream.count()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hex_amounts_are_accepted_and_forwarded_as_decimal() {
    let gw = TestGateway::start().await;
    let good = pay_v2(&gw, "/weather/paris").await;
    let json =
        String::from_utf8(x402_gateway::protocol::decode_header(good.as_bytes()).unwrap()).unwrap();
    let hex = json.replace("\"value\":\"1000\"", "\"value\":\"0x3e8\"");
    assert_ne!(hex, json);
    let resp = get_with(
        &gw,
        "/weather/paris",
        &[("payment-signature", &encode_header(hex.as_bytes()))],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = gw.facilitator.last_body("/verify");
    assert_eq!(
        body["paymentPayload"]["payload"]["authorization"]["value"],
        "1000"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_for_one_route_does_not_pay_a_dearer_one() {
    let gw = TestGateway::start().await;
    let cheap = pay_v2(&gw, "/weather/paris").await;
    let resp = http()
        .post(gw.url("/reports/annual"))
        .header("payment-signature", &cheap)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(challenge_error(&resp).contains("authorization_value"));
    assert_eq!(gw.upstream.count(), 0);
}
