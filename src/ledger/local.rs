//! [`LocalLedger`]: the ledger of one node, in memory with the SQLite journal underneath.
//!
//! Owns: putting the in-memory parts (replay guard, redeemable payments, exposure book, owed
//! queue) together with the journal. Memory answers the hot path without a disk read; the
//! journal makes what matters durable, and is where processes sharing it (an upgrade
//! hand-over) meet: while shared, a claim is also taken in the journal before anything is
//! forwarded, and the first durable record of every payment takes its claim there in any case.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use alloy::primitives::{Address, B256};
use async_trait::async_trait;

use super::exposure::{Book, Exposure};
use super::guard::{Held, ReplayGuard};
use super::pending::{Claim, Open, Pending};
use super::queue::{Job, Queue};
use super::{Claimed, Ledger, Redeem, ReplayKey, Spent};
use crate::config::DeferredConfig;
use crate::flow::{Fallback, State};
use crate::journal::{self, Entry, Journal, JournalError, JournalState};

/// One node's ledger.
pub struct LocalLedger {
    guard: ReplayGuard,
    pending: Pending,
    book: Mutex<Book>,
    queue: Queue,
    deferred: DeferredConfig,
    journal: Option<Journal>,
    /// Another process serves from the same journal now (an upgrade hand-over).
    shared: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalLedger {
    /// A ledger holding at most `max_pending` live authorizations, with `deferred`'s caps, an
    /// owed queue settling `owed_limit` at once, recording in `journal` (none: memory only).
    pub fn new(
        max_pending: usize,
        deferred: DeferredConfig,
        owed_limit: usize,
        journal: Option<Journal>,
    ) -> Self {
        LocalLedger {
            guard: ReplayGuard::new(max_pending),
            pending: Pending::default(),
            book: Mutex::default(),
            queue: Queue::new(owed_limit),
            deferred,
            journal,
            shared: AtomicBool::new(false),
        }
    }

    /// The journal, when payments are journaled.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Whether `key` is held now (tests, the admin view).
    pub fn held(&self, key: &ReplayKey) -> Option<Held> {
        self.guard.state(key)
    }
}

#[async_trait]
impl Ledger for LocalLedger {
    async fn claim(
        &self,
        key: &ReplayKey,
        valid_before: u64,
        id: i64,
        exposure: Option<&Exposure>,
        now_ms: u64,
    ) -> Claimed {
        let now = now_ms / 1000;
        match self.guard.acquire(key.clone(), valid_before, now) {
            Ok(()) => {}
            Err(Held::InFlight) => return Claimed::InFlight,
            Err(Held::Spent(how)) => return Claimed::Spent(how),
            Err(Held::Full) => return Claimed::Full,
        }
        if self.shared.load(Ordering::Acquire) {
            if let Some(j) = &self.journal {
                match j.claim(key, id, valid_before).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // The other process took it (serves it now, or served it).
                        self.guard
                            .mark_spent(key, valid_before, now, Spent::Settling);
                        return Claimed::Spent(Spent::Settling);
                    }
                    Err(_) => {
                        self.guard.release(key);
                        return Claimed::Unavailable;
                    }
                }
            }
        }
        let deferral = exposure.map(|e| {
            // Owed payments hold their authorizations until they expire: they may take at
            // most half of the guard, or a flood of unpaid deliveries would fill it.
            if self.guard.len().saturating_mul(2) > self.guard.capacity() {
                return Err(Fallback::Guard);
            }
            let delay = crate::clock::millis(self.deferred.max_delay);
            let behind = self.queue.behind(now_ms, delay);
            lock(&self.book).reserve(&self.deferred, e, now_ms, behind)
        });
        Claimed::Fresh(deferral)
    }

    fn spend(&self, key: &ReplayKey, valid_before: u64, how: Spent) {
        self.guard
            .mark_spent(key, valid_before, crate::clock::unix_now(), how);
    }

    fn release(&self, key: &ReplayKey, id: i64) {
        self.guard.release(key);
        if let Some(j) = &self.journal {
            j.unclaim(key, id);
        }
    }

    fn forget(&self, key: &ReplayKey, id: i64) {
        self.guard.forget(key);
        if let Some(j) = &self.journal {
            j.unclaim(key, id);
        }
    }

    fn claims(&self) -> (usize, usize) {
        (self.guard.len(), self.guard.capacity())
    }

    fn recheck(&self, e: &Exposure, now_ms: u64) -> Result<(), Fallback> {
        lock(&self.book).recheck(&self.deferred, e, now_ms)
    }

    fn unreserve(&self, key: &ReplayKey) {
        lock(&self.book).release(key);
    }

    fn reserve_owed(&self, key: &ReplayKey, payer: Address, micro: u128) {
        lock(&self.book).reserve_owed(key.clone(), payer, micro);
    }

    fn owed_failed(&self, key: &ReplayKey, payer: Address, micro: u128) {
        lock(&self.book).failed(key, payer, micro);
    }

    fn owed_troubled(&self, key: &ReplayKey, payer: Address) {
        lock(&self.book).trouble(key.clone(), payer);
    }

    fn set_unpaid(&self, unpaid: HashMap<Address, u128>) {
        lock(&self.book).set_unpaid(unpaid);
    }

    fn exposure(&self) -> (u128, usize) {
        lock(&self.book).exposure()
    }

    fn flagged(&self) -> HashSet<Address> {
        lock(&self.book).flagged()
    }

    fn enqueue(&self, entry: Entry, now_ms: u64) {
        self.queue.push(entry, now_ms);
    }

    fn requeue(&self, job: Job) {
        self.queue.push_job(job);
    }

    async fn next_owed(&self) -> Job {
        self.queue.next().await
    }

    fn owed_done(&self) {
        self.queue.done();
    }

    fn owed(&self) -> usize {
        self.queue.owed()
    }

    fn record_attempt(&self, took: std::time::Duration) {
        self.queue.record_attempt(took);
    }

    fn owed_limit(&self) -> usize {
        self.queue.limit()
    }

    fn redeemable(&self, from: Address, nonce: B256, target: &str) -> Redeem {
        let Some(key) = self.pending.find(from, nonce) else {
            return Redeem::No;
        };
        match self.pending.claim(&key, target) {
            Claim::No => Redeem::No,
            Claim::Elsewhere => Redeem::Elsewhere,
            Claim::Busy => Redeem::Busy,
            Claim::Unknown(e) => Redeem::Unknown(e),
            Claim::Deliver(mut e, tx) => {
                e.transaction = Some(tx);
                Redeem::Deliver(e)
            }
        }
    }

    fn keep_redeemable(&self, e: Entry, open: Open, now_ms: u64) {
        self.pending.put(e, open, now_ms);
    }

    fn unredeemable(&self, key: &ReplayKey) {
        self.pending.remove(key);
    }

    fn due(&self, now_ms: u64) -> Vec<Entry> {
        self.pending.due(now_ms)
    }

    fn pending_counts(&self) -> (usize, usize) {
        self.pending.counts()
    }

    fn is_recording(&self) -> bool {
        self.journal.as_ref().is_none_or(Journal::is_healthy)
    }

    fn next_id(&self) -> i64 {
        self.journal.as_ref().map_or(0, Journal::next_id)
    }

    fn record(&self, e: Entry) {
        if let Some(j) = &self.journal {
            j.record(e);
        }
    }

    async fn record_durable(&self, e: Entry, claim: bool) -> bool {
        match &self.journal {
            Some(j) => j.record_durable(e, claim).await.unwrap_or(false),
            None => true,
        }
    }

    fn transition(&self, id: i64, state: &State, from_block: Option<u64>) {
        if let Some(j) = &self.journal {
            j.transition_state(id, state, from_block);
        }
    }

    async fn transition_durable(&self, id: i64, state: &State, from_block: Option<u64>) -> bool {
        match &self.journal {
            Some(j) => j
                .transition_state_durable(id, state, from_block)
                .await
                .unwrap_or(false),
            None => true,
        }
    }

    fn undeliver(&self, id: i64) {
        if let Some(j) = &self.journal {
            j.transition_from(id, JournalState::Delivered, JournalState::Settled);
        }
    }

    async fn recorded_state(&self, id: i64) -> Option<JournalState> {
        let path = self.journal.as_ref()?.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = journal::open_reader(&path).ok()?;
            journal::state_of(&conn, id).ok().flatten()
        })
        .await
        .ok()
        .flatten()
    }

    async fn flush(&self) -> Result<(), JournalError> {
        match &self.journal {
            Some(j) => j.flush().await,
            None => Ok(()),
        }
    }

    fn set_shared(&self, shared: bool) {
        self.shared.store(shared, Ordering::Release);
    }

    async fn take_over(&self, id: i64) -> bool {
        match &self.journal {
            Some(j) => j.take_over(id).await.unwrap_or(false),
            None => true,
        }
    }
}
