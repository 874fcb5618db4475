//! Unpaid requests: the 402 challenge (v1 and v2 at once), browsers, CORS, free routes,
//! pass-through, and path spellings that must not bypass the paywall.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;
use x402_gateway::protocol::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_priced_request_gets_both_challenges_and_never_reaches_upstream() {
    let gw = TestGateway::start().await;
    let resp = http()
        .get(gw.url("/weather/paris?units=metric"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    let h = resp.headers().clone();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["access-control-allow-origin"], "*");
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("PAYMENT-REQUIRED"));
    assert!(h["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .contains("X-PAYMENT-RESPONSE"));
    let v2 = decode_required(&resp);
    assert_eq!(v2.x402_version, 2);
    assert_eq!(v2.resource.url, gw.url("/weather/paris?units=metric"));
    assert_eq!(v2.resource.description, "Current weather");
    assert_eq!(v2.accepts.len(), 1);
    assert_eq!(v2.accepts[0].network, "eip155:84532");
    assert_eq!(v2.accepts[0].amount, "1000");
    assert_eq!(v2.accepts[0].pay_to, PAY_TO);
    assert_eq!(v2.accepts[0].max_timeout_seconds, 300);
    let body: v1::PaymentRequirementsResponse = resp.json().await.unwrap();
    assert_eq!(body.x402_version, 1);
    assert_eq!(body.accepts[0].network, "base-sepolia");
    assert_eq!(body.accepts[0].max_amount_required, "1000");
    assert_eq!(
        body.accepts[0].resource,
        gw.url("/weather/paris?units=metric")
    );
    assert_eq!(
        body.accepts[0].asset,
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    );
    assert_eq!(
        gw.upstream.count(),
        0,
        "an unpaid request reached the upstream"
    );
    assert_eq!(gw.facilitator.verify_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_get_a_readable_page() {
    let gw = TestGateway::start().await;
    let resp = http()
        .get(gw.url("/weather/paris"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("user-agent", "Mozilla/5.0 (X11; Linux x86_64)")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(resp.headers().contains_key("payment-required"));
    let html = resp.text().await.unwrap();
    assert!(
        html.contains("$0.001") && html.contains("Payment required"),
        "{html}"
    );
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_and_unmatched_paths_pass_through() {
    let gw = TestGateway::start().await;
    for path in ["/health", "/not/priced", "/weather"] {
        let resp = http().get(gw.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["upstream"], true);
    }
    // A method the priced route does not list is refused (`unlisted_methods = "reject"`).
    let resp = http().post(gw.url("/weather/paris")).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    assert_eq!(gw.upstream.count(), 3);
    assert_eq!(gw.facilitator.verify_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_do_not_bypass_the_paywall() {
    let gw = TestGateway::start().await;
    for path in [
        "/weather/paris/",
        "/WEATHER/paris",
        "//weather//paris",
        "/%77eather/paris",
        "/health/../weather/paris",
        "/weather/./paris",
        "/health%zz",
        "/weather/%",
    ] {
        // Send the target verbatim (reqwest would normalise some of these).
        let raw = raw_get(gw.addr, path, &[]).await;
        assert!(
            raw.starts_with("HTTP/1.1 402"),
            "{path} was not charged: {raw}"
        );
    }
    // HEAD falls under GET routes.
    let resp = http().head(gw.url("/weather/paris")).send().await.unwrap();
    assert_eq!(resp.status(), 402);
    assert_eq!(gw.upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflight_is_answered_by_the_gateway_and_allows_payment_headers() {
    let gw = TestGateway::start().await;
    let resp = http()
        .request(reqwest::Method::OPTIONS, gw.url("/weather/paris"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "payment-signature,access-control-expose-headers",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let allow = resp.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_owned();
    for h in [
        "PAYMENT-SIGNATURE",
        "X-PAYMENT",
        "Access-Control-Expose-Headers",
        "SIGN-IN-WITH-X",
    ] {
        assert!(allow.contains(h), "{h} missing from {allow}");
    }
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert_eq!(resp.headers()["access-control-allow-methods"], "GET");
    assert_eq!(
        gw.upstream.count(),
        0,
        "a preflight on a priced path is never forwarded"
    );
    assert_eq!(gw.facilitator.verify_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpaid_post_with_body_keeps_the_connection_usable() {
    let gw = TestGateway::start().await;
    let client = http();
    for _ in 0..3 {
        let resp = client
            .post(gw.url("/paid/upload"))
            .body("x".repeat(10_000))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 402);
        resp.bytes().await.unwrap();
    }
    let resp = client.get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(gw.upstream.count(), 1);
}
