//! The worker that settles owed deferred payments (`settlement = "deferred"`: the answer went
//! out on credit, within `[payment.deferred]`'s caps).
//!
//! Owns: [`Payments::run_deferred`] and what becomes of each owed settlement:
//! - settled: recorded `delivered` with its transaction, its value leaves the book;
//! - not sent (the facilitator was not reached): tried again with backoff;
//! - refused or unknown: the chain decides. Settled there: as above. Failed for good (used by
//!   someone else, cancelled, expired unused): an unpaid delivery, whose value stays counted
//!   against the caps and whose payer is settled first until an operator clears it. Still
//!   open: submitted again (the nonce makes that safe) with backoff until shortly before the
//!   authorization expires, the payer settled first meanwhile; then read in the background.
//!   An outage is never a refusal.
//!
//! `settling` is written when the facilitator is called, without waiting for it: a `queued` row
//! may therefore have been sent already. A crash loses nothing: recovery settles `queued` rows
//! again, and reads `settling`/`unknown` ones from the chain first. The EIP-3009-style nonce of
//! every scheme we settle admits one transfer, so a second attempt can never charge twice.
//!
//! Does not own: the queue and the book (`ledger`), the batching of settlements (the embedded
//! facilitator's `settle_deferred`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::recover::Recovered;
use super::Payments;
use crate::flow::{Outcome, Settled};
use crate::journal::{Entry, JournalState};
use crate::ledger::exposure::micro_dollars;
use crate::ledger::{Job, Open};
use crate::protocol::ErrorReason;
use crate::settle::classify;

/// Backoff of a settlement that did not settle: 1 s doubling to 30 s.
fn backoff(attempts: u32) -> Duration {
    Duration::from_millis((1000u64 << attempts.min(5)).min(30_000))
}

/// An owed settlement is given up this long before its authorization expires (its fate is then
/// read from the chain).
const GIVE_UP_BEFORE_EXPIRY_MS: u64 = 10_000;

impl Payments {
    /// Settles owed deferred payments as they are queued, forever: many at once when the
    /// facilitator batches them, `[payment.deferred] concurrency` at a time otherwise.
    pub async fn run_deferred(self: Arc<Self>) {
        let permits = Arc::new(Semaphore::new(self.ledger.owed_limit()));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let job = self.ledger.next_owed().await;
            let me = self.clone();
            tokio::spawn(async move {
                me.settle_owed(job).await;
                me.ledger.owed_done();
                drop(permit);
            });
        }
    }

    /// Owed settlements not finished: queued, settling, or waiting for a retry.
    pub fn owed(&self) -> usize {
        self.ledger.owed()
    }

    /// One attempt at an owed settlement.
    async fn settle_owed(&self, mut job: Job) {
        let started = crate::clock::instant();
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
            self.ledger.record_attempt(started.elapsed());
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
            }
            | Settled::Unknown {
                reason,
                transaction,
            } => {
                // Another attempt (before a crash, or a transaction still pending) may have
                // settled it: the chain decides.
                job.entry.transaction = transaction.or(job.entry.transaction.take());
                match self.reconciler.read(&job.entry).await {
                    Outcome::Settled { transaction } => self.owed_settled(&job.entry, transaction),
                    Outcome::Failed { reason: chain } => {
                        self.owed_failed(&job.entry, &format!("{}: {chain}", reason.as_str()));
                    }
                    Outcome::Open => {
                        // Refused (or lost) while its authorization is open: a batch starved of
                        // gas, a node's error. Submitted again until shortly before it expires.
                        tracing::warn!(payer = %job.entry.key.from, reason = reason.as_str(), "deferred settlement not settled; its authorization is still open: submitting it again, the payer is settled first meanwhile");
                        self.ledger
                            .owed_troubled(&job.entry.key, job.entry.key.from);
                        self.retry_owed(job, reason).await;
                    }
                }
            }
        }
    }

    /// Tries again after a backoff, or gives up when the authorization is about to expire
    /// (its fate is then read from the chain in the background).
    async fn retry_owed(&self, mut job: Job, reason: ErrorReason) {
        let wait = backoff(job.attempts);
        job.attempts += 1;
        let deadline_ms = job.entry.valid_before.saturating_mul(1000);
        let now = self.clock.now_ms();
        if now + crate::clock::millis(wait) + GIVE_UP_BEFORE_EXPIRY_MS >= deadline_ms {
            tracing::error!(payer = %job.entry.key.from, reason = reason.as_str(), attempts = job.attempts, "deferred settlement could not be settled before its authorization expires");
            self.ledger
                .owed_troubled(&job.entry.key, job.entry.key.from);
            self.owed_unknown(job.entry);
            return;
        }
        tracing::info!(payer = %job.entry.key.from, reason = reason.as_str(), retry_in = ?wait, "deferred settlement retried");
        tokio::time::sleep(wait).await;
        job.queued_ms = self.clock.now_ms();
        if let Some(j) = &self.journal {
            j.transition(job.entry.id, JournalState::Queued, None, None);
        }
        // Counted as busy until back in the queue (the drain waits for it).
        self.ledger.requeue(job);
    }

    fn owed_settled(&self, e: &Entry, transaction: String) {
        self.metrics
            .revenue(&e.route, &e.network, e.key.asset, e.amount);
        self.metrics
            .payment(&e.route, &e.network, "deferred_settled", None);
        self.metrics
            .deferred_lag(self.clock.now_ms().saturating_sub(e.created_at));
        if let Some(j) = &self.journal {
            j.transition(e.id, JournalState::Delivered, Some(transaction), None);
        }
        self.ledger.unreserve(&e.key);
        self.ledger.unredeemable(&e.key);
    }

    fn owed_failed(&self, e: &Entry, reason: &str) {
        tracing::error!(payer = %e.key.from, nonce = %e.key.nonce, amount = %e.amount, route = %e.route, reason, "deferred payment failed to settle: an unpaid delivery; its value stays counted and the payer is settled first until cleared (`x402-gateway journal clear --payer`)");
        let parsed = ErrorReason::parse(reason.split(':').next().unwrap_or(reason));
        self.metrics
            .payment(&e.route, &e.network, "deferred_failed", Some(&parsed));
        if let Some(j) = &self.journal {
            j.transition(e.id, JournalState::Failed, None, Some(reason.to_owned()));
        }
        let micro = micro_dollars(e.amount, self.decimals_of(e.key.asset));
        self.ledger.owed_failed(&e.key, e.key.from, micro);
        // The payer is settled first from now on, so its header can never be served again
        // unpaid: the guard need not hold it until it expires (a flood of such deliveries must
        // not fill it).
        self.ledger.forget(&e.key, e.id);
        self.ledger.unredeemable(&e.key);
    }

    fn owed_unknown(&self, mut entry: Entry) {
        if let Some(j) = &self.journal {
            j.transition(
                entry.id,
                JournalState::Unknown,
                entry.transaction.clone(),
                None,
            );
        }
        entry.state = JournalState::Unknown;
        entry.released = true;
        self.ledger
            .keep_redeemable(entry, Open::Unknown, self.clock.now_ms());
    }

    /// An outcome read from the chain for a released (deferred) payment.
    pub(super) fn resolved_owed(&self, e: &Entry, o: &Outcome) {
        match o {
            Outcome::Settled { transaction } => self.owed_settled(e, transaction.clone()),
            Outcome::Failed { reason } => self.owed_failed(e, reason),
            Outcome::Open => {}
        }
    }

    /// Recovery of an owed settlement left by an earlier process: queued again (with its value
    /// reserved), or read from the chain first when it may have been sent.
    pub(super) async fn recover_owed(&self, e: Entry, micro: u128) -> Recovered {
        self.ledger.reserve_owed(&e.key, e.key.from, micro);
        let now = self.clock.now_ms();
        if e.state == JournalState::Queued {
            self.ledger.enqueue(e, now);
            return Recovered::Queued;
        }
        match self.reconciler.read(&e).await {
            Outcome::Open => {
                // Not settled (yet): settle it (again). The chain admits one transfer.
                if let Some(j) = &self.journal {
                    j.transition(e.id, JournalState::Queued, None, None);
                }
                self.ledger.enqueue(e, now);
                Recovered::Queued
            }
            o => {
                self.resolved_owed(&e, &o);
                if matches!(o, Outcome::Settled { .. }) {
                    Recovered::Settled
                } else {
                    Recovered::Failed
                }
            }
        }
    }
}
