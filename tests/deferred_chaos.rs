//! Deferred settlement survives a crash on a real chain (anvil with Circle's real USDC): with
//! mining stopped, paid answers are released and their settlements queued or sent (pending in
//! the mempool); the gateway is SIGKILLed with the queue non-empty; mining resumes; a new
//! gateway recovers from the journal. Afterwards, from the chain: every released payment is
//! settled exactly once (one `AuthorizationUsed` per nonce, balances moved by exactly the sum),
//! and the journal records each delivered with its transaction.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::sol_types::{SolCall, SolEvent};
use common::*;
use x402_gateway::journal::{self, JournalState};
use x402_gateway::{client, protocol};

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const FACILITATOR_KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
/// Payments released before the crash.
const N: usize = 12;
/// $0.001 in USDC's atomic units.
const PRICE: u64 = 1000;

alloy::sol! {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    function balanceOf(address account) external view returns (uint256);
}

/// Who settles: the embedded facilitator (batching) or the standalone one over HTTP (one by
/// one, `concurrency` at a time).
#[derive(Clone, Copy, Debug)]
enum Settler {
    Batched,
    Remote(u16),
}

fn config(
    port: u16,
    admin: u16,
    upstream: &str,
    rpc: &str,
    journal: &Path,
    settler: Settler,
) -> String {
    let facilitator = match settler {
        Settler::Batched => format!(
            "embedded = true\nrpc = {{ \"eip155:84532\" = \"{rpc}\" }}\nsigner_keys = [\"${{FACILITATOR_KEY}}\"]\nrpc_timeout = \"2s\"\nbatch_max = 5"
        ),
        Settler::Remote(p) => format!("url = \"http://127.0.0.1:{p}\"\ntimeout = \"3s\""),
    };
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
threads = 2
drain_timeout = "30s"
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
url = "{upstream}"
[journal]
path = "{}"
[chain]
rpc = {{ "eip155:84532" = "{rpc}" }}
[facilitator]
{facilitator}
settle_timeout = "20s"
resolve_timeout = "1s"
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
max_timeout_seconds = 300
[payment.deferred]
max_per_payer = "$10"
max_total = "$10"
max_delay = "10s"
concurrency = 8
[[route]]
path = "/paid"
price = "$0.001"
settlement = "deferred"
"#,
        journal.display()
    )
}

fn spawn(config: &Path, log: &Path) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("FACILITATOR_KEY", FACILITATOR_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap(),
    )
}

/// Journal rows by state now.
fn rows(path: &Path, states: &[JournalState]) -> Vec<journal::Entry> {
    journal::open_reader(path)
        .ok()
        .and_then(|r| {
            journal::query(
                &r,
                &journal::Filter {
                    states: states.to_vec(),
                    ..journal::Filter::default()
                },
            )
            .ok()
        })
        .unwrap_or_default()
}

/// Waits until `done` holds (polling the journal or the chain), or panics with the log.
async fn until(what: &str, log: &Path, mut done: impl FnMut() -> bool) {
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(60);
    while !done() {
        assert!(
            x402_gateway::clock::instant() < deadline,
            "{what} did not happen; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn usdc_balance(provider: &impl Provider, who: Address) -> U256 {
    let tx = TransactionRequest::default()
        .to(USDC.parse().unwrap())
        .input(balanceOfCall { account: who }.abi_encode().into());
    let out = provider.call(tx).await.unwrap();
    balanceOfCall::abi_decode_returns(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_owed_batched_settlements_loses_nothing_and_settles_each_once() {
    crash_and_recover(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_owed_remote_settlements_loses_nothing_and_settles_each_once() {
    crash_and_recover(true).await;
}

/// The standalone facilitator (embedded on the chain), on `port`.
fn standalone(rpc: &str, port: u16, dir: &Path) -> KillOnDrop {
    let conf = dir.join("facilitator.toml");
    std::fs::write(
        &conf,
        standalone_facilitator_config(rpc, PAY_TO, "settle_timeout = \"30s\""),
    )
    .unwrap();
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["facilitator", "--config"])
            .arg(&conf)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("FACILITATOR_KEY", FACILITATOR_KEY)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("facilitator.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

async fn crash_and_recover(remote: bool) {
    x402_gateway::verify::facilitator::install_crypto_provider();
    let chain = Chain::start("100");
    let provider = ProviderBuilder::new().connect_http(chain.rpc.parse().unwrap());
    let upstream = mock_upstream().await;
    let journal_path = scratch_file("deferred-chaos.db");
    let (port, admin) = (free_port(), free_port());
    let conf = journal_path.with_file_name("deferred-chaos.toml");
    let dir = journal_path.parent().unwrap().to_owned();
    let (settler, _facilitator) = if remote {
        let p = free_port();
        let f = standalone(&chain.rpc, p, &dir);
        get_when_up(&format!("http://127.0.0.1:{p}/supported")).await;
        (Settler::Remote(p), Some(f))
    } else {
        (Settler::Batched, None)
    };
    std::fs::write(
        &conf,
        config(
            port,
            admin,
            &upstream.url(),
            &chain.rpc,
            &journal_path,
            settler,
        ),
    )
    .unwrap();
    let log = journal_path.with_file_name("deferred-chaos.log");
    let payer_addr = payer().address();
    let pay_to: Address = PAY_TO.parse().unwrap();
    let (payer_before, payee_before) = (
        usdc_balance(&provider, payer_addr).await,
        usdc_balance(&provider, pay_to).await,
    );

    let mut first = spawn(&conf, &log);
    let url = format!("http://127.0.0.1:{port}/paid");
    let resp = get_when_up(&url).await;
    assert_eq!(resp.status(), 402);

    // Nothing is mined from now on: settlements sent stay pending.
    let _: bool = provider
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap_or(true);
    let mut nonces = BTreeSet::new();
    for _ in 0..N {
        let resp = http().get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 402);
        let required = decode_required(&resp);
        let nonce = client::random_nonce();
        let header = client::sign_v2(&payer(), &required, 0, now(), nonce).unwrap();
        nonces.insert(nonce);
        let resp = http()
            .get(&url)
            .header(protocol::PAYMENT_SIGNATURE, header)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.headers());
        assert_eq!(resp.headers()["x-payment-status"], "queued");
    }
    // Every released payment is owed in the journal (durable before its answer), and at
    // least one settlement was sent (pending in the mempool) when the process dies.
    let owed = [JournalState::Queued, JournalState::Settling];
    assert_eq!(rows(&journal_path, &owed).len(), N);
    until("a settlement sent", &log, || {
        !rows(&journal_path, &[JournalState::Settling]).is_empty()
    })
    .await;
    let settling = rows(&journal_path, &[JournalState::Settling]).len();
    let queued = rows(&journal_path, &[JournalState::Queued]).len();
    eprintln!("at SIGKILL ({settler:?}): {settling} settling, {queued} queued");
    if remote {
        // 8 at a time ([payment.deferred] concurrency): the rest wait in the queue.
        assert!(queued > 0, "the queue is empty at the crash");
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    drop(first);
    // `settling` is written without waiting for it: a crash may leave a payment whose
    // settlement was sent recorded `queued`. Rewind some so: recovery settles them again, and
    // the chain (one transfer per EIP-3009 nonce) must keep them charged once.
    let rewound = rusqlite::Connection::open(&journal_path)
        .unwrap()
        .execute(
            "UPDATE payments SET state = 'queued' WHERE id IN \
             (SELECT id FROM payments WHERE state = 'settling' ORDER BY id LIMIT 3)",
            [],
        )
        .unwrap();
    assert!(rewound > 0);

    let used = Filter::new()
        .address(USDC.parse::<Address>().unwrap())
        .event_signature(AuthorizationUsed::SIGNATURE_HASH)
        .topic1(B256::left_padding_from(payer_addr.as_slice()))
        .from_block(0);
    assert!(
        provider.get_logs(&used).await.unwrap().is_empty(),
        "nothing is mined yet"
    );
    // Mining resumes: the transactions the dead process sent land.
    let _: bool = provider
        .raw_request("evm_setAutomine".into(), (true,))
        .await
        .unwrap_or(true);
    let _: String = provider.raw_request("evm_mine".into(), ()).await.unwrap();

    let mut second = spawn(&conf, &log);
    assert_eq!(get_when_up(&url).await.status(), 402);
    until("every owed payment delivered", &log, || {
        rows(&journal_path, &[JournalState::Delivered]).len() == N
    })
    .await;
    let delivered = rows(&journal_path, &[JournalState::Delivered]);
    assert!(delivered
        .iter()
        .all(|e| e.transaction.is_some() && e.released));
    assert!(rows(
        &journal_path,
        &[JournalState::Failed, JournalState::Unknown]
    )
    .is_empty());

    // The chain: one AuthorizationUsed per released payment, no other, none twice.
    let logs = provider.get_logs(&used).await.unwrap();
    let on_chain: Vec<B256> = logs
        .iter()
        .map(|l| AuthorizationUsed::decode_log(&l.inner).unwrap().nonce)
        .collect();
    let unique: BTreeSet<B256> = on_chain.iter().copied().collect();
    assert_eq!(on_chain.len(), N, "settlements on chain");
    assert_eq!(unique, nonces, "each released payment settled, once");
    let total = U256::from(PRICE * N as u64);
    assert_eq!(usdc_balance(&provider, pay_to).await - payee_before, total);
    assert_eq!(
        payer_before - usdc_balance(&provider, payer_addr).await,
        total
    );

    // Nothing owed: a graceful stop exits at once, cleanly.
    let pid = second.0.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = second.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// `x402-gateway journal ARGS… --config CONFIG`; returns stdout.
fn journal_cmd(conf: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
        .arg("journal")
        .args(args)
        .arg("--config")
        .arg(conf)
        .env("FACILITATOR_KEY", FACILITATOR_KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "journal {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A payer with no funds, served deferred under local verification (the caps bound this):
/// its settlement is refused, its authorization expires unused on chain, and it becomes an
/// unpaid delivery. From the first refusal on, the payer's requests are settled first (and so
/// refused: no content without payment); `journal clear` lets it be deferred again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfunded_payer_is_an_unpaid_delivery_settled_first_until_cleared() {
    x402_gateway::verify::facilitator::install_crypto_provider();
    let chain = Chain::start("100");
    let provider = ProviderBuilder::new().connect_http(chain.rpc.parse().unwrap());
    let upstream = mock_upstream().await;
    let journal_path = scratch_file("unpaid.db");
    let (port, admin) = (free_port(), free_port());
    let conf = journal_path.with_file_name("unpaid.toml");
    let text = config(
        port,
        admin,
        &upstream.url(),
        &chain.rpc,
        &journal_path,
        Settler::Batched,
    ) + "[verification]\nmode = \"local\"\n";
    std::fs::write(&conf, text).unwrap();
    let log = journal_path.with_file_name("unpaid.log");
    let _gw = spawn(&conf, &log);
    let url = format!("http://127.0.0.1:{port}/paid");
    assert_eq!(get_when_up(&url).await.status(), 402);
    let broke = alloy::signers::local::PrivateKeySigner::random();
    let pay = |signer: alloy::signers::local::PrivateKeySigner| {
        let url = url.clone();
        async move {
            let resp = http().get(&url).send().await.unwrap();
            let required = decode_required(&resp);
            let header =
                client::sign_v2(&signer, &required, 0, now(), client::random_nonce()).unwrap();
            http()
                .get(&url)
                .header(protocol::PAYMENT_SIGNATURE, header)
                .send()
                .await
                .unwrap()
        }
    };
    let first = pay(broke.clone()).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["x-payment-status"], "queued");
    // Refused on chain: still open (unused, valid), so submitted again (the nonce admits one
    // transfer) until shortly before validBefore; the payer is settled first meanwhile.
    until("the refusal", &log, || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("its authorization is still open: submitting it again")
    })
    .await;
    let second = pay(broke.clone()).await;
    assert_eq!(second.status(), 402, "settled first, and it cannot pay");
    assert!(second.headers().get("x-payment-status").is_none());
    // Its authorization expires unused: a failed, unpaid delivery.
    let _: serde_json::Value = provider
        .raw_request("evm_increaseTime".into(), (400u64,))
        .await
        .unwrap();
    let _: String = provider.raw_request("evm_mine".into(), ()).await.unwrap();
    until("the unpaid delivery", &log, || {
        rows(&journal_path, &[JournalState::Failed])
            .iter()
            .any(|e| e.released)
    })
    .await;
    let unpaid = journal_cmd(&conf, &["unpaid"]);
    assert!(
        unpaid.contains(&broke.address().to_checksum(None)),
        "{unpaid}"
    );
    // Other payers are still deferred.
    let other = pay(payer()).await;
    assert_eq!(other.headers()["x-payment-status"], "queued");
    // Cleared: deferred again (within a maintenance round).
    let cleared = journal_cmd(&conf, &["clear", "--payer", &broke.address().to_string()]);
    assert!(cleared.contains("cleared 1"), "{cleared}");
    assert!(journal_cmd(&conf, &["unpaid"]).contains("no unpaid deliveries"));
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(20);
    loop {
        let resp = pay(broke.clone()).await;
        if resp.headers().get("x-payment-status").is_some() {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(
            x402_gateway::clock::instant() < deadline,
            "still settled first after clear"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
