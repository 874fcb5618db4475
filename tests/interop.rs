//! Interoperability on a real chain: anvil (chain id 84532) with Circle's real USDC bytecode at
//! the Base Sepolia address. Official clients (npm `@x402/fetch` in v2 and v1 modes, PyPI `x402`,
//! crates.io `x402-reqwest`) and our own `pay` pay through the gateway binary, with the embedded facilitator and with the
//! official TypeScript facilitator; the payer's and payee's balances must move by exactly the
//! price and the receipt's transaction must be on chain. Also on the real chain: a replayed
//! authorization, a payer without balance, and funds moved between verify and settle.
//!
//! Forward-auth mode on the same chain: the official clients pay through a real nginx
//! (`auth_request`) and a real Caddy (`forward_auth`) configured from the shipped examples in
//! `deploy/`, with the gateway as their auth service.
//!
//! Needs the pinned tools that `scripts/test.sh` installs (tools/node/node_modules, .local/venv,
//! Debian's nginx and caddy).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAYEE: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const PAYER: &str = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8";
const FACILITATOR_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Anvil account 4: the payer that moves its funds away mid-payment.
const MOVER: &str = "0x15d34AAf54267DB7D7c367839AAf71A00a2C6A65";
const MOVER_KEY: &str = "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a";
const PRICE: u64 = 1000;

alloy::sol! {
    function balanceOf(address account) external view returns (uint256);
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::File::create(dir.join(name)).unwrap()
}

/// The crates.io `x402-reqwest` client, built by `scripts/test.sh` (tools/rust-client).
fn rust_client() -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map_or_else(|_| Path::new(ROOT).join("target"), PathBuf::from);
    target.join("rust-client/release/x402-reqwest-client")
}

fn require_tools() {
    for tool in [
        Path::new(ROOT).join("tools/node/node_modules/.bin/anvil"),
        PathBuf::from("/usr/sbin/nginx"),
        PathBuf::from("/usr/bin/caddy"),
        Path::new(ROOT).join(".local/venv/bin/python"),
        rust_client(),
    ] {
        assert!(
            tool.exists(),
            "{} is missing: run ./scripts/test.sh, which installs the pinned interop tools",
            tool.display()
        );
    }
}

async fn wait_http(url: &str) {
    let start = x402_gateway::clock::instant();
    while start.elapsed() < Duration::from_secs(20) {
        if http().get(url).send().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}

struct Env {
    rpc: String,
    dir: PathBuf,
    upstream: MockServer,
    _chain: Chain,
}

impl Env {
    async fn start() -> Env {
        require_tools();
        let dir = std::env::temp_dir().join(format!("x402-interop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let chain = Chain::start("100");
        let env = Env {
            rpc: chain.rpc.clone(),
            dir,
            upstream: mock_upstream().await,
            _chain: chain,
        };
        env.node(&[
            "devchain.mjs",
            "mint",
            "--rpc",
            &env.rpc,
            &format!("{MOVER}=1"),
        ]);
        env
    }

    fn node(&self, args: &[&str]) -> String {
        let out = Command::new("node")
            .current_dir(format!("{ROOT}/tools/node"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn balance(&self, who: &str) -> U256 {
        let p = ProviderBuilder::new().connect_http(self.rpc.parse().unwrap());
        let input = balanceOfCall {
            account: who.parse().unwrap(),
        }
        .abi_encode();
        let tx = TransactionRequest::default()
            .with_to(USDC.parse::<Address>().unwrap())
            .with_input(input);
        balanceOfCall::abi_decode_returns(&p.call(tx).await.unwrap()).unwrap()
    }

    /// A fresh payment for the gateway at `base`, and the balances (payer, payee) before it.
    async fn fresh_payment(&self, base: &str) -> (String, (U256, U256)) {
        let required = decode_required(&http().get(format!("{base}/paid/x")).send().await.unwrap());
        let payment = sign_fresh(&payer(), &required);
        (
            payment,
            (self.balance(PAYER).await, self.balance(PAYEE).await),
        )
    }

    /// The payer paid, and the payee received, the price exactly once since `before`.
    async fn paid_once(&self, (payer0, payee0): (U256, U256)) {
        assert_eq!(
            payer0 - self.balance(PAYER).await,
            U256::from(PRICE),
            "paid once"
        );
        assert_eq!(self.balance(PAYEE).await - payee0, U256::from(PRICE));
    }

    async fn tx_succeeded(&self, hash: &str) -> bool {
        let p = ProviderBuilder::new().connect_http(self.rpc.parse().unwrap());
        let hash: B256 = hash.parse().unwrap();
        p.get_transaction_receipt(hash)
            .await
            .unwrap()
            .is_some_and(|r| r.status())
    }

    /// The gateway binary on a fresh port with either facilitator; returns its base URL.
    async fn gateway(&self, name: &str, facilitator: &str) -> (String, KillOnDrop) {
        self.gateway_with(name, facilitator, "20s").await
    }

    /// As [`Env::gateway`], with a `settle_timeout`.
    async fn gateway_with(
        &self,
        name: &str,
        facilitator: &str,
        settle_timeout: &str,
    ) -> (String, KillOnDrop) {
        self.gateway_sections(name, facilitator, settle_timeout, "", "")
            .await
    }

    /// As [`Env::gateway_with`], with whole extra tables and extra keys of the paid route.
    async fn gateway_sections(
        &self,
        name: &str,
        facilitator: &str,
        settle_timeout: &str,
        sections: &str,
        route_extra: &str,
    ) -> (String, KillOnDrop) {
        let port = free_port();
        let config = self.dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                r#"
{sections}
[server]
listen = "127.0.0.1:{port}"
threads = 1
[upstream]
url = "{}"
[journal]
path = "{name}.db"
[facilitator]
settle_timeout = "{settle_timeout}"
{facilitator}
[payment]
pay_to = "{PAYEE}"
network = "base-sepolia"
[[route]]
path = "/paid/**"
price = "{PRICE}"
description = "interop"
mime_type = "application/json"
{route_extra}
"#,
                self.upstream.url()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_x402-gateway"));
        cmd.args(["run", "--config"])
            .arg(&config)
            .env("FACILITATOR_KEY", FACILITATOR_KEY)
            .env("RUST_LOG", "info");
        serve(cmd, log_file(&self.dir, &format!("{name}.log")), port).await
    }

    async fn ts_facilitator(&self) -> (String, KillOnDrop) {
        let port = free_port();
        let child = Command::new("node")
            .current_dir(format!("{ROOT}/tools/node"))
            .args(["interop/ts-facilitator.mjs", &self.rpc, &port.to_string()])
            .env("FACILITATOR_KEY", FACILITATOR_KEY)
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, "ts-facilitator.log"))
            .spawn()
            .unwrap();
        let proc = KillOnDrop(child);
        let url = format!("http://127.0.0.1:{port}");
        wait_http(&format!("{url}/supported")).await;
        (url, proc)
    }
}

/// Runs a client program; returns (status, receipt transaction, receipt network).
fn run_client(program: &str, args: &[&str], cwd: &str, key_var: &str) -> (u16, String, String) {
    let out = Command::new(program)
        .current_dir(cwd)
        .args(args)
        .env(key_var, PAYER_KEY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|_| {
        panic!(
            "{program} {args:?} printed no result: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        v["status"].as_u64().unwrap_or(0) as u16,
        v["receipt"]["transaction"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        v["receipt"]["network"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

fn run_pay(url: &str, v1: bool) -> (u16, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_x402-gateway"));
    cmd.arg("pay").env("X402_PAYER_KEY", PAYER_KEY);
    if v1 {
        cmd.arg("--v1");
    }
    let out = cmd.arg(url).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tx = stderr
        .lines()
        .find_map(|l| l.strip_prefix("transaction: "))
        .unwrap_or_default()
        .to_owned();
    let network = if stderr.contains("\"network\":\"base-sepolia\"") {
        "base-sepolia"
    } else {
        "eip155:84532"
    };
    (
        if out.status.success() { 200 } else { 402 },
        tx,
        network.to_owned(),
    )
}

async fn pays_exactly(
    env: &Env,
    label: &str,
    run: impl FnOnce() -> (u16, String, String),
    network: &str,
    deferred: bool,
) {
    let (payer0, payee0) = (env.balance(PAYER).await, env.balance(PAYEE).await);
    let started = x402_gateway::clock::instant();
    let (status, tx, net) = run();
    let took = started.elapsed();
    assert_eq!(status, 200, "{label}: not served");
    if deferred {
        // Served with a queued receipt the client read (its network is checked); settled in
        // the background: the payee's balance moves by the price, once.
        assert_eq!(tx, "", "{label}: a deferred receipt has no transaction yet");
        assert_eq!(net, network, "{label}: receipt network");
        let deadline = x402_gateway::clock::instant() + Duration::from_secs(30);
        while env.balance(PAYEE).await == payee0 {
            assert!(
                x402_gateway::clock::instant() < deadline,
                "{label}: never settled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            env.balance(PAYEE).await - payee0,
            U256::from(PRICE),
            "{label}: payee balance"
        );
        assert_eq!(
            payer0 - env.balance(PAYER).await,
            U256::from(PRICE),
            "{label}: payer balance"
        );
        eprintln!(
            "interop ok: {label} served in {took:?}, settled after {:?}",
            started.elapsed()
        );
        return;
    }
    assert!(
        tx.starts_with("0x") && tx.len() == 66,
        "{label}: no transaction in the receipt: {tx:?}"
    );
    assert_eq!(net, network, "{label}: receipt network");
    assert!(
        env.tx_succeeded(&tx).await,
        "{label}: {tx} is not a successful transaction on chain"
    );
    assert_eq!(
        payer0 - env.balance(PAYER).await,
        U256::from(PRICE),
        "{label}: payer balance"
    );
    assert_eq!(
        env.balance(PAYEE).await - payee0,
        U256::from(PRICE),
        "{label}: payee balance"
    );
    eprintln!("interop ok: {label} in {took:?} (tx {tx})");
}

type Client = Box<dyn FnOnce() -> (u16, String, String)>;

async fn all_clients_pay(env: &Env, base: &str, facilitator: &str) {
    clients_pay(env, base, facilitator, false).await;
}

async fn clients_pay(env: &Env, base: &str, facilitator: &str, deferred: bool) {
    let node = format!("{ROOT}/tools/node");
    let python = format!("{ROOT}/.local/venv/bin/python");
    let rust = rust_client().display().to_string();
    let url = |p: &str| format!("{base}/paid/{p}");
    let (v2, v1) = ("eip155:84532", "base-sepolia");
    let clients: Vec<(&str, &str, Client)> = vec![
        ("crates.io x402-reqwest v2", v2, {
            let (rust, u) = (rust, url("reqwest"));
            Box::new(move || run_client(&rust, &[&u, "v2"], ROOT, "PAYER_KEY"))
        }),
        ("@x402/fetch v2", v2, {
            let (node, u) = (node.clone(), url("fetch-v2"));
            Box::new(move || {
                run_client(
                    "node",
                    &["interop/fetch-client.mjs", &u, "v2"],
                    &node,
                    "PAYER_KEY",
                )
            })
        }),
        ("@x402/fetch v1", v1, {
            let u = url("fetch-v1");
            Box::new(move || {
                run_client(
                    "node",
                    &["interop/fetch-client.mjs", &u, "v1"],
                    &node,
                    "PAYER_KEY",
                )
            })
        }),
        ("PyPI x402", v2, {
            let u = url("python");
            Box::new(move || {
                run_client(
                    &python,
                    &["py_client.py", &u],
                    &format!("{ROOT}/tools/python"),
                    "PAYER_KEY",
                )
            })
        }),
        ("x402-gateway pay v2", v2, {
            let u = url("pay-v2");
            Box::new(move || run_pay(&u, false))
        }),
        ("x402-gateway pay v1", v1, {
            let u = url("pay-v1");
            Box::new(move || run_pay(&u, true))
        }),
    ];
    for (name, network, client) in clients {
        pays_exactly(
            env,
            &format!("{name} via {facilitator}"),
            client,
            network,
            deferred,
        )
        .await;
    }
}

/// A fresh signed v2 payment for `required.accepts[0]`.
fn sign_fresh(
    signer: &alloy::signers::local::PrivateKeySigner,
    required: &x402_gateway::protocol::v2::PaymentRequired,
) -> String {
    x402_gateway::client::sign_v2(
        signer,
        required,
        0,
        now(),
        x402_gateway::client::random_nonce(),
    )
    .unwrap()
}

/// A signed v2 payment for `required.accepts[0]` as a facilitator request body.
fn facilitator_body(
    signer: &alloy::signers::local::PrivateKeySigner,
    required: &x402_gateway::protocol::v2::PaymentRequired,
) -> String {
    facilitator_request(&sign_fresh(signer, required), required)
}

/// A payment header and what it pays for, as a facilitator request body.
fn facilitator_request(
    payment: &str,
    required: &x402_gateway::protocol::v2::PaymentRequired,
) -> String {
    let payload = x402_gateway::protocol::decode_header(payment.as_bytes()).unwrap();
    format!(
        r#"{{"x402Version":2,"paymentPayload":{},"paymentRequirements":{}}}"#,
        String::from_utf8(payload).unwrap(),
        serde_json::to_string(&required.accepts[0]).unwrap()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_and_facilitators_pay_on_a_real_chain() {
    let env = Env::start().await;

    // The embedded facilitator.
    let rpc_line = format!("embedded = true\nrpc = {{ \"eip155:84532\" = \"{}\" }}\nsigner_keys = [\"${{FACILITATOR_KEY}}\"]", env.rpc);
    let (base, _gw) = env.gateway("embedded", &rpc_line).await;
    all_clients_pay(&env, &base, "embedded facilitator").await;

    // Deferred settlement: every official client is served at once with a queued receipt it
    // reads, and the payment is settled in the background, once.
    let (deferred, _gwd) = env
        .gateway_sections(
            "deferred",
            &rpc_line,
            "20s",
            "",
            "settlement = \"deferred\"",
        )
        .await;
    clients_pay(&env, &deferred, "embedded facilitator, deferred", true).await;

    // Replay: served once, refused by the gateway after, and refused by the chain itself.
    let resp = http()
        .get(format!("{base}/paid/replay"))
        .send()
        .await
        .unwrap();
    let required = decode_required(&resp);
    let payment = sign_fresh(&payer(), &required);
    let first = http()
        .get(format!("{base}/paid/replay"))
        .header("payment-signature", &payment)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let again = http()
        .get(format!("{base}/paid/replay"))
        .header("payment-signature", &payment)
        .send()
        .await
        .unwrap();
    assert_already_redeemed(again).await;
    let embedded = x402_gateway::facilitator::EmbeddedFacilitator::connect(
        &x402_gateway::config::EmbeddedConfig {
            rpc: vec![(
                x402_gateway::protocol::Network::parse("eip155:84532").unwrap(),
                x402_gateway::config::Secret::new(env.rpc.clone()),
            )],
            signer_keys: vec![x402_gateway::config::Secret::new(FACILITATOR_KEY.into())],
            rpc_timeout: Duration::from_secs(5),
            batch: Default::default(),
        },
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let body = facilitator_request(&payment, &required);
    let chain_says = x402_gateway::verify::Facilitator::verify(&embedded, &body)
        .await
        .unwrap();
    assert!(!chain_says.is_valid);
    assert_eq!(
        chain_says.invalid_reason.as_deref(),
        Some("invalid_exact_evm_nonce_already_used"),
        "the chain would accept the replay"
    );
    let settle = x402_gateway::verify::Facilitator::settle(&embedded, &body)
        .await
        .unwrap();
    assert!(
        !settle.is_success(),
        "a replayed authorization settled on chain"
    );

    // Measured (reported, not asserted): embedded verify and settle latency on anvil.
    let (mut verify_ms, mut settle_ms) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let body = facilitator_body(&payer(), &required);
        let t = x402_gateway::clock::instant();
        assert!(
            x402_gateway::verify::Facilitator::verify(&embedded, &body)
                .await
                .unwrap()
                .is_valid
        );
        verify_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = x402_gateway::clock::instant();
        assert!(x402_gateway::verify::Facilitator::settle(&embedded, &body)
            .await
            .unwrap()
            .is_success());
        settle_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for (name, v) in [("verify", &mut verify_ms), ("settle", &mut settle_ms)] {
        v.sort_by(f64::total_cmp);
        eprintln!(
            "embedded facilitator {name} on anvil: p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms (n=20)",
            v[9], v[17], v[19]
        );
    }

    // The gateway's signer key just sent 20 transactions from another process (this test):
    // its next settlement meets "nonce too low", resynchronises and lands.
    let resp = http()
        .get(format!("{base}/paid/after-other-sender"))
        .send()
        .await
        .unwrap();
    let resp = http()
        .get(format!("{base}/paid/after-other-sender"))
        .header(
            "payment-signature",
            sign_fresh(&payer(), &decode_required(&resp)),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(decode_receipt(&resp, "payment-response").is_success());

    // A payer without balance gets an insufficient-balance 402, and nothing reaches the upstream.
    let broke = alloy::signers::local::PrivateKeySigner::random();
    let before = env.upstream.count();
    let p = sign_fresh(&broke, &required);
    let resp = http()
        .get(format!("{base}/paid/replay"))
        .header("payment-signature", p)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);
    assert!(
        challenge_error(&resp).contains("insufficient_balance"),
        "{}",
        challenge_error(&resp)
    );
    assert_eq!(env.upstream.count(), before);

    // Funds moved between verify and settle: the slow upstream gives the payer time to drain its
    // balance; settlement fails and the content is withheld.
    let mover: alloy::signers::local::PrivateKeySigner = MOVER_KEY.parse().unwrap();
    let resp = http()
        .get(format!("{base}/paid/slow"))
        .send()
        .await
        .unwrap();
    let p = sign_fresh(&mover, &decode_required(&resp));
    let payee0 = env.balance(PAYEE).await;
    let request = tokio::spawn(
        http()
            .get(format!("{base}/paid/slow"))
            .header("payment-signature", p)
            .send(),
    );
    // Verified and forwarded: the upstream holds its answer (`SLOW_UPSTREAM`) while the funds
    // move.
    while env.upstream.count_path("/paid/slow") == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    env.node(&[
        "devchain.mjs",
        "drain",
        "--rpc",
        &env.rpc,
        "--key",
        MOVER_KEY,
        "--to",
        PAYER,
    ]);
    let resp = request.await.unwrap().unwrap();
    assert_eq!(resp.status(), 402);
    let receipt = decode_receipt(&resp, "payment-response");
    assert!(!receipt.is_success());
    assert!(
        !resp.text().await.unwrap().contains("\"upstream\""),
        "content released without settlement"
    );
    assert_eq!(
        env.balance(PAYEE).await,
        payee0,
        "payee paid by a failed settlement"
    );

    // Concurrency: 8 settlements at once through one embedded facilitator with one signer key
    // (which the gateway has used too) all land: nonces are managed, not raced.
    let embedded = std::sync::Arc::new(embedded);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let body = facilitator_body(&payer(), &required);
            let e = embedded.clone();
            tokio::spawn(async move {
                x402_gateway::verify::Facilitator::settle(e.as_ref(), &body).await
            })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        assert!(r.is_success(), "a concurrent settlement failed: {r:?}");
        assert!(env.tx_succeeded(r.transaction.as_deref().unwrap()).await);
    }

    // Our standalone facilitator server (`x402-gateway facilitator`), used over HTTP by a
    // gateway: the x402 facilitator API with v1 and v2 request shapes.
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
        .args(["facilitator", "--config"])
        .arg(env.dir.join("embedded.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("FACILITATOR_KEY", FACILITATOR_KEY)
        .stdout(Stdio::null())
        .stderr(log_file(&env.dir, "standalone-facilitator.log"))
        .spawn()
        .unwrap();
    let _standalone = KillOnDrop(child);
    let url = format!("http://127.0.0.1:{port}");
    wait_http(&format!("{url}/supported")).await;
    let supported: serde_json::Value = http()
        .get(format!("{url}/supported"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(supported["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["network"] == "base-sepolia" && k["x402Version"] == 1));
    // Its probes: live, and ready because the chain answers and the signer has gas.
    let live = http().get(format!("{url}/livez")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    let ready = http().get(format!("{url}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body = ready.text().await.unwrap();
    let signer = FACILITATOR_KEY
        .parse::<alloy::signers::local::PrivateKeySigner>()
        .unwrap()
        .address()
        .to_checksum(None);
    assert_eq!(body, format!("ok   signer {signer} on eip155:84532\n"));
    let (base, _gw3) = env.gateway("standalone", &format!("url = \"{url}\"")).await;
    all_clients_pay(&env, &base, "x402-gateway facilitator").await;

    // The official TypeScript facilitator as the third-party reference.
    let (ts_url, _ts) = env.ts_facilitator().await;
    let (base, _gw2) = env.gateway("ts", &format!("url = \"{ts_url}\"")).await;
    all_clients_pay(&env, &base, "TypeScript facilitator").await;

    // Local verification: no /verify; the chain's answer to /settle still gates every release.
    let (base, _gw4) = env
        .gateway(
            "local",
            &format!("{rpc_line}\n[verification]\nmode = \"local\""),
        )
        .await;
    pays_exactly(
        &env,
        "our pay v2, local verification",
        || run_pay(&format!("{base}/paid/local"), false),
        "eip155:84532",
        false,
    )
    .await;
    let required = decode_required(&http().get(format!("{base}/paid/x")).send().await.unwrap());
    let broke = alloy::signers::local::PrivateKeySigner::random();
    let p = sign_fresh(&broke, &required);
    let payee0 = env.balance(PAYEE).await;
    let resp = http()
        .get(format!("{base}/paid/broke"))
        .header("payment-signature", p)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402, "an unfunded payment must not be served");
    assert!(!decode_receipt(&resp, "payment-response").is_success());
    assert!(
        !resp.text().await.unwrap().contains("\"upstream\""),
        "content released without settlement"
    );
    assert_eq!(env.balance(PAYEE).await, payee0);

    // Mining paused: the settlement transaction sits in the mempool past `settle_timeout` and
    // `resolve_timeout`. The content is not released, no success is reported for an unmined
    // transfer (it could still be dropped), and the answer is a 503 (a 402 would make the
    // client pay again); the receipt names the pending transaction. Once mined, a retry with
    // the same payment header is served, and the payer paid once.
    let (base, _gw5) = env
        .gateway_with(
            "mempool",
            &format!("{rpc_line}\nresolve_timeout = \"2s\""),
            "2s",
        )
        .await;
    let p = ProviderBuilder::new().connect_http(env.rpc.parse().unwrap());
    let (payment, balances) = env.fresh_payment(&base).await;
    automine(&p, false).await;
    let resp = paid_get(&base, "/paid/mempool", &payment).await;
    let status = resp.status();
    let retry_after = resp.headers().get("retry-after").cloned();
    let receipt = decode_receipt(&resp, "payment-response");
    let body = resp.text().await.unwrap();
    automine(&p, true).await;
    assert_eq!(status, 503, "an unmined transfer: {body}");
    assert!(retry_after.is_some());
    assert!(!body.contains("\"upstream\""), "content released: {body}");
    assert_eq!(receipt.success, Some(false));
    assert_eq!(receipt.error_reason.as_deref(), Some("settlement_pending"));
    let pending = receipt.transaction.unwrap_or_default();
    assert_eq!(
        pending.len(),
        66,
        "the pending transaction is named: {pending:?}"
    );
    let _: String = p.raw_request("evm_mine".into(), ()).await.unwrap();
    assert!(
        env.tx_succeeded(&pending).await,
        "the named transaction mined"
    );
    let resp = paid_get(&base, "/paid/mempool", &payment).await;
    assert_eq!(resp.status(), 200, "the same payment redeems the content");
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.transaction.as_deref(), Some(pending.as_str()));
    assert!(resp.text().await.unwrap().contains("\"upstream\""));
    env.paid_once(balances).await;
    let again = paid_get(&base, "/paid/mempool", &payment).await;
    assert_eq!(again.status(), 409, "delivered once, then a replay");

    // SIGTERM while a settlement is in flight: the gateway stops accepting but finishes the
    // request; the client gets its content and receipt, the payment settles once, and the
    // process exits when done (long before drain_timeout).
    let (base, mut gw6) = env.gateway("drain", &rpc_line).await;
    let (payment, balances) = env.fresh_payment(&base).await;
    automine(&p, false).await;
    let request = {
        let base = base.clone();
        tokio::spawn(async move { paid_get(&base, "/paid/drain", &payment).await })
    };
    // The settlement transaction reaches the mempool: the payment is in flight.
    let started = x402_gateway::clock::instant();
    loop {
        let block: serde_json::Value = p
            .raw_request("eth_getBlockByNumber".into(), ("pending", false))
            .await
            .unwrap();
        if block["transactions"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no settlement sent"
        );
        tokio::task::yield_now().await;
    }
    let pid = gw6.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // It stops accepting new connections while it drains.
    let addr = base.trim_start_matches("http://").to_owned();
    let stop = x402_gateway::clock::instant();
    while tokio::net::TcpStream::connect(&addr).await.is_ok() {
        assert!(
            stop.elapsed() < Duration::from_secs(10),
            "still accepting after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    let _: String = p.raw_request("evm_mine".into(), ()).await.unwrap();
    automine(&p, true).await;
    let resp = request.await.unwrap();
    assert_eq!(resp.status(), 200);
    let receipt = decode_receipt(&resp, "payment-response");
    assert_eq!(receipt.success, Some(true));
    assert!(
        env.tx_succeeded(receipt.transaction.as_deref().unwrap())
            .await
    );
    let exit = gw6.0.wait().unwrap();
    assert!(exit.success(), "drained and exited cleanly: {exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "exited when idle, not at drain_timeout"
    );
    env.paid_once(balances).await;

    // (Last: it moves the chain's clock forward.)
    let (base, _gw7) = env
        .gateway_with(
            "dropped",
            &format!("{rpc_line}\nresolve_timeout = \"1s\""),
            "2s",
        )
        .await;
    // Proven not settled: the pending transaction is dropped from the mempool and the chain's
    // time passes validBefore unused. A retry with the same payment is then a 402 with the
    // reason (pay again: the first authorization can never move money).
    let (payment, balances) = env.fresh_payment(&base).await;
    automine(&p, false).await;
    let resp = paid_get(&base, "/paid/dropped", &payment).await;
    assert_eq!(resp.status(), 503);
    let dropped = decode_receipt(&resp, "payment-response")
        .transaction
        .unwrap_or_default();
    let _: serde_json::Value = p
        .raw_request("anvil_dropTransaction".into(), (dropped.clone(),))
        .await
        .unwrap();
    automine(&p, true).await;
    let _: serde_json::Value = p
        .raw_request("evm_increaseTime".into(), (400u64,))
        .await
        .unwrap();
    let _: String = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let resp = paid_get(&base, "/paid/dropped", &payment).await;
    assert_eq!(resp.status(), 402, "proven unsettled");
    assert!(
        challenge_error(&resp).contains("authorization_expired_unused"),
        "{}",
        challenge_error(&resp)
    );
    assert!(!decode_receipt(&resp, "payment-response").is_success());
    assert_eq!(balances.0, env.balance(PAYER).await, "nothing moved");
}

/// Turns anvil's automine on or off.
async fn automine(p: &impl Provider, on: bool) {
    let _: () = p
        .raw_request("evm_setAutomine".into(), (on,))
        .await
        .unwrap();
}

/// GETs `path` of `base` with a v2 payment header.
async fn paid_get(base: &str, path: &str, payment: &str) -> reqwest::Response {
    http()
        .get(format!("{base}{path}"))
        .header("payment-signature", payment)
        .send()
        .await
        .unwrap()
}

/// A proxy in front of the API from its shipped example in `deploy/` (`scripts/proxy.sh`), with
/// the gateway's forward-auth listener on `auth_port`; returns its base URL.
async fn example_proxy(env: &Env, kind: &str, auth_port: u16) -> (String, KillOnDrop) {
    let port = free_port();
    let mut cmd = Command::new("bash");
    cmd.arg(format!("{ROOT}/scripts/proxy.sh"))
        .args([kind, &port.to_string(), &format!("127.0.0.1:{auth_port}")])
        .arg(env.upstream.url().replace("http://", ""))
        .arg(env.dir.join(kind));
    serve(cmd, log_file(&env.dir, &format!("{kind}.log")), port).await
}

/// Runs `cmd` (its stderr to `log`) until dropped; returns the base URL of `port` once it
/// answers.
async fn serve(mut cmd: Command, log: std::fs::File, port: u16) -> (String, KillOnDrop) {
    let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let proc = KillOnDrop(child);
    let base = format!("http://127.0.0.1:{port}");
    wait_http(&base).await;
    (base, proc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_pay_through_nginx_and_caddy_forward_auth() {
    let env = Env::start().await;
    let auth_port = free_port();
    let facilitator = format!(
        "embedded = true\nrpc = {{ \"eip155:84532\" = \"{}\" }}\nsigner_keys = [\"${{FACILITATOR_KEY}}\"]",
        env.rpc
    );
    let auth = format!("[auth]\nlisten = \"127.0.0.1:{auth_port}\"\n");
    let (_, _gw) = env
        .gateway_sections("forward-auth", &facilitator, "20s", &auth, "")
        .await;
    for kind in ["nginx", "caddy"] {
        let (base, _proxy) = example_proxy(&env, kind, auth_port).await;
        let label = format!("{kind} forward-auth");

        // Unpaid: the gateway's challenge, as the proxy returns it; the API is not reached.
        let path = format!("/paid/{kind}-unpaid");
        let r = http().get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 402, "{label}: unpaid");
        assert_eq!(
            decode_required(&r).resource.url,
            format!("{base}{path}"),
            "{label}: the resource is the URL the client asked the proxy for"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["accepts"][0]["maxAmountRequired"], PRICE.to_string());
        assert_eq!(
            env.upstream.count_path(&path),
            0,
            "{label}: unpaid reached the API"
        );

        // Free (unmatched) paths pass without a receipt; a client's own receipt and status
        // headers neither reach the API nor come back, and none appears in their place.
        let path = format!("/free/{kind}");
        let mut forged = http().get(format!("{base}{path}"));
        for (name, value) in FORGED_OUTCOME {
            forged = forged.header(name, value);
        }
        let r = forged.send().await.unwrap();
        assert_eq!(r.status(), 200, "{label}: free path");
        let seen = env.upstream.last().unwrap();
        assert_eq!(seen.target, path);
        for name in PAYMENT_OUTCOME_HEADERS {
            assert!(
                r.headers().get(name).is_none(),
                "{label}: {name} on a free path"
            );
            assert_eq!(
                seen.header(name),
                None,
                "{label}: the API got a {name} the gateway did not send"
            );
        }

        all_clients_pay(&env, &base, &label).await;

        // A replay through the proxy: served once, refused after, paid once. The client's
        // own `queued` status goes nowhere: this route settled.
        let path = format!("/paid/{kind}-replay");
        let required = decode_required(&http().get(format!("{base}{path}")).send().await.unwrap());
        let payment = sign_fresh(&payer(), &required);
        let before = (env.balance(PAYER).await, env.balance(PAYEE).await);
        let first = http()
            .get(format!("{base}{path}"))
            .header("payment-signature", &payment)
            .header("x-payment-status", "queued")
            .send()
            .await
            .unwrap();
        assert_eq!(first.status(), 200, "{label}: paid");
        assert_eq!(
            decode_receipt(&first, "payment-response").success,
            Some(true)
        );
        let seen = env.upstream.last().unwrap();
        assert_eq!(seen.target, path);
        assert_eq!(seen.header("x-payment-status"), None, "{label}: to the API");
        assert_eq!(
            seen.header("x-payment-response"),
            None,
            "{label}: v1 receipt"
        );
        assert!(first.headers().get("x-payment-status").is_none(), "{label}");
        let again = paid_get(&base, &path, &payment).await;
        assert_eq!(again.status(), 409, "{label}: replay");
        assert_eq!(
            env.upstream.count_path(&path),
            1,
            "{label}: the replay reached the API"
        );
        env.paid_once(before).await;
    }

    // A deferred route behind each proxy: allowed with the queued receipt and
    // `X-PAYMENT-STATUS: queued`, both copied to the client and to the API, and the API's own
    // headers of those names dropped; settled in the background, exactly once.
    let deferred_port = free_port();
    let auth = format!("[auth]\nlisten = \"127.0.0.1:{deferred_port}\"\n");
    let (_, _gwd) = env
        .gateway_sections(
            "forward-auth-deferred",
            &facilitator,
            "20s",
            &auth,
            "settlement = \"deferred\"",
        )
        .await;
    for kind in ["nginx", "caddy"] {
        let (base, _proxy) = example_proxy(&env, kind, deferred_port).await;
        let label = format!("{kind} forward-auth, deferred");
        // The API answers this path with a receipt and a status of its own.
        let path = format!("/paid/{kind}-deferred/forged-receipt");
        let required = decode_required(&http().get(format!("{base}{path}")).send().await.unwrap());
        let payment = sign_fresh(&payer(), &required);
        let (payer0, payee0) = (env.balance(PAYER).await, env.balance(PAYEE).await);
        let r = paid_get(&base, &path, &payment).await;
        assert_eq!(r.status(), 200, "{label}");
        let only = |name: &str| {
            let values: Vec<_> = r.headers().get_all(name).iter().collect();
            assert_eq!(values.len(), 1, "{label}: {name}: {values:?}");
            values[0].to_str().unwrap().to_owned()
        };
        assert_eq!(only("x-payment-status"), "queued", "{label}");
        let receipt = only("payment-response");
        assert_ne!(receipt, FORGED_RECEIPT, "{label}: the API's receipt");
        assert!(
            r.headers().get("x-payment-response").is_none(),
            "{label}: the API's v1 receipt"
        );
        let decoded = decode_receipt(&r, "payment-response");
        assert_eq!(decoded.success, Some(true), "{label}");
        assert_eq!(decoded.transaction.as_deref(), Some(""), "{label}: queued");
        let seen = env.upstream.last().unwrap();
        assert_eq!(seen.target, path);
        assert_eq!(seen.header("x-payment-status"), Some("queued"), "{label}");
        assert_eq!(seen.header("payment-response"), Some(receipt.as_str()));
        assert_eq!(seen.header("x-payment-response"), None, "{label}");
        let deadline = x402_gateway::clock::instant() + Duration::from_secs(30);
        while env.balance(PAYEE).await == payee0 {
            assert!(
                x402_gateway::clock::instant() < deadline,
                "{label}: never settled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env.paid_once((payer0, payee0)).await;
        let again = paid_get(&base, &path, &payment).await;
        assert_eq!(again.status(), 409, "{label}: replay");
        assert_eq!(env.upstream.count_path(&path), 1, "{label}: served once");
    }
}
