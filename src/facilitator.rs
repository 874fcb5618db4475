//! The embedded facilitator: verifies and settles `exact` EVM payments itself, over JSON-RPC,
//! so the gateway needs no third-party facilitator (no API key, no vendor in the money path).
//!
//! Owns: [`EmbeddedFacilitator`] (an implementation of [`Facilitator`]) and the standalone
//! facilitator HTTP server (`facilitator/server.rs`); request reading and local checks live in
//! `facilitator/check.rs`, batching in `facilitator/batch.rs`, reading a payment's settlement
//! from a receipt's logs in `facilitator/receipt.rs`.
//! - verify: the local checks, then on chain, at the latest *mined* block:
//!   `authorizationState(from, nonce)` unused, `balanceOf(from) ≥ value`, and an `eth_call`
//!   simulation of `transferWithAuthorization`. Reasons are named as the reference
//!   facilitators name them.
//! - settle: the same checks without simulation, then `transferWithAuthorization` (the
//!   `v, r, s` overload for 65-byte signatures, the `bytes` overload otherwise) from one of the
//!   signer keys, chosen round-robin. The transaction is signed here, so its hash is known
//!   before it is sent. Each signer keeps its own nonce, taken from the pending count at first
//!   use and again after any send error.
//! - Success is only our own transaction's mined receipt with status 1. A receipt not seen
//!   within `settle_timeout`, or a send whose answer was lost, is `settlement_pending` with the
//!   transaction hash: unknown, never success and never failure. No state read ever counts as
//!   a settlement (`authorizationState` is also true when someone else settled the
//!   authorization, or the payer cancelled it).
//! - Every JSON-RPC call has a timeout (`rpc_timeout`), including the two made under a signer's
//!   nonce lock, so a stalled RPC never holds a payment or a signer indefinitely.
//! - Batches (`facilitator/batch.rs`): deferred settlements (`settle_deferred`), and per-request
//!   ones when `sync_batch_window` is set, share `aggregate3` transactions of the batch
//!   contract; a batch of one takes the single-transfer path above.
//!
//! Keys come from the environment only (`config`), are never logged, and the `Debug` of the
//! configuration redacts them. RPC URLs (which often carry API keys) are secrets too: errors
//! are logged with them redacted.

mod batch;
pub mod check;
pub mod receipt;
pub mod server;

use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use alloy::eips::eip2718::Encodable2718;
use alloy::network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy::primitives::{Address, Bytes, B256, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::SolCall;
use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::config::{BatchConfig, EmbeddedConfig, Secret};
use crate::protocol::{
    ErrorReason, Network, PaymentPayload, SettleResponse, SupportedKind, SupportedResponse,
    VerifyResponse,
};
use crate::verify::{unix_now, Facilitator, FacilitatorError, SignerBalance};
use check::{invalid, Invalid, Parsed};

alloy::sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    function balanceOf(address account) external view returns (uint256);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
}

/// Why the embedded facilitator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// An RPC URL does not parse.
    #[error("invalid RPC URL for {0}")]
    Url(String),
    /// A signer key does not parse (the key itself is never printed).
    #[error("signer key {0} is not a valid private key")]
    Key(usize),
    /// An RPC endpoint serves another chain than its network says.
    #[error("the RPC for {network} is on chain {got}")]
    ChainMismatch {
        /// The configured network.
        network: String,
        /// The chain id the RPC reported.
        got: u64,
    },
    /// An RPC endpoint does not answer.
    #[error("the RPC for {network} does not answer: {message}")]
    Rpc {
        /// The configured network.
        network: String,
        /// The transport error.
        message: String,
    },
}

struct Signer {
    address: Address,
    wallet: EthereumWallet,
    /// Next nonce to use; `None`: read the pending count first.
    nonce: Mutex<Option<u64>>,
}

struct Chain {
    network: Network,
    reader: DynProvider,
    /// The RPC URL, to redact it from error texts.
    url: Secret,
    signers: Vec<Signer>,
    next: AtomicUsize,
    /// The latest block's gas limit, read at the first batch; 0: not read yet.
    block_gas_limit: AtomicU64,
    /// Gas per payment of the batches mined so far (the largest seen); 0: none yet, so the next
    /// batch's gas is estimated by the node.
    batch_gas: AtomicU64,
}

impl Chain {
    fn signer(&self) -> &Signer {
        &self.signers[self.next.fetch_add(1, Ordering::Relaxed) % self.signers.len()]
    }

    /// An RPC error as text, with the URL (and so any API key in it) redacted.
    fn error(&self, e: impl std::fmt::Display) -> String {
        redact(&e.to_string(), self.url.expose())
    }
}

/// Replaces `url` (and its path and query, where API keys live) in `text`.
pub fn redact(text: &str, url: &str) -> String {
    if url.is_empty() {
        return text.to_owned();
    }
    let mut out = text.replace(url, &redacted_url(url));
    // Error texts may carry the URL re-serialised (with a trailing slash) or its key alone.
    if let Some((_, path)) = url.split_once("://").and_then(|(_, r)| r.split_once('/')) {
        if path.len() >= 8 {
            out = out.replace(path, "[redacted]");
        }
    }
    out
}

/// `scheme://host[:port]/[redacted]`: enough to tell endpoints apart, nothing secret.
pub fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "[redacted]".into();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if rest.len() > authority.len() {
        format!("{scheme}://{authority}/[redacted]")
    } else {
        format!("{scheme}://{authority}")
    }
}

/// A facilitator that settles on chain itself.
pub struct EmbeddedFacilitator {
    core: Arc<Core>,
    /// Per chain, in the order of `core.chains`: the deferred settlements' batch queue
    /// (`batch_window`).
    deferred: Vec<Arc<batch::Queue<Parsed, Answer>>>,
    /// The same for per-request settlements (`sync_batch_window`); empty when that is off.
    sync: Vec<Arc<batch::Queue<Parsed, Answer>>>,
}

/// The chains, keys and timeouts: everything a settlement (single or batched) uses. Shared with
/// the batches' tasks, which outlive the calls that queued them.
struct Core {
    chains: Vec<Chain>,
    receipt_timeout: Duration,
    rpc_timeout: Duration,
    batch: BatchConfig,
}

/// One settlement's answer.
type Answer = Result<SettleResponse, FacilitatorError>;

/// A request that passed every check: what settlement needs.
struct Checked<'a> {
    chain: &'a Chain,
    parsed: Parsed,
}

/// Maps a revert or RPC error text of `transferWithAuthorization` to a reference reason.
fn revert_reason(message: &str) -> ErrorReason {
    let m = message.to_ascii_lowercase();
    if m.contains("authorization is used") || m.contains("used or canceled") {
        ErrorReason::NonceAlreadyUsed
    } else if m.contains("exceeds balance") {
        ErrorReason::InsufficientBalance
    } else if m.contains("invalid signature") {
        ErrorReason::InvalidSignature
    } else if m.contains("not yet valid") {
        ErrorReason::ValidAfter
    } else if m.contains("authorization is expired") {
        ErrorReason::ValidBefore
    } else {
        ErrorReason::SimulationFailed
    }
}

/// Whether a node refused a raw transaction for a nonce already used (by another sender of the
/// same key): nothing was sent.
fn nonce_too_low(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("nonce too low") || m.contains("nonce has already been used")
}

/// Whether a node's refusal of a raw transaction means it has the transaction already (so it
/// *was* sent).
fn already_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("known transaction") || m.contains("already imported")
}

// === impl EmbeddedFacilitator ===

impl EmbeddedFacilitator {
    /// Connects to every configured chain, checking that each RPC serves the chain its network
    /// names.
    ///
    /// # Errors
    /// [`EmbeddedError`].
    pub async fn connect(
        c: &EmbeddedConfig,
        receipt_timeout: Duration,
    ) -> Result<Self, EmbeddedError> {
        crate::verify::facilitator::install_crypto_provider();
        let mut keys = Vec::with_capacity(c.signer_keys.len());
        for (i, k) in c.signer_keys.iter().enumerate() {
            keys.push(
                k.expose()
                    .parse::<PrivateKeySigner>()
                    .map_err(|_| EmbeddedError::Key(i))?,
            );
        }
        let mut chains = Vec::new();
        for (network, url) in &c.rpc {
            let parsed: reqwest::Url = url
                .expose()
                .parse()
                .map_err(|_| EmbeddedError::Url(network.to_string()))?;
            let reader = ProviderBuilder::new()
                .disable_recommended_fillers()
                .connect_http(parsed)
                .erased();
            let got = match tokio::time::timeout(c.rpc_timeout, reader.get_chain_id()).await {
                Ok(Ok(id)) => id,
                Ok(Err(e)) => {
                    return Err(EmbeddedError::Rpc {
                        network: network.to_string(),
                        message: redact(&e.to_string(), url.expose()),
                    })
                }
                Err(_) => {
                    return Err(EmbeddedError::Rpc {
                        network: network.to_string(),
                        message: format!("no answer within {:?}", c.rpc_timeout),
                    })
                }
            };
            if got != network.chain_id() {
                return Err(EmbeddedError::ChainMismatch {
                    network: network.to_string(),
                    got,
                });
            }
            let signers = keys
                .iter()
                .map(|k| Signer {
                    address: k.address(),
                    wallet: EthereumWallet::from(k.clone()),
                    nonce: Mutex::new(None),
                })
                .collect();
            chains.push(Chain {
                network: network.clone(),
                reader,
                url: url.clone(),
                signers,
                next: AtomicUsize::new(0),
                batch_gas: AtomicU64::new(0),
                block_gas_limit: AtomicU64::new(0),
            });
        }
        let core = Arc::new(Core {
            chains,
            receipt_timeout,
            rpc_timeout: c.rpc_timeout,
            batch: c.batch.clone(),
        });
        let queues = |window: Duration| {
            (0..core.chains.len())
                .map(|chain| batch::Queue::for_chain(&core, chain, window))
                .collect::<Vec<_>>()
        };
        let deferred = queues(c.batch.window);
        let sync = if c.batch.sync_window.is_zero() {
            Vec::new()
        } else {
            queues(c.batch.sync_window)
        };
        Ok(EmbeddedFacilitator {
            core,
            deferred,
            sync,
        })
    }

    /// The addresses that submit settlements.
    pub fn signer_addresses(&self) -> Vec<Address> {
        self.core
            .chains
            .first()
            .map(|c| c.signers.iter().map(|s| s.address).collect())
            .unwrap_or_default()
    }

    /// Settles through one of `queues` (the request's chain's): the call waits for its batch.
    async fn settle_batched(
        &self,
        queues: &[Arc<batch::Queue<Parsed, Answer>>],
        body: &str,
    ) -> Answer {
        let (chain, parsed) = match self.core.locate(body) {
            Ok(found) => found,
            Err(i) => return Ok(refused(i)),
        };
        let Some(queue) = queues.get(chain) else {
            return self.core.settle_parsed(chain, parsed).await;
        };
        queue.submit(parsed).await.unwrap_or_else(|batch::Lost| {
            // The batch's task ended without answering (a panic): its transaction may be out.
            Err(FacilitatorError::Chain(
                "the batch settling this payment ended without an answer".into(),
            ))
        })
    }
}

// === impl Core ===

impl Core {
    /// One JSON-RPC call within `rpc_timeout`; errors are redacted texts.
    async fn rpc<T>(
        &self,
        chain: &Chain,
        call: impl Future<Output = alloy::transports::TransportResult<T>>,
    ) -> Result<T, RpcFailure> {
        match tokio::time::timeout(self.rpc_timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if e.as_error_resp().is_some() => Err(RpcFailure::Refused(chain.error(e))),
            Ok(Err(e)) => Err(RpcFailure::Transport(chain.error(e))),
            Err(_) => Err(RpcFailure::Timeout),
        }
    }

    /// Reads a view function of the token at the latest mined block (never `pending`).
    async fn read(
        &self,
        chain: &Chain,
        asset: Address,
        input: Vec<u8>,
    ) -> Result<Bytes, RpcFailure> {
        let tx = TransactionRequest::default()
            .with_to(asset)
            .with_input(Bytes::from(input));
        self.rpc(chain, chain.reader.call(tx).latest().into_future())
            .await
    }

    /// The local checks of a facilitator request, and the index of the chain it settles on.
    fn locate(&self, body: &str) -> Result<(usize, Parsed), Invalid> {
        let parsed = check::parse_request(body.as_bytes(), unix_now())?;
        let Some(chain) = self.chains.iter().position(|c| c.network == parsed.network) else {
            return Err(invalid(
                ErrorReason::InvalidNetwork,
                format!("no RPC configured for {}", parsed.network),
            ));
        };
        Ok((chain, parsed))
    }

    /// Every check of a facilitator request; `simulate` adds the `eth_call` of the transfer.
    async fn check(
        &self,
        body: &str,
        simulate: bool,
    ) -> Result<Result<Checked<'_>, Invalid>, FacilitatorError> {
        match self.locate(body) {
            Ok((chain, parsed)) => {
                self.check_parsed(&self.chains[chain], parsed, simulate)
                    .await
            }
            Err(i) => Ok(Err(i)),
        }
    }

    /// The on-chain checks of a request that passed the local ones.
    async fn check_parsed<'c>(
        &self,
        chain: &'c Chain,
        parsed: Parsed,
        simulate: bool,
    ) -> Result<Result<Checked<'c>, Invalid>, FacilitatorError> {
        let a = parsed.payload.payload.authorization.clone();
        let with = |mut i: Invalid| {
            i.payer = Some(a.from);
            i.network = parsed.network_name.clone();
            i
        };
        let state = self.read(
            chain,
            parsed.asset,
            authorizationStateCall {
                authorizer: a.from,
                nonce: a.nonce,
            }
            .abi_encode(),
        );
        let balance = self.read(
            chain,
            parsed.asset,
            balanceOfCall { account: a.from }.abi_encode(),
        );
        let (state, balance) = tokio::join!(state, balance);
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let used = authorizationStateCall::abi_decode_returns(&state.map_err(not_sent)?)
            .map_err(|e| FacilitatorError::ChainNotSent(e.to_string()))?;
        if used {
            return Ok(Err(with(invalid(
                ErrorReason::NonceAlreadyUsed,
                "this authorization was already used on chain",
            ))));
        }
        let balance: U256 = balanceOfCall::abi_decode_returns(&balance.map_err(not_sent)?)
            .map_err(|e| FacilitatorError::ChainNotSent(e.to_string()))?;
        if balance < a.value {
            return Ok(Err(with(invalid(
                ErrorReason::InsufficientBalance,
                format!("balance {balance} is less than {}", a.value),
            ))));
        }
        if simulate {
            let tx = transfer_request(chain.signers[0].address, parsed.asset, &parsed.payload);
            match self
                .rpc(chain, chain.reader.call(tx).latest().into_future())
                .await
            {
                Ok(_) => {}
                Err(RpcFailure::Refused(text)) => {
                    return Ok(Err(with(invalid(revert_reason(&text), text))));
                }
                // A transport failure is an outage, not a verdict.
                Err(e) => return Err(not_sent(e)),
            }
        }
        Ok(Ok(Checked { chain, parsed }))
    }

    /// Signs and sends the transfer, then waits for its receipt: success only from our own
    /// mined receipt with status 1.
    async fn submit(&self, c: &Checked<'_>) -> Result<SettleResponse, FacilitatorError> {
        let p = &c.parsed;
        let a = &p.payload.payload.authorization;
        let payer = Some(a.from.to_checksum(None));
        let done = |success: bool, reason: Option<ErrorReason>, tx: String| SettleResponse {
            success: Some(success),
            error_reason: reason.map(|r| r.as_str().to_owned()),
            error_message: None,
            payer: payer.clone(),
            transaction: Some(tx),
            network: Some(p.network_name.clone()),
        };
        let chain = c.chain;
        let signer = chain.signer();
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let tx = transfer_request(signer.address, p.asset, &p.payload);
        let gas = match self
            .rpc(chain, chain.reader.estimate_gas(tx.clone()).into_future())
            .await
        {
            Ok(g) => g,
            Err(RpcFailure::Refused(text)) => {
                return Ok(done(false, Some(revert_reason(&text)), String::new()));
            }
            Err(e) => return Err(not_sent(e)),
        };
        let hash = match self
            .sign_and_send(chain, signer, tx, gas.saturating_mul(12) / 10)
            .await?
        {
            Sent::Sent(hash) => hash,
            Sent::Lost(hash) => {
                return Ok(done(
                    false,
                    Some(ErrorReason::SettlementPending),
                    hash.to_string(),
                ))
            }
        };
        match self.wait_receipt(chain, hash).await {
            Some(r) if r.status() => Ok(done(true, None, hash.to_string())),
            Some(_) => Ok(done(
                false,
                Some(ErrorReason::TransactionFailed),
                hash.to_string(),
            )),
            None => {
                tracing::warn!(tx = %hash, timeout = ?self.receipt_timeout, "no receipt in time; settlement pending");
                Ok(done(
                    false,
                    Some(ErrorReason::SettlementPending),
                    hash.to_string(),
                ))
            }
        }
    }

    /// Prices `tx` (EIP-1559 fees), signs it with `signer` at its next nonce and sends it. The
    /// signer's nonce lock is held for the send only: the next transaction of this signer can
    /// go out before this one is mined.
    ///
    /// # Errors
    /// [`FacilitatorError::ChainNotSent`]: nothing was sent.
    async fn sign_and_send(
        &self,
        chain: &Chain,
        signer: &Signer,
        tx: TransactionRequest,
        gas_limit: u64,
    ) -> Result<Sent, FacilitatorError> {
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let fees = self
            .rpc(chain, chain.reader.estimate_eip1559_fees())
            .await
            .map_err(not_sent)?;
        let tx = tx
            .with_chain_id(chain.network.chain_id())
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let mut next = signer.nonce.lock().await;
        // A nonce another sender of this key used meanwhile is refused ("nonce too low"):
        // nothing was sent, so the pending count is read again and the send retried, once.
        let mut resync_left = 1;
        loop {
            let nonce = match *next {
                Some(n) => n,
                None => self
                    .rpc(
                        chain,
                        chain
                            .reader
                            .get_transaction_count(signer.address)
                            .pending()
                            .into_future(),
                    )
                    .await
                    .map_err(not_sent)?,
            };
            let envelope = tx
                .clone()
                .with_nonce(nonce)
                .build(&signer.wallet)
                .await
                .map_err(|e| FacilitatorError::ChainNotSent(format!("signing failed: {e}")))?;
            let hash: B256 = *envelope.tx_hash();
            let raw = envelope.encoded_2718();
            match self
                .rpc(chain, chain.reader.send_raw_transaction(&raw))
                .await
            {
                Ok(_) => *next = Some(nonce + 1),
                Err(RpcFailure::Refused(text)) if already_known(&text) => {
                    *next = Some(nonce + 1);
                }
                Err(RpcFailure::Refused(text)) if nonce_too_low(&text) && resync_left > 0 => {
                    resync_left -= 1;
                    *next = None;
                    tracing::info!(signer = %signer.address, "settlement nonce was used by another sender; resynchronising and sending again");
                    continue;
                }
                Err(RpcFailure::Refused(text)) => {
                    // The node refused it: nothing was sent. Resynchronise the nonce.
                    *next = None;
                    tracing::warn!(error = %text, signer = %signer.address, "settlement transaction refused by the node");
                    return Err(FacilitatorError::ChainNotSent(text));
                }
                Err(e @ (RpcFailure::Timeout | RpcFailure::Transport(_))) => {
                    // The answer was lost: the transaction may be in the mempool. Its hash is
                    // known; the outcome is unknown.
                    *next = None;
                    tracing::warn!(tx = %hash, signer = %signer.address, error = %e, "no answer to the settlement send; outcome unknown");
                    return Ok(Sent::Lost(hash));
                }
            }
            break Ok(Sent::Sent(hash));
        }
    }

    /// Settles one request that passed the local checks: the on-chain checks, then one
    /// `transferWithAuthorization` transaction.
    async fn settle_parsed(&self, chain: usize, parsed: Parsed) -> Answer {
        match self
            .check_parsed(&self.chains[chain], parsed, false)
            .await?
        {
            Ok(c) => self.submit(&c).await,
            Err(i) => Ok(refused(i)),
        }
    }

    /// Polls for a transaction's receipt until `receipt_timeout`: 10 ms after sending, doubling
    /// up to 500 ms. A local chain mines at once and answers on the first polls; a real chain's
    /// block time is met within half a second; nothing is polled while no settlement waits
    /// (alloy's block watcher polls every 250 ms even on a local chain, which capped
    /// settlements at about four per second per waiting request). Each poll has the RPC
    /// timeout.
    async fn wait_receipt(
        &self,
        chain: &Chain,
        hash: B256,
    ) -> Option<alloy::rpc::types::TransactionReceipt> {
        let deadline = tokio::time::Instant::now() + self.receipt_timeout;
        let mut delay = Duration::from_millis(10);
        loop {
            match self
                .rpc(chain, chain.reader.get_transaction_receipt(hash))
                .await
            {
                Ok(Some(receipt)) => return Some(receipt),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, tx = %hash, "receipt not readable yet"),
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}

/// What became of a signed transaction.
enum Sent {
    /// The node took it.
    Sent(B256),
    /// The send's answer was lost: it may be in a mempool. Its outcome is unknown.
    Lost(B256),
}

/// The answer to a request refused by a check: a definitive failure, nothing sent.
fn refused(i: Invalid) -> SettleResponse {
    SettleResponse {
        success: Some(false),
        error_reason: Some(i.reason.as_str().to_owned()),
        error_message: Some(i.reason.text().to_owned()),
        payer: i.payer.map(|p| p.to_checksum(None)),
        transaction: Some(String::new()),
        network: Some(i.network),
    }
}

/// Why a JSON-RPC call gave no value.
#[derive(Debug)]
enum RpcFailure {
    /// No answer within `rpc_timeout`.
    Timeout,
    /// The node answered with a JSON-RPC error (a revert, a refused transaction); redacted.
    Refused(String),
    /// The call failed in transport (it may or may not have reached the node); redacted.
    Transport(String),
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcFailure::Timeout => f.write_str("RPC call timed out"),
            RpcFailure::Refused(e) | RpcFailure::Transport(e) => f.write_str(e),
        }
    }
}

/// `transferWithAuthorization` from `from` (the submitting signer).
fn transfer_request(from: Address, asset: Address, p: &PaymentPayload) -> TransactionRequest {
    TransactionRequest::default()
        .with_from(from)
        .with_to(asset)
        .with_input(Bytes::from(transfer_input(p)))
}

/// The call data of `transferWithAuthorization`, picking the overload by signature length.
fn transfer_input(p: &PaymentPayload) -> Vec<u8> {
    let a = &p.payload.authorization;
    let sig = &p.payload.signature;
    let (valid_after, valid_before) = (U256::from(a.valid_after), U256::from(a.valid_before));
    if sig.len() == 65 {
        transferWithAuthorization_0Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            v: sig[64],
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
    } else {
        transferWithAuthorization_1Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            signature: sig.clone(),
        }
        .abi_encode()
    }
}

#[async_trait]
impl Facilitator for EmbeddedFacilitator {
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError> {
        Ok(match self.core.check(body, true).await? {
            Ok(c) => VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(
                    c.parsed
                        .payload
                        .payload
                        .authorization
                        .from
                        .to_checksum(None),
                ),
            },
            Err(i) => VerifyResponse {
                is_valid: false,
                invalid_reason: Some(i.reason.as_str().to_owned()),
                invalid_message: Some(i.reason.text().to_owned()),
                payer: i.payer.map(|p| p.to_checksum(None)),
            },
        })
    }

    async fn settle(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        if !self.sync.is_empty() {
            return self.settle_batched(&self.sync, body).await;
        }
        match self.core.check(body, false).await? {
            Ok(c) => self.core.submit(&c).await,
            Err(i) => Ok(refused(i)),
        }
    }

    async fn settle_deferred(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        self.settle_batched(&self.deferred, body).await
    }

    fn batches(&self) -> bool {
        true
    }

    async fn signer_balances(&self) -> Vec<SignerBalance> {
        let mut out = Vec::new();
        for c in &self.core.chains {
            for s in &c.signers {
                let wei = match self
                    .core
                    .rpc(c, c.reader.get_balance(s.address).latest().into_future())
                    .await
                {
                    Ok(w) => Ok(w),
                    Err(RpcFailure::Timeout) => {
                        Err(format!("no answer within {:?}", self.core.rpc_timeout))
                    }
                    Err(RpcFailure::Refused(e) | RpcFailure::Transport(e)) => Err(e),
                };
                out.push(SignerBalance {
                    network: c.network.caip2().to_owned(),
                    signer: s.address,
                    wei,
                });
            }
        }
        out
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let mut kinds = Vec::new();
        for c in &self.core.chains {
            kinds.push(SupportedKind {
                x402_version: 2,
                scheme: "exact".into(),
                network: c.network.caip2().into(),
            });
            if let Some(name) = c.network.v1_name() {
                kinds.push(SupportedKind {
                    x402_version: 1,
                    scheme: "exact".into(),
                    network: name.into(),
                });
            }
        }
        Ok(SupportedResponse { kinds })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverts_map_to_reference_reasons() {
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: authorization is used or canceled"),
            ErrorReason::NonceAlreadyUsed
        );
        assert_eq!(
            revert_reason("execution reverted: ERC20: transfer amount exceeds balance"),
            ErrorReason::InsufficientBalance
        );
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: invalid signature"),
            ErrorReason::InvalidSignature
        );
        assert_eq!(
            revert_reason("something else"),
            ErrorReason::SimulationFailed
        );
    }

    #[test]
    fn rpc_urls_are_redacted_from_error_texts() {
        let url = "https://base-mainnet.g.alchemy.com/v2/SECRETKEY123";
        let text = format!("error sending request for url ({url}/): connection refused");
        let r = redact(&text, url);
        assert!(!r.contains("SECRETKEY123"), "{r}");
        assert!(r.contains("base-mainnet.g.alchemy.com"), "{r}");
        assert_eq!(
            redacted_url("https://user:pw@rpc.example:8545/key?x=1"),
            "https://rpc.example:8545/[redacted]"
        );
        assert_eq!(
            redacted_url("http://127.0.0.1:8545"),
            "http://127.0.0.1:8545"
        );
    }
}
