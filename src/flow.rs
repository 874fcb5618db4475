//! `PaymentFlow`: one payment's life as one state machine, free of I/O.
//!
//! Owns: [`State`] (where a payment is: what the journal records, not a second enum), the
//! events that move it ([`Event`]: what the upstream, the facilitator, the chain and the
//! journal said), the effects it asks for ([`Effect`]: a journal write, `/settle`, a chain
//! read, the replay guard, the deferred queue) and the answer it settles on for the client
//! ([`Answer`]). [`PaymentFlow::step`] is synchronous: `(state, event) → (state, effects)`;
//! the driver (`payments::driver`) carries the effects out and feeds their results back as
//! events. Both front doors (the proxy, forward-auth) drive the same flow.
//!
//! The rules it holds, by construction:
//! - **Content never goes out unpaid.** A paid answer (`Pass`, private) is given only in
//!   `Delivered` (settled, and the delivery durable before the answer's first byte) or in
//!   `Queued` (deferred: the owed settlement durable, and the deferral re-checked at release).
//! - **What was checked at admission is checked again at release.** A deferred payment is
//!   released on credit only if, at that moment, its authorization can still be settled in
//!   time and its payer is in good standing ([`Effect::CheckDeferral`]); otherwise it is
//!   settled first.
//! - **Durable before irreversible.** `settling` is durable before `/settle`; `queued` before
//!   a deferred answer; `delivered` before a paid answer. A journal that cannot record answers
//!   `503` and gives the authorization back (nothing settled), or keeps a settled payment
//!   redeemable (nothing delivered).
//! - **An outage is never a refusal, and an ambiguous refusal is never final.** `/settle`
//!   answers that may hide a transfer (unknown, or a refusal naming a transaction or a used
//!   nonce) are read from the chain before anything is decided; still open, the client gets
//!   `503` + `settlement_pending` (never a `402`) and the payment stays redeemable.
//! - **One settlement per flow.** `/settle` is asked at most once; the upstream's status, the
//!   facilitator's answer and the chain reading decide the rest.
//!
//! Does not own: what a payment is worth or whether it is valid (`scheme`, `verify`), where
//! state is kept (`ledger`), or HTTP (`proxy`, `auth`).

use alloy::primitives::{Address, B256};

use crate::protocol::ErrorReason;

mod machine;
mod state;
#[cfg(test)]
mod tests;

pub use machine::PaymentFlow;
pub use state::{Kind, State};

/// What became of an authorization whose settlement was attempted: what a retry of it is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spent {
    /// Its settlement is under way, or its outcome not known yet: `503`, retry the same header
    /// (a `402` would make the client pay a second time).
    Settling,
    /// Its paid answer went out (delivered, or released on credit): `409`, never a `402` (the
    /// answer may have been cut by a crash, and a `402` would make the client pay again) and
    /// never the content again.
    Answered,
    /// It can never pay us (the chain refused it, or it was used elsewhere): `402`.
    Refused,
}

/// The on-chain identity of an authorization: what the replay guard and the journal key a
/// payment by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayKey {
    /// Chain id.
    pub chain_id: u64,
    /// Token contract.
    pub asset: Address,
    /// Payer.
    pub from: Address,
    /// The authorization's nonce.
    pub nonce: B256,
}

/// What one `/settle` call did, read by the settlement rules (`settle::classify`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Settled in this transaction.
    Yes {
        /// The transaction hash.
        transaction: String,
    },
    /// Refused (`success: false` with a reason).
    No {
        /// Why.
        reason: ErrorReason,
        /// The transaction, when one was sent (and failed).
        transaction: Option<String>,
    },
    /// The transfer may or may not have happened.
    Unknown {
        /// What went wrong.
        reason: ErrorReason,
        /// The transaction hash, when the facilitator named one.
        transaction: Option<String>,
    },
    /// The facilitator was certainly not reached (or too busy): nothing happened.
    NotSent {
        /// Why.
        reason: ErrorReason,
    },
}

impl Settled {
    /// Whether a refusal is final: no transaction was sent and the reason is not one another
    /// attempt could have caused (a used nonce may be our own earlier transfer).
    pub fn is_final_refusal(&self) -> bool {
        match self {
            Settled::No {
                reason,
                transaction: None,
            } => !reason_may_hide_a_transfer(reason),
            _ => false,
        }
    }
}

/// Reasons that say the authorization was used on chain, by whoever: they never prove that
/// this payment failed (another attempt of ours may be the transfer).
fn reason_may_hide_a_transfer(reason: &ErrorReason) -> bool {
    matches!(reason, ErrorReason::NonceAlreadyUsed) || reason.is_unknown_outcome()
}

/// An authorization's fate as read from the chain.
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

/// Why a deferred payment is settled before its answer is released.
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
    /// The replay guard is half full: owed payments must not fill it.
    Guard,
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
            Fallback::Guard => "replay_guard",
        }
    }
}

/// Which front door drives the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    /// The proxy: it sees the upstream's status.
    Proxy,
    /// Forward-auth: the proxy in front asks before forwarding; the upstream is never seen.
    /// A settlement that finishes after `deadline_ms` (the proxy has likely given up) is kept
    /// redeemable instead of allowed.
    Auth {
        /// Unix ms after which an allow is no longer believed to reach the proxy.
        deadline_ms: u64,
    },
}

/// What happened (what the adapter saw, or what an effect found).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The request is being sent upstream.
    Forwarding,
    /// The upstream connection is up and nothing was sent yet (`before_upstream` settles now).
    Connected,
    /// The upstream's response head: an interim (`1xx` but `101`) or the final status.
    Upstream {
        /// The status.
        status: u16,
        /// Whether the route allows a websocket upgrade (`101`).
        websocket: bool,
    },
    /// Forward-auth asks to allow the request.
    Authorize,
    /// The upstream gave no answer (connect failure, reset, timeout).
    UpstreamFailed,
    /// The paid answer could not be written (the proxy or the client left).
    NotDelivered,
    /// The request ended: whatever is still open is given back.
    Ended,
    /// A durable journal write finished (`true`: committed).
    Recorded(bool),
    /// `/settle` answered.
    SettleAnswered(Settled),
    /// The chain was read.
    Resolved(Outcome),
    /// The deferral was checked at release: `Ok` to go out on credit, or why not.
    Deferral(Result<(), Fallback>),
}

/// What the flow asks for. At most one effect of a step reports back (the last one); the
/// driver feeds its result as the next event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Record the current state; `durable` waits for the commit (reports [`Event::Recorded`]).
    Record {
        /// Wait for the commit.
        durable: bool,
    },
    /// Call `/settle` (`shared`: through the facilitator's shared transactions); reports
    /// [`Event::SettleAnswered`].
    Settle {
        /// Through the shared (batched) transactions.
        shared: bool,
    },
    /// Read the outcome from the chain within the resolve budget; reports [`Event::Resolved`].
    Resolve,
    /// Check now that the payment may go out on credit; reports [`Event::Deferral`].
    CheckDeferral,
    /// Give the payment's exposure reservation back (it is settled first, or not at all).
    DropReservation,
    /// Hand the owed settlement to the deferred queue (with its reservation).
    Enqueue,
    /// The authorization is spent from now on, whatever happens to the settlement; how it
    /// stands (what a retry of it is told).
    Spend(Spent),
    /// Give the in-flight authorization back (nothing served, nothing settled).
    ReleaseClaim,
    /// This attempt can never have used the authorization: forget it.
    ForgetClaim,
    /// Keep the payment redeemable with the same header (settled and undelivered, or unknown).
    KeepRedeemable,
    /// It is no longer redeemable (delivered, or definitively failed).
    Unredeemable,
    /// Count its revenue.
    Revenue,
}

/// Why the client does not get the upstream's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Settlement definitively failed: `402` with the reason (and the challenge).
    SettlementFailed(ErrorReason),
    /// Settlement was not attempted (the facilitator was not reached): `503`, retry.
    NotAttempted(ErrorReason),
    /// The outcome is not known yet: `503`, retry with the same payment.
    Pending,
    /// The journal cannot record: `503`, nothing charged (or, settled, redeemable).
    JournalUnavailable,
    /// The upstream failed: `502` (with the receipt when already paid).
    Upstream,
}

/// What the client gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An interim (`1xx`) answer: pass it, nothing is decided yet.
    Interim,
    /// Go on (forward the request; nothing to tell the client yet).
    Proceed,
    /// Pass the upstream's answer (or allow the request), with the payment's receipt.
    Pass {
        /// Paid content (`Cache-Control: private`).
        private: bool,
        /// Deferred: released on credit (`X-PAYMENT-STATUS: queued`).
        queued: bool,
    },
    /// Answer this instead (with the payment's receipt).
    Refuse(Refusal),
}
