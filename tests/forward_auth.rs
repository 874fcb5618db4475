//! Forward-auth mode (`[auth] listen`) in process, with a scripted facilitator: each proxy's
//! way of describing the original request (nginx, Traefik/Caddy, Envoy `ext_authz`), settling
//! before allowing, nginx's stored denials, replays, and sub-requests that cannot be read.
//! The end-to-end proof with a real nginx, a real Caddy and the official clients on a real
//! chain is in `tests/interop.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use x402_gateway::auth::AuthApp;
use x402_gateway::journal::JournalState;

struct Auth {
    gw: TestGateway,
    addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Auth {
    async fn start() -> Auth {
        Self::serve(TestGateway::start().await, Duration::from_secs(25)).await
    }

    /// The auth service of `gw`'s table, payments and journal.
    async fn serve(gw: TestGateway, timeout: Duration) -> Auth {
        let mut config = gw.config.clone();
        config.auth.timeout = timeout;
        let app = AuthApp::new(
            &config,
            gw.payments.clone(),
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (addr, stop) = serve_app(Arc::new(app)).await;
        Auth {
            gw,
            addr,
            _stop: stop,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Asks as Caddy and Traefik do.
    async fn forward(&self, method: &str, uri: &str, payment: Option<&str>) -> reqwest::Response {
        let mut r = http()
            .get(self.url("/forward"))
            .header("x-forwarded-method", method)
            .header("x-forwarded-uri", uri)
            .header("x-forwarded-host", "api.example.com")
            .header("x-forwarded-proto", "https");
        if let Some(p) = payment {
            r = r.header("payment-signature", p);
        }
        r.send().await.unwrap()
    }

    /// Asks as nginx's `auth_request` does.
    async fn nginx(&self, method: &str, uri: &str, payment: Option<&str>) -> reqwest::Response {
        let mut r = http()
            .get(self.url("/nginx"))
            .header("x-original-method", method)
            .header("x-original-uri", uri);
        if let Some(p) = payment {
            r = r.header("payment-signature", p);
        }
        r.send().await.unwrap()
    }

    /// A payment for `path`, signed against the proxy-mode challenge of the same table.
    async fn payment(&self, path: &str) -> String {
        pay_v2(&self.gw, path).await
    }
}

#[tokio::test]
async fn caddy_and_traefik_get_the_challenge_then_allow_after_settlement() {
    let a = Auth::start().await;
    let r = a.forward("GET", "/weather/paris?units=c", None).await;
    assert_eq!(r.status(), 402);
    let required = decode_required(&r);
    assert_eq!(
        required.resource.url, "https://api.example.com/weather/paris?units=c",
        "the resource is the client's URL, as the proxy said it"
    );
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["x402Version"], 1, "v1 clients read the body");

    let payment = a.payment("/weather/paris").await;
    let r = a.forward("GET", "/weather/paris", Some(&payment)).await;
    assert_eq!(r.status(), 200);
    let receipt = decode_receipt(&r, "payment-response");
    assert_eq!(receipt.success, Some(true));
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
    assert!(
        r.headers().get("x-payment-status").is_none(),
        "settled, not queued"
    );
    assert!(r.headers().contains_key("x-request-id"));
    let (verify, settle, upstream) = a.gw.counts();
    assert_eq!(settle, 1, "settled before allowing");
    assert!(verify >= 1);
    assert_eq!(upstream, 0, "the auth service never forwards");

    // The same payment again: a replay, refused (and told it was redeemed: not a 402).
    let r = a.forward("GET", "/weather/paris", Some(&payment)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(a.gw.counts().1, 1, "never settled twice");

    // Free and unmatched paths are allowed without payment; a method the route does not list
    // is refused as the proxy mode refuses it.
    assert_eq!(a.forward("GET", "/health", None).await.status(), 200);
    assert_eq!(a.forward("GET", "/not/priced", None).await.status(), 200);
    let r = a.forward("POST", "/weather/paris", None).await;
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    let metrics = a.gw.payments.metrics().render(0);
    assert!(
        metrics.contains(r#"x402_payments_total{network="eip155:84532",outcome="settled",reason="",route="/weather/*"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_deferred_payment_is_allowed_queued_and_settled_afterwards() {
    let routes = "[[route]]\npath = \"/paid\"\nprice = \"$0.001\"\nsettlement = \"deferred\"\n";
    let gw = TestGateway::start_with(routes, "settle_timeout = \"10s\"").await;
    let a = Auth::serve(gw, Duration::from_secs(25)).await;
    // A settlement slower than the test's patience: the answer cannot have waited for it.
    a.gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(3)));
    for (style, n) in [("forward", 1), ("nginx", 2)] {
        let payment = a.payment("/paid").await;
        let r = if style == "nginx" {
            a.nginx("GET", "/paid", Some(&payment)).await
        } else {
            a.forward("GET", "/paid", Some(&payment)).await
        };
        assert_eq!(r.status(), 200, "{style}");
        assert_eq!(r.headers()["x-payment-status"], "queued", "{style}");
        let receipt = decode_receipt(&r, "payment-response");
        assert_eq!(receipt.success, Some(true), "{style}");
        assert_eq!(
            receipt.transaction.as_deref(),
            Some(""),
            "{style}: allowed before any transaction"
        );
        // Settled in the background, once.
        a.gw.until_journal(JournalState::Delivered, n).await;
        assert_eq!(a.gw.facilitator.settle_calls(), n, "{style}");
        // The same payment again is a replay: never allowed twice.
        let again = a.forward("GET", "/paid", Some(&payment)).await;
        assert_eq!(again.status(), 409, "{style}");
    }
    assert_eq!(a.gw.payments.owed(), 0);
    assert_eq!(a.gw.counts().2, 0, "the auth service never forwards");
}

#[tokio::test]
async fn a_failed_settlement_is_never_allowed() {
    let a = Auth::start().await;
    a.gw.facilitator
        .set_settle(SettleScript::Fail("insufficient_funds"));
    let payment = a.payment("/weather/oslo").await;
    let r = a.forward("GET", "/weather/oslo", Some(&payment)).await;
    assert_eq!(r.status(), 402);
    assert!(challenge_error(&r).starts_with("insufficient_funds"));
    let r = a.nginx("GET", "/weather/oslo", Some(&payment)).await;
    assert_eq!(r.status(), 401, "nginx is told no");
}

#[tokio::test]
async fn nginx_denials_are_fetched_by_id_and_never_settle_on_the_second_call() {
    let a = Auth::start().await;
    let r = a.nginx("GET", "/weather/rome", None).await;
    assert_eq!(r.status(), 401, "nginx understands only 2xx, 401 and 403");
    let id = r.headers()["x-x402-answer"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);

    let fetch = |id: String, payment: Option<String>| {
        let mut r = http()
            .get(a.url("/nginx/answer"))
            .header("x-x402-answer", id)
            .header("x-original-method", "GET")
            .header("x-original-uri", "/weather/rome");
        if let Some(p) = payment {
            r = r.header("payment-signature", p);
        }
        r.send()
    };
    let r = fetch(id.clone(), None).await.unwrap();
    assert_eq!(r.status(), 402);
    assert!(r.headers().contains_key("payment-required"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["accepts"][0]["maxAmountRequired"], "1000");

    // Fetched once; again (or unknown, or expired: another instance, a restart) nothing is
    // verified or settled. Without a payment: the plain challenge. With one: 503, retry the
    // same payment (a fresh 402 would make the client sign a second one).
    let payment = a.payment("/weather/rome").await;
    let before = a.gw.counts();
    for id in [id, "0".repeat(32), "not-an-id".into()] {
        let r = fetch(id.clone(), None).await.unwrap();
        assert_eq!(r.status(), 402);
        assert_eq!(challenge_error(&r), "Payment required");
        let r = fetch(id, Some(payment.clone())).await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(r.headers().contains_key("retry-after"));
    }
    assert_eq!(a.gw.counts(), before, "no verify, no settle");

    // Allowed: 200 with the receipt for nginx to copy.
    let r = a.nginx("GET", "/weather/rome", Some(&payment)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(decode_receipt(&r, "payment-response").success, Some(true));
}

#[tokio::test]
async fn envoy_ext_authz_sends_the_original_path_after_its_prefix() {
    let a = Auth::start().await;
    let r = http()
        .get(a.url("/ext_authz/weather/lima"))
        .header("host", "edge.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(
        decode_required(&r).resource.url,
        "http://edge.example.com/weather/lima"
    );
    let payment = a.payment("/weather/lima").await;
    let r = http()
        .get(a.url("/ext_authz/weather/lima"))
        .header("payment-signature", &payment)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(decode_receipt(&r, "payment-response").success, Some(true));
    // The method is the sub-request's own.
    let r = http()
        .delete(a.url("/ext_authz/weather/lima"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn sub_requests_without_the_original_request_are_refused() {
    let a = Auth::start().await;
    let payment = a.payment("/weather/kyiv").await;
    // A proxy that forgot its headers: refused (400), never allowed, nothing verified.
    let r = http()
        .get(a.url("/forward"))
        .header("payment-signature", &payment)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = http()
        .get(a.url("/nginx"))
        .header("x-original-uri", "/weather/kyiv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "nginx must say the method too");
    let r = http()
        .get(a.url("/forward"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "//weather/kyiv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // An unknown endpoint is not an auth decision.
    assert_eq!(http().get(a.url("/")).send().await.unwrap().status(), 404);
    assert_eq!(a.gw.counts(), (0, 0, 0));
}

#[tokio::test]
async fn preflights_and_upgrades_are_never_allowed_through() {
    let a = Auth::start().await;
    // A preflight on a priced path: the proxy mode answers 204 itself; a 2xx here would mean
    // "forward it", so it is refused (the proxy answers preflights).
    let r = http()
        .get(a.url("/forward"))
        .header("x-forwarded-method", "OPTIONS")
        .header("x-forwarded-uri", "/weather/paris")
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Upgrades: an h2c tunnel (even on a free path) or a websocket on a route without
    // `websocket = true` would never be priced again; a paid one is refused before settling.
    let payment = a.payment("/weather/paris").await;
    for (uri, upgrade, paid) in [
        ("/health", "h2c", None),
        ("/health", "websocket", None),
        ("/weather/paris", "websocket", Some(&payment)),
    ] {
        let mut r = http()
            .get(a.url("/forward"))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", uri)
            .header("upgrade", upgrade);
        if let Some(p) = paid {
            r = r.header("payment-signature", p);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 400, "{uri} with Upgrade: {upgrade}");
    }
    let (_, settled, upstream) = a.gw.counts();
    assert_eq!((settled, upstream), (0, 0));
}

/// A settlement that ends after `[auth] timeout` (the proxy has likely given up): settled but
/// undelivered, 503 with the receipt; the same payment header then gets the content, once,
/// without a second settlement.
#[tokio::test]
async fn a_settlement_past_the_deadline_stays_redeemable() {
    // The settlement outlasts `[auth] timeout` by far; the redemption below (a signature
    // check and a journal read, no settlement) has the same 1 s to answer in.
    let gw = TestGateway::start_with(ROUTES, "settle_timeout = \"10s\"").await;
    let a = Auth::serve(gw, Duration::from_secs(1)).await;
    a.gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(3)));
    let payment = a.payment("/weather/lima").await;
    let r = a.forward("GET", "/weather/lima", Some(&payment)).await;
    assert_eq!(r.status(), 503, "settled too late to count as delivered");
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        r.headers().contains_key("payment-response"),
        "the receipt says it was paid"
    );
    assert_eq!(a.gw.counts().1, 1);

    let r = a.forward("GET", "/weather/lima", Some(&payment)).await;
    assert_eq!(r.status(), 200, "redeemed with the same payment");
    assert_eq!(a.gw.counts().1, 1, "not settled again");
    let r = a.forward("GET", "/weather/lima", Some(&payment)).await;
    assert_eq!(
        r.status(),
        409,
        "delivered once: a replay after that is refused"
    );
}

#[tokio::test]
async fn a_method_override_the_proxy_forwards_counts_as_a_method_reading() {
    // GET is free on this path, POST is priced, PATCH and DELETE are listed nowhere.
    let routes = r#"
[[route]]
path = "/items/*"
methods = ["GET"]
price = "free"
[[route]]
path = "/items/*"
methods = ["POST"]
price = "$0.01"
"#;
    let gw = TestGateway::start_with(routes, "").await;
    let a = Auth::serve(gw, Duration::from_secs(25)).await;
    // The proxy forwards the client's override header and query as they are.
    let r = http()
        .get(a.url("/forward"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/items/1")
        .header("x-http-method-override", "PATCH")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        405,
        "an unlisted override reading allowed through"
    );
    let r = a.forward("GET", "/items/1?_method=DELETE", None).await;
    assert_eq!(
        r.status(),
        405,
        "an unlisted `_method` reading allowed through"
    );
    let r = a.nginx("GET", "/items/1?_method=PATCH", None).await;
    assert_ne!(
        r.status(),
        200,
        "nginx: an unlisted `_method` reading allowed through"
    );
    // An override to the priced method is charged.
    let r = a.forward("GET", "/items/1?_method=POST", None).await;
    assert_eq!(r.status(), 402);
    // The plain free GET still passes.
    let r = a.forward("GET", "/items/1", None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_settlement_the_proxy_stopped_waiting_for_stays_redeemable() {
    let gw = TestGateway::start_with(ROUTES, "settle_timeout = \"10s\"").await;
    let a = Auth::serve(gw, Duration::from_secs(25)).await;
    let payment = a.payment("/weather/rome").await;
    a.gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_millis(1500)));
    // The proxy gives up on the sub-request long before [auth] timeout (its own timeout).
    let gone = http()
        .get(a.url("/forward"))
        .header("x-forwarded-method", "GET")
        .header("x-forwarded-uri", "/weather/rome")
        .header("payment-signature", &payment)
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(
        gone.is_err(),
        "the sub-request was answered before the settlement"
    );
    // The settlement finishes after the proxy left: not delivered.
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(10);
    while a.gw.facilitator.settle_calls() == 0 {
        assert!(x402_gateway::clock::instant() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.gw.until_journal(JournalState::Settled, 1).await;
    // The client retries with the same header: allowed, without a second settlement.
    a.gw.facilitator.set_settle(SettleScript::Success);
    let r = a.forward("GET", "/weather/rome", Some(&payment)).await;
    assert_eq!(
        r.status(),
        200,
        "a paid request the client never got is refused"
    );
    assert_eq!(a.gw.counts().1, 1, "settled once");
}
