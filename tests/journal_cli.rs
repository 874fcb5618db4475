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

    let decoded = x402_gateway::protocol::PaymentPayload::from_header(pending.as_bytes()).unwrap();
    let a = &decoded.payload.authorization;
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

    // The facilitator answers again: reconcile settles the unknown payment (redeemable).
    gw.facilitator.set_settle(SettleScript::Success);
    let (ok, out) = journal(&config, &["reconcile"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("1 settled, 0 failed, 0 still unknown"),
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
