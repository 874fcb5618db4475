//! Reading a facilitator's `/settle` answer, and the receipt a client gets.
//!
//! Owns: [`classify`], the settlement rules (fail closed), and [`receipt`]:
//! - `success: true` with a transaction hash is the only success; `success: false`, a missing
//!   `success`, a timeout or a garbled answer is not.
//! - A timeout or garbled answer is *unknown*: the transfer may have happened.
//! - A refusal is final only without a transaction and for a reason that cannot hide a
//!   transfer; otherwise the chain decides (`flow`).
//! - A facilitator that was certainly not reached (connection refused, too many calls in
//!   flight, rate limited) is *not sent*: nothing happened, and the client may retry.
//!
//! Does not own: when to settle or what follows from an outcome (`flow`).

pub use crate::config::SettlementMode;
use crate::flow::{Settled, State};
use crate::protocol::{DeferredReceipt, ErrorReason, Receipt, ReceiptExtensions, SettleResponse};
use crate::verify::{FacilitatorError, Verified};

/// Reads a facilitator's `/settle` answer by the rules of this module.
pub fn classify(r: Result<SettleResponse, FacilitatorError>) -> Settled {
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
            if reason.is_unknown_outcome() || r.success != Some(false) {
                // "Sent, receipt not seen yet", or an answer that does not say (no `success`,
                // or a success without a transaction): it may land.
                Settled::Unknown {
                    reason: if reason.is_unknown_outcome() {
                        reason
                    } else {
                        ErrorReason::SettlementUnknown
                    },
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

/// The receipt header (name, value) for the client of a payment in `state`: success or
/// failure, in the payment's protocol version. `None` before settlement or after a release.
pub fn receipt(v: &Verified, state: &State) -> Option<(http::HeaderName, String)> {
    let payer = v.payer.to_checksum(None);
    let mut extensions = None;
    let (success, transaction, reason) = match state {
        State::Settled { transaction } | State::Delivered { transaction } => {
            (true, transaction.as_str(), None)
        }
        // Accepted: the client has what it paid for; the transaction comes later.
        State::Queued => {
            extensions = Some(ReceiptExtensions {
                deferred: DeferredReceipt { status: "queued" },
            });
            (true, "", None)
        }
        State::Failed { reason, .. } => (false, "", Some(reason.as_str())),
        // Whatever made it unknown, the client is told one thing: it is pending; retry with
        // the same payment. The transaction the facilitator named goes with it.
        State::Unknown { transaction, .. } => (
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

#[cfg(test)]
mod tests;
