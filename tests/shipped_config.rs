//! The shipped `gateway.toml` runs the demo stack as it is (local chain with Circle's USDC,
//! sample API, embedded facilitator) and takes a payment, with its journal in
//! `$STATE_DIRECTORY` (cargo feature `e2e`: it needs anvil).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::{Command, Stdio};

use common::*;

/// Anvil dev key #2 (public), the demo's settlement signer.
const FACILITATOR_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";

/// The shipped file with only its fixed ports moved to free ones (tests run side by side).
fn shipped_on(chain: u16, api: u16, port: u16, admin: u16) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml")).unwrap();
    let mut out = text.clone();
    for (from, to) in [
        (
            "\"http://127.0.0.1:8545\"",
            format!("\"http://127.0.0.1:{chain}\""),
        ),
        (
            "\"http://127.0.0.1:3000\"",
            format!("\"http://127.0.0.1:{api}\""),
        ),
        (
            "listen = \"0.0.0.0:8402\"",
            format!("listen = \"127.0.0.1:{port}\""),
        ),
        (
            "listen = \"127.0.0.1:9402\"",
            format!("listen = \"127.0.0.1:{admin}\""),
        ),
    ] {
        assert_eq!(text.matches(from).count(), 1, "{from} in gateway.toml");
        out = out.replace(from, &to);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_config_runs_the_demo_stack_and_takes_a_payment() {
    let chain = Chain::start("10");
    let (api, port, admin) = (free_port(), free_port(), free_port());
    let _api = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["sample-api", "--listen", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let config = scratch_file("gateway.toml");
    std::fs::write(&config, shipped_on(chain.port, api, port, admin)).unwrap();
    let state = config.parent().unwrap().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let log = config.with_extension("log");
    let _gw = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["run", "--config"])
            .arg(&config)
            .env("FACILITATOR_KEY", FACILITATOR_KEY)
            .env("STATE_DIRECTORY", &state)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}/weather/paris");
    let resp = get_when_up(&url).await;
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(resp.status(), 402, "{}", logged());
    let required = decode_required(&resp);
    assert_eq!(required.accepts[0].network, "eip155:84532");
    let ready = get_when_up(&format!("http://127.0.0.1:{admin}/readyz")).await;
    assert_eq!(ready.status(), 200, "{}", ready.text().await.unwrap());
    // A real payment, settled on the local chain by the embedded facilitator.
    assert_eq!(pay_once(&url, false).await, Ok(false), "{}", logged());
    // The journal went to $STATE_DIRECTORY, not next to the config file.
    assert!(state.join("x402-journal.db").exists());
    assert!(!config.parent().unwrap().join("x402-journal.db").exists());
}
