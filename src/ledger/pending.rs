//! Payments whose settlement outcome is unknown, or that settled and were not delivered: the
//! ones a retry with the same payment header may redeem.
//!
//! Owns: [`Pending`], an in-memory index (filled from the journal at start) so that the hot path
//! never reads SQLite, and the claim that makes a settled payment deliverable once at a time.

use std::collections::HashMap;
use std::sync::Mutex;

use alloy::primitives::{Address, B256};

use super::ReplayKey;
use crate::journal::Entry;

/// What a pending payment is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Open {
    /// Its outcome is unknown.
    Unknown,
    /// Settled by this transaction, not delivered yet.
    Settled(String),
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    open: Open,
    /// A request is delivering it now.
    claimed: bool,
    /// Unix ms of the next background reading.
    next_read_ms: u64,
    /// Readings so far (for the backoff).
    reads: u32,
}

/// The result of [`Pending::claim`].
#[derive(Debug)]
pub enum Claim {
    /// Not pending: a replay (or delivered already).
    No,
    /// Pending for another resource: it pays for that one, not this.
    Elsewhere,
    /// Another request is delivering it right now.
    Busy,
    /// Its outcome must be read again before anything else.
    Unknown(Box<Entry>),
    /// Settled and now claimed for delivery by the caller.
    Deliver(Box<Entry>, String),
}

/// The pending payments, shared by all requests.
#[derive(Debug, Default)]
pub struct Pending {
    slots: Mutex<HashMap<ReplayKey, Slot>>,
    /// The same payments by payer and nonce: a retry is looked up before the scheme names its
    /// chain and token (v1 payloads carry neither).
    by_nonce: Mutex<HashMap<(Address, B256), ReplayKey>>,
}

impl Pending {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReplayKey, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<(Address, B256), ReplayKey>> {
        self.by_nonce
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key of a pending payment of `from` with `nonce`, if any.
    pub fn find(&self, from: Address, nonce: B256) -> Option<ReplayKey> {
        self.index().get(&(from, nonce)).cloned()
    }

    /// Adds (or updates) a pending payment.
    pub fn put(&self, entry: Entry, open: Open, now_ms: u64) {
        self.index()
            .insert((entry.key.from, entry.key.nonce), entry.key.clone());
        let mut slots = self.lock();
        let key = entry.key.clone();
        match slots.get_mut(&key) {
            Some(s) => {
                s.open = open;
                s.claimed = false;
                s.entry = entry;
            }
            None => {
                slots.insert(
                    key,
                    Slot {
                        entry,
                        open,
                        claimed: false,
                        next_read_ms: now_ms + 1000,
                        reads: 0,
                    },
                );
            }
        }
    }

    /// Takes a pending payment for a retry of `key` for the request target `target`
    /// (`/path?query`): settled ones are claimed for delivery (one request at a time). A payment
    /// redeems the resource it was journaled for, whatever today's price table says of it.
    pub fn claim(&self, key: &ReplayKey, target: &str) -> Claim {
        let mut slots = self.lock();
        let Some(s) = slots.get_mut(key) else {
            return Claim::No;
        };
        if s.entry.released {
            // Deferred payments were delivered already: a retry is a replay.
            return Claim::No;
        }
        if !same_resource(&s.entry.resource, target) {
            // A payment redeems the resource it paid for, not another one.
            return Claim::Elsewhere;
        }
        if s.claimed {
            return Claim::Busy;
        }
        match &s.open {
            Open::Unknown => Claim::Unknown(Box::new(s.entry.clone())),
            Open::Settled(tx) => {
                s.claimed = true;
                Claim::Deliver(Box::new(s.entry.clone()), tx.clone())
            }
        }
    }

    /// A claimed delivery did not happen (upstream error): the payment stays redeemable.
    pub fn unclaim(&self, key: &ReplayKey) {
        if let Some(s) = self.lock().get_mut(key) {
            s.claimed = false;
        }
    }

    /// Removes a payment (delivered, or definitively failed).
    pub fn remove(&self, key: &ReplayKey) {
        if self.lock().remove(key).is_some() {
            self.index().remove(&(key.from, key.nonce));
        }
    }

    /// Unknown payments due for a background reading at `now_ms`, each then scheduled again
    /// with backoff (1 s doubling to 5 min).
    pub fn due(&self, now_ms: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        for s in self.lock().values_mut() {
            if s.open == Open::Unknown && !s.claimed && s.next_read_ms <= now_ms {
                s.reads = s.reads.saturating_add(1);
                let wait = 1000u64.saturating_mul(1 << s.reads.min(9)).min(300_000);
                s.next_read_ms = now_ms + wait;
                out.push(s.entry.clone());
            }
        }
        out
    }

    /// How many payments are pending (unknown, settled-undelivered).
    pub fn counts(&self) -> (usize, usize) {
        let slots = self.lock();
        let unknown = slots.values().filter(|s| s.open == Open::Unknown).count();
        (unknown, slots.len() - unknown)
    }
}

/// Whether the resource URL a payment was journaled for names the request target `target`
/// (its path and query; the scheme and host may be spelt differently by a retry).
pub fn same_resource(resource: &str, target: &str) -> bool {
    resource_target(resource) == target
}

/// The request target (path and query) of a resource URL.
pub fn resource_target(resource: &str) -> &str {
    let rest = resource
        .split_once("://")
        .map_or(resource, |(_, rest)| rest);
    rest.find('/').map_or("/", |i| &rest[i..])
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::journal::JournalState;
    use alloy::primitives::{Address, B256, U256};

    /// A journal entry for `route` (shared with the deferred queue's tests).
    pub(crate) fn entry(route: &str) -> Entry {
        Entry {
            id: 1,
            key: ReplayKey {
                chain_id: 1,
                asset: Address::repeat_byte(1),
                from: Address::repeat_byte(2),
                nonce: B256::repeat_byte(3),
            },
            pay_to: Address::repeat_byte(4),
            amount: U256::from(1),
            network: "eip155:1".into(),
            version: 2,
            route: route.into(),
            resource: format!("http://gw{}", route.trim_end_matches("/**")),
            request: "{}".into(),
            valid_before: 10,
            state: JournalState::Unknown,
            transaction: None,
            reason: None,
            from_block: None,
            created_at: 0,
            updated_at: 0,
            released: false,
        }
    }

    #[test]
    fn a_settled_payment_is_delivered_once_at_a_time() {
        let p = Pending::default();
        let e = entry("/paid/**");
        let k = e.key.clone();
        assert!(matches!(p.claim(&k, "/paid"), Claim::No));
        p.put(e.clone(), Open::Unknown, 0);
        assert!(matches!(p.claim(&k, "/paid"), Claim::Unknown(_)));
        p.put(e, Open::Settled("0xab".into()), 0);
        assert!(
            matches!(p.claim(&k, "/other"), Claim::Elsewhere),
            "another resource"
        );
        assert!(
            matches!(p.claim(&k, "/paid?x=1"), Claim::Elsewhere),
            "another query"
        );
        assert!(matches!(p.claim(&k, "/paid"), Claim::Deliver(_, _)));
        assert!(matches!(p.claim(&k, "/paid"), Claim::Busy));
        p.unclaim(&k);
        assert!(matches!(p.claim(&k, "/paid"), Claim::Deliver(_, _)));
        p.remove(&k);
        assert!(matches!(p.claim(&k, "/paid"), Claim::No));
    }

    #[test]
    fn a_resource_is_its_path_and_query_whatever_the_host() {
        assert!(same_resource(
            "https://api.example/w/paris?u=c",
            "/w/paris?u=c"
        ));
        assert!(same_resource("http://127.0.0.1:8402/", "/"));
        assert!(same_resource("http://h", "/"));
        assert!(!same_resource("https://api.example/w/paris", "/w/rome"));
    }

    #[test]
    fn background_readings_back_off() {
        let p = Pending::default();
        p.put(entry("/x"), Open::Unknown, 0);
        assert!(p.due(500).is_empty());
        assert_eq!(p.due(1000).len(), 1);
        assert!(p.due(2000).is_empty(), "next reading after 2 s");
        assert_eq!(p.due(3000).len(), 1);
        assert_eq!(p.counts(), (1, 0));
    }
}
