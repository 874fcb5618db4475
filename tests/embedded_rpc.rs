//! The embedded facilitator against a JSON-RPC endpoint that misbehaves: stalls on every call,
//! stalls under the signer's nonce lock, loses the answer to a send, never mines. Each call
//! ends within its timeout, and nothing but our own mined receipt counts as a settlement
//! (a scripted `authorizationState = true` does not). Faults are injected by a mock RPC.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use x402_gateway::config::{EmbeddedConfig, Secret};
use x402_gateway::facilitator::EmbeddedFacilitator;
use x402_gateway::protocol::{ErrorReason, Network};
use x402_gateway::verify::{Facilitator, FacilitatorError};

/// Anvil dev key 0 (public test material).
const SIGNER: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// Methods that never answer, and whether `authorizationState` says "used".
#[derive(Default, Clone)]
struct Faults {
    stall: Vec<&'static str>,
    /// Methods answered with a JSON-RPC error that is an outage (not a revert).
    error: Vec<&'static str>,
    authorization_used: bool,
}

fn word(v: u64) -> String {
    format!("0x{v:064x}")
}

async fn mock_rpc(faults: Arc<Mutex<Faults>>) -> MockServer {
    MockServer::start(move |req| {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let f = faults.lock().unwrap().clone();
        let answer = |id: &serde_json::Value, method: &str, params: &serde_json::Value| {
            let result = match method {
                "eth_chainId" => serde_json::json!("0x14a34"),
                // authorizationState(…) selector 0xe94a0102; balanceOf 0x70a08231.
                "eth_call" => {
                    let data = params[0]["input"]
                        .as_str()
                        .or(params[0]["data"].as_str())
                        .unwrap_or("");
                    if data.starts_with("0xe94a0102") {
                        serde_json::json!(word(u64::from(f.authorization_used)))
                    } else {
                        serde_json::json!(word(1_000_000_000))
                    }
                }
                "eth_estimateGas" => serde_json::json!("0x19000"),
                "eth_feeHistory" => serde_json::json!({
                    "oldestBlock": "0x1", "baseFeePerGas": ["0x3b9aca00", "0x3b9aca00"],
                    "gasUsedRatio": [0.5], "reward": [["0x3b9aca00"]]
                }),
                "eth_getTransactionCount" => serde_json::json!("0x7"),
                "eth_sendRawTransaction" => serde_json::json!(format!("0x{}", "ab".repeat(32))),
                "eth_getTransactionReceipt" => serde_json::Value::Null,
                _ => serde_json::Value::Null,
            };
            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
        };
        let method = body["method"].as_str().unwrap_or("");
        let out = if f.error.contains(&method) {
            // What a rate-limited or lagging node answers: no verdict on the call.
            serde_json::json!({"jsonrpc": "2.0", "id": body["id"],
                "error": {"code": -32000, "message": "header not found"}})
        } else {
            answer(&body["id"], method, &body["params"])
        };
        let resp = Response::json(200, &out.to_string());
        if f.stall.contains(&method) {
            resp.delayed(Duration::from_secs(60))
        } else {
            resp
        }
    })
    .await
}

async fn facilitator(rpc: &MockServer, settle_timeout: Duration) -> EmbeddedFacilitator {
    EmbeddedFacilitator::connect(
        &EmbeddedConfig {
            rpc: vec![(
                Network::parse("eip155:84532").unwrap(),
                Secret::new(rpc.url()),
            )],
            signer_keys: vec![Secret::new(SIGNER.into())],
            rpc_timeout: Duration::from_millis(300),
            batch: Default::default(),
        },
        settle_timeout,
    )
    .await
    .unwrap()
}

/// A facilitator request for a freshly signed payment of 1000 to `PAY_TO`.
fn request() -> String {
    facilitator_request(&payer(), "1000", x402_gateway::client::random_nonce())
}

/// Runs `f`, which must finish well within `limit` (a stalled RPC used to hang it forever).
async fn bounded<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .expect("the call hung on a stalled RPC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_rpc_fails_verify_and_settle_within_the_rpc_timeout() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let rpc = mock_rpc(faults.clone()).await;
    let f = facilitator(&rpc, Duration::from_secs(2)).await;
    faults.lock().unwrap().stall = vec!["eth_call"];
    let e = bounded(Duration::from_secs(5), f.verify(&request()))
        .await
        .unwrap_err();
    assert!(!e.may_have_happened(), "{e:?}");
    let e = bounded(Duration::from_secs(5), f.settle(&request()))
        .await
        .unwrap_err();
    assert!(matches!(e, FacilitatorError::ChainNotSent(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_under_the_nonce_lock_does_not_hold_the_signer() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let rpc = mock_rpc(faults.clone()).await;
    let f = Arc::new(facilitator(&rpc, Duration::from_secs(2)).await);
    faults.lock().unwrap().stall = vec!["eth_getTransactionCount"];
    // Four settlements through one signer: each waits for the lock, none waits forever.
    let settles = (0..4).map(|_| {
        let f = f.clone();
        tokio::spawn(async move { f.settle(&request()).await })
    });
    for s in bounded(Duration::from_secs(10), futures_join(settles)).await {
        let e = s.unwrap().unwrap_err();
        assert!(!e.may_have_happened(), "nothing was sent: {e:?}");
    }
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_send_answer_is_pending_with_the_transaction_hash() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let rpc = mock_rpc(faults.clone()).await;
    let f = facilitator(&rpc, Duration::from_secs(2)).await;
    faults.lock().unwrap().stall = vec!["eth_sendRawTransaction"];
    let r = bounded(Duration::from_secs(5), f.settle(&request()))
        .await
        .unwrap();
    assert_eq!(r.success, Some(false));
    assert_eq!(
        r.error_reason.as_deref(),
        Some(ErrorReason::SettlementPending.as_str())
    );
    let tx = r.transaction.unwrap();
    assert!(tx.starts_with("0x") && tx.len() == 66, "{tx}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_receipt_is_pending_even_when_the_authorization_reads_used() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let rpc = mock_rpc(faults.clone()).await;
    let f = facilitator(&rpc, Duration::from_millis(800)).await;
    let body = request();
    // The transfer is sent; then someone else settles (or the payer cancels) the authorization:
    // `authorizationState` reads true, but our transaction never mines.
    let settle = f.settle(&body);
    let flip = async {
        // Flip once the transaction was sent.
        loop {
            if rpc
                .requests
                .lock()
                .unwrap()
                .iter()
                .any(|r| String::from_utf8_lossy(&r.body).contains("eth_sendRawTransaction"))
            {
                faults.lock().unwrap().authorization_used = true;
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    let (r, ()) = bounded(Duration::from_secs(5), async { tokio::join!(settle, flip) }).await;
    let r = r.unwrap();
    assert_eq!(
        r.success,
        Some(false),
        "a state read counted as our settlement"
    );
    assert_eq!(
        r.error_reason.as_deref(),
        Some(ErrorReason::SettlementPending.as_str())
    );
    // Reads go to a mined block, never `pending`.
    let requests = rpc.requests.lock().unwrap();
    for r in requests.iter() {
        let b: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if b["method"] == "eth_call" {
            assert_eq!(b["params"][1], "latest", "{b}");
        }
    }
}

/// A node's JSON-RPC error answer to `eth_estimateGas` or to the simulation (`eth_call`) is an
/// outage, not a revert: the payment is not refused (which would end it, and, deferred, make an
/// unpaid delivery of an honest payer); nothing is sent, and it can be settled again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_error_answer_is_an_outage_not_a_refusal() {
    let faults = Arc::new(Mutex::new(Faults::default()));
    let rpc = mock_rpc(faults.clone()).await;
    let f = facilitator(&rpc, Duration::from_secs(2)).await;
    faults.lock().unwrap().error = vec!["eth_estimateGas"];
    match bounded(Duration::from_secs(5), f.settle(&request())).await {
        Err(e) => assert!(
            matches!(e, FacilitatorError::ChainNotSent(_)),
            "nothing was sent: {e:?}"
        ),
        Ok(r) => panic!("an estimateGas outage answered as a settlement: {r:?}"),
    }
    faults.lock().unwrap().error = vec!["eth_call"];
    let e = bounded(Duration::from_secs(5), f.verify(&request()))
        .await
        .expect_err("an eth_call outage answered as a verdict");
    assert!(!e.may_have_happened(), "{e:?}");
    // The node answers again: the same kind of payment settles as usual up to the send.
    faults.lock().unwrap().error.clear();
    let v = bounded(Duration::from_secs(5), f.verify(&request()))
        .await
        .unwrap();
    assert!(v.is_valid, "{v:?}");
}
