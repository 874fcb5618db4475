//! Settlement and the payment life cycle.
//!
//! Owns: [`Payment`], an explicit state machine
//! `Verified → Forwarded → Settled | Failed | Unknown`, with `Released` for payments that were
//! neither served nor settled; and [`Settler`], which calls the facilitator's `/settle` and
//! keeps the replay guard in step. The states are what a durable journal records.
//!
//! Rules (fail closed):
//! - `success: true` with a transaction hash is the only success; `success: false`, a missing
//!   `success`, a timeout or a garbled answer is not.
//! - A timeout or garbled answer is *unknown*: the transfer may have happened, so the
//!   authorization stays used and nothing is released to the client.
//! - Once settlement was attempted, the authorization is never served again.
//!
//! Does not own: when to settle (the proxy phases, per [`SettlementMode`]).

use std::sync::Arc;

pub use crate::config::SettlementMode;
use crate::protocol::Receipt;
use crate::verify::{unix_now, Facilitator, FacilitatorError, ReplayGuard, Verified};

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
        reason: String,
    },
    /// Settlement outcome unknown (timeout, garbled answer); nothing was released.
    Unknown {
        /// What went wrong.
        reason: String,
    },
    /// Neither served nor settled: the authorization was given back to the client.
    Released {
        /// Why.
        reason: String,
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
    state: PaymentState,
}

impl Payment {
    /// A freshly verified payment.
    pub fn new(verified: Verified, mode: SettlementMode) -> Self {
        Payment {
            verified,
            mode,
            state: PaymentState::Verified,
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

    /// Whether settlement has not been attempted yet.
    pub fn is_unsettled(&self) -> bool {
        !self.state.is_terminal()
    }

    /// The receipt header (name, value) for the client: success or failure, in the payment's
    /// protocol version. `None` before settlement or after a release.
    pub fn receipt(&self) -> Option<(http::HeaderName, String)> {
        let v = &self.verified;
        let payer = v.payer.to_checksum(None);
        let (success, transaction, reason) = match &self.state {
            PaymentState::Settled { transaction } => (true, transaction.as_str(), None),
            PaymentState::Failed { reason } | PaymentState::Unknown { reason } => {
                (false, "", Some(reason.as_str()))
            }
            _ => return None,
        };
        let receipt = Receipt {
            success,
            error_reason: reason,
            payer: Some(&payer),
            transaction,
            network: &v.network,
        };
        Some((v.version.receipt_header(), receipt.to_header()))
    }

    /// The transaction hash when settled.
    pub fn transaction(&self) -> Option<&str> {
        match &self.state {
            PaymentState::Settled { transaction } => Some(transaction),
            _ => None,
        }
    }

    /// The failure reason of a failed, unknown or released payment.
    pub fn failure_reason(&self) -> Option<&str> {
        match &self.state {
            PaymentState::Failed { reason }
            | PaymentState::Unknown { reason }
            | PaymentState::Released { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Calls `/settle` and keeps the replay guard in step with the outcome.
pub struct Settler {
    facilitator: Arc<dyn Facilitator>,
}

impl Settler {
    /// A settler using `facilitator`.
    pub fn new(facilitator: Arc<dyn Facilitator>) -> Self {
        Settler { facilitator }
    }

    /// Settles `payment`: moves it to `Settled`, `Failed` or `Unknown`. The authorization is
    /// marked used *before* the call, whatever the outcome, so it can never serve twice.
    pub async fn settle(&self, payment: &mut Payment, replay: &ReplayGuard) {
        if !payment.is_unsettled() {
            return;
        }
        let v = &payment.verified;
        replay.mark_used(&v.key, v.valid_before, unix_now());
        payment.state = match self.facilitator.settle(&v.facilitator_body).await {
            Ok(r) if r.is_success() => PaymentState::Settled {
                transaction: r.transaction.unwrap_or_default(),
            },
            // The embedded facilitator's "sent, receipt not seen yet": the transfer may land.
            Ok(r) if r.error_reason.as_deref() == Some("settlement_pending") => {
                PaymentState::Unknown {
                    reason: "settlement_pending".to_owned(),
                }
            }
            Ok(r) => PaymentState::Failed {
                reason: r
                    .error_reason
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "settlement_failed".to_owned()),
            },
            Err(e) => settle_error_state(&e),
        };
    }

    /// Gives an unsettled payment back to the client: nothing was served, nothing settled.
    pub fn release(&self, payment: &mut Payment, replay: &ReplayGuard, reason: &str) {
        if payment.is_unsettled() {
            replay.release(&payment.verified.key);
            payment.state = PaymentState::Released {
                reason: reason.to_owned(),
            };
        }
    }
}

fn settle_error_state(e: &FacilitatorError) -> PaymentState {
    if e.may_have_happened() {
        PaymentState::Unknown {
            reason: match e {
                FacilitatorError::Timeout { .. } => "settlement_timeout".to_owned(),
                _ => "settlement_unknown".to_owned(),
            },
        }
    } else {
        PaymentState::Failed {
            reason: "facilitator_unreachable".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests;
