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
mod send;
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
use async_trait::async_trait;
use tokio::sync::Mutex;

use crate::clock::unix_now;
pub use crate::config::secret::{redact, redacted_url};
use crate::config::{BatchConfig, EmbeddedConfig, Secret};
use crate::protocol::{
    ErrorReason, Network, SettleResponse, SupportedKind, SupportedResponse, VerifyResponse,
};
use crate::scheme::exact::{self, onchain};
use crate::verify::{Facilitator, FacilitatorError, SignerBalance};
use check::{invalid, Invalid, Parsed};
use onchain::{revert_reason, transfer_input};

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

/// Whether a JSON-RPC error answer is a revert (a verdict on the call), not an outage: code 3
/// ("execution reverted", geth and anvil), or a message that says it reverted.
fn is_revert(code: i64, message: &str) -> bool {
    code == 3 || {
        let m = message.to_ascii_lowercase();
        m.contains("revert") || m.contains("invalid opcode") || m.contains("out of gas")
    }
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
    /// Settlements waiting for their batch to be flushed, on every chain.
    pub fn waiting_in_batches(&self) -> usize {
        self.deferred
            .iter()
            .chain(&self.sync)
            .map(|q| q.waiting())
            .sum()
    }

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
            Ok(Err(e))
                if e.as_error_resp()
                    .is_some_and(|p| is_revert(p.code, &p.message)) =>
            {
                Err(RpcFailure::Reverted(chain.error(e)))
            }
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
        let a = parsed.exact.authorization.clone();
        let with = |mut i: Invalid| {
            i.payer = Some(a.from);
            i.network = parsed.network_name.clone();
            i
        };
        let state = self.read(
            chain,
            parsed.asset,
            onchain::authorization_state_input(a.from, a.nonce),
        );
        let balance = self.read(chain, parsed.asset, onchain::balance_of_input(a.from));
        let (state, balance) = tokio::join!(state, balance);
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let used = onchain::decode_authorization_state(&state.map_err(not_sent)?)
            .map_err(FacilitatorError::ChainNotSent)?;
        if used {
            return Ok(Err(with(invalid(
                ErrorReason::NonceAlreadyUsed,
                "this authorization was already used on chain",
            ))));
        }
        let balance: U256 = onchain::decode_balance(&balance.map_err(not_sent)?)
            .map_err(FacilitatorError::ChainNotSent)?;
        if balance < a.value {
            return Ok(Err(with(invalid(
                ErrorReason::InsufficientBalance,
                format!("balance {balance} is less than {}", a.value),
            ))));
        }
        if simulate {
            let tx = transfer_request(chain.signers[0].address, parsed.asset, &parsed.exact);
            match self
                .rpc(chain, chain.reader.call(tx).latest().into_future())
                .await
            {
                Ok(_) => {}
                Err(RpcFailure::Reverted(text)) => {
                    return Ok(Err(with(invalid(revert_reason(&text), text))));
                }
                // Anything but a revert (a transport failure, a node's error answer) is an
                // outage, not a verdict.
                Err(e) => return Err(not_sent(e)),
            }
        }
        Ok(Ok(Checked { chain, parsed }))
    }
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
    /// The call reverted (execution reverted: the transfer would fail); redacted.
    Reverted(String),
    /// The node answered with another JSON-RPC error (a refused transaction, a rate limit, an
    /// internal error): no verdict on the payment; redacted.
    Refused(String),
    /// The call failed in transport (it may or may not have reached the node); redacted.
    Transport(String),
}

impl std::fmt::Display for RpcFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RpcFailure::Timeout => f.write_str("RPC call timed out"),
            RpcFailure::Reverted(e) | RpcFailure::Refused(e) | RpcFailure::Transport(e) => {
                f.write_str(e)
            }
        }
    }
}

/// `transferWithAuthorization` from `from` (the submitting signer).
fn transfer_request(from: Address, asset: Address, p: &exact::Payload) -> TransactionRequest {
    TransactionRequest::default()
        .with_from(from)
        .with_to(asset)
        .with_input(Bytes::from(transfer_input(p)))
}

#[async_trait]
impl Facilitator for EmbeddedFacilitator {
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError> {
        Ok(match self.core.check(body, true).await? {
            Ok(c) => VerifyResponse {
                is_valid: true,
                invalid_reason: None,
                invalid_message: None,
                payer: Some(c.parsed.exact.authorization.from.to_checksum(None)),
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
                    Err(
                        RpcFailure::Reverted(e) | RpcFailure::Refused(e) | RpcFailure::Transport(e),
                    ) => Err(e),
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
                scheme: crate::scheme::exact::NAME.into(),
                network: c.network.caip2().into(),
            });
            if let Some(name) = c.network.v1_name() {
                kinds.push(SupportedKind {
                    x402_version: 1,
                    scheme: crate::scheme::exact::NAME.into(),
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
