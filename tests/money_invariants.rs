//! The payment core's invariants, tried as an attacker would (in process, scripted facilitator,
//! a scripted chain RPC where an outcome must be read): what is checked when a payment is
//! admitted still holds when its content is released; exposure that failed to settle stays
//! counted; a payment pending after a reload is redeemed by what was journaled; every method
//! reading counts; a settled payment the client never received stays redeemable; the replay
//! guard cannot be filled with deliveries nobody pays for.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use alloy::signers::local::PrivateKeySigner;
use common::*;
use x402_gateway::client;
use x402_gateway::journal::JournalState;

/// A JSON-RPC endpoint that reads every authorization as unused and the chain's time as far past
/// any `validBefore`: every outcome it is asked for is "failed: expired unused" at once.
async fn expired_chain() -> MockServer {
    chain_at(100_000).await
}

/// A JSON-RPC endpoint that reads every authorization as unused, at a chain time `ahead` seconds
/// from now (a negative `ahead`: every authorization is still open).
async fn chain_at(ahead: i64) -> MockServer {
    MockServer::start(move |req| {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let id = body["id"].clone();
        let word = |v: u64| format!("0x{v:064x}");
        let zero = format!("0x{}", "00".repeat(32));
        let result = match body["method"].as_str().unwrap_or("") {
            "eth_chainId" => serde_json::json!("0x14a34"),
            "eth_blockNumber" => serde_json::json!("0x10"),
            "eth_getLogs" => serde_json::json!([]),
            "eth_call" => serde_json::json!(word(0)),
            "eth_getTransactionReceipt" => serde_json::Value::Null,
            "eth_getBlockByNumber" => serde_json::json!({
                "hash": format!("0x{}", "11".repeat(32)),
                "parentHash": zero, "sha3Uncles": zero, "miner": format!("0x{}", "00".repeat(20)),
                "stateRoot": zero, "transactionsRoot": zero, "receiptsRoot": zero,
                "logsBloom": format!("0x{}", "00".repeat(256)), "difficulty": "0x0",
                "number": "0x10", "gasLimit": "0x1c9c380", "gasUsed": "0x0",
                "timestamp": format!("0x{:x}", now().saturating_add_signed(ahead)), "extraData": "0x",
                "mixHash": zero, "nonce": "0x0000000000000000", "baseFeePerGas": "0x1",
                "uncles": [], "transactions": [], "size": "0x200"
            }),
            _ => serde_json::Value::Null,
        };
        Response::json(
            200,
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string(),
        )
    })
    .await
}

/// A v2 payment for `path` signed by `signer`, valid until `valid_before`.
async fn pay_until(
    gw: &TestGateway,
    path: &str,
    signer: &PrivateKeySigner,
    valid_before: u64,
) -> String {
    let resp = http().get(gw.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 402);
    let required = decode_required(&resp);
    let window = client::Window {
        valid_after: now() - 600,
        valid_before,
    };
    client::sign_v2_in_window(signer, &required, 0, window, client::random_nonce()).unwrap()
}

async fn pay_as(gw: &TestGateway, path: &str, signer: &PrivateKeySigner) -> String {
    pay_until(gw, path, signer, now() + 300).await
}

fn queued(resp: &reqwest::Response) -> bool {
    resp.headers()
        .get("x-payment-status")
        .is_some_and(|v| v == "queued")
}

/// Waits (on the journal, not a fixed time) until at least `n` payments are in `state`.
async fn at_least(gw: &TestGateway, state: JournalState, n: usize) {
    let path = gw.payments.journal().unwrap().path().to_owned();
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(20);
    loop {
        gw.payments.journal().unwrap().flush().await.unwrap();
        let conn = x402_gateway::journal::open_reader(&path).unwrap();
        let got = x402_gateway::journal::query(
            &conn,
            &x402_gateway::journal::Filter {
                states: vec![state],
                ..Default::default()
            },
        )
        .unwrap()
        .len();
        if got >= n {
            return;
        }
        assert!(
            x402_gateway::clock::instant() < deadline,
            "{got} of {n} payments {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// === Time of check, time of use ===

#[tokio::test]
async fn a_deferred_answer_is_not_released_queued_once_its_authorization_cannot_settle_in_time() {
    // Deferral needs `validBefore` at least 2 × max_delay + 30 s away: 32 s here.
    let gw = TestGateway::start_with(
        r#"
[payment.deferred]
max_delay = "1s"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#,
        "",
    )
    .await;
    // 33 s of validity: enough when the request head arrives...
    let header = pay_until(&gw, "/paid", &payer(), now() + 33).await;
    // ...not when a slow endpoint (or a client trickling its body) answers 2.5 s later.
    gw.upstream.faults.stall_ms.store(2500, Ordering::SeqCst);
    let resp = gw.send("/paid", &header).await;
    assert_eq!(resp.status(), 200);
    assert!(
        !queued(&resp),
        "released on credit although the authorization can no longer be settled in time"
    );
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(
        receipt.transaction.as_deref(),
        Some(TX_HASH),
        "settled before release instead"
    );
}

// === Exposure ===

#[tokio::test]
async fn deferred_value_that_failed_to_settle_stays_counted_against_max_total() {
    let chain = expired_chain().await;
    let gw = TestGateway::start_full(
        r#"
[payment.deferred]
max_per_payer = "$0.001"
max_total = "$0.004"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#,
        "",
        &format!(
            "[chain]\nrpc = {{ \"eip155:84532\" = \"{}\" }}\n",
            chain.url()
        ),
    )
    .await;
    // Fresh addresses with nothing to pay with: every settlement fails.
    gw.facilitator
        .set_settle(SettleScript::Fail("invalid_exact_evm_insufficient_balance"));
    let mut released = 0;
    for round in 1..=10 {
        let header = pay_as(&gw, "/paid", &PrivateKeySigner::random()).await;
        let resp = gw.send("/paid", &header).await;
        if resp.status() == 200 && queued(&resp) {
            released += 1;
            // Its settlement fails (and is read as failed from the chain) before the next one.
            at_least(&gw, JournalState::Failed, released).await;
        } else {
            assert_eq!(
                resp.status(),
                402,
                "round {round}: settled first, and that fails"
            );
        }
    }
    assert!(
        released <= 4,
        "{released} unpaid deliveries where max_total / price is 4"
    );
}

#[tokio::test]
async fn a_deferred_settlement_refused_while_its_authorization_is_open_is_submitted_again() {
    // The chain reads the authorization as unused and still valid.
    let chain = chain_at(-100).await;
    let gw = TestGateway::start_full(
        r#"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#,
        "settle_timeout = \"10s\"",
        &format!(
            "[chain]\nrpc = {{ \"eip155:84532\" = \"{}\" }}\n",
            chain.url()
        ),
    )
    .await;
    // A refusal that says nothing for good (a batch starved of gas, a node's hiccup).
    gw.facilitator
        .set_settle(SettleScript::Fail("invalid_exact_evm_transaction_failed"));
    let header = pay_v2(&gw, "/paid").await;
    let resp = gw.send("/paid", &header).await;
    assert!(queued(&resp));
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(10);
    while gw.facilitator.settle_calls() == 0 {
        assert!(x402_gateway::clock::instant() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    gw.facilitator.set_settle(SettleScript::Success);
    // Submitted again (the nonce makes that safe) and settled, not left unknown until it expires.
    at_least(&gw, JournalState::Delivered, 1).await;
    assert_eq!(gw.facilitator.settled.load(Ordering::SeqCst), 1);
}

// === One writer per payment ===

#[tokio::test]
async fn a_deferred_payment_accepted_by_the_old_process_during_a_hand_over_is_a_replay_to_the_new_one(
) {
    let journal = scratch_file("journal.db");
    let sections = format!("[journal]\npath = \"{}\"\n", journal.display());
    let routes = r#"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#;
    let old = TestGateway::start_full(routes, "", &sections).await;
    // `run --upgrade`: the new process recovers while the old one keeps serving.
    let new = TestGateway::start_taking_over(routes, "", &sections).await;
    let header = pay_v2(&old, "/paid").await;
    let resp = old.send("/paid", &header).await;
    assert!(queued(&resp));
    // The load balancer sends the same header to the new process.
    let resp = new.send("/paid", &header).await;
    assert!(
        (resp.status() != 200),
        "served twice for one payment (status {}, queued {})",
        resp.status(),
        queued(&resp)
    );
    assert_eq!(
        new.upstream.count(),
        0,
        "the new process forwarded a replay"
    );
}

// === Redemption by what was journaled ===

#[tokio::test]
async fn a_settled_undelivered_payment_is_redeemed_after_a_price_change() {
    let gw = TestGateway::start_with(
        r#"
[[route]]
path = "/status/**"
price = "$0.001"
settlement = "before_upstream"
"#,
        "",
    )
    .await;
    // Paid before the upstream ran (before_upstream), and the upstream failed: settled and not
    // delivered, redeemable with the same header.
    let header = pay_v2(&gw, "/status/503").await;
    let resp = gw.send("/status/503", &header).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(gw.facilitator.settle_calls(), 1);
    // The operator doubles the price and changes the recipient.
    let mut config = gw.config.clone();
    for r in &mut config.routes {
        for o in &mut r.options {
            o.amount *= alloy::primitives::U256::from(2);
            o.pay_to = alloy::primitives::Address::repeat_byte(9);
        }
    }
    gw.set_routes(config.routes).await;
    // The same header for another resource: not what it paid for.
    let resp = gw.send("/status/200", &header).await;
    assert_eq!(
        resp.status(),
        402,
        "a payment redeems only its own resource"
    );
    // For its own: delivered by what was journaled, not refused at today's price.
    let resp = gw.send("/status/503", &header).await;
    assert_eq!(resp.status(), 503, "the upstream ran again (a redemption)");
    assert_eq!(gw.upstream.count_path("/status/503"), 2);
    assert_eq!(gw.facilitator.settle_calls(), 1, "never settled twice");
}

#[tokio::test]
async fn a_pending_payment_stays_pending_after_a_price_change() {
    let gw = TestGateway::start().await;
    // The facilitator never answers in time: the outcome is unknown, the client gets 503.
    gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(30)));
    gw.facilitator.set_verify(VerifyScript::Valid);
    let header = pay_v2(&gw, "/paid/a").await;
    let resp = gw.send("/paid/a", &header).await;
    assert_eq!(resp.status(), 503);
    let mut config = gw.config.clone();
    for r in &mut config.routes {
        for o in &mut r.options {
            o.amount *= alloy::primitives::U256::from(3);
        }
    }
    gw.set_routes(config.routes).await;
    let resp = gw.send("/paid/a", &header).await;
    assert_eq!(
        resp.status(),
        503,
        "a 402 at the new price makes the client pay a second time"
    );
}

// === Method readings ===

const OVERRIDE_ROUTES: &str = r#"
[[route]]
path = "/items/*"
methods = ["GET"]
price = "free"
[[route]]
path = "/items/*"
methods = ["POST"]
price = "$0.01"
"#;

#[tokio::test]
async fn a_query_method_override_to_an_unlisted_method_is_refused_in_proxy_mode() {
    let gw = TestGateway::start_with(OVERRIDE_ROUTES, "").await;
    let raw = raw_get(gw.addr, "/items/1?_method=PATCH", &[]).await;
    assert_eq!(raw_status(&raw), 405, "{raw}");
    let raw = raw_get(gw.addr, "/items/1", &[("x-http-method-override", "DELETE")]).await;
    assert_eq!(raw_status(&raw), 405, "{raw}");
    assert_eq!(gw.upstream.count(), 0, "nothing reached the upstream");
    // Free GET without an override still passes.
    let raw = raw_get(gw.addr, "/items/1", &[]).await;
    assert_eq!(raw_status(&raw), 200, "{raw}");
}

// === Replay guard ===

#[tokio::test]
async fn unpaid_deliveries_do_not_fill_the_replay_guard() {
    let chain = expired_chain().await;
    let gw = TestGateway::start_full(
        r#"
[payment.deferred]
max_per_payer = "$1"
max_total = "$10"
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#,
        "",
        &format!(
            "[limits]\nmax_pending_payments = 8\n[chain]\nrpc = {{ \"eip155:84532\" = \"{}\" }}\n",
            chain.url()
        ),
    )
    .await;
    gw.facilitator
        .set_settle(SettleScript::Fail("invalid_exact_evm_insufficient_balance"));
    let mut released = 0;
    for _ in 0..8 {
        let header = pay_as(&gw, "/paid", &PrivateKeySigner::random()).await;
        let resp = gw.send("/paid", &header).await;
        if queued(&resp) {
            released += 1;
            at_least(&gw, JournalState::Failed, released).await;
        }
    }
    // An honest payer now.
    gw.facilitator.set_settle(SettleScript::Success);
    let header = pay_as(&gw, "/paid", &PrivateKeySigner::random()).await;
    let resp = gw.send("/paid", &header).await;
    assert_eq!(
        resp.status(),
        200,
        "the guard is full of unpaid deliveries for minutes"
    );
}

// === Receipts ===

#[tokio::test]
async fn a_settlement_pending_receipt_carries_the_facilitators_transaction() {
    let gw = TestGateway::start().await;
    gw.facilitator.set_settle(SettleScript::Pending(TX_HASH));
    let header = pay_v2(&gw, "/paid/x").await;
    let resp = gw.send("/paid/x", &header).await;
    assert_eq!(resp.status(), 503);
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
    // Retried while still pending: the same.
    let resp = gw.send("/paid/x", &header).await;
    assert_eq!(resp.status(), 503);
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
}
