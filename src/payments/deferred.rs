//! Deferred settlement (`settlement = "deferred"`): the paid answer is released as soon as the
//! upstream answers below 400, and the payment is settled in the background from the journal.
//!
//! Owns: the exposure book (unsettled value per payer and in all, in micro-dollars) and its
//! [`Reservation`]s, the decision to defer or to settle first ([`Fallback`]), the queue of owed
//! settlements and its worker ([`Payments::run_deferred`]), and the payers whose deferred
//! payments failed (settled first until an operator clears them: `journal clear`).
//!
//! Rules (money safety):
//! - A payment is deferred only within the caps of `[payment.deferred]`, for a payer with no
//!   unpaid or troubled deferred payment, at or below the route's `settle_first_above`, while the
//!   queue can start it within half of `max_delay` (its length over the measured settlement
//!   rate: settlements in flight ÷ their mean duration), and with an authorization valid long
//!   enough to be settled. Otherwise it is settled before release (`after_response`); a cap
//!   never refuses. The queue therefore holds what it can settle in time: under sustained
//!   overload the settlement lag stays bounded and the excess is settled first.
//! - `queued` is durable in the journal before the answer is released. `settling` is written
//!   when the facilitator is called, without waiting for it: a `queued` row may therefore have
//!   been sent already. A crash loses nothing: recovery settles `queued` rows again, and reads
//!   `settling`/`unknown` ones from the chain first (settling again those still unused). The
//!   EIP-3009 nonce admits one transfer, so a second attempt can never charge twice, and its
//!   refusal is checked against the chain (below).
//! - A settlement the facilitator did not receive is retried with backoff until shortly before
//!   the authorization expires. A failure verdict is checked against the chain (another attempt
//!   may have settled it); a payment whose fate is open is read again in the background, like
//!   any unknown outcome. The payer is settled first from the first failure on.
//!
//! Does not own: the admission of a request (`payments`), the batching of settlements (the
//! embedded facilitator's `settle_deferred`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use arc_swap::ArcSwap;
use tokio::sync::{Notify, Semaphore};

use super::pending::Open;
use super::Payments;
use crate::config::DeferredConfig;
use crate::journal::reconcile::Outcome;
use crate::journal::{self, Entry, JournalState};
use crate::protocol::ErrorReason;
use crate::settle::{classify, Settled};
use crate::verify::ReplayKey;

/// Why a deferred route's payment is settled before its answer is released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// The payer has a deferred payment that failed (or is failing) to settle.
    Unpaid,
    /// The amount is above the route's `settle_first_above`.
    AboveThreshold,
    /// `max_per_payer` would be exceeded.
    PerPayer,
    /// `max_total` would be exceeded.
    Total,
    /// The queue is behind: a payment would wait longer than `max_delay`.
    Behind,
    /// The authorization expires too soon to be settled later.
    Expiring,
}

impl Fallback {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Unpaid => "unpaid",
            Fallback::AboveThreshold => "above_threshold",
            Fallback::PerPayer => "max_per_payer",
            Fallback::Total => "max_total",
            Fallback::Behind => "max_delay",
            Fallback::Expiring => "expiring",
        }
    }
}

#[derive(Debug, Default)]
struct Book {
    total: u128,
    per_payer: HashMap<Address, u128>,
}

/// Unsettled value held for one deferred payment; given back when dropped (settled, failed, or
/// never released).
#[derive(Debug)]
pub struct Reservation {
    book: Arc<Mutex<Book>>,
    payer: Address,
    micro: u128,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut b = lock(&self.book);
        b.total = b.total.saturating_sub(self.micro);
        if let Some(v) = b.per_payer.get_mut(&self.payer) {
            *v = v.saturating_sub(self.micro);
            if *v == 0 {
                b.per_payer.remove(&self.payer);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An owed settlement.
#[derive(Debug)]
pub struct Job {
    entry: Entry,
    reservation: Option<Reservation>,
    /// When it entered the queue (unix ms; for the `max_delay` check).
    queued_ms: u64,
    /// Attempts the facilitator did not receive so far.
    attempts: u32,
}

/// The deferred queue, the exposure book and the payers settled first.
pub struct Deferred {
    config: DeferredConfig,
    /// Settlements in flight at once: `concurrency` for a facilitator settling one by one; for a
    /// batching one four batches per signer (being simulated, sent, mined, filling), so that the
    /// rest wait here, where `max_delay` sees them.
    limit: usize,
    /// Mean duration of one settlement attempt, in µs (moving average; a first guess of 1 s
    /// until one is measured). With `limit` it gives the rate the queue is settled at.
    attempt_us: AtomicU64,
    book: Arc<Mutex<Book>>,
    jobs: Mutex<VecDeque<Job>>,
    notify: Notify,
    /// Jobs taken by the worker and not finished (settling, or waiting for a retry).
    busy: AtomicUsize,
    /// Payers with unpaid deliveries in the journal (refreshed by maintenance).
    unpaid: ArcSwap<HashSet<Address>>,
    /// Payers whose deferred payment got a failure verdict not resolved yet.
    troubled: Mutex<HashMap<ReplayKey, Address>>,
    /// Reservations of payments whose outcome is being read (unknown).
    unresolved: Mutex<HashMap<ReplayKey, Reservation>>,
}

impl Deferred {
    /// An empty queue with `config`'s caps; `limit`: settlements in flight at once.
    pub fn new(config: DeferredConfig, limit: usize) -> Self {
        Deferred {
            config,
            limit: limit.max(1),
            attempt_us: AtomicU64::new(FIRST_ATTEMPT_US),
            book: Arc::default(),
            jobs: Mutex::default(),
            notify: Notify::new(),
            busy: AtomicUsize::new(0),
            unpaid: ArcSwap::from_pointee(HashSet::new()),
            troubled: Mutex::default(),
            unresolved: Mutex::default(),
        }
    }

    /// The caps.
    pub fn config(&self) -> &DeferredConfig {
        &self.config
    }

    fn is_flagged(&self, payer: Address) -> bool {
        self.unpaid.load().contains(&payer) || lock(&self.troubled).values().any(|p| *p == payer)
    }

    /// Decides whether a payment of `micro` micro-dollars by `payer`, valid before
    /// `valid_before` (unix s), may be deferred at `now_ms`; reserves its value if so.
    ///
    /// # Errors
    /// Why it must be settled first.
    pub fn reserve(
        &self,
        payer: Address,
        micro: u128,
        valid_before: u64,
        threshold: Option<u128>,
        now_ms: u64,
    ) -> Result<Reservation, Fallback> {
        if threshold.is_some_and(|t| micro > t) {
            return Err(Fallback::AboveThreshold);
        }
        let delay = u64::try_from(self.config.max_delay.as_millis()).unwrap_or(u64::MAX);
        // Settled within max_delay, with time left for retries and a slow block.
        if valid_before.saturating_mul(1000) < now_ms + 2 * delay + 30_000 {
            return Err(Fallback::Expiring);
        }
        if self.is_flagged(payer) {
            return Err(Fallback::Unpaid);
        }
        if self.behind(now_ms, delay) {
            return Err(Fallback::Behind);
        }
        let mut b = lock(&self.book);
        let mine = b.per_payer.get(&payer).copied().unwrap_or(0);
        if mine + micro > self.config.max_per_payer {
            return Err(Fallback::PerPayer);
        }
        if b.total + micro > self.config.max_total {
            return Err(Fallback::Total);
        }
        b.total += micro;
        *b.per_payer.entry(payer).or_default() += micro;
        drop(b);
        Ok(Reservation {
            book: self.book.clone(),
            payer,
            micro,
        })
    }

    /// Whether a payment queued at `now_ms` might not start within half of `max_delay`
    /// (`delay`, ms): the oldest has waited that long already, or more settlements must finish
    /// before it gets a place than the measured rate finishes in that time. With a free place
    /// it starts at once, however slow the last attempts were (so a slow spell never keeps
    /// deferral off: the next attempts measure the rate again).
    fn behind(&self, now_ms: u64, delay: u64) -> bool {
        let jobs = lock(&self.jobs);
        if jobs
            .front()
            .is_some_and(|j| now_ms.saturating_sub(j.queued_ms) >= delay / 2)
        {
            return true;
        }
        let taken = jobs.len() + self.busy.load(Ordering::SeqCst);
        drop(jobs);
        // Settlements to finish before this one gets a place.
        let ahead = (taken + 1).saturating_sub(self.limit) as u64;
        let attempt_us = self.attempt_us.load(Ordering::Relaxed);
        let wait_us = ahead.saturating_mul(attempt_us) / self.limit as u64;
        wait_us >= delay.saturating_mul(1000) / 2
    }

    /// Takes one settlement attempt's duration into the moving average (weight 1/8).
    pub fn record_attempt(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .attempt_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(old - old / 8 + sample / 8)
            });
    }

    /// Reserves without checking the caps (recovery: the answer went out already).
    fn reserve_owed(&self, payer: Address, micro: u128) -> Reservation {
        let mut b = lock(&self.book);
        b.total += micro;
        *b.per_payer.entry(payer).or_default() += micro;
        Reservation {
            book: self.book.clone(),
            payer,
            micro,
        }
    }

    /// Queues an owed settlement.
    pub fn push(&self, entry: Entry, reservation: Option<Reservation>, now_ms: u64) {
        lock(&self.jobs).push_back(Job {
            entry,
            reservation,
            queued_ms: now_ms,
            attempts: 0,
        });
        self.notify.notify_one();
    }

    fn push_back(&self, job: Job) {
        lock(&self.jobs).push_back(job);
        self.notify.notify_one();
    }

    async fn next(&self) -> Job {
        loop {
            let notified = self.notify.notified();
            if let Some(j) = lock(&self.jobs).pop_front() {
                self.busy.fetch_add(1, Ordering::SeqCst);
                return j;
            }
            notified.await;
        }
    }

    /// Owed settlements not finished: queued, settling, or waiting for a retry.
    pub fn owed(&self) -> usize {
        lock(&self.jobs).len() + self.busy.load(Ordering::SeqCst)
    }

    /// Unsettled value now, in micro-dollars (in all, and the number of payers holding some).
    pub fn exposure(&self) -> (u128, usize) {
        let b = lock(&self.book);
        (b.total, b.per_payer.len())
    }

    /// Replaces the payers with unpaid deliveries (from the journal).
    pub fn set_unpaid(&self, payers: HashSet<Address>) {
        if **self.unpaid.load() != payers {
            self.unpaid.store(Arc::new(payers));
        }
    }
}

/// `amount` atomic units of a token with `decimals` decimals, in micro-dollars (rounded up).
pub fn micro_dollars(amount: U256, decimals: u8) -> u128 {
    let v = if decimals >= 6 {
        let div = U256::from(10u8).pow(U256::from(decimals - 6));
        amount.div_ceil(div)
    } else {
        amount.saturating_mul(U256::from(10u8).pow(U256::from(6 - decimals)))
    };
    u128::try_from(v).unwrap_or(u128::MAX)
}

/// The assumed duration of a settlement attempt before one is measured.
const FIRST_ATTEMPT_US: u64 = 1_000_000;

/// Backoff of a settlement the facilitator did not receive: 1 s doubling to 30 s.
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((1000u64 << attempts.min(5)).min(30_000))
}

impl Payments {
    /// The deferred queue.
    pub fn deferred(&self) -> &Deferred {
        &self.deferred
    }

    /// Settles owed deferred payments as they are queued, forever: many at once when the
    /// facilitator batches them, `[payment.deferred] concurrency` at a time otherwise.
    pub async fn run_deferred(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.deferred().limit));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let job = self.deferred().next().await;
            let me = self.clone();
            tokio::spawn(async move {
                me.settle_owed(job).await;
                me.deferred().busy.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            });
        }
    }

    /// One attempt at an owed settlement.
    async fn settle_owed(&self, mut job: Job) {
        let started = std::time::Instant::now();
        let e = &job.entry;
        if let Some(j) = &self.journal {
            // The block noted when it was queued stays: an earlier attempt (before a crash) may
            // have been mined since, and the chain's logs are searched from there.
            let from = e
                .from_block
                .or_else(|| self.reconciler.cached_head(e.key.chain_id));
            j.transition_at(e.id, JournalState::Settling, from);
        }
        let facilitator = self.verifier.facilitator().clone();
        let outcome = classify(facilitator.settle_deferred(&e.request).await);
        if !matches!(outcome, Settled::NotSent { .. }) {
            self.deferred().record_attempt(started.elapsed());
        }
        match outcome {
            Settled::Yes { transaction } => self.owed_settled(&job.entry, transaction),
            Settled::NotSent { reason } => {
                if let Some(j) = &self.journal {
                    j.transition(e.id, JournalState::Queued, None, None);
                }
                self.retry_owed(job, reason).await;
            }
            Settled::No {
                reason,
                transaction,
            } => {
                // Another attempt (before a crash, or a transaction still pending) may have
                // settled it: the chain decides.
                let mut entry = job.entry.clone();
                entry.transaction = transaction.or(entry.transaction);
                match self.reconciler.read(&entry).await {
                    Outcome::Settled { transaction } => self.owed_settled(&entry, transaction),
                    Outcome::Failed { reason: chain } => {
                        self.owed_failed(&entry, &format!("{}: {chain}", reason.as_str()));
                    }
                    Outcome::Open => {
                        tracing::warn!(payer = %entry.key.from, reason = reason.as_str(), "deferred settlement refused; its authorization is still open: read again in the background, the payer is settled first meanwhile");
                        lock(&self.deferred().troubled).insert(entry.key.clone(), entry.key.from);
                        self.owed_unknown(entry, job.reservation.take());
                    }
                }
            }
            Settled::Unknown {
                reason,
                transaction,
            } => {
                tracing::warn!(payer = %e.key.from, reason = reason.as_str(), "deferred settlement outcome unknown: read from the chain in the background");
                let mut entry = job.entry.clone();
                entry.transaction = transaction.or(entry.transaction);
                self.owed_unknown(entry, job.reservation.take());
            }
        }
    }

    /// Tries again after a backoff, or gives up when the authorization is about to expire
    /// (its fate is then read from the chain).
    async fn retry_owed(&self, mut job: Job, reason: ErrorReason) {
        let wait = backoff(job.attempts);
        job.attempts += 1;
        let deadline_ms = job.entry.valid_before.saturating_mul(1000);
        let now = journal::now_ms();
        let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
        if now + wait_ms + 10_000 >= deadline_ms {
            tracing::error!(payer = %job.entry.key.from, reason = reason.as_str(), attempts = job.attempts, "deferred settlement could not be sent before its authorization expires");
            let entry = job.entry.clone();
            lock(&self.deferred().troubled).insert(entry.key.clone(), entry.key.from);
            self.owed_unknown(entry, job.reservation.take());
            return;
        }
        tracing::info!(payer = %job.entry.key.from, reason = reason.as_str(), retry_in = ?wait, "deferred settlement not sent; retrying");
        tokio::time::sleep(wait).await;
        job.queued_ms = journal::now_ms();
        // Counted as busy until back in the queue (drain waits for it).
        self.deferred().push_back(job);
    }

    fn owed_settled(&self, e: &Entry, transaction: String) {
        self.metrics
            .revenue(&e.route, &e.network, e.key.asset, e.amount);
        self.metrics
            .payment(&e.route, &e.network, "deferred_settled", None);
        self.metrics
            .deferred_lag(journal::now_ms().saturating_sub(e.created_at));
        if let Some(j) = &self.journal {
            j.transition(e.id, JournalState::Delivered, Some(transaction), None);
        }
        lock(&self.deferred().troubled).remove(&e.key);
        lock(&self.deferred().unresolved).remove(&e.key);
        self.pending.remove(&e.key);
    }

    fn owed_failed(&self, e: &Entry, reason: &str) {
        tracing::error!(payer = %e.key.from, nonce = %e.key.nonce, amount = %e.amount, route = %e.route, reason, "deferred payment failed to settle: an unpaid delivery; the payer is settled first until cleared (`x402-gateway journal clear --payer`)");
        let parsed = ErrorReason::parse(reason.split(':').next().unwrap_or(reason));
        self.metrics
            .payment(&e.route, &e.network, "deferred_failed", Some(&parsed));
        if let Some(j) = &self.journal {
            j.transition(e.id, JournalState::Failed, None, Some(reason.to_owned()));
        }
        // Settled first from now on (maintenance keeps it so from the journal).
        let mut unpaid = (**self.deferred().unpaid.load()).clone();
        unpaid.insert(e.key.from);
        self.deferred().unpaid.store(Arc::new(unpaid));
        lock(&self.deferred().troubled).remove(&e.key);
        lock(&self.deferred().unresolved).remove(&e.key);
        self.pending.remove(&e.key);
    }

    fn owed_unknown(&self, mut entry: Entry, reservation: Option<Reservation>) {
        if let Some(j) = &self.journal {
            j.transition(
                entry.id,
                JournalState::Unknown,
                entry.transaction.clone(),
                None,
            );
        }
        if let Some(r) = reservation {
            lock(&self.deferred().unresolved).insert(entry.key.clone(), r);
        }
        entry.state = JournalState::Unknown;
        entry.released = true;
        self.pending.put(entry, Open::Unknown, journal::now_ms());
    }

    /// An outcome read from the chain for a released (deferred) payment.
    pub(super) fn resolved_owed(&self, e: &Entry, o: &Outcome) {
        match o {
            Outcome::Settled { transaction } => self.owed_settled(e, transaction.clone()),
            Outcome::Failed { reason } => self.owed_failed(e, reason),
            Outcome::Open => {}
        }
    }

    /// Queues a deferred payment whose answer is being released: durable first.
    ///
    /// # Errors
    /// The journal cannot make it durable (the answer must not be released).
    pub(super) async fn queue_owed(
        &self,
        entry: Entry,
        reservation: Option<Reservation>,
    ) -> Result<(), journal::JournalError> {
        if let Some(j) = &self.journal {
            j.record_durable(entry.clone()).await?;
        }
        self.metrics
            .payment(&entry.route, &entry.network, "queued", None);
        self.deferred.push(entry, reservation, journal::now_ms());
        Ok(())
    }

    /// Recovery of an owed settlement left by an earlier process: queued again (with its value
    /// reserved), or read from the chain first when it may have been sent.
    pub(super) async fn recover_owed(&self, e: Entry, micro: u128) -> RecoveredOwed {
        let reservation = self.deferred().reserve_owed(e.key.from, micro);
        if e.state == JournalState::Queued {
            self.deferred()
                .push(e, Some(reservation), journal::now_ms());
            return RecoveredOwed::Queued;
        }
        match self.reconciler.read(&e).await {
            Outcome::Open => {
                // Not settled (yet): settle it (again). The chain admits one transfer.
                if let Some(j) = &self.journal {
                    j.transition(e.id, JournalState::Queued, None, None);
                }
                self.deferred()
                    .push(e, Some(reservation), journal::now_ms());
                RecoveredOwed::Queued
            }
            o => {
                self.resolved_owed(&e, &o);
                if matches!(o, Outcome::Settled { .. }) {
                    RecoveredOwed::Settled
                } else {
                    RecoveredOwed::Failed
                }
            }
        }
    }

    /// Refreshes the payers with unpaid deliveries from the journal (an operator may have
    /// cleared some with `journal clear`).
    pub(super) async fn refresh_unpaid(&self) {
        let Some(j) = &self.journal else {
            return;
        };
        let path = j.path().to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let conn = journal::open_reader(&path).ok()?;
            journal::unpaid_payers(&conn).ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(payers) = read {
            self.deferred
                .set_unpaid(payers.into_iter().map(|(p, _)| p).collect());
        }
    }
}

/// What recovery did with one owed settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveredOwed {
    /// Queued to be settled.
    Queued,
    /// Found settled on chain.
    Settled,
    /// Found failed on chain (an unpaid delivery).
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DeferredConfig {
        DeferredConfig {
            max_per_payer: 1000,
            max_total: 2500,
            max_delay: Duration::from_secs(5),
            settle_first_above: None,
            concurrency: 1,
        }
    }

    const FAR: u64 = 10_000_000_000;

    #[test]
    fn caps_hold_and_come_back_when_reservations_drop() {
        let d = Deferred::new(cfg(), 1);
        let (a, b, c) = (
            Address::repeat_byte(1),
            Address::repeat_byte(2),
            Address::repeat_byte(3),
        );
        let r1 = d.reserve(a, 600, FAR, None, 0).unwrap();
        assert_eq!(
            d.reserve(a, 500, FAR, None, 0).unwrap_err(),
            Fallback::PerPayer
        );
        let r2 = d.reserve(a, 400, FAR, None, 0).unwrap();
        let r3 = d.reserve(b, 1000, FAR, None, 0).unwrap();
        assert_eq!(
            d.reserve(c, 501, FAR, None, 0).unwrap_err(),
            Fallback::Total
        );
        assert_eq!(d.exposure(), (2000, 2));
        drop(r1);
        assert_eq!(d.exposure(), (1400, 2));
        let _r4 = d.reserve(a, 600, FAR, None, 0).unwrap();
        drop((r2, r3));
        assert_eq!(d.exposure(), (600, 1));
    }

    #[test]
    fn threshold_expiry_flags_and_backlog_fall_back() {
        let d = Deferred::new(cfg(), 1);
        let a = Address::repeat_byte(1);
        assert_eq!(
            d.reserve(a, 101, FAR, Some(100), 0).unwrap_err(),
            Fallback::AboveThreshold
        );
        assert!(d.reserve(a, 100, FAR, Some(100), 0).is_ok());
        // Valid for 30 s from now: too short for a 5 s delay plus retries.
        let now = 1_000_000_000;
        assert_eq!(
            d.reserve(a, 1, now / 1000 + 30, None, now).unwrap_err(),
            Fallback::Expiring
        );
        assert!(d.reserve(a, 1, now / 1000 + 60, None, now).is_ok());
        d.set_unpaid(HashSet::from([a]));
        assert_eq!(d.reserve(a, 1, FAR, None, 0).unwrap_err(), Fallback::Unpaid);
        d.set_unpaid(HashSet::new());
        assert!(d.reserve(a, 1, FAR, None, 0).is_ok());
    }

    #[test]
    fn a_queue_longer_than_its_measured_rate_settles_in_time_falls_back() {
        // Two places, 1 s per attempt (the first guess): 2 per second; max_delay 5 s, so a
        // payment must get a place within 2.5 s: at most 4 to finish before it, 6 queued.
        let a = Address::repeat_byte(1);
        let now = 1_000_000;
        // Defers `n` payments, then finds the queue behind.
        let fill = |d: &Deferred, n: usize| {
            for _ in 0..n {
                assert!(d.reserve(a, 1, FAR, None, now).is_ok());
                d.push(super::super::pending::tests::entry("/p"), None, now);
            }
            assert_eq!(
                d.reserve(a, 1, FAR, None, now).unwrap_err(),
                Fallback::Behind
            );
        };
        let d = Deferred::new(cfg(), 2);
        fill(&d, 6);
        // Attempts measured at 100 ms: 20 per second, the same queue starts in time.
        for _ in 0..64 {
            d.record_attempt(Duration::from_millis(100));
        }
        assert!(d.reserve(a, 1, FAR, None, now).is_ok());
        // The oldest has waited half of max_delay: behind, whatever the rate.
        assert_eq!(
            d.reserve(a, 1, FAR, None, now + 2_500).unwrap_err(),
            Fallback::Behind
        );
        // Attempts that took 30 s (timeouts) with a place free: deferred all the same, or the
        // average could never be measured again.
        let d = Deferred::new(cfg(), 2);
        for _ in 0..64 {
            d.record_attempt(Duration::from_secs(30));
        }
        fill(&d, 2);
    }

    #[test]
    fn micro_dollars_round_up() {
        assert_eq!(micro_dollars(U256::from(1000), 6), 1000);
        assert_eq!(micro_dollars(U256::from(1), 18), 1);
        assert_eq!(micro_dollars(U256::from(10u64.pow(12)), 18), 1);
        assert_eq!(micro_dollars(U256::from(3), 2), 30_000);
    }
}
