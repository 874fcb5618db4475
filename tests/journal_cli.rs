//! `x402-gateway journal`: list, show, report and reconcile on a journal a gateway wrote (and
//! while it still runs).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn journal(config: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
        .arg("journal")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_report_and_reconcile() {
    let gw = TestGateway::start().await;
    // Two delivered payments, one failed (upstream error), one unknown.
    for path in ["/paid/a", "/paid/b"] {
        let p = pay_v2(&gw, path).await;
        assert_eq!(gw.send(path, &p).await.status(), 200);
    }
    let p = pay_v2(&gw, "/status/500").await;
    assert_eq!(gw.send("/status/500", &p).await.status(), 500);
    gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(3)));
    let pending = pay_v2(&gw, "/paid/c").await;
    assert_eq!(gw.send("/paid/c", &pending).await.status(), 503);
    gw.payments.journal().unwrap().flush().await.unwrap();
    let config = scratch_file("gateway.toml");
    std::fs::write(&config, &gw.text).unwrap();

    let (ok, out) = journal(&config, &["list", "--format", "json"]);
    assert!(ok, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered", "delivered", "failed", "unknown"]);
    assert_eq!(rows[0]["amount"], "1000");
    assert_eq!(rows[0]["amount_usd"], "$0.001");
    assert_eq!(rows[0]["transaction"], TX_HASH);

    let (ok, out) = journal(&config, &["list", "--state", "unknown", "--format", "csv"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with("created_at,state,route"));
    let (ok, out) = journal(&config, &["list", "--since", "1h", "--route", "/status/**"]);
    assert!(ok && out.contains("1 payment(s)"), "{out}");

    let a = &exact_payload(pending.as_bytes()).authorization;
    let (ok, out) = journal(&config, &["show", &format!("{}/{}", a.from, a.nonce)]);
    assert!(ok, "{out}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["state"], "unknown");
    assert_eq!(shown["request"]["paymentRequirements"]["amount"], "1000");

    let (ok, out) = journal(&config, &["report", "--by", "route"]);
    assert!(ok, "{out}");
    let paid_line = out.lines().find(|l| l.starts_with("/paid/**")).unwrap();
    assert!(paid_line.contains("$0.002"), "{paid_line}");
    let (ok, out) = journal(&config, &["report", "--by", "day"]);
    assert!(ok && out.contains("$0.002"), "{out}");

    // The facilitator answers again. While the gateway runs, the unknown payment is its own
    // (it reads it in the background): reconcile leaves it to it.
    gw.facilitator.set_settle(SettleScript::Success);
    let settled = gw.facilitator.settle_calls();
    let (ok, out) = journal(&config, &["reconcile"]);
    assert!(ok, "{out}");
    assert!(out.contains("1 left to a running gateway"), "{out}");
    assert_eq!(gw.facilitator.settle_calls(), settled, "{out}");
    // Once it has stopped, the payment is anyone's: reconcile settles it (redeemable).
    gw.payments.journal().unwrap().close().await.unwrap();
    let (ok, out) = journal(&config, &["reconcile"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("1 settled, 0 failed, 0 still unknown, 0 left"),
        "{out}"
    );
    let (_, out) = journal(&config, &["list", "--state", "settled", "--format", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);

    // Errors are clear.
    let (ok, out) = journal(&config, &["list", "--state", "paid"]);
    assert!(!ok && out.contains("unknown state paid"), "{out}");
    let (ok, out) = journal(&config, &["show", "0xnothing"]);
    assert!(!ok && out.contains("no payment"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_leaves_a_payment_the_running_gateway_is_settling_to_it() {
    let gw = TestGateway::start_with(ROUTES, "settle_timeout = \"10s\"").await;
    gw.facilitator
        .set_settle(SettleScript::Slow(Duration::from_secs(4)));
    let header = pay_v2(&gw, "/paid/a").await;
    let url = gw.url("/paid/a");
    let request = tokio::spawn(async move {
        http()
            .get(url)
            .header("payment-signature", header)
            .timeout(Duration::from_secs(20))
            .send()
            .await
            .unwrap()
            .status()
    });
    // The gateway has called /settle and waits for it.
    gw.until_journal(x402_gateway::journal::JournalState::Settling, 1)
        .await;
    let config = scratch_file("gateway.toml");
    std::fs::write(&config, &gw.text).unwrap();
    let (ok, out) = tokio::task::spawn_blocking(move || journal(&config, &["reconcile"]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    assert_eq!(
        gw.facilitator.settle_calls(),
        1,
        "reconcile settled a payment the gateway was settling: {out}"
    );
    assert_eq!(request.await.unwrap(), 200);
    gw.until_journal(x402_gateway::journal::JournalState::Delivered, 1)
        .await;
    assert_eq!(gw.facilitator.settle_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_the_journal_needs_no_secret() {
    let gw = TestGateway::start().await;
    let p = pay_v2(&gw, "/paid/a").await;
    assert_eq!(gw.send("/paid/a", &p).await.status(), 200);
    gw.payments.journal().unwrap().flush().await.unwrap();
    // The same journal, named by a config whose facilitator key is in the environment only
    // (and not in this one).
    let journal_path = gw.payments.journal().unwrap().path().to_owned();
    let text = format!(
        r#"[journal]
path = "{}"
[upstream]
url = "http://127.0.0.1:9"
[facilitator]
embedded = true
rpc = {{ "eip155:84532" = "${{X402_TEST_UNSET_RPC}}" }}
signer_keys = ["${{X402_TEST_UNSET_KEY}}"]
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
[[route]]
path = "/paid/**"
price = "$0.001"
"#,
        journal_path.display()
    );
    let config = scratch_file("gateway.toml");
    std::fs::write(&config, text).unwrap();
    let (ok, out) = journal(&config, &["list", "--format", "json"]);
    assert!(ok, "journal list needed a secret: {out}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let (ok, out) = journal(&config, &["report"]);
    assert!(ok, "journal report needed a secret: {out}");
}
