//! The real binary: `x402-gateway run` boots Pingora's server on the configured address, reads
//! the facilitator's /supported, charges and serves; and refuses to start when a route offers a
//! payment the facilitator does not support.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::{Child, Command, Stdio};

use common::*;

fn write_config(
    name: &str,
    upstream: &str,
    facilitator: &str,
    port: u16,
    network: &str,
) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("x402-run-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
threads = 1
[upstream]
url = "{upstream}"
[facilitator]
url = "{facilitator}"
timeout = "2s"
[payment]
pay_to = "{PAY_TO}"
network = "{network}"
[[route]]
path = "/paid/**"
price = "$0.001"
"#
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serves_challenges_and_payments() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let port = free_port();
    let config = write_config(
        "ok",
        &upstream.url(),
        &facilitator.server.url(),
        port,
        "base-sepolia",
    );
    let _gw = KillOnDrop(spawn(&config));
    let url = format!("http://127.0.0.1:{port}/paid/thing");
    let resp = get_when_up(&url).await;
    assert_eq!(resp.status(), 402);
    let required = decode_required(&resp);
    let payment = x402_gateway::client::sign_v2(
        &payer(),
        &required,
        0,
        now(),
        x402_gateway::client::random_nonce(),
    )
    .unwrap();
    let resp = http()
        .get(&url)
        .header("payment-signature", payment)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(decode_receipt(&resp, "payment-response").is_success());
    assert_eq!(upstream.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_refuses_options_the_facilitator_does_not_support() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let config = write_config(
        "unsupported",
        &upstream.url(),
        &facilitator.server.url(),
        free_port(),
        "polygon",
    );
    let out = spawn(&config).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not support") && stderr.contains("eip155:137"),
        "{stderr}"
    );
}
