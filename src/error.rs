//! The one place where gateway errors become HTTP answers.
//!
//! Owns: [`GatewayError`] (every way a request can end early) and its mapping to a status,
//! a machine reason and a `Retry-After`. Leaf modules keep their own error types; this module
//! wraps them and nothing imports it but `proxy` and the composition root.

use crate::verify::{FacilitatorError, PaymentRejection, VerifyError};

/// Every early end of a request, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No payment header on a priced route.
    #[error("payment required")]
    PaymentRequired,
    /// The payment was refused.
    #[error(transparent)]
    Rejected(#[from] PaymentRejection),
    /// The facilitator could not be asked.
    #[error("facilitator unavailable: {0}")]
    FacilitatorUnavailable(#[source] FacilitatorError),
    /// Settlement failed or its outcome is unknown; nothing is released.
    #[error("settlement failed: {reason}")]
    SettlementFailed {
        /// Reason for the client.
        reason: String,
    },
    /// The upstream could not be reached or failed before answering.
    #[error("upstream failed")]
    Upstream,
}

impl From<VerifyError> for GatewayError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Rejected(r) => GatewayError::Rejected(r),
            VerifyError::Unavailable(f) => GatewayError::FacilitatorUnavailable(f),
        }
    }
}

impl GatewayError {
    /// The HTTP status: 402 for everything about the payment (what the reference servers do,
    /// so clients can read the challenge again), 503 when the facilitator is down, 502 when the
    /// upstream is.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::PaymentRequired
            | GatewayError::Rejected(_)
            | GatewayError::SettlementFailed { .. } => 402,
            GatewayError::FacilitatorUnavailable(_) => 503,
            GatewayError::Upstream => 502,
        }
    }

    /// The machine reason (x402 snake_case names where they exist).
    pub fn reason(&self) -> &str {
        match self {
            GatewayError::PaymentRequired => "payment_required",
            GatewayError::Rejected(r) => r.reason(),
            GatewayError::FacilitatorUnavailable(_) => "facilitator_unavailable",
            GatewayError::SettlementFailed { reason } => reason,
            GatewayError::Upstream => "upstream_unavailable",
        }
    }

    /// Seconds after which a retry may succeed.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            GatewayError::FacilitatorUnavailable(_) | GatewayError::Upstream => Some(5),
            _ => None,
        }
    }

    /// The text put in the challenge's `error` field: the reason, then the detail.
    pub fn challenge_error(&self) -> String {
        match self {
            GatewayError::Rejected(PaymentRejection::Facilitator {
                reason,
                message: Some(m),
            }) => format!("{reason}: {m}"),
            other => format!("{}: {other}", other.reason()),
        }
    }
}
