//! The replay guard: one authorization serves at most one request, concurrently or in
//! sequence.
//!
//! Owns: [`ReplayGuard`], a concurrent map keyed by (chain, asset, payer, nonce), the identity
//! of an EIP-3009 authorization on chain. An entry is taken *in flight* before the facilitator
//! is asked, becomes *used* once the request is served or settlement was attempted, and is
//! released only when nothing was served and nothing was settled (facilitator said invalid,
//! facilitator down, upstream failed), so the client may retry. Entries expire at
//! `validBefore`, after which the chain itself refuses the authorization.

use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256};
use moka::ops::compute::Op;
use moka::sync::Cache;
use moka::Expiry;

/// The on-chain identity of an authorization.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplayKey {
    /// Chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Payer.
    pub from: Address,
    /// EIP-3009 nonce.
    pub nonce: B256,
}

/// Where an authorization is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Another request holds it now.
    InFlight,
    /// It was served (or its settlement attempted) already.
    Used,
}

#[derive(Clone, Copy)]
struct Entry {
    state: Held,
    ttl: Duration,
}

struct UntilValidBefore;

impl Expiry<ReplayKey, Entry> for UntilValidBefore {
    fn expire_after_create(&self, _: &ReplayKey, v: &Entry, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Concurrent in-flight/used set of authorizations.
pub struct ReplayGuard {
    entries: Cache<ReplayKey, Entry>,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplayGuard {
    /// An empty guard. It has no capacity bound on purpose: evicting a live entry would let a
    /// replay through. Entries leave at their `validBefore`.
    pub fn new() -> Self {
        ReplayGuard {
            entries: Cache::builder().expire_after(UntilValidBefore).build(),
        }
    }

    /// Takes `key` in flight until `valid_before` (unix seconds), or says who holds it.
    /// Exactly one of any number of concurrent callers with the same key gets `Ok`.
    ///
    /// # Errors
    /// The state of the existing holder.
    pub fn acquire(&self, key: ReplayKey, valid_before: u64, now: u64) -> Result<(), Held> {
        let ttl = Duration::from_secs(valid_before.saturating_sub(now).max(1));
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            state: Held::InFlight,
            ttl,
        });
        if entry.is_fresh() {
            Ok(())
        } else {
            Err(entry.value().state)
        }
    }

    /// Marks `key` used until its expiry: it will never serve again.
    pub fn mark_used(&self, key: &ReplayKey, valid_before: u64, now: u64) {
        let ttl = Duration::from_secs(valid_before.saturating_sub(now).max(1));
        self.entries.insert(
            key.clone(),
            Entry {
                state: Held::Used,
                ttl,
            },
        );
    }

    /// Releases an in-flight `key` so that the client can retry the same authorization.
    /// A used key stays used.
    pub fn release(&self, key: &ReplayKey) {
        let _ = self
            .entries
            .entry_by_ref(key)
            .and_compute_with(|entry| match entry {
                Some(e) if e.value().state == Held::InFlight => Op::Remove,
                _ => Op::Nop,
            });
    }

    /// The state of `key`, if held.
    pub fn state(&self, key: &ReplayKey) -> Option<Held> {
        self.entries.get(key).map(|e| e.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(n: u8) -> ReplayKey {
        ReplayKey {
            chain_id: 84532,
            asset: Address::repeat_byte(1),
            from: Address::repeat_byte(2),
            nonce: B256::repeat_byte(n),
        }
    }

    #[test]
    fn life_cycle() {
        let g = ReplayGuard::new();
        assert_eq!(g.acquire(key(1), 1000, 0), Ok(()));
        assert_eq!(g.acquire(key(1), 1000, 0), Err(Held::InFlight));
        g.release(&key(1));
        assert_eq!(g.acquire(key(1), 1000, 0), Ok(()));
        g.mark_used(&key(1), 1000, 0);
        g.release(&key(1));
        assert_eq!(g.acquire(key(1), 1000, 0), Err(Held::Used));
        assert_eq!(
            g.acquire(key(2), 1000, 0),
            Ok(()),
            "other nonces are independent"
        );
    }

    #[test]
    fn exactly_one_concurrent_winner() {
        let g = Arc::new(ReplayGuard::new());
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    let g = g.clone();
                    s.spawn(move || usize::from(g.acquire(key(9), 1000, 0).is_ok()))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(wins, 1);
    }

    #[test]
    fn entries_expire_at_valid_before() {
        let g = ReplayGuard::new();
        g.acquire(key(3), 1, 0).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        g.entries.run_pending_tasks();
        assert_eq!(g.state(&key(3)), None);
        assert_eq!(g.acquire(key(3), 10, 5), Ok(()));
    }
}
