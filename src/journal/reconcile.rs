//! Reading an authorization's fate: was a payment settled on chain, definitively not, or is it
//! still open? Used to resolve unknown settlement outcomes, to redeem retried payments and to
//! recover after a restart.
//!
//! Owns: [`Reconciler`] and its [`Outcome`]s: which reader a network has (its chain RPC, or
//! the facilitator), their timeouts, and the chain heads log searches start near. How a fate is
//! read from the chain is the scheme's (`scheme::exact::proof::read_fate`): settled only with
//! the payment's own transfer in a mined transaction; failed when it can never settle to us;
//! open otherwise.
//!
//! With no chain RPC for the network (a remote facilitator and no `[chain] rpc`), the only
//! reading is the facilitator's `/verify`: an authorization it calls valid is unused, and is
//! settled again through `/settle` (money-safe: the EIP-3009 nonce admits one transfer); any
//! other answer leaves the outcome open (a "nonce used" cannot tell our transfer from a
//! cancellation). Configure `[chain] rpc` for automatic resolution.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::providers::{DynProvider, Provider, ProviderBuilder};

use super::Entry;
use crate::config::secret::redact;
use crate::config::Secret;
use crate::protocol::Network;
use crate::scheme::exact::proof::{self, Transfer3009};
use crate::verify::Facilitator;

pub use crate::flow::Outcome;

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
        let deadline = crate::clock::instant() + budget;
        let mut delay = Duration::from_millis(250);
        loop {
            let left = deadline.saturating_duration_since(crate::clock::instant());
            let o = tokio::time::timeout(left.max(Duration::from_millis(1)), self.read(e))
                .await
                .unwrap_or(Outcome::Open);
            if o != Outcome::Open {
                return o;
            }
            let left = deadline.saturating_duration_since(crate::clock::instant());
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
    proof::read_fate(
        &c.provider,
        &proof::Settlement {
            payment: Transfer3009 {
                asset: e.key.asset,
                from: e.key.from,
                nonce: e.key.nonce,
                to: e.pay_to,
                value: e.amount,
            },
            transaction: e.transaction.as_deref(),
            from_block: e.from_block.unwrap_or(0),
            valid_before: e.valid_before,
        },
    )
    .await
}
