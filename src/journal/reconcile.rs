//! Reading an authorization's fate: was a payment settled on chain, definitively not, or is it
//! still open? Used to resolve unknown settlement outcomes, to redeem retried payments and to
//! recover after a restart.
//!
//! Owns: [`Reconciler`] and its [`Outcome`]s. How an outcome is read, always at a mined block:
//! - **Settled** means the token's `AuthorizationUsed(authorizer, nonce)` event, with the
//!   `Transfer(from, payTo, value)` of that payment in the same transaction (whoever submitted
//!   it; a batch transaction of many payments included: see `facilitator::receipt`). `authorizationState` alone is never enough: it is also true after the payer's
//!   `cancelAuthorization`, or when the authorization paid someone else.
//! - **Failed** means: the authorization was cancelled (`AuthorizationCanceled`), or used in a
//!   transaction that did not pay us, or it is still unused at a block whose timestamp is at or
//!   past `validBefore` (the contract refuses it from then on, so it can never settle).
//! - Anything else is **open**: still unknown.
//!
//! With no chain RPC for the network (a remote facilitator and no `[chain] rpc`), the only
//! reading is the facilitator's `/verify`: an authorization it calls valid is unused, and is
//! settled again through `/settle` (money-safe: the EIP-3009 nonce admits one transfer); any
//! other answer leaves the outcome open (a "nonce used" cannot tell our transfer from a
//! cancellation). Configure `[chain] rpc` for automatic resolution.

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Bytes, B256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::{Filter, TransactionRequest};
use alloy::sol_types::{SolCall, SolEvent};

use super::Entry;
use crate::config::Secret;
use crate::facilitator::receipt::{settled_in, Transfer3009};
use crate::facilitator::redact;
use crate::protocol::Network;
use crate::verify::Facilitator;

alloy::sol! {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
}

/// An authorization's fate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Settled to us in this transaction.
    Settled {
        /// The transaction hash.
        transaction: String,
    },
    /// It will never settle to us.
    Failed {
        /// Why (snake_case).
        reason: String,
    },
    /// Not known yet.
    Open,
}

/// A chain endpoint for readings.
struct ChainReader {
    provider: DynProvider,
    url: Secret,
}

/// Reads outcomes from the chains it has an RPC for, and from the facilitator otherwise.
pub struct Reconciler {
    chains: HashMap<u64, ChainReader>,
    facilitator: Option<Arc<dyn Facilitator>>,
    rpc_timeout: Duration,
    /// The latest block seen per chain (log searches of new settlements start near it).
    heads: std::sync::RwLock<HashMap<u64, u64>>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("chains", &self.chains.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Reconciler {
    /// Readers for `rpc` (network → URL); `facilitator` for networks without one.
    ///
    /// # Errors
    /// An RPC URL that does not parse (its network named, never the URL).
    pub fn new(
        rpc: &[(Network, Secret)],
        facilitator: Option<Arc<dyn Facilitator>>,
        rpc_timeout: Duration,
    ) -> Result<Self, String> {
        let mut chains = HashMap::new();
        for (network, url) in rpc {
            let parsed: reqwest::Url = url
                .expose()
                .parse()
                .map_err(|_| format!("the RPC URL for {network} does not parse"))?;
            let provider = ProviderBuilder::new()
                .disable_recommended_fillers()
                .connect_http(parsed)
                .erased();
            chains.insert(
                network.chain_id(),
                ChainReader {
                    provider,
                    url: url.clone(),
                },
            );
        }
        Ok(Reconciler {
            chains,
            facilitator,
            rpc_timeout,
            heads: std::sync::RwLock::default(),
        })
    }

    /// A reconciler that can read nothing (every outcome stays open).
    pub fn none() -> Self {
        Reconciler {
            chains: HashMap::new(),
            facilitator: None,
            rpc_timeout: Duration::from_secs(5),
            heads: std::sync::RwLock::default(),
        }
    }

    /// A block safely before anything sent now (the last head seen, less a reorg margin).
    pub fn cached_head(&self, chain_id: u64) -> Option<u64> {
        self.heads
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&chain_id)
            .map(|h| h.saturating_sub(16))
    }

    /// Reads every chain's latest block (a background task, so that settlements record where
    /// their log search starts without an RPC call on the request path).
    pub async fn refresh_heads(&self) {
        for id in self.chains.keys() {
            if let Some(h) = self.head(*id).await {
                self.heads
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(*id, h);
            }
        }
    }

    /// Whether outcomes on `chain_id` can be read from the chain itself.
    pub fn reads_chain(&self, chain_id: u64) -> bool {
        self.chains.contains_key(&chain_id)
    }

    /// The latest mined block of `chain_id` (where a later log search may start).
    pub async fn head(&self, chain_id: u64) -> Option<u64> {
        let c = self.chains.get(&chain_id)?;
        tokio::time::timeout(self.rpc_timeout, c.provider.get_block_number())
            .await
            .ok()?
            .ok()
    }

    /// Reads the fate of `e` once. Errors of the reading (RPC down) are `Open`.
    pub async fn read(&self, e: &Entry) -> Outcome {
        match self.chains.get(&e.key.chain_id) {
            Some(c) => match tokio::time::timeout(self.rpc_timeout * 4, read_chain(c, e)).await {
                Ok(Ok(o)) => o,
                Ok(Err(err)) => {
                    tracing::debug!(error = %redact(&err, c.url.expose()), payer = %e.key.from, "outcome not readable yet");
                    Outcome::Open
                }
                Err(_) => Outcome::Open,
            },
            None => self.read_facilitator(e).await,
        }
    }

    /// Reads until the outcome is known or `budget` has passed (first after 250 ms, then
    /// backing off to 2 s).
    pub async fn resolve(&self, e: &Entry, budget: Duration) -> Outcome {
        let deadline = tokio::time::Instant::now() + budget;
        let mut delay = Duration::from_millis(250);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let o = tokio::time::timeout(left.max(Duration::from_millis(1)), self.read(e))
                .await
                .unwrap_or(Outcome::Open);
            if o != Outcome::Open {
                return o;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Outcome::Open;
            }
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Without a chain RPC: an authorization the facilitator calls valid is unused; settling it
    /// again is the only way to learn more, and is safe (one transfer per nonce).
    async fn read_facilitator(&self, e: &Entry) -> Outcome {
        let Some(f) = &self.facilitator else {
            return Outcome::Open;
        };
        match f.verify(&e.request).await {
            Ok(v) if v.is_valid => match f.settle(&e.request).await {
                Ok(r) if r.is_success() => Outcome::Settled {
                    transaction: r.transaction.unwrap_or_default(),
                },
                _ => Outcome::Open,
            },
            _ => Outcome::Open,
        }
    }
}

async fn read_chain(c: &ChainReader, e: &Entry) -> Result<Outcome, String> {
    let p = &c.provider;
    let (from, nonce, asset) = (e.key.from, e.key.nonce, e.key.asset);
    // Our own transaction first: its receipt is the cheapest proof.
    if let Some(hash) = e
        .transaction
        .as_deref()
        .and_then(|t| t.parse::<B256>().ok())
    {
        if let Some(r) = p
            .get_transaction_receipt(hash)
            .await
            .map_err(|x| x.to_string())?
        {
            if r.status() && pays_us(r.inner.logs(), e) {
                return Ok(Outcome::Settled {
                    transaction: hash.to_string(),
                });
            }
        }
    }
    let from_block = e.from_block.unwrap_or(0);
    let topic_from = B256::left_padding_from(from.as_slice());
    let used = Filter::new()
        .address(asset)
        .event_signature(AuthorizationUsed::SIGNATURE_HASH)
        .topic1(topic_from)
        .topic2(nonce)
        .from_block(from_block);
    for log in p.get_logs(&used).await.map_err(|x| x.to_string())? {
        let Some(hash) = log.transaction_hash else {
            continue;
        };
        let Some(r) = p
            .get_transaction_receipt(hash)
            .await
            .map_err(|x| x.to_string())?
        else {
            continue;
        };
        return Ok(if r.status() && pays_us(r.inner.logs(), e) {
            Outcome::Settled {
                transaction: hash.to_string(),
            }
        } else {
            Outcome::Failed {
                reason: "authorization_used_elsewhere".into(),
            }
        });
    }
    let cancelled = Filter::new()
        .address(asset)
        .event_signature(AuthorizationCanceled::SIGNATURE_HASH)
        .topic1(topic_from)
        .topic2(nonce)
        .from_block(from_block);
    if !p
        .get_logs(&cancelled)
        .await
        .map_err(|x| x.to_string())?
        .is_empty()
    {
        return Ok(Outcome::Failed {
            reason: "authorization_cancelled".into(),
        });
    }
    // Unused so far: it can still settle until the chain's time passes validBefore.
    let input = authorizationStateCall {
        authorizer: from,
        nonce,
    }
    .abi_encode();
    let tx = TransactionRequest::default()
        .with_to(asset)
        .with_input(Bytes::from(input));
    let state = p
        .call(tx)
        .latest()
        .into_future()
        .await
        .map_err(|x| x.to_string())?;
    let used_state =
        authorizationStateCall::abi_decode_returns(&state).map_err(|x| x.to_string())?;
    if used_state {
        // Used, yet no event found from `from_block`: keep looking (never counted as ours).
        return Ok(Outcome::Open);
    }
    let latest = p
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .map_err(|x| x.to_string())?
        .ok_or("no latest block")?;
    if latest.header.timestamp >= e.valid_before {
        return Ok(Outcome::Failed {
            reason: "authorization_expired_unused".into(),
        });
    }
    Ok(Outcome::Open)
}

/// Whether these logs (one transaction's, perhaps a batch of many payments) hold the payment's
/// `AuthorizationUsed` and its own transfer to `pay_to`.
fn pays_us(logs: &[alloy::rpc::types::Log], e: &Entry) -> bool {
    settled_in(
        logs,
        &Transfer3009 {
            asset: e.key.asset,
            from: e.key.from,
            nonce: e.key.nonce,
            to: e.pay_to,
            value: e.amount,
        },
    )
}
