//! Batched settlement on a real local chain (anvil, Circle's USDC, our `Aggregate3` at the
//! Multicall3 address; `scripts/chain.sh`): many payments in one `aggregate3` transaction, each
//! answered from its own logs; refused authorizations fail alone; batches of one signer
//! pipeline (the next is sent before the previous is mined). Every claim is read back from the
//! chain: transactions per block, balances, `authorizationState`. Also measures gas per payment
//! (printed; run with `--nocapture` to see it).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use common::*;
use x402_gateway::config::{BatchConfig, EmbeddedConfig, Secret};
use x402_gateway::facilitator::EmbeddedFacilitator;
use x402_gateway::journal::reconcile::{Outcome, Reconciler};
use x402_gateway::journal::{Entry, JournalState};
use x402_gateway::ledger::ReplayKey;
use x402_gateway::protocol::{ErrorReason, Network, PaymentPayload, SettleResponse};
use x402_gateway::verify::Facilitator;

alloy::sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    function balanceOf(address account) external view returns (uint256);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
}

const USDC: &str = "0x036CbD53842c5426634e7929541eC2318f3dCF7e";
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Atomic USDC per payment (0.001 USDC).
const PRICE: u64 = 1000;

/// Keys for this test only (not dev accounts, so no other helper sends from them): payers get
/// USDC, signers get gas money from anvil.
fn key(byte: u8) -> PrivateKeySigner {
    PrivateKeySigner::from_bytes(&B256::repeat_byte(byte)).unwrap()
}

fn usdc() -> Address {
    USDC.parse().unwrap()
}

fn pay_to() -> Address {
    PAY_TO.parse().unwrap()
}

struct Env {
    /// Stops anvil when dropped.
    _chain: Chain,
    rpc: String,
    provider: DynProvider,
}

/// A fresh chain with `payers` funded with 10 USDC each and `signers` with 100 ETH each.
async fn env(payers: &[&PrivateKeySigner], signers: &[&PrivateKeySigner]) -> Env {
    let chain = Chain::start("1");
    let rpc = chain.rpc.clone();
    let mut mint = vec!["mint".to_owned()];
    mint.extend(payers.iter().map(|p| format!("{}=10", p.address())));
    devchain(&rpc, &mint.iter().map(String::as_str).collect::<Vec<_>>());
    http(); // installs the TLS crypto provider
    let provider = ProviderBuilder::new()
        .connect_http(rpc.parse().unwrap())
        .erased();
    for s in signers {
        let wei = U256::from(100u64) * U256::from(10u64).pow(U256::from(18));
        let _: serde_json::Value = provider
            .raw_request("anvil_setBalance".into(), (s.address(), wei))
            .await
            .unwrap();
    }
    Env {
        _chain: chain,
        rpc,
        provider,
    }
}

async fn facilitator(
    env: &Env,
    signers: &[&PrivateKeySigner],
    batch: BatchConfig,
) -> Arc<EmbeddedFacilitator> {
    let keys = signers
        .iter()
        .map(|s| {
            Secret::new(format!(
                "0x{}",
                alloy::primitives::hex::encode(s.to_bytes())
            ))
        })
        .collect();
    Arc::new(
        EmbeddedFacilitator::connect(
            &EmbeddedConfig {
                rpc: vec![(
                    Network::parse("eip155:84532").unwrap(),
                    Secret::new(env.rpc.clone()),
                )],
                signer_keys: keys,
                rpc_timeout: Duration::from_secs(10),
                batch,
            },
            Duration::from_secs(60),
        )
        .await
        .unwrap(),
    )
}

fn batching(max: usize, window: Duration) -> BatchConfig {
    BatchConfig {
        max,
        window,
        ..BatchConfig::default()
    }
}

/// A facilitator request for a freshly signed payment of `PRICE` from `payer` to `PAY_TO`, and
/// its nonce.
fn request(payer: &PrivateKeySigner) -> (String, B256) {
    let nonce = x402_gateway::client::random_nonce();
    (facilitator_request(payer, &PRICE.to_string(), nonce), nonce)
}

/// Settles every body concurrently through `settle_deferred`; answers in order.
async fn settle_all(f: &Arc<EmbeddedFacilitator>, bodies: &[String]) -> Vec<SettleResponse> {
    let tasks: Vec<_> = bodies
        .iter()
        .map(|b| {
            let (f, b) = (Arc::clone(f), b.clone());
            tokio::spawn(async move { f.settle_deferred(&b).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap().unwrap());
    }
    out
}

async fn view(p: &DynProvider, input: Vec<u8>) -> Bytes {
    let tx = TransactionRequest::default()
        .with_to(usdc())
        .with_input(Bytes::from(input));
    p.call(tx).await.unwrap()
}

async fn balance(p: &DynProvider, who: Address) -> U256 {
    balanceOfCall::abi_decode_returns(&view(p, balanceOfCall { account: who }.abi_encode()).await)
        .unwrap()
}

async fn used(p: &DynProvider, from: Address, nonce: B256) -> bool {
    let input = authorizationStateCall {
        authorizer: from,
        nonce,
    }
    .abi_encode();
    authorizationStateCall::abi_decode_returns(&view(p, input).await).unwrap()
}

/// Every transaction mined after block `after`.
async fn transactions_since(p: &DynProvider, after: u64) -> Vec<B256> {
    let head = p.get_block_number().await.unwrap();
    let mut out = Vec::new();
    for n in after + 1..=head {
        let block = p.get_block_by_number(n.into()).await.unwrap().unwrap();
        out.extend(block.transactions.hashes());
    }
    out
}

fn tx_of(r: &SettleResponse) -> B256 {
    r.transaction.as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_payments_settle_in_two_batch_transactions() {
    let payers = [key(0x11), key(0x12), key(0x13)];
    let signers = [key(0x51), key(0x52)];
    let env = env(
        &payers.iter().collect::<Vec<_>>(),
        &signers.iter().collect::<Vec<_>>(),
    )
    .await;
    // A window long enough that all 60 are queued before the second batch's window ends.
    let f = facilitator(
        &env,
        &signers.iter().collect::<Vec<_>>(),
        batching(50, Duration::from_secs(6)),
    )
    .await;
    assert!(f.batches());
    let p = &env.provider;
    let before: Vec<U256> = {
        let mut v = Vec::new();
        for a in payers.iter().map(|k| k.address()).chain([pay_to()]) {
            v.push(balance(p, a).await);
        }
        v
    };
    let start = p.get_block_number().await.unwrap();
    let signed: Vec<(usize, String, B256)> = (0..60)
        .map(|i| {
            let (body, nonce) = request(&payers[i % 3]);
            (i % 3, body, nonce)
        })
        .collect();
    let bodies: Vec<String> = signed.iter().map(|(_, b, _)| b.clone()).collect();
    let answers = settle_all(&f, &bodies).await;

    let mut per_tx: BTreeMap<B256, usize> = BTreeMap::new();
    for a in &answers {
        assert_eq!(a.success, Some(true), "{a:?}");
        *per_tx.entry(tx_of(a)).or_default() += 1;
    }
    let mut sizes: Vec<usize> = per_tx.values().copied().collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [10, 50], "batch sizes by transaction: {per_tx:?}");
    let mined: HashSet<B256> = transactions_since(p, start).await.into_iter().collect();
    let answered: HashSet<B256> = per_tx.keys().copied().collect();
    assert_eq!(
        mined, answered,
        "exactly the two batch transactions were mined"
    );
    for h in &answered {
        let r = p.get_transaction_receipt(*h).await.unwrap().unwrap();
        assert!(r.status());
        assert_eq!(r.to, Some(BatchConfig::MULTICALL3));
    }

    for (who, _, nonce) in &signed {
        assert!(used(p, payers[*who].address(), *nonce).await);
    }
    for (i, k) in payers.iter().enumerate() {
        assert_eq!(
            balance(p, k.address()).await,
            before[i] - U256::from(20 * PRICE),
            "payer {i}"
        );
    }
    assert_eq!(
        balance(p, pay_to()).await,
        before[3] + U256::from(60 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_authorizations_fail_alone_and_the_rest_settle_in_one_transaction() {
    let payer = key(0x21);
    let broke = key(0x22); // never funded
    let signer = key(0x53);
    let env = env(&[&payer], &[&signer]).await;
    let f = facilitator(&env, &[&signer], batching(7, Duration::from_secs(3))).await;
    let p = &env.provider;

    // An authorization settled already (the single path: batching of settle() is off).
    let (spent, _) = request(&payer);
    let first = f.settle(&spent).await.unwrap();
    assert_eq!(first.success, Some(true), "{first:?}");

    let start = p.get_block_number().await.unwrap();
    let paid_before = balance(p, pay_to()).await;
    let (poor, poor_nonce) = request(&broke);
    let mut bodies = vec![spent, poor];
    let mut good = Vec::new();
    for _ in 0..5 {
        let (b, n) = request(&payer);
        bodies.push(b);
        good.push(n);
    }
    // Seven queued: the batch is flushed at batch_max, at once.
    let answers = settle_all(&f, &bodies).await;
    assert_eq!(answers[0].success, Some(false));
    assert_eq!(
        answers[0].error_reason.as_deref(),
        Some(ErrorReason::NonceAlreadyUsed.as_str()),
        "{:?}",
        answers[0]
    );
    assert_eq!(answers[1].success, Some(false));
    assert_eq!(
        answers[1].error_reason.as_deref(),
        Some(ErrorReason::InsufficientBalance.as_str()),
        "{:?}",
        answers[1]
    );
    let txs: HashSet<B256> = answers[2..].iter().map(tx_of).collect();
    assert!(
        answers[2..].iter().all(|a| a.success == Some(true)),
        "{answers:?}"
    );
    assert_eq!(txs.len(), 1, "the five good payments share one transaction");
    let mined = transactions_since(p, start).await;
    assert_eq!(mined.len(), 1, "one transaction mined: {mined:?}");
    assert!(txs.contains(&mined[0]));
    assert!(!used(p, broke.address(), poor_nonce).await);
    for n in good {
        assert!(used(p, payer.address(), n).await);
    }
    assert_eq!(
        balance(p, pay_to()).await,
        paid_before + U256::from(5 * PRICE)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_of_one_signer_are_in_flight_together() {
    let payer = key(0x31);
    let signer = key(0x54);
    let env = env(&[&payer], &[&signer]).await;
    let f = facilitator(&env, &[&signer], batching(5, Duration::from_secs(3))).await;
    let p = &env.provider;
    // Nothing is mined until both batches were sent.
    let _: serde_json::Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let sent_before = p.get_transaction_count(signer.address()).await.unwrap();
    let bodies: Vec<String> = (0..10).map(|_| request(&payer).0).collect();
    let settling = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { settle_all(&f, &bodies).await })
    };
    // Both flushed at batch_max: wait (bounded) until the signer has two transactions pending.
    let mut polls = 0;
    while p
        .get_transaction_count(signer.address())
        .pending()
        .await
        .unwrap()
        < sent_before + 2
    {
        polls += 1;
        assert!(
            polls < 1000,
            "two batch transactions were never pending together"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let answers = settling.await.unwrap();
    assert!(
        answers.iter().all(|a| a.success == Some(true)),
        "{answers:?}"
    );
    let txs: HashSet<B256> = answers.iter().map(tx_of).collect();
    assert_eq!(txs.len(), 2);
    let mut nonces = Vec::new();
    let mut blocks = HashSet::new();
    for h in &txs {
        let tx = p.get_transaction_by_hash(*h).await.unwrap().unwrap();
        let r = p.get_transaction_receipt(*h).await.unwrap().unwrap();
        assert_eq!(r.from, signer.address());
        nonces.push(alloy::consensus::Transaction::nonce(&tx));
        blocks.insert(r.block_number.unwrap());
    }
    nonces.sort_unstable();
    assert_eq!(nonces, [sent_before, sent_before + 1], "consecutive nonces");
    assert_eq!(
        blocks.len(),
        1,
        "both mined in the one block mined after both were sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_a_hundred_costs_less_gas_per_payment_than_single_transfers() {
    let payers = [key(0x41), key(0x42), key(0x43), key(0x44)];
    let signer = key(0x55);
    let env = env(&payers.iter().collect::<Vec<_>>(), &[&signer]).await;
    let f = facilitator(&env, &[&signer], batching(100, Duration::from_secs(5))).await;
    let p = &env.provider;

    let bodies: Vec<String> = (0..100).map(|i| request(&payers[i % 4]).0).collect();
    let answers = settle_all(&f, &bodies).await;
    assert!(
        answers.iter().all(|a| a.success == Some(true)),
        "{answers:?}"
    );
    let txs: HashSet<B256> = answers.iter().map(tx_of).collect();
    assert_eq!(txs.len(), 1, "one transaction for the hundred");
    let batch = p
        .get_transaction_receipt(*txs.iter().next().unwrap())
        .await
        .unwrap()
        .unwrap()
        .gas_used;

    // Single transfers (batching of settle() is off), in the same warm state: payer and
    // recipient balances non-zero, a fresh authorization nonce each.
    let mut single = Vec::new();
    for k in &payers {
        let r = f.settle(&request(k).0).await.unwrap();
        assert_eq!(r.success, Some(true), "{r:?}");
        let receipt = p.get_transaction_receipt(tx_of(&r)).await.unwrap().unwrap();
        assert_eq!(
            receipt.to,
            Some(usdc()),
            "the single path calls the token itself"
        );
        single.push(receipt.gas_used);
    }
    let single = single.iter().sum::<u64>() / single.len() as u64;
    let per = batch / 100;
    println!(
        "gas: single transferWithAuthorization {single} per payment; batch of 100 via aggregate3 {batch} in all, {per} per payment ({:.0}% of single)",
        per as f64 * 100.0 / single as f64
    );
    assert!(per < single, "batched {per} vs single {single}");
}

/// Waits (bounded) until `signer` has `n` more transactions pending than `base`.
async fn until_pending(p: &DynProvider, signer: Address, base: u64, n: u64) {
    let mut polls = 0;
    while p.get_transaction_count(signer).pending().await.unwrap() < base + n {
        polls += 1;
        assert!(polls < 1000, "the batch transaction was never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_front_run_after_simulation_fails_alone_from_its_missing_log() {
    let payer = key(0x61);
    let (signer, rival) = (key(0x56), key(0x57));
    let env = env(&[&payer], &[&signer, &rival]).await;
    let f = facilitator(&env, &[&signer], batching(3, Duration::from_secs(3))).await;
    let p = &env.provider;
    let _: serde_json::Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let base = p.get_transaction_count(signer.address()).await.unwrap();
    let bodies: Vec<String> = (0..3).map(|_| request(&payer).0).collect();
    let settling = {
        let (f, bodies) = (Arc::clone(&f), bodies.clone());
        tokio::spawn(async move { settle_all(&f, &bodies).await })
    };
    // The batch passed simulation and is in the mempool; someone else submits the first
    // authorization with a higher tip, so it runs first in the next block.
    until_pending(p, signer.address(), base, 1).await;
    let v: serde_json::Value = serde_json::from_str(&bodies[0]).unwrap();
    let payload = PaymentPayload::from_json(v["paymentPayload"].to_string().as_bytes()).unwrap();
    let x402_gateway::scheme::Authorized::Exact(payload) =
        x402_gateway::scheme::Authorized::decode(&payload).unwrap();
    let a = &payload.authorization;
    let input = transferWithAuthorizationCall {
        from: a.from,
        to: a.to,
        value: a.value,
        validAfter: U256::from(a.valid_after),
        validBefore: U256::from(a.valid_before),
        nonce: a.nonce,
        signature: payload.signature.clone(),
    }
    .abi_encode();
    let gwei = 1_000_000_000u128;
    let rival_provider = ProviderBuilder::new()
        .wallet(alloy::network::EthereumWallet::from(rival.clone()))
        .connect_http(env.rpc.parse().unwrap());
    let front = rival_provider
        .send_transaction(
            TransactionRequest::default()
                .with_to(usdc())
                .with_input(Bytes::from(input))
                .with_gas_limit(200_000)
                .with_max_fee_per_gas(500 * gwei)
                .with_max_priority_fee_per_gas(400 * gwei),
        )
        .await
        .unwrap();
    let front = *front.tx_hash();
    let _: serde_json::Value = p.raw_request("evm_mine".into(), ()).await.unwrap();
    let answers = settling.await.unwrap();

    assert_eq!(answers[0].success, Some(false), "{:?}", answers[0]);
    assert_eq!(
        answers[0].error_reason.as_deref(),
        Some(ErrorReason::NonceAlreadyUsed.as_str()),
        "re-simulated reason: {:?}",
        answers[0]
    );
    let batch_tx = tx_of(&answers[1]);
    assert!(
        answers[1..].iter().all(|a| a.success == Some(true)),
        "{answers:?}"
    );
    assert_eq!(tx_of(&answers[2]), batch_tx);
    assert_eq!(
        tx_of(&answers[0]),
        batch_tx,
        "answered from the mined batch, not from the simulation"
    );
    let front_r = p.get_transaction_receipt(front).await.unwrap().unwrap();
    let batch_r = p.get_transaction_receipt(batch_tx).await.unwrap().unwrap();
    assert!(front_r.status() && batch_r.status());
    assert!(front_r.transaction_index < batch_r.transaction_index);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sync_batch_window_per_request_settlements_share_a_transaction() {
    let payer = key(0x71);
    let signer = key(0x58);
    let env = env(&[&payer], &[&signer]).await;
    let sync = BatchConfig {
        max: 4,
        window: Duration::from_secs(3),
        // The batch closes when the 4th arrives: a long window costs nothing, and 4 tasks
        // scheduled late on a loaded machine still share it.
        sync_window: Duration::from_secs(5),
        ..BatchConfig::default()
    };
    let f = facilitator(&env, &[&signer], sync).await;
    let p = &env.provider;
    let start = p.get_block_number().await.unwrap();
    let bodies: Vec<String> = (0..4).map(|_| request(&payer).0).collect();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|b| {
            let f = Arc::clone(&f);
            tokio::spawn(async move { f.settle(&b).await.unwrap() })
        })
        .collect();
    let mut txs = HashSet::new();
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.success, Some(true), "{a:?}");
        txs.insert(tx_of(&a));
    }
    assert_eq!(txs.len(), 1);
    assert_eq!(transactions_since(p, start).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_reads_each_payment_of_a_batch_transaction() {
    let payer = key(0x81);
    let signer = key(0x59);
    let env = env(&[&payer], &[&signer]).await;
    let f = facilitator(&env, &[&signer], batching(4, Duration::from_secs(3))).await;
    let p = &env.provider;
    let from_block = p.get_block_number().await.unwrap();
    let signed: Vec<(String, B256)> = (0..4).map(|_| request(&payer)).collect();
    let bodies: Vec<String> = signed.iter().map(|(b, _)| b.clone()).collect();
    let answers = settle_all(&f, &bodies).await;
    assert!(
        answers.iter().all(|a| a.success == Some(true)),
        "{answers:?}"
    );
    let batch_tx = tx_of(&answers[0]);

    let network = Network::parse("eip155:84532").unwrap();
    let reconciler = Reconciler::new(
        &[(network, Secret::new(env.rpc.clone()))],
        None,
        Duration::from_secs(10),
    )
    .unwrap();
    let entry = |nonce: B256, body: &str, transaction: Option<String>, amount: u64| Entry {
        id: 1,
        key: ReplayKey {
            chain_id: 84532,
            asset: usdc(),
            from: payer.address(),
            nonce,
        },
        pay_to: pay_to(),
        amount: U256::from(amount),
        network: "eip155:84532".into(),
        version: 2,
        route: "/x".into(),
        resource: "http://x/y".into(),
        request: body.to_owned(),
        valid_before: now() + 300,
        state: JournalState::Settling,
        transaction,
        reason: None,
        from_block: Some(from_block),
        created_at: 0,
        updated_at: 0,
        released: false,
    };
    for (body, nonce) in &signed {
        // From the hash the facilitator answered, and (pending: no hash kept) from the logs.
        for transaction in [Some(batch_tx.to_string()), None] {
            let o = reconciler
                .read(&entry(*nonce, body, transaction, PRICE))
                .await;
            assert_eq!(
                o,
                Outcome::Settled {
                    transaction: batch_tx.to_string()
                }
            );
        }
        // The same authorization with another amount did not pay us that.
        let o = reconciler
            .read(&entry(*nonce, body, Some(batch_tx.to_string()), PRICE + 1))
            .await;
        assert_ne!(
            o,
            Outcome::Settled {
                transaction: batch_tx.to_string()
            }
        );
    }
}

/// Runs `node devchain.mjs ARGS… --rpc RPC`; returns its stdout.
fn devchain(rpc: &str, args: &[&str]) -> String {
    let out = std::process::Command::new("node")
        .current_dir(format!("{ROOT}/tools/node"))
        .arg("devchain.mjs")
        .args(args)
        .args(["--rpc", rpc])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// One hostile payer cannot fail the others: a smart-contract wallet whose EIP-1271
/// `isValidSignature` burns all but a little of the gas it gets (`contracts/GasBurningWallet.sol`)
/// pays in one batch with 20 honest payments, through Multicall3 itself (its published
/// bytecode, at the canonical address, in place of the project's stand-in), after a batch that
/// taught the facilitator the gas per payment. `aggregate3` gives each call what the calls
/// before it left, so the calls after the burner's starve (or the whole batch runs out of gas);
/// every honest payment must still end settled, none answered as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gas_burning_payer_contract_cannot_fail_the_honest_payments_of_its_batch() {
    let payers = [key(0x31), key(0x32), key(0x33), key(0x34)];
    let signer = key(0x5a);
    let env = env(&payers.iter().collect::<Vec<_>>(), &[&signer]).await;
    let placed = devchain(&env.rpc, &["multicall3"]);
    assert!(placed.starts_with("Multicall3 at"), "{placed}");
    let burner: Address = devchain(&env.rpc, &["burner"]).parse().unwrap();
    devchain(&env.rpc, &["mint", &format!("{burner}=10")]);
    let f = facilitator(&env, &[&signer], batching(21, Duration::from_secs(3))).await;
    let p = &env.provider;
    // A batch that settles every payment first: later batches' gas comes from what it used per
    // payment (not from the node's estimate, which runs the burner too).
    let warm: Vec<String> = (0..5).map(|i| request(&payers[i % 4]).0).collect();
    for a in settle_all(&f, &warm).await {
        assert_eq!(a.success, Some(true), "{a:?}");
    }
    let paid_before = balance(p, pay_to()).await;
    let start = p.get_block_number().await.unwrap();

    // The burner's payment first in the batch: every honest call comes after it.
    let (body, burner_nonce) = request(&key(0x35));
    let mut hostile: serde_json::Value = serde_json::from_str(&body).unwrap();
    let payload = &mut hostile["paymentPayload"]["payload"];
    payload["authorization"]["from"] = serde_json::json!(burner.to_checksum(None));
    // Any signature longer than 65 bytes goes to the wallet's isValidSignature.
    payload["signature"] = serde_json::json!(format!("0x{}", "11".repeat(96)));
    let hostile = {
        let (f, body) = (Arc::clone(&f), hostile.to_string());
        tokio::spawn(async move { f.settle_deferred(&body).await.unwrap() })
    };
    let mut polls = 0;
    while f.waiting_in_batches() < 1 {
        polls += 1;
        assert!(polls < 100_000, "the hostile payment was never queued");
        tokio::task::yield_now().await;
    }
    let mut bodies = Vec::new();
    let mut honest = Vec::new();
    for i in 0..20 {
        let (b, n) = request(&payers[i % payers.len()]);
        bodies.push(b);
        honest.push((payers[i % payers.len()].address(), n));
    }
    let answers = settle_all(&f, &bodies).await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a.success, Some(true), "honest payment {i}: {a:?}");
    }
    let hostile = hostile.await.unwrap();
    for (from, nonce) in &honest {
        assert!(used(p, *from, *nonce).await, "{from}/{nonce} not settled");
    }
    assert!(balance(p, pay_to()).await >= paid_before + U256::from(20 * PRICE));
    let txs = transactions_since(p, start).await;
    let mut shape = Vec::new();
    for h in &txs {
        let r = p.get_transaction_receipt(*h).await.unwrap().unwrap();
        let payments = r
            .inner
            .logs()
            .iter()
            .filter(|l| {
                use alloy::sol_types::SolEvent;
                l.topic0()
                    == Some(&x402_gateway::scheme::exact::proof::AuthorizationUsed::SIGNATURE_HASH)
            })
            .count();
        shape.push(format!(
            "{} (status {}, gas {}, {payments} payments)",
            if r.to == Some(BatchConfig::MULTICALL3) {
                "batch"
            } else {
                "single"
            },
            r.status(),
            r.gas_used
        ));
    }
    eprintln!(
        "gas-burning payer: its own answer {:?} (used on chain: {}); transactions: {}",
        hostile.success,
        used(p, burner, burner_nonce).await,
        shape.join("; ")
    );
}

/// A node that silently drops a settlement transaction (a mempool eviction, a restarted node)
/// must not wedge the signer: the dropped transaction is sent again (same bytes, same hash), and
/// the next payment's transaction, with the next nonce, is not stuck behind a gap forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_settlement_transaction_is_sent_again_and_wedges_nothing() {
    let payer = key(0x71);
    let signer = key(0x58);
    let env = env(&[&payer], &[&signer]).await;
    // Single transfers (no batching), waiting up to 60 s for a receipt.
    let f = facilitator(&env, &[&signer], BatchConfig::default()).await;
    let p = &env.provider;
    let _: serde_json::Value = p
        .raw_request("evm_setAutomine".into(), (false,))
        .await
        .unwrap();
    let base = p.get_transaction_count(signer.address()).await.unwrap();
    let (first, first_nonce) = request(&payer);
    let settling = {
        let f = Arc::clone(&f);
        tokio::spawn(async move { f.settle(&first).await.unwrap() })
    };
    until_pending(p, signer.address(), base, 1).await;
    let pending: serde_json::Value = p
        .raw_request("eth_getBlockByNumber".into(), ("pending", false))
        .await
        .unwrap();
    let hash = pending["transactions"][0].as_str().unwrap().to_owned();
    // The node forgets it; the signer's pending count goes back.
    let _: serde_json::Value = p
        .raw_request("anvil_dropTransaction".into(), (hash.clone(),))
        .await
        .unwrap();
    assert_eq!(
        p.get_transaction_count(signer.address())
            .pending()
            .await
            .unwrap(),
        base,
        "the transaction was not dropped"
    );
    // Blocks again, every second: only what the facilitator sends again can be mined.
    let _: serde_json::Value = p
        .raw_request("evm_setIntervalMining".into(), (1u64,))
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(45), settling)
        .await
        .expect("the dropped settlement never settled")
        .unwrap();
    assert_eq!(answer.success, Some(true), "{answer:?}");
    assert!(used(p, payer.address(), first_nonce).await);
    // The next payment is not behind a nonce gap.
    let (second, second_nonce) = request(&payer);
    let answer = tokio::time::timeout(Duration::from_secs(30), f.settle(&second))
        .await
        .expect("the next settlement was wedged behind the dropped one")
        .unwrap();
    assert_eq!(answer.success, Some(true), "{answer:?}");
    assert!(used(p, payer.address(), second_nonce).await);
}
