//! Unknown settlement outcomes never invite a second payment: the client gets `503` +
//! `Retry-After` and a `settlement_pending` receipt (never a `402`), and a retry with the same
//! payment header is redeemed once the outcome is known. The journal records every step, an
//! unwritable journal fails closed, and a restart recovers what was open. (Scripted
//! facilitator here; the same on a real chain is in tests/interop.rs and tests/chaos.rs.)
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use x402_gateway::journal::{self, JournalState};

/// Asserts the answer to an unknown outcome: 503, Retry-After, a pending receipt, no content.
async fn assert_pending(resp: reqwest::Response) {
    assert_eq!(resp.status(), 503, "an unknown outcome must never be a 402");
    assert!(resp.headers().contains_key("retry-after"));
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.success, Some(false));
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    assert!(receipt.payer.is_some() && receipt.network.is_some());
    let body = resp.text().await.unwrap();
    assert!(!body.contains("\"upstream\""), "content released: {body}");
    assert!(body.contains("same payment header"), "{body}");
}

fn state(gw: &TestGateway, payment: &str) -> Option<journal::Entry> {
    let a = &exact_payload(payment.as_bytes()).authorization;
    let r = journal::open_reader(&gw.config.journal.path).unwrap();
    journal::find(&r, &a.from.to_string(), &a.nonce.to_string())
        .unwrap()
        .pop()
}

async fn flushed(gw: &TestGateway) {
    gw.payments.journal().unwrap().flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_timeout_is_503_and_the_same_payment_is_redeemed_once() {
    let gw = TestGateway::start().await;
    gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(3)));
    let payment = pay_v2(&gw, "/paid/x").await;
    assert_pending(gw.send("/paid/x", &payment).await).await;
    flushed(&gw).await;
    assert_eq!(state(&gw, &payment).unwrap().state, JournalState::Unknown);
    assert_eq!(gw.payments.pending_counts(), (1, 0));

    // Still unknown on a retry: 503 again, and nothing new reaches the upstream.
    let upstream_calls = gw.upstream.count();
    assert_pending(gw.send("/paid/x", &payment).await).await;
    assert_eq!(gw.upstream.count(), upstream_calls);

    // The facilitator answers again; the retry reads the outcome (settled) and is served.
    gw.facilitator.set_settle(SettleScript::Success);
    let resp = gw.send("/paid/x", &payment).await;
    assert_eq!(resp.status(), 200);
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.success, Some(true));
    assert_eq!(receipt.transaction.as_deref(), Some(TX_HASH));
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["upstream"],
        true
    );
    flushed(&gw).await;
    let e = state(&gw, &payment).unwrap();
    assert_eq!(e.state, JournalState::Delivered);
    assert_eq!(e.transaction.as_deref(), Some(TX_HASH));
    assert_eq!(gw.payments.pending_counts(), (0, 0));

    // Delivered once: the next use is told so (not a 402: the client would pay again).
    assert_already_redeemed(gw.send("/paid/x", &payment).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbled_settle_answer_is_503_too() {
    let gw = TestGateway::start().await;
    // Without `success` (fail closed: never a success), and not JSON at all.
    gw.facilitator.set_settle(SettleScript::MissingSuccess);
    let payment = pay_v2(&gw, "/paid/m").await;
    assert_pending(gw.send("/paid/m", &payment).await).await;
    gw.facilitator.set_settle(SettleScript::Garbage);
    let payment = pay_v2(&gw, "/reports/q3").await;
    assert_pending(gw.send("/reports/q3", &payment).await).await;
    assert_eq!(
        gw.upstream.count_path("/reports/q3"),
        0,
        "before_upstream: nothing ran for an unknown outcome"
    );
    // Resolved in the background (facilitator readings), then redeemed.
    gw.facilitator.set_settle(SettleScript::Success);
    gw.payments.maintain_at(u64::MAX / 2, false).await;
    flushed(&gw).await;
    assert_eq!(state(&gw, &payment).unwrap().state, JournalState::Settled);
    let resp = gw.send("/reports/q3", &payment).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(gw.upstream.count_path("/reports/q3"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_is_journaled_and_settling_is_durable_before_settle() {
    let gw = TestGateway::start().await;
    let payment = pay_v2(&gw, "/paid/y").await;
    let resp = gw.send("/paid/y", &payment).await;
    assert_eq!(resp.status(), 200);
    flushed(&gw).await;
    let e = state(&gw, &payment).unwrap();
    assert_eq!(e.state, JournalState::Delivered);
    assert_eq!(e.route, "/paid/**");
    assert!(e.resource.ends_with("/paid/y"));
    assert_eq!(e.amount.to_string(), "1000");
    assert_eq!(e.transaction.as_deref(), Some(TX_HASH));
    let request: serde_json::Value = serde_json::from_str(&e.request).unwrap();
    assert_eq!(request["paymentRequirements"]["amount"], "1000");
    assert!(!e.request.contains("PRIVATE") && !e.request.to_lowercase().contains("key"));
    // An upstream error: released, recorded as failed (nothing charged).
    let payment = pay_v2(&gw, "/status/500").await;
    assert_eq!(gw.send("/status/500", &payment).await.status(), 500);
    flushed(&gw).await;
    let e = state(&gw, &payment).unwrap();
    assert_eq!(e.state, JournalState::Failed);
    assert_eq!(e.reason.as_deref(), Some("upstream_error"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_journal_fails_priced_routes_closed_and_free_routes_keep_working() {
    let gw = TestGateway::start().await;
    let j = gw.payments.journal().unwrap().clone();
    j.flush().await.unwrap();
    let pages: i64 = journal::open_reader(j.path())
        .unwrap()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    let required = decode_required(&http().get(gw.url("/paid/0")).send().await.unwrap());
    let fresh = || {
        x402_gateway::client::sign_v2(
            &payer(),
            &required,
            0,
            now(),
            x402_gateway::client::random_nonce(),
        )
        .unwrap()
    };
    // As full as a disk can be: nothing more fits.
    j.limit_pages(pages as u64).await;
    let mut saw_503 = false;
    for i in 0..40 {
        let path = format!("/paid/{i}");
        let resp = gw.send(&path, &fresh()).await;
        match resp.status().as_u16() {
            200 => continue, // still fitting in the last page
            503 => {
                let body = resp.text().await.unwrap();
                assert!(body.contains("journal_unavailable"), "{body}");
                saw_503 = true;
                break;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert!(saw_503, "a full journal never refused a payment");
    let settled = gw.facilitator.settle_calls();
    assert_eq!(gw.send("/paid/more", &fresh()).await.status(), 503);
    // Unpaid requests to priced routes are refused too (no challenge for a payment that could
    // not be taken).
    let unpaid = http().get(gw.url("/paid/x")).send().await.unwrap();
    assert_eq!(unpaid.status(), 503, "{:?}", unpaid.text().await);
    assert_eq!(
        gw.facilitator.settle_calls(),
        settled,
        "settled without a journal"
    );
    assert_eq!(
        http().get(gw.url("/health")).send().await.unwrap().status(),
        200
    );
    // Room again: a probe makes it writable, and payments are taken.
    j.limit_pages(1 << 20).await;
    gw.payments.maintain(false).await;
    j.flush().await.unwrap();
    assert_eq!(gw.send("/paid/again", &fresh()).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_recovers_open_payments_from_the_journal() {
    let journal = scratch_file("journal.db");
    let sections = format!("[journal]\npath = \"{}\"\n", journal.display());
    let gw = TestGateway::start_full(common::ROUTES, "", &sections).await;
    gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(3)));
    let payment = pay_v2(&gw, "/paid/r").await;
    assert_pending(gw.send("/paid/r", &payment).await).await;
    flushed(&gw).await;
    gw.stop().await;

    // A new gateway on the same journal; its facilitator now settles.
    let gw = TestGateway::start_full(common::ROUTES, "", &sections).await;
    let r = gw.payments.recover().await.unwrap();
    assert_eq!(r.settled, 1, "{r:?}");
    flushed(&gw).await;
    assert_eq!(state(&gw, &payment).unwrap().state, JournalState::Settled);
    let resp = gw.send("/paid/r", &payment).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        decode_receipt(&resp, "payment-response").success,
        Some(true)
    );
    // And a payment delivered before the restart is still refused as a replay after it.
    let gw2 = TestGateway::start_full(common::ROUTES, "", &sections).await;
    gw2.payments.recover().await.unwrap();
    assert_already_redeemed(gw2.send("/paid/r", &payment).await).await;
}

/// SIGKILLs the binary right after the status line of a paid answer reached the client: the
/// payment must never be redeemable again after the restart (the journal already says it was
/// delivered), or the same header gets the content twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_right_after_a_paid_answer_never_makes_it_redeemable() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let routes = "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n";
    for round in 0..3 {
        let (port, _admin, log, mut process) =
            start_binary(&upstream.url(), &facilitator.server.url(), routes);
        let config = log.with_file_name("gateway.toml");
        let base = format!("http://127.0.0.1:{port}");
        let challenge = get_when_up(&format!("{base}/paid/{round}")).await;
        assert_eq!(challenge.status(), 402);
        let required = decode_required(&challenge);
        let header = x402_gateway::client::sign_v2(
            &payer(),
            &required,
            0,
            now(),
            x402_gateway::client::random_nonce(),
        )
        .unwrap();
        let before = upstream.count();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let req = format!(
            "GET /paid/{round} HTTP/1.1\r\nhost: gw\r\npayment-signature: {header}\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut first = [0u8; 12];
        s.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"HTTP/1.1 200", "round {round}");
        // The status line is here: the process dies now, before anything else it may do.
        process.0.kill().unwrap();
        let _ = process.0.wait();
        drop(process);
        let log2 = log.with_file_name("gateway-2.log");
        let _again = spawn_gateway(&config, &[], &log2);
        assert_eq!(
            get_when_up(&format!("{base}/paid/probe")).await.status(),
            402
        );
        let resp = http()
            .get(format!("{base}/paid/{round}"))
            .header("payment-signature", &header)
            .send()
            .await
            .unwrap();
        assert_ne!(
            resp.status(),
            200,
            "round {round}: the same header got the content again after the crash"
        );
        // Nor a 402: the answer may not have reached the client, which must not pay again.
        assert_already_redeemed(resp).await;
        assert_eq!(upstream.count(), before + 1, "the upstream ran twice");
    }
}
