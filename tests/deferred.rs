//! Deferred settlement through the in-process gateway with a scripted facilitator: the answer is
//! released with a `queued` receipt and settled in the background; caps, thresholds and failed
//! payers make a request settle first; replays and upstream errors behave as in the other modes.
//! (The chain-backed crash test is `tests/deferred_chaos.rs`.)
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use x402_gateway::journal::JournalState;

const ROUTES: &str = r#"
[payment.deferred]
max_per_payer = "$0.0025"
max_total = "$1"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
[[route]]
path = "/big"
price = "$0.003"
settlement = "deferred"
[[route]]
path = "/dear"
price = "$0.01"
settlement = "deferred"
settle_first_above = "$0.005"
[[route]]
path = "/status/500"
price = "$0.001"
settlement = "deferred"
"#;

/// A settlement the tests hold up to prove the answer did not wait for it.
const HELD: Duration = Duration::from_secs(3);

async fn gateway() -> TestGateway {
    // Longer than a held settlement (the default test gateway gives up after 2 s).
    TestGateway::start_with(ROUTES, "settle_timeout = \"10s\"").await
}

#[tokio::test]
async fn a_deferred_answer_is_released_queued_and_settled_in_the_background() {
    let gw = gateway().await;
    gw.facilitator.set_settle(SettleScript::Slow(HELD));
    let header = pay_v2(&gw, "/paid").await;
    let started = x402_gateway::clock::instant();
    let resp = gw.send("/paid", &header).await;
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < HELD,
        "the answer waited for the settlement"
    );
    assert_eq!(resp.headers()["x-payment-status"], "queued");
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.success, Some(true));
    assert_eq!(receipt.transaction.as_deref(), Some(""));
    let raw: serde_json::Value = serde_json::from_slice(
        &x402_gateway::protocol::decode_header(resp.headers()["payment-response"].as_bytes())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(raw["extensions"]["deferred"]["status"], "queued");
    assert!(
        !resp.text().await.unwrap().is_empty(),
        "the upstream's body"
    );
    // Settled afterwards, once, from the journal; recorded delivered with the transaction.
    gw.until_journal(JournalState::Delivered, 1).await;
    assert_eq!(gw.facilitator.settle_calls(), 1);
    assert_eq!(gw.payments.owed(), 0);
    assert_eq!(gw.payments.ledger().exposure(), (0, 0));
    // The same header again is a replay, not a redemption (nor a 402: it was answered).
    assert_already_redeemed(gw.send("/paid", &header).await).await;
    assert_eq!(gw.facilitator.settle_calls(), 1);
}

#[tokio::test]
async fn an_upstream_error_charges_nothing_and_gives_the_allowance_back() {
    let gw = gateway().await;
    let header = pay_v2(&gw, "/status/500").await;
    let resp = gw.send("/status/500", &header).await;
    assert_eq!(resp.status(), 500);
    assert!(resp.headers().get("x-payment-status").is_none());
    assert_eq!(gw.payments.ledger().exposure(), (0, 0));
    assert_eq!(gw.payments.owed(), 0);
    assert_eq!(gw.facilitator.settle_calls(), 0);
}

#[tokio::test]
async fn over_a_cap_or_a_threshold_the_request_is_settled_first_never_refused() {
    let gw = gateway().await;
    // $0.003 is more than max_per_payer ($0.0025) on its own: settled before release.
    let h = pay_v2(&gw, "/big").await;
    let resp = gw.send("/big", &h).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-payment-status").is_none());
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
    assert_eq!(
        gw.facilitator.settle_calls(),
        1,
        "settled before the answer"
    );
    // $0.01 is above the route's settle_first_above ($0.005).
    let h = pay_v2(&gw, "/dear").await;
    let resp = gw.send("/dear", &h).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-payment-status").is_none());
    assert_eq!(
        gw.facilitator.settle_calls(),
        2,
        "settled before the answer"
    );
    // Within the caps: deferred.
    let h = pay_v2(&gw, "/paid").await;
    let resp = gw.send("/paid", &h).await;
    assert_eq!(resp.headers()["x-payment-status"], "queued");
    let metrics = gw.payments.metrics().render(0);
    for (reason, route) in [("max_per_payer", "/big"), ("above_threshold", "/dear")] {
        let line =
            format!(r#"x402_deferred_fallbacks_total{{reason="{reason}",route="{route}"}} 1"#);
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
    gw.until_journal(JournalState::Delivered, 3).await;
    assert_eq!(gw.payments.ledger().exposure(), (0, 0));
}

#[tokio::test]
async fn a_payer_whose_deferred_payment_failed_is_settled_first() {
    let gw = gateway().await;
    gw.facilitator
        .set_settle(SettleScript::Fail("invalid_exact_evm_insufficient_balance"));
    let h = pay_v2(&gw, "/paid").await;
    let resp = gw.send("/paid", &h).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-payment-status"], "queued");
    // The failure verdict is read against the chain (here: the facilitator, which cannot tell):
    // still open, so the payer is troubled (settled first from now on) while the settlement is
    // submitted again.
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(10);
    while !gw.payments.ledger().flagged().contains(&payer().address()) {
        assert!(x402_gateway::clock::instant() < deadline, "never flagged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let h = pay_v2(&gw, "/paid").await;
    let resp = gw.send("/paid", &h).await;
    assert!(
        resp.headers().get("x-payment-status").is_none(),
        "a troubled payer must settle first"
    );
    assert_eq!(resp.status(), 402, "settled first, and that fails");
    let metrics = gw.payments.metrics().render(0);
    assert!(
        metrics.contains(r#"x402_deferred_fallbacks_total{reason="unpaid",route="/paid"} 1"#),
        "{metrics}"
    );
    // The payer pays: the owed settlement, submitted again, settles; the payer is clear.
    gw.facilitator.set_settle(SettleScript::Success);
    gw.until_journal(JournalState::Delivered, 1).await;
    assert!(!gw.payments.ledger().flagged().contains(&payer().address()));
}
