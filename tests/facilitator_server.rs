//! The standalone facilitator server (`x402-gateway facilitator`) is not an open gas tap: a
//! bearer token, recipients and a minimum value of its own, body caps, per-client rate limits,
//! fixed error texts. Refusals happen before the facilitator behind it (the chain) is asked.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use x402_gateway::config::Config;
use x402_gateway::facilitator::server::{FacilitatorApp, ServerPolicy};
use x402_gateway::protocol::{SettleResponse, SupportedResponse, VerifyResponse};
use x402_gateway::verify::{Facilitator, FacilitatorError};

/// A facilitator that counts calls and says yes (or fails with an internal detail).
#[derive(Default)]
struct Counting {
    calls: AtomicUsize,
    fail: bool,
}

#[async_trait]
impl Facilitator for Counting {
    async fn verify(&self, _: &str) -> Result<VerifyResponse, FacilitatorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(FacilitatorError::Chain(
                "error sending request for url (https://rpc.example/v2/KEY)".into(),
            ));
        }
        Ok(VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: None,
        })
    }
    async fn settle(&self, _: &str) -> Result<SettleResponse, FacilitatorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(SettleResponse {
            success: Some(true),
            error_reason: None,
            error_message: None,
            payer: None,
            transaction: Some(TX_HASH.into()),
            network: Some("eip155:84532".into()),
        })
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        Ok(SupportedResponse::default())
    }
    /// One signer without gas, or (failing) one whose chain cannot be read.
    async fn signer_balances(&self) -> Vec<x402_gateway::verify::SignerBalance> {
        vec![x402_gateway::verify::SignerBalance {
            network: "eip155:84532".into(),
            signer: alloy::primitives::Address::repeat_byte(0x11),
            wei: if self.fail {
                Err("error sending request for url ([redacted])".into())
            } else {
                Ok(alloy::primitives::U256::ZERO)
            },
        }]
    }
}

const TOKEN: &str = "a-long-enough-test-token";

/// A config with an embedded facilitator and `extra` `[facilitator]` keys.
fn config_text(extra: &str) -> String {
    format!(
        r#"
[upstream]
url = "http://127.0.0.1:3000"
[facilitator]
embedded = true
rpc = {{ "eip155:84532" = "http://127.0.0.1:8545" }}
signer_keys = ["${{KEY}}"]
{extra}
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
[[route]]
path = "/x"
price = "$0.001"
"#
    )
}

fn env(k: &str) -> Option<String> {
    match k {
        "KEY" => Some("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80".into()),
        "TOKEN" => Some(TOKEN.into()),
        _ => None,
    }
}

fn policy(extra: &str) -> ServerPolicy {
    let text = config_text(&format!("server_token = \"${{TOKEN}}\"\n{extra}"));
    let c = Config::from_toml(&text, "t", &env).unwrap_or_else(|e| panic!("{e}"));
    ServerPolicy::new(&c.facilitator.server)
}

async fn server(extra: &str, inner: Arc<Counting>) -> (String, tokio::sync::watch::Sender<bool>) {
    let app = FacilitatorApp::new(inner, policy(extra));
    let (addr, stop) = serve_app(Arc::new(app)).await;
    (format!("http://{addr}"), stop)
}

/// A `/verify` body for `pay_to` and `amount` (the signature does not matter: the policy is
/// checked first, and the counting facilitator says yes).
fn body(pay_to: &str, amount: &str) -> String {
    serde_json::json!({
        "x402Version": 2,
        "paymentPayload": {"x402Version": 2},
        "paymentRequirements": {
            "scheme": "exact", "network": "eip155:84532", "amount": amount,
            "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e", "payTo": pay_to,
            "maxTimeoutSeconds": 300, "extra": {"name": "USDC", "version": "2"}
        }
    })
    .to_string()
}

fn post(url: &str, path: &str, token: Option<&str>, body: String) -> reqwest::RequestBuilder {
    let r = http().post(format!("{url}{path}")).body(body);
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_need_no_token_and_readyz_names_a_signer_that_cannot_pay_gas() {
    for (fail, problem) in [
        (false, "no gas"),
        (
            true,
            "RPC unreachable: error sending request for url ([redacted])",
        ),
    ] {
        let inner = Arc::new(Counting {
            fail,
            ..Counting::default()
        });
        let (url, _stop) = server("", inner.clone()).await;
        let live = http().get(format!("{url}/livez")).send().await.unwrap();
        assert_eq!(live.status(), 200);
        // Without the token: which signer (by its place) and what is wrong, never its address
        // (anyone who can reach the probe could otherwise map the operator's hot wallets).
        let ready = http().get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        let anonymous = format!("fail signer 1 on eip155:84532: {problem}");
        assert!(body.starts_with(&anonymous), "{body}");
        assert!(
            !body.contains("0x1111"),
            "a signer address without the token: {body}"
        );
        // With it: the address too.
        let ready = http()
            .get(format!("{url}/readyz"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 503);
        let body = ready.text().await.unwrap();
        let named = format!(
            "fail signer 0x1111111111111111111111111111111111111111 on eip155:84532: {problem}"
        );
        assert!(body.starts_with(&named), "{body}");
        assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_needs_the_bearer_token() {
    let inner = Arc::new(Counting::default());
    let (url, _stop) = server("", inner.clone()).await;
    for token in [None, Some("wrong"), Some("a-long-enough-test-toke")] {
        let resp = post(&url, "/settle", token, body(PAY_TO, "1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{token:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        let resp = http().get(format!("{url}/supported")).send().await.unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(inner.calls.load(Ordering::SeqCst), 0);
    let resp = post(&url, "/settle", Some(TOKEN), body(PAY_TO, "1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<SettleResponse>().await.unwrap().success,
        Some(true)
    );
    assert_eq!(inner.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_its_own_recipients_and_values_above_the_minimum_are_settled() {
    let inner = Arc::new(Counting::default());
    let (url, _stop) = server("", inner.clone()).await;
    let stranger = "0x000000000000000000000000000000000000dEaD";
    let resp = post(&url, "/settle", Some(TOKEN), body(stranger, "1000"))
        .send()
        .await
        .unwrap();
    let r: SettleResponse = resp.json().await.unwrap();
    assert_eq!(r.success, Some(false));
    assert_eq!(r.error_reason.as_deref(), Some("pay_to_not_accepted"));
    // Default minimum: $0.001, i.e. 1000 atomic units of USDC.
    let resp = post(&url, "/verify", Some(TOKEN), body(PAY_TO, "1"))
        .send()
        .await
        .unwrap();
    let v: VerifyResponse = resp.json().await.unwrap();
    assert!(!v.is_valid);
    assert_eq!(v.invalid_reason.as_deref(), Some("value_below_minimum"));
    assert_eq!(
        inner.calls.load(Ordering::SeqCst),
        0,
        "refused before any chain call"
    );
    // Both are configurable.
    let (url, _stop) = server(
        &format!("server_pay_to = [\"{stranger}\"]\nserver_min_value = \"1\""),
        inner.clone(),
    )
    .await;
    let resp = post(&url, "/verify", Some(TOKEN), body(stranger, "1"))
        .send()
        .await
        .unwrap();
    assert!(resp.json::<VerifyResponse>().await.unwrap().is_valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_capped_and_clients_rate_limited() {
    let inner = Arc::new(Counting::default());
    let (url, _stop) = server(
        "server_max_body = \"4KiB\"\nserver_rate = \"3/h\"",
        inner.clone(),
    )
    .await;
    let resp = post(&url, "/verify", Some(TOKEN), "x".repeat(8192))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    for _ in 0..2 {
        let resp = post(&url, "/verify", Some(TOKEN), body(PAY_TO, "1000"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let resp = post(&url, "/verify", Some(TOKEN), body(PAY_TO, "1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_answer_a_fixed_text() {
    let inner = Arc::new(Counting {
        fail: true,
        ..Counting::default()
    });
    let (url, _stop) = server("", inner).await;
    let resp = post(&url, "/verify", Some(TOKEN), body(PAY_TO, "1000"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains("rpc.example") && !text.contains("KEY"),
        "{text}"
    );
    assert!(text.contains("facilitator_unavailable"), "{text}");
}

#[test]
fn check_refuses_an_open_listener_without_a_token() {
    let text = |listen: &str, token: bool| {
        config_text(&format!(
            "listen = \"{listen}\"\n{}",
            if token {
                "server_token = \"${TOKEN}\""
            } else {
                ""
            }
        ))
    };
    let e = Config::from_toml(&text("0.0.0.0:8403", false), "t", &env).unwrap_err();
    assert!(e.to_string().contains("facilitator.server_token"), "{e}");
    assert!(Config::from_toml(&text("0.0.0.0:8403", true), "t", &env).is_ok());
    assert!(Config::from_toml(&text("127.0.0.1:8403", false), "t", &env).is_ok());
    // A token written in the file is refused: secrets come from the environment.
    let literal = config_text("listen = \"0.0.0.0:8403\"\nserver_token = \"plain-text-token-123\"");
    let e = Config::from_toml(&literal, "t", &env).unwrap_err();
    assert!(e.to_string().contains("${VAR}"), "{e}");
}
