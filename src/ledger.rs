//! The shared payment state, behind one trait: who holds which authorization (the replay
//! guard), which payments a retry may redeem, how much value is out on credit and which
//! settlements are owed, and the durable record of every payment.
//!
//! Owns: [`Ledger`] (the operations, each atomic: claim-if-unused, reserve-exposure,
//! record-with-claim, transition-if-state) and its types; [`local::LocalLedger`], the one
//! implementation today (memory, and the SQLite journal). A networked store (the fleet) can
//! implement the same trait with one round trip per paid request: admission is one
//! [`Ledger::claim`] (with the exposure reservation of a deferred route), and every other
//! operation of a request's flow is a write it can make without waiting, except the durable
//! records the flow waits for.
//!
//! Does not own: what to do with a payment (`flow`, `payments`), reading the chain
//! (`journal::reconcile`).

pub mod exposure;
pub mod guard;
pub mod local;
pub mod pending;
pub mod queue;

use std::collections::HashSet;

use alloy::primitives::{Address, B256};
use async_trait::async_trait;

use crate::flow::Fallback;
pub use crate::flow::{ReplayKey, Spent};
use crate::journal::{Entry, JournalError};
pub use exposure::Exposure;
pub use pending::Open;
pub use queue::Job;

/// The answer to [`Ledger::claim`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// Taken by the caller, in flight; with the deferral decided in the same step (`None`: not
    /// a deferred route).
    Fresh(Option<Result<(), Fallback>>),
    /// Another request holds it now.
    InFlight,
    /// Its settlement was attempted already (a replay, or a retry to redeem); how it stands.
    Spent(Spent),
    /// The guard holds its limit of live authorizations.
    Full,
    /// It could not be taken durably (the journal, while another process shares it).
    Unavailable,
}

/// The answer to [`Ledger::redeemable`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redeem {
    /// Nothing to redeem: a replay (or delivered already).
    No,
    /// Pending for another resource: it pays for that one, not this (`402` here).
    Elsewhere,
    /// Another request is delivering it right now.
    Busy,
    /// Its outcome must be read before anything else.
    Unknown(Box<Entry>),
    /// Settled and undelivered, now claimed for delivery by the caller.
    Deliver(Box<Entry>),
}

/// The shared payment state.
#[async_trait]
pub trait Ledger: Send + Sync {
    // --- Claims (the replay guard) ---

    /// Claims `key` (until `valid_before`, unix s) for payment `id` (claim-if-unused): exactly
    /// one of any number of concurrent callers, in any process sharing the ledger, gets
    /// [`Claimed::Fresh`]. With `exposure` (a deferred route), the value is reserved in the
    /// same step if it may go out on credit at `now_ms`.
    async fn claim(
        &self,
        key: &ReplayKey,
        valid_before: u64,
        id: i64,
        exposure: Option<&Exposure>,
        now_ms: u64,
    ) -> Claimed;
    /// The authorization is spent from now on (until `valid_before`): it never serves again;
    /// `how` says what a retry of it is told.
    fn spend(&self, key: &ReplayKey, valid_before: u64, how: Spent);
    /// Gives an in-flight claim of payment `id` back (nothing served, nothing settled).
    fn release(&self, key: &ReplayKey, id: i64);
    /// Forgets `key` whatever its state (the chain refused it for good, or it can never have
    /// been used by payment `id`).
    fn forget(&self, key: &ReplayKey, id: i64);
    /// Entries held now, and the most it holds.
    fn claims(&self) -> (usize, usize);

    // --- Exposure (deferred settlement) ---

    /// What must still hold for `e` to go out on credit now (time, payer standing).
    ///
    /// # Errors
    /// Why it must be settled first.
    fn recheck(&self, e: &Exposure, now_ms: u64) -> Result<(), Fallback>;
    /// Gives `key`'s reservation back.
    fn unreserve(&self, key: &ReplayKey);
    /// Reserves an owed settlement's value without the caps (recovery).
    fn reserve_owed(&self, key: &ReplayKey, payer: Address, micro: u128);
    /// An owed settlement failed for good: its value stays counted as unpaid until cleared.
    fn owed_failed(&self, key: &ReplayKey, payer: Address, micro: u128);
    /// An owed settlement was refused while its authorization is open: its payer is settled
    /// first until it is resolved.
    fn owed_troubled(&self, key: &ReplayKey, payer: Address);
    /// Replaces the unpaid deliveries (from the journal): payer → micro-dollars.
    fn set_unpaid(&self, unpaid: std::collections::HashMap<Address, u128>);
    /// (value on credit in micro-dollars, payers holding some).
    fn exposure(&self) -> (u128, usize);
    /// Payers settled first now.
    fn flagged(&self) -> HashSet<Address>;

    // --- The owed queue ---

    /// Queues an owed settlement.
    fn enqueue(&self, entry: Entry, now_ms: u64);
    /// Puts a job back (a retry).
    fn requeue(&self, job: Job);
    /// Waits for the next owed settlement (busy until [`Ledger::owed_done`]).
    async fn next_owed(&self) -> Job;
    /// A job taken by [`Ledger::next_owed`] is finished.
    fn owed_done(&self);
    /// Owed settlements not finished.
    fn owed(&self) -> usize;
    /// Takes one settlement attempt's duration into the queue's measured rate.
    fn record_attempt(&self, took: std::time::Duration);
    /// Settlements in flight at once.
    fn owed_limit(&self) -> usize;

    // --- Redeemable outcomes ---

    /// Takes a redeemable payment of payer `from` with `nonce` for the request target `target`
    /// (a retry of the same header).
    fn redeemable(&self, from: Address, nonce: B256, target: &str) -> Redeem;
    /// Keeps a payment redeemable (settled and undelivered, or unknown), not claimed.
    fn keep_redeemable(&self, e: Entry, open: Open, now_ms: u64);
    /// It is no longer redeemable.
    fn unredeemable(&self, key: &ReplayKey);
    /// Unknown outcomes due for a background reading at `now_ms`.
    fn due(&self, now_ms: u64) -> Vec<Entry>;
    /// (unknown, settled and undelivered) now.
    fn pending_counts(&self) -> (usize, usize);

    // --- Records ---

    /// Whether payments can be recorded now.
    fn is_recording(&self) -> bool;
    /// A new payment id.
    fn next_id(&self) -> i64;
    /// Records `e` without waiting.
    fn record(&self, e: Entry);
    /// Records `e` and waits until it is durable; with `claim`, it also takes its
    /// authorization for good (in every process sharing the ledger). `false`: not recorded
    /// (nothing may be settled or released on it).
    async fn record_durable(&self, e: Entry, claim: bool) -> bool;
    /// Moves payment `id` to `state` without waiting (forward only).
    fn transition(&self, id: i64, state: &crate::flow::State, from_block: Option<u64>);
    /// Moves payment `id` to `state` and waits until it is durable. `false`: not recorded.
    async fn transition_durable(
        &self,
        id: i64,
        state: &crate::flow::State,
        from_block: Option<u64>,
    ) -> bool;
    /// Moves a delivered payment back to settled (its answer did not go out).
    fn undeliver(&self, id: i64);
    /// The state of payment `id` as recorded now (another process may have moved it).
    async fn recorded_state(&self, id: i64) -> Option<crate::journal::JournalState>;
    /// Waits until everything recorded so far is durable.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    async fn flush(&self) -> Result<(), JournalError>;

    // --- Processes sharing the ledger ---

    /// While `shared`, another process serves from the same ledger (an upgrade hand-over):
    /// claims are taken durably before anything is forwarded.
    fn set_shared(&self, shared: bool);
    /// Makes this process the settler of payment `id`, unless another live one is.
    async fn take_over(&self, id: i64) -> bool;
}
