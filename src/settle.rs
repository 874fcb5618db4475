//! Settlement and the payment life cycle.
//!
//! Owns: [`Payment`], an explicit state machine
//! `Verified → Forwarded → Settled | Failed | Unknown`, with `Released` for payments that were
//! neither served nor settled, carrying its [`Hold`] on the replay guard (given back when
//! dropped unless settlement consumed it); and [`Settler`], which calls the facilitator's
//! `/settle`.
//!
//! Rules (fail closed):
//! - `success: true` with a transaction hash is the only success; `success: false`, a missing
//!   `success`, a timeout or a garbled answer is not.
//! - A timeout or garbled answer is *unknown*: the transfer may have happened, so the
//!   authorization stays used and nothing is released to the client.
//! - A facilitator that was certainly not reached (connection refused, or too many calls in
//!   flight) leaves the payment *released*: nothing happened, and the client may retry it.
//! - Once settlement was attempted, the authorization is never served again; only a definitive
//!   refusal without a transaction lets the replay guard forget it (the chain will refuse it
//!   again, so holding it protects nothing).
//!
//! Does not own: when to settle (`payments`, per [`SettlementMode`]).

use std::sync::Arc;

pub use crate::config::SettlementMode;
use crate::protocol::{DeferredReceipt, ErrorReason, Receipt, ReceiptExtensions};
use crate::verify::{Facilitator, FacilitatorError, Hold, Verified};

/// Where a payment is in its life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentState {
    /// Verified and held in flight; nothing forwarded yet.
    Verified,
    /// The request went upstream.
    Forwarded,
    /// Settled on chain.
    Settled {
        /// Transaction hash.
        transaction: String,
    },
    /// Settlement definitively failed; nothing was released.
    Failed {
        /// Reason from the facilitator or the gateway.
        reason: ErrorReason,
    },
    /// Settlement outcome unknown (timeout, garbled answer, transaction not mined yet); nothing
    /// was released.
    Unknown {
        /// What went wrong.
        reason: ErrorReason,
        /// The transaction hash, when the facilitator named one.
        transaction: Option<String>,
    },
    /// Deferred: the answer is released, the settlement queued (journaled `queued`).
    Queued,
    /// Neither served nor settled: the authorization was given back to the client.
    Released {
        /// Why.
        reason: ErrorReason,
    },
}

impl PaymentState {
    /// The state's name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            PaymentState::Verified => "verified",
            PaymentState::Forwarded => "forwarded",
            PaymentState::Settled { .. } => "settled",
            PaymentState::Failed { .. } => "settle_failed",
            PaymentState::Unknown { .. } => "settle_unknown",
            PaymentState::Queued => "queued",
            PaymentState::Released { .. } => "released",
        }
    }

    /// Whether no further transition is possible.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, PaymentState::Verified | PaymentState::Forwarded)
    }
}

/// A verified payment moving through its life cycle.
#[derive(Debug)]
pub struct Payment {
    /// The verification result.
    pub verified: Verified,
    /// When to settle.
    pub mode: SettlementMode,
    /// The route it pays for (its configured `path`).
    pub route: String,
    /// The resource URL it pays for.
    pub resource: String,
    /// Whether it was redeemed (settled earlier, delivered now).
    pub redeemed: bool,
    /// When it was verified (unix ms).
    pub verified_at: u64,
    /// Its row in the payment journal, once written.
    pub journal_id: Option<i64>,
    /// Deferred: the unsettled value it holds against the caps (given back when dropped).
    pub reservation: Option<crate::payments::deferred::Reservation>,
    /// Settled through the facilitator's shared transactions (`settle_deferred`), still before
    /// release: a deferred route's payment over a cap, with a batching facilitator.
    pub shared: bool,
    state: PaymentState,
    hold: Option<Hold>,
}

impl Payment {
    /// A freshly verified payment; `hold` is its in-flight entry in the replay guard.
    pub fn new(
        verified: Verified,
        mode: SettlementMode,
        hold: Hold,
        route: String,
        resource: String,
    ) -> Self {
        let mut p = Self::restored(verified, mode, PaymentState::Verified, route, resource);
        p.hold = Some(hold);
        p
    }

    /// A payment restored from the journal in `state` (a retry of a payment settled or
    /// pending earlier); it holds nothing in the replay guard (its authorization is used).
    pub fn restored(
        verified: Verified,
        mode: SettlementMode,
        state: PaymentState,
        route: String,
        resource: String,
    ) -> Self {
        Payment {
            verified,
            mode,
            route,
            resource,
            redeemed: false,
            verified_at: crate::limiter::now_ms(),
            journal_id: None,
            reservation: None,
            shared: false,
            state,
            hold: None,
        }
    }

    /// An unknown outcome read from the chain: settled or definitively failed. Other states
    /// are left alone.
    pub fn resolve(&mut self, settled: Result<String, ErrorReason>) {
        if matches!(self.state, PaymentState::Unknown { .. }) {
            self.state = match settled {
                Ok(transaction) => PaymentState::Settled { transaction },
                Err(reason) => PaymentState::Failed { reason },
            };
        }
    }

    /// The current state.
    pub fn state(&self) -> &PaymentState {
        &self.state
    }

    /// Verified → Forwarded (no other transition is valid; others are ignored).
    pub fn forwarded(&mut self) {
        if self.state == PaymentState::Verified {
            self.state = PaymentState::Forwarded;
        }
    }

    /// Verified or forwarded → queued (deferred): the authorization is used from now on (its
    /// hold consumed), whatever happens to the settlement.
    pub fn queue(&mut self) {
        if self.is_unsettled() {
            if let Some(h) = self.hold.take() {
                h.consume();
            }
            self.state = PaymentState::Queued;
        }
    }

    /// Whether settlement has not been attempted yet.
    pub fn is_unsettled(&self) -> bool {
        !self.state.is_terminal()
    }

    /// Gives an unsettled payment back to the client: nothing was served, nothing settled.
    pub fn release(&mut self, reason: ErrorReason) {
        if self.is_unsettled() {
            self.hold = None;
            self.state = PaymentState::Released { reason };
        }
    }

    /// The receipt header (name, value) for the client: success or failure, in the payment's
    /// protocol version. `None` before settlement or after a release.
    pub fn receipt(&self) -> Option<(http::HeaderName, String)> {
        let v = &self.verified;
        let payer = v.payer.to_checksum(None);
        let mut extensions = None;
        let (success, transaction, reason) = match &self.state {
            PaymentState::Settled { transaction } => (true, transaction.as_str(), None),
            // Accepted: the client has what it paid for; the transaction comes later.
            PaymentState::Queued => {
                extensions = Some(ReceiptExtensions {
                    deferred: DeferredReceipt { status: "queued" },
                });
                (true, "", None)
            }
            PaymentState::Failed { reason } => (false, "", Some(reason.as_str())),
            // Whatever made it unknown, the client is told one thing: it is pending; retry
            // with the same payment.
            PaymentState::Unknown { transaction, .. } => (
                false,
                transaction.as_deref().unwrap_or(""),
                Some(ErrorReason::SettlementPending.as_str()),
            ),
            _ => return None,
        };
        let receipt = Receipt {
            success,
            error_reason: reason,
            payer: Some(&payer),
            transaction,
            network: &v.network,
            extensions,
        };
        Some((v.version.receipt_header(), receipt.to_header()))
    }

    /// The transaction hash when settled.
    pub fn transaction(&self) -> Option<&str> {
        match &self.state {
            PaymentState::Settled { transaction } => Some(transaction),
            PaymentState::Unknown { transaction, .. } => transaction.as_deref(),
            _ => None,
        }
    }

    /// The failure reason of a failed, unknown or released payment.
    pub fn failure_reason(&self) -> Option<&ErrorReason> {
        match &self.state {
            PaymentState::Failed { reason }
            | PaymentState::Unknown { reason, .. }
            | PaymentState::Released { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Calls `/settle` and moves a payment to its outcome.
pub struct Settler {
    facilitator: Arc<dyn Facilitator>,
}

impl Settler {
    /// A settler using `facilitator`.
    pub fn new(facilitator: Arc<dyn Facilitator>) -> Self {
        Settler { facilitator }
    }

    /// Settles `payment`: moves it to `Settled`, `Failed`, `Unknown` or (facilitator certainly
    /// not reached) `Released`. The authorization is marked used *before* the call, so it can
    /// never serve twice whatever the outcome.
    pub async fn settle(&self, payment: &mut Payment) {
        if !payment.is_unsettled() {
            return;
        }
        let guard = payment.hold.take().map(Hold::consume);
        let v = &payment.verified;
        let outcome = classify(if payment.shared {
            self.facilitator.settle_deferred(&v.facilitator_body).await
        } else {
            self.facilitator.settle(&v.facilitator_body).await
        });
        if outcome.frees_authorization() {
            if let Some(g) = &guard {
                g.forget(&v.key);
            }
        }
        payment.state = match outcome {
            Settled::Yes { transaction } => PaymentState::Settled { transaction },
            Settled::No { reason, .. } => PaymentState::Failed { reason },
            Settled::Unknown {
                reason,
                transaction,
            } => PaymentState::Unknown {
                reason,
                transaction,
            },
            Settled::NotSent { reason } => PaymentState::Released { reason },
        };
    }
}

/// What one `/settle` call did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Settled in this transaction.
    Yes {
        /// The transaction hash.
        transaction: String,
    },
    /// Definitively refused (`success: false` with a reason).
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
    /// Whether the authorization can never have been used by this call, so the replay guard
    /// may forget it: not sent, or refused without a transaction.
    pub fn frees_authorization(&self) -> bool {
        matches!(
            self,
            Settled::NotSent { .. }
                | Settled::No {
                    transaction: None,
                    ..
                }
        )
    }
}

/// Reads a facilitator's `/settle` answer by the rules of this module.
pub fn classify(r: Result<crate::protocol::SettleResponse, FacilitatorError>) -> Settled {
    match r {
        Ok(r) if r.is_success() => Settled::Yes {
            transaction: r.transaction.unwrap_or_default(),
        },
        Ok(r) => {
            let reason = r
                .error_reason
                .as_deref()
                .filter(|s| !s.is_empty())
                .map_or(ErrorReason::SettlementFailed, ErrorReason::parse);
            let transaction = r.transaction.filter(|t| !t.is_empty());
            if reason.is_unknown_outcome() {
                // The embedded facilitator's "sent, receipt not seen yet": the transfer may land.
                Settled::Unknown {
                    reason,
                    transaction,
                }
            } else {
                Settled::No {
                    reason,
                    transaction,
                }
            }
        }
        Err(e) if !e.may_have_happened() => Settled::NotSent {
            reason: match e {
                FacilitatorError::Busy => ErrorReason::FacilitatorBusy,
                _ => ErrorReason::FacilitatorUnreachable,
            },
        },
        Err(e) => {
            tracing::warn!(error = %e, "settlement outcome unknown");
            Settled::Unknown {
                reason: match e {
                    FacilitatorError::Timeout { .. } => ErrorReason::SettlementTimeout,
                    _ => ErrorReason::SettlementUnknown,
                },
                transaction: None,
            }
        }
    }
}

#[cfg(test)]
mod tests;
