//! Seeded chaos on a real chain (anvil with Circle's real USDC): several payers stream paid
//! requests through the gateway binary, in both settlement modes, while a seeded schedule
//! SIGKILLs and restarts the gateway, switches the chain to interval mining (so receipts
//! outlast `settle_timeout`), kills and stalls the standalone facilitator and the upstream,
//! and puts the journal on a full or read-only disk. Clients behave as documented: a `503`, a
//! `502`, a `429` or a broken connection is retried with the same payment header; only a
//! `402` makes them sign a new payment.
//!
//! Afterwards, from the chain, the journal and the clients' records:
//! - every response served with a success receipt is settled on chain, by that transaction;
//! - every authorization settled on chain is delivered or redeemable in the journal (lost = 0);
//! - no logical request paid twice (double = 0).
//!
//! The counts and the seed are printed; `CHAOS_SEED=N` replays a schedule, `CHAOS_SECONDS=N`
//! lengthens each phase (default 35 s). The journal's disk faults need root (a tmpfs).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, B256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::Filter;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolEvent;
use common::*;
use x402_gateway::journal::{self, JournalState};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const PAYEE: &str = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const FACILITATOR_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Anvil dev accounts 5–8 (public test keys): the payers.
const PAYER_KEYS: [&str; 4] = [
    "0x8b3a350cf5c34c9194ca85829a2df0ec3153be0318b5e2d3348e872092edffba",
    "0x92db14e403b83dfe3df233f83dfa3a0d7096f21ca9b0d6d6b8d88b2b4ec1564e",
    "0x4bbbf85ce3377467afe5d46f804f221813b2bb87f24d81f60f1fcdbf7cbf4356",
    "0xdbda1821b80551c9d65939329250298aa3472ba22feea921c0cf5d620ea67b97",
];

alloy::sol! {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
}

/// xorshift64*: a small PRNG whose whole state is the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo).max(1)
    }
}

// === Processes ===

/// A tmpfs for the journal (a disk that can fill up or turn read-only).
struct Disk {
    dir: PathBuf,
    mounted: bool,
}

impl Disk {
    fn new(dir: &Path) -> Disk {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!(
                "chaos: cannot mount a tmpfs (not root?): journal disk faults are not injected"
            );
        }
        Disk {
            dir: dir.to_owned(),
            mounted,
        }
    }

    fn read_only(&self, ro: bool) -> bool {
        self.mounted
            && Command::new("mount")
                .args(["-o", if ro { "remount,ro" } else { "remount,rw" }])
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
    }

    /// Fills the disk (or empties it again).
    fn fill(&self, full: bool) -> bool {
        let ballast = self.dir.join("ballast");
        if !full {
            let _ = std::fs::remove_file(&ballast);
            return true;
        }
        if !self.mounted {
            return false;
        }
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", ballast.display()))
            .stderr(Stdio::null())
            .status();
        true
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
    }
}

struct Proc {
    name: String,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<std::process::Child>,
}

impl Proc {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdout(Stdio::null())
            .stderr(log)
            .env("RUST_LOG", "info");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("{}: {e}", self.name)));
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

async fn wait_up(url: &str) {
    let start = x402_gateway::clock::instant();
    loop {
        if reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .is_ok()
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// === Clients ===

/// One logical request of a client and every authorization it signed for it.
#[derive(Clone, Debug, Default)]
struct Logical {
    payer: Address,
    nonces: Vec<B256>,
    /// The transaction of the success receipt it was served with.
    served: Option<String>,
    /// The nonce that was served.
    served_nonce: Option<B256>,
    /// Served after at least one retry of the same payment (a redemption or a repeat).
    retried: bool,
    /// Told `409 payment_already_redeemed`: its answer went out and was cut (a crash between
    /// the durable delivery and the client): given up, never paid again.
    answer_lost: bool,
}

#[derive(Default)]
struct Records {
    requests: Mutex<Vec<Logical>>,
}

/// A documented client: signs a payment, retries it on anything but a 402 or a 409, signs a new
/// one on a 402, gives up on a 409 (that payment's answer was given). Runs until `stop`; gives a
/// logical request up after `patience`.
async fn client(
    base: Arc<Mutex<String>>,
    key: &'static str,
    path: &'static str,
    stop: Arc<AtomicBool>,
    records: Arc<Records>,
    patience: Duration,
) {
    let signer: PrivateKeySigner = key.parse().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut required: Option<x402_gateway::protocol::v2::PaymentRequired> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut logical = Logical {
            payer: signer.address(),
            ..Logical::default()
        };
        let started = x402_gateway::clock::instant();
        let mut payment: Option<String> = None;
        let mut attempts_with_payment = 0;
        while started.elapsed() < patience {
            let url = format!("{}{path}", base.lock().unwrap());
            if required.is_none() {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 402 && r.headers().contains_key("payment-required") => {
                        required = Some(decode_required(&r));
                    }
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let p = payment.get_or_insert_with(|| {
                let h = x402_gateway::client::sign_v2(
                    &signer,
                    required.as_ref().unwrap(),
                    0,
                    now(),
                    x402_gateway::client::random_nonce(),
                )
                .unwrap();
                logical
                    .nonces
                    .push(exact_payload(h.as_bytes()).authorization.nonce);
                attempts_with_payment = 0;
                h
            });
            attempts_with_payment += 1;
            match http
                .get(&url)
                .header("payment-signature", p.as_str())
                .send()
                .await
            {
                Ok(r) if r.status() == 200 => {
                    let receipt = decode_receipt(&r, "payment-response");
                    assert_eq!(receipt.success, Some(true), "200 without a success receipt");
                    let body = r.text().await.unwrap_or_default();
                    assert!(body.contains("\"upstream\""), "200 without content: {body}");
                    logical.served = receipt.transaction;
                    logical.served_nonce = logical.nonces.last().copied();
                    logical.retried = attempts_with_payment > 1;
                    break;
                }
                Ok(r) if r.status() == 402 => {
                    // Not paid (or not payable): pay again, with a new authorization.
                    payment = None;
                }
                Ok(r) if r.status() == 409 => {
                    // Paid, and its answer went out: never pay again for it.
                    let body = r.text().await.unwrap_or_default();
                    assert!(body.contains("payment_already_redeemed"), "409: {body}");
                    logical.answer_lost = true;
                    break;
                }
                _ => {
                    // 503 (pending, busy, journal), 502, 429, a broken connection: retry the
                    // same payment, as docs/money-safety.md tells client authors.
                    tokio::time::sleep(Duration::from_millis(150)).await;
                }
            }
        }
        records.requests.lock().unwrap().push(logical);
    }
}

/// Payments in `settling` in the journal now.
fn settling(journal_path: &Path) -> usize {
    journal::open_reader(journal_path)
        .ok()
        .and_then(|r| {
            journal::query(
                &r,
                &journal::Filter {
                    states: vec![JournalState::Settling],
                    ..journal::Filter::default()
                },
            )
            .ok()
        })
        .map_or(0, |v| v.len())
}

/// The authorizations of `payers` used on chain: (payer, nonce) → the transaction. Panics if
/// one was used twice.
async fn authorizations_used(
    provider: &impl Provider,
    payers: &BTreeSet<Address>,
) -> HashMap<(Address, B256), String> {
    let logs = provider
        .get_logs(
            &Filter::new()
                .address(USDC.parse::<Address>().unwrap())
                .event_signature(AuthorizationUsed::SIGNATURE_HASH)
                .from_block(0),
        )
        .await
        .unwrap();
    let mut used = HashMap::new();
    for l in &logs {
        let d = l.log_decode::<AuthorizationUsed>().unwrap();
        if payers.contains(&d.inner.data.authorizer) {
            let prev = used.insert(
                (d.inner.data.authorizer, d.inner.data.nonce),
                l.transaction_hash.unwrap().to_string(),
            );
            assert!(prev.is_none(), "an authorization used twice on chain");
        }
    }
    used
}

// === The run ===

struct Counts {
    requests: usize,
    kills: usize,
    kills_during_settle: usize,
    settled: usize,
    delivered: usize,
    redeemed: usize,
    answers_lost: usize,
    lost: usize,
    double: usize,
    served_unpaid: usize,
}

#[allow(clippy::too_many_lines)]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paid_requests_survive_seeded_chaos_on_a_real_chain() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now() ^ u64::from(std::process::id()) << 20 | 1);
    let phase_secs: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(35);
    eprintln!("chaos: seed {seed} (replay with CHAOS_SEED={seed}), {phase_secs} s per phase");
    x402_gateway::verify::facilitator::install_crypto_provider();
    let mut rng = Rng(seed);
    let anvil = Path::new(ROOT).join("tools/node/node_modules/.bin/anvil");
    assert!(
        anvil.exists(),
        "{} is missing: run ./scripts/test.sh",
        anvil.display()
    );
    let dir = scratch_file("chaos").parent().unwrap().to_path_buf();
    let chain = Chain::start("100");
    let rpc = chain.rpc.clone();
    let payers: Vec<String> = PAYER_KEYS
        .iter()
        .map(|k| format!("{}=1000", k.parse::<PrivateKeySigner>().unwrap().address()))
        .collect();
    let mint = Command::new("node")
        .current_dir(format!("{ROOT}/tools/node"))
        .args(["devchain.mjs", "mint", "--rpc", &rpc])
        .args(&payers)
        .output()
        .unwrap();
    assert!(
        mint.status.success(),
        "{}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let provider = ProviderBuilder::new().connect_http(rpc.parse().unwrap());
    let upstream = mock_upstream().await;
    let disk = Disk::new(&dir.join("journal"));
    let journal_path = disk.dir.join("journal.db");
    let binary = env!("CARGO_BIN_EXE_x402-gateway").to_owned();

    // The standalone facilitator (phase 2).
    let fac_port = free_port();
    let fac_config = dir.join("facilitator.toml");
    std::fs::write(
        &fac_config,
        standalone_facilitator_config(
            &rpc,
            PAYEE,
            "settle_timeout = \"3s\"\nresolve_timeout = \"3s\"\nrpc_timeout = \"2s\"",
        ),
    )
    .unwrap();
    let mut facilitator = Proc {
        name: "facilitator".into(),
        argv: vec![
            binary.clone(),
            "facilitator".into(),
            "--config".into(),
            fac_config.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{fac_port}"),
        ],
        env: vec![("FACILITATOR_KEY".into(), FACILITATOR_KEY.into())],
        log: dir.join("facilitator.log"),
        child: None,
    };

    let gw_port = free_port();
    let gateway_config = |phase: u8| {
        let f = if phase == 1 {
            format!(
                "embedded = true\nrpc = {{ \"eip155:84532\" = \"{rpc}\" }}\nsigner_keys = [\"${{FACILITATOR_KEY}}\"]\nrpc_timeout = \"2s\""
            )
        } else {
            format!("url = \"http://127.0.0.1:{fac_port}\"\ntimeout = \"3s\"")
        };
        let path = dir.join(format!("gateway-{phase}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[server]
listen = "127.0.0.1:{gw_port}"
threads = 2
drain_timeout = "10s"
[upstream]
url = "{}"
read_timeout = "3s"
[journal]
path = "{}"
[chain]
rpc = {{ "eip155:84532" = "{rpc}" }}
[facilitator]
settle_timeout = "3s"
resolve_timeout = "3s"
{f}
[limits]
challenge_rate = "off"
failed_payment_rate = "off"
[payment]
pay_to = "{PAYEE}"
network = "base-sepolia"
max_timeout_seconds = 180
[[route]]
path = "/after/**"
price = "1000"
[[route]]
path = "/before/**"
price = "1000"
settlement = "before_upstream"
[[route]]
path = "/health"
price = "free"
"#,
                upstream.url(),
                journal_path.display()
            ),
        )
        .unwrap();
        path
    };
    let gateway = |phase: u8| Proc {
        name: "gateway".into(),
        argv: vec![
            binary.clone(),
            "run".into(),
            "--config".into(),
            gateway_config(phase).display().to_string(),
        ],
        env: vec![("FACILITATOR_KEY".into(), FACILITATOR_KEY.into())],
        log: dir.join("gateway.log"),
        child: None,
    };
    let base = Arc::new(Mutex::new(format!("http://127.0.0.1:{gw_port}")));
    let records = Arc::new(Records::default());
    let mut kills = 0;
    let mut kills_during_settle = 0;
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();

    for phase in [1u8, 2] {
        if phase == 2 {
            facilitator.start();
            wait_up(&format!("http://127.0.0.1:{fac_port}/supported")).await;
        }
        let mut gw = gateway(phase);
        gw.start();
        wait_up(&format!("http://127.0.0.1:{gw_port}/health")).await;
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = PAYER_KEYS
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let path = if i % 2 == 0 { "/after/x" } else { "/before/x" };
                tokio::spawn(client(
                    base.clone(),
                    key,
                    path,
                    stop.clone(),
                    records.clone(),
                    Duration::from_secs(60),
                ))
            })
            .collect();
        let end = x402_gateway::clock::instant() + Duration::from_secs(phase_secs);
        let gw = Arc::new(tokio::sync::Mutex::new(gw));
        // The kill driver: SIGKILL and restart the gateway every 0.7–2 s; every other time
        // right after a settlement was journaled (`settling`), i.e. while it is in flight.
        let killer = {
            let (gw, journal_path) = (gw.clone(), journal_path.clone());
            let mut rng = Rng(rng.next() | 1);
            tokio::spawn(async move {
                let (mut kills, mut during) = (0usize, 0usize);
                while x402_gateway::clock::instant() < end {
                    tokio::time::sleep(Duration::from_millis(rng.range(700, 2000))).await;
                    let wait_for_settling = rng.next() % 2 == 0;
                    let mut in_settle = false;
                    if wait_for_settling {
                        let until = x402_gateway::clock::instant() + Duration::from_millis(1500);
                        while x402_gateway::clock::instant() < until && !in_settle {
                            in_settle = settling(&journal_path) > 0;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                    let mut g = gw.lock().await;
                    in_settle |= settling(&journal_path) > 0;
                    g.kill();
                    kills += 1;
                    during += usize::from(in_settle);
                    tokio::time::sleep(Duration::from_millis(rng.range(20, 600))).await;
                    g.start();
                }
                (kills, during)
            })
        };
        while x402_gateway::clock::instant() < end {
            tokio::time::sleep(Duration::from_millis(rng.range(200, 1500))).await;
            let fault = rng.range(0, if phase == 1 { 6 } else { 8 });
            match fault {
                0 | 1 => {
                    // Interval mining: receipts outlast settle_timeout (3 s blocks).
                    let _: () = provider
                        .raw_request("evm_setAutomine".into(), (false,))
                        .await
                        .unwrap();
                    let _: () = provider
                        .raw_request("evm_setIntervalMining".into(), (3u64,))
                        .await
                        .unwrap();
                    tokio::time::sleep(Duration::from_millis(rng.range(2000, 7000))).await;
                    let _: () = provider
                        .raw_request("evm_setIntervalMining".into(), (0u64,))
                        .await
                        .unwrap();
                    let _: () = provider
                        .raw_request("evm_setAutomine".into(), (true,))
                        .await
                        .unwrap();
                    *faults.entry("interval mining (3 s blocks)").or_default() += 1;
                }
                2 => {
                    upstream.faults.down.store(true, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.range(500, 2500))).await;
                    upstream.faults.down.store(false, Ordering::SeqCst);
                    *faults.entry("upstream down").or_default() += 1;
                }
                3 => {
                    upstream
                        .faults
                        .stall_ms
                        .store(rng.range(1000, 5000), Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(rng.range(500, 3000))).await;
                    upstream.faults.stall_ms.store(0, Ordering::SeqCst);
                    *faults.entry("upstream stalled").or_default() += 1;
                }
                4 => {
                    // A disk that turned read-only: the gateway restarts onto it (a busy
                    // filesystem cannot be remounted under open files), serves free routes,
                    // refuses payments, and takes them again once it is writable.
                    let mut g = gw.lock().await;
                    g.kill();
                    kills += 1;
                    if disk.read_only(true) {
                        g.start();
                        drop(g);
                        tokio::time::sleep(Duration::from_millis(rng.range(1000, 3000))).await;
                        disk.read_only(false);
                        *faults.entry("journal disk read-only").or_default() += 1;
                    } else {
                        g.start();
                    }
                }
                5 => {
                    if disk.fill(true) {
                        tokio::time::sleep(Duration::from_millis(rng.range(500, 3000))).await;
                        disk.fill(false);
                        *faults.entry("journal disk full").or_default() += 1;
                    }
                }
                6 => {
                    facilitator.kill();
                    tokio::time::sleep(Duration::from_millis(rng.range(200, 2000))).await;
                    facilitator.start();
                    *faults.entry("facilitator SIGKILL + restart").or_default() += 1;
                }
                _ => {
                    facilitator.signal("-STOP");
                    tokio::time::sleep(Duration::from_millis(rng.range(500, 4000))).await;
                    facilitator.signal("-CONT");
                    *faults.entry("facilitator stalled (SIGSTOP)").or_default() += 1;
                }
            }
        }
        let (k, d) = killer.await.unwrap();
        kills += k;
        kills_during_settle += d;
        *faults.entry("gateway SIGKILL + restart").or_default() += k;
        let mut gw = Arc::try_unwrap(gw).ok().unwrap().into_inner();
        // Calm: no more faults; clients finish their open requests (retrying pending ones).
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.await.unwrap();
        }
        gw.kill();
        if phase == 2 {
            facilitator.kill();
        }
    }

    // A last gateway recovers whatever is still open, then every outcome is read.
    let _: String = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    let mut gw = gateway(1);
    gw.start();
    wait_up(&format!("http://127.0.0.1:{gw_port}/health")).await;
    let r = journal::open_reader(&journal_path).unwrap();
    let payers: BTreeSet<Address> = PAYER_KEYS
        .iter()
        .map(|k| k.parse::<PrivateKeySigner>().unwrap().address())
        .collect();
    // Waits until every authorization used on chain is recorded delivered or redeemable. A
    // payment never sent may stay `unknown` until its authorization expires (nothing can
    // prove it will not be mined before): only the ones on chain are waited for. Recovery
    // backs off (1, 2, 4, 8 s) and each RPC may take its timeout: up to a minute.
    let started = x402_gateway::clock::instant();
    loop {
        let used = authorizations_used(&provider, &payers).await;
        let recorded: HashMap<(Address, B256), JournalState> =
            journal::query(&r, &journal::Filter::default())
                .unwrap()
                .into_iter()
                .map(|e| ((e.key.from, e.key.nonce), e.state))
                .collect();
        let open = used
            .keys()
            .filter(|k| {
                !matches!(
                    recorded.get(*k),
                    Some(JournalState::Delivered | JournalState::Settled)
                )
            })
            .count();
        if open == 0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // === The proof ===
    // (payer, nonce) settled on chain → its transaction.
    let on_chain = authorizations_used(&provider, &payers).await;
    let entries = journal::query(&r, &journal::Filter::default()).unwrap();
    let by_key: HashMap<(Address, B256), &journal::Entry> = entries
        .iter()
        .map(|e| ((e.key.from, e.key.nonce), e))
        .collect();
    let requests = records.requests.lock().unwrap().clone();
    let mut c = Counts {
        requests: requests.len(),
        kills,
        kills_during_settle,
        settled: on_chain.len(),
        delivered: entries
            .iter()
            .filter(|e| e.state == JournalState::Delivered)
            .count(),
        redeemed: requests
            .iter()
            .filter(|l| l.served.is_some() && l.retried)
            .count(),
        answers_lost: requests.iter().filter(|l| l.answer_lost).count(),
        lost: 0,
        double: 0,
        served_unpaid: 0,
    };
    let mut problems = Vec::new();
    // An answer is cut only by a gateway killed between its durable delivery and the client.
    if c.answers_lost > c.kills {
        problems.push(format!(
            "{} answers lost to {} kills",
            c.answers_lost, c.kills
        ));
    }
    for l in &requests {
        if let (Some(tx), Some(nonce)) = (&l.served, l.served_nonce) {
            match on_chain.get(&(l.payer, nonce)) {
                Some(chain_tx) if chain_tx == tx => {}
                other => {
                    c.served_unpaid += 1;
                    problems.push(format!(
                        "served {}/{nonce} with receipt {tx}, chain says {other:?}",
                        l.payer
                    ));
                }
            }
        }
        let paid = l
            .nonces
            .iter()
            .filter(|n| on_chain.contains_key(&(l.payer, **n)))
            .count();
        if paid > 1 {
            c.double += 1;
            problems.push(format!(
                "{} paid {paid} times for one request: {:?}",
                l.payer, l.nonces
            ));
        }
    }
    for (key, tx) in &on_chain {
        match by_key.get(key) {
            Some(e) if matches!(e.state, JournalState::Delivered | JournalState::Settled) => {}
            other => {
                c.lost += 1;
                problems.push(format!(
                    "{}/{} settled in {tx} is neither delivered nor redeemable: journal {:?}",
                    key.0,
                    key.1,
                    other.map(|e| (e.state, e.reason.clone()))
                ));
            }
        }
    }
    eprintln!(
        "chaos: seed {seed}: requests {}, kills {} ({} during a settlement), settled {}, delivered {}, redeemed {}, answers cut by a kill {}, lost {}, double {}, served unpaid {}",
        c.requests, c.kills, c.kills_during_settle, c.settled, c.delivered, c.redeemed, c.answers_lost, c.lost, c.double, c.served_unpaid
    );
    eprintln!("chaos: faults {faults:?}");
    if !problems.is_empty() {
        // The journal's tmpfs goes away with the test: keep a copy beside the logs.
        let keep = dir.join("journal-copy");
        let _ = std::fs::create_dir_all(&keep);
        for f in std::fs::read_dir(&disk.dir).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with("journal.db") {
                let _ = std::fs::copy(f.path(), keep.join(f.file_name()));
            }
        }
    }
    eprintln!("chaos: logs in {}", dir.display());
    assert!(
        problems.is_empty(),
        "seed {seed} (CHAOS_SEED={seed} replays it):\n{}",
        problems.join("\n")
    );
    assert!(c.kills >= 20, "too few kills to mean anything: {}", c.kills);
    assert!(c.settled > 20, "too few payments settled: {}", c.settled);
}
