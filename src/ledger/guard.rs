//! The replay guard (in memory): one authorization serves at most one request, concurrently or in
//! sequence.
//!
//! Owns: [`ReplayGuard`], a concurrent map keyed by [`ReplayKey`] (chain, asset, payer, nonce:
//! the identity of an authorization on chain). An entry is taken *in flight* before the facilitator
//! is asked, becomes *spent* once settlement was attempted (and says how: still settling,
//! answered, or refused for good, which decides what a retry of it is told), and is released
//! only when nothing was served and nothing was settled (facilitator said invalid, facilitator
//! down, upstream failed), so the client may retry.
//!
//! Memory is bounded twice over: an entry lives until the authorization's `validBefore` (after
//! which the chain itself refuses it), and `validBefore` is at most `maxTimeoutSeconds + 60 s`
//! away (the scheme's time check); and the guard holds at most `capacity` entries. A full
//! guard refuses new authorizations ([`Held::Full`], answered `503` + `Retry-After`) and never
//! evicts an entry that is still valid, since that would let a replay through. Time is passed
//! in (unix seconds), so expiry is tested without waiting.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{ReplayKey, Spent};

/// Why an authorization cannot be taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    /// Another request holds it now.
    InFlight,
    /// Its settlement was attempted already; how it stands.
    Spent(Spent),
    /// The guard holds `capacity` live authorizations: nothing new is taken until some expire
    /// or are released.
    Full,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    /// `None`: in flight.
    spent: Option<Spent>,
    expires: u64,
}

impl Entry {
    fn held(self) -> Held {
        self.spent.map_or(Held::InFlight, Held::Spent)
    }
}

#[derive(Default, Debug)]
struct Shard {
    entries: HashMap<ReplayKey, Entry>,
    /// Expiry times, soonest first; an item whose entry has another expiry (re-inserted) or is
    /// gone is stale and skipped.
    expiries: BinaryHeap<Reverse<(u64, ReplayKey)>>,
}

impl Shard {
    /// Drops entries whose `validBefore` has passed; returns how many.
    fn purge(&mut self, now: u64) -> usize {
        let mut removed = 0;
        while let Some(Reverse((at, _))) = self.expiries.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, key))) = self.expiries.pop() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|e| e.expires == at) {
                self.entries.remove(&key);
                removed += 1;
            }
        }
        // Stale heap items (released keys) must not pile up: rebuild when mostly stale.
        if self.expiries.len() > 64 && self.expiries.len() > 4 * self.entries.len() {
            self.expiries = self
                .entries
                .iter()
                .map(|(k, e)| Reverse((e.expires, k.clone())))
                .collect();
        }
        removed
    }

    fn insert(&mut self, key: ReplayKey, entry: Entry) -> bool {
        self.expiries.push(Reverse((entry.expires, key.clone())));
        self.entries.insert(key, entry).is_none()
    }
}

const SHARDS: usize = 64;

/// Concurrent in-flight/used set of authorizations, bounded in size.
#[derive(Debug)]
pub struct ReplayGuard {
    shards: Vec<Mutex<Shard>>,
    len: AtomicUsize,
    capacity: usize,
    hasher: std::collections::hash_map::RandomState,
}

impl ReplayGuard {
    /// An empty guard holding at most `capacity` live authorizations.
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            len: AtomicUsize::new(0),
            capacity,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, key: &ReplayKey) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere while holding it; its map is still
        // consistent (every mutation is a single insert or remove).
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expires(valid_before: u64, now: u64) -> u64 {
        valid_before.max(now.saturating_add(1))
    }

    /// Takes `key` in flight until `valid_before` (unix seconds), or says why not.
    /// Exactly one of any number of concurrent callers with the same key gets `Ok`.
    ///
    /// # Errors
    /// The state of the existing holder, or [`Held::Full`].
    pub fn acquire(&self, key: ReplayKey, valid_before: u64, now: u64) -> Result<(), Held> {
        let mut shard = self.shard(&key);
        let purged = shard.purge(now);
        self.len.fetch_sub(purged, Ordering::Relaxed);
        if let Some(e) = shard.entries.get(&key) {
            return Err(e.held());
        }
        if self.len.load(Ordering::Relaxed) >= self.capacity {
            drop(shard);
            self.purge_all(now);
            shard = self.shard(&key);
            if let Some(e) = shard.entries.get(&key) {
                return Err(e.held());
            }
            if self.len.load(Ordering::Relaxed) >= self.capacity {
                return Err(Held::Full);
            }
        }
        let entry = Entry {
            spent: None,
            expires: Self::expires(valid_before, now),
        };
        if shard.insert(key, entry) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn purge_all(&self, now: u64) {
        for s in &self.shards {
            let purged = s
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .purge(now);
            self.len.fetch_sub(purged, Ordering::Relaxed);
        }
    }

    /// Marks `key` spent (`how`) until its expiry: it will never serve again. Always recorded,
    /// even in a full guard (it is the record that stops a replay).
    pub fn mark_spent(&self, key: &ReplayKey, valid_before: u64, now: u64, how: Spent) {
        let mut shard = self.shard(key);
        let entry = Entry {
            spent: Some(how),
            expires: Self::expires(valid_before, now),
        };
        if shard.insert(key.clone(), entry) {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Releases an in-flight `key` so that the client can retry the same authorization.
    /// A spent key stays spent.
    pub fn release(&self, key: &ReplayKey) {
        let mut shard = self.shard(key);
        if shard.entries.get(key).is_some_and(|e| e.spent.is_none()) {
            shard.entries.remove(key);
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets `key` whatever its state: for an authorization the chain refused for good
    /// (it can never settle, so holding it protects nothing).
    pub fn forget(&self, key: &ReplayKey) {
        if self.shard(key).entries.remove(key).is_some() {
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The state of `key`, if held.
    pub fn state(&self, key: &ReplayKey) -> Option<Held> {
        self.shard(key).entries.get(key).map(|e| e.held())
    }

    /// Entries held now (live ones, and expired ones not yet purged).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Address, B256};
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
        let g = ReplayGuard::new(100);
        assert_eq!(g.acquire(key(1), 1000, 0), Ok(()));
        assert_eq!(g.acquire(key(1), 1000, 0), Err(Held::InFlight));
        g.release(&key(1));
        assert_eq!(g.acquire(key(1), 1000, 0), Ok(()));
        g.mark_spent(&key(1), 1000, 0, Spent::Settling);
        g.release(&key(1));
        assert_eq!(
            g.acquire(key(1), 1000, 0),
            Err(Held::Spent(Spent::Settling))
        );
        assert_eq!(
            g.acquire(key(2), 1000, 0),
            Ok(()),
            "other nonces are independent"
        );
        assert_eq!(g.len(), 2);
        g.forget(&key(1));
        assert_eq!(g.acquire(key(1), 1000, 0), Ok(()));
    }

    #[test]
    fn exactly_one_concurrent_winner() {
        let g = Arc::new(ReplayGuard::new(100));
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
        let g = ReplayGuard::new(100);
        g.acquire(key(3), 10, 0).unwrap();
        g.mark_spent(&key(3), 10, 0, Spent::Answered);
        assert_eq!(g.acquire(key(3), 10, 9), Err(Held::Spent(Spent::Answered)));
        // At validBefore the chain refuses the authorization itself: the entry may go.
        assert_eq!(g.acquire(key(3), 20, 10), Ok(()));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_full_guard_refuses_and_never_evicts_live_entries() {
        let g = ReplayGuard::new(3);
        for n in 0..3 {
            g.acquire(key(n), 100, 0).unwrap();
        }
        g.mark_spent(&key(0), 100, 0, Spent::Refused);
        assert_eq!(g.acquire(key(10), 100, 1), Err(Held::Full));
        // Every live entry is still there: replays are still refused.
        assert_eq!(g.acquire(key(0), 100, 1), Err(Held::Spent(Spent::Refused)));
        assert_eq!(g.acquire(key(1), 100, 1), Err(Held::InFlight));
        // A release frees a place.
        g.release(&key(1));
        assert_eq!(g.acquire(key(10), 100, 1), Ok(()));
        assert_eq!(g.acquire(key(11), 100, 1), Err(Held::Full));
        // Expired entries make room, and only they: swept in the new key's shard, or in all
        // shards when the guard is full (which depends on the hashing: shards are random).
        assert_eq!(g.acquire(key(11), 200, 100), Ok(()));
        g.purge_all(100);
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn used_marks_are_kept_even_when_full() {
        let g = ReplayGuard::new(1);
        g.acquire(key(1), 100, 0).unwrap();
        g.mark_spent(&key(2), 100, 0, Spent::Settling);
        assert_eq!(g.state(&key(2)), Some(Held::Spent(Spent::Settling)));
    }

    #[test]
    fn released_keys_do_not_grow_the_heap_without_bound() {
        let g = ReplayGuard::new(10);
        for round in 0..10_000u32 {
            let mut k = key(1);
            k.nonce = B256::from(alloy::primitives::U256::from(round));
            g.acquire(k.clone(), 1_000_000, 0).unwrap();
            g.release(&k);
        }
        g.acquire(key(7), 1_000_000, 1).unwrap();
        let heap: usize = g
            .shards
            .iter()
            .map(|s| s.lock().unwrap().expiries.len())
            .sum();
        assert!(heap < 10_000, "heap holds {heap} stale items");
        assert_eq!(g.len(), 1);
    }
}
