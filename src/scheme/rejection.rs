//! The closed set of reasons a payment is refused before anything is settled, whatever its
//! scheme: each maps to the `error` of the 402, an x402 reason and log fields.
//!
//! Owns: [`PaymentRejection`].

use crate::protocol::ErrorReason;

/// Why a payment is refused. Maps to the `error` of the 402 and to log fields.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentRejection {
    /// The header could not be decoded (base64, JSON, a field).
    #[error("malformed payment header: {0}")]
    InvalidPayload(String),
    /// A scheme this gateway does not take.
    #[error("scheme `{0}` is not accepted here")]
    UnsupportedScheme(String),
    /// No offered option has the payment's network (and asset).
    #[error("no payment option of this route matches network `{0}`")]
    NoMatchingRequirements(String),
    /// `authorization.to` is not the option's `payTo`.
    #[error("authorization pays the wrong recipient")]
    RecipientMismatch,
    /// `authorization.value` is not exactly the price.
    #[error("authorization value {got} is not the price {want}")]
    AmountMismatch {
        /// Value in the authorization.
        got: String,
        /// The price.
        want: String,
    },
    /// `validAfter` is in the future.
    #[error("authorization is not valid yet")]
    NotYetValid,
    /// `validBefore` has passed or leaves less than the settlement buffer.
    #[error("authorization has expired or expires within 6s")]
    Expired,
    /// `validBefore` is further away than `maxTimeoutSeconds` + 60 s.
    #[error("authorization is valid for {got}s, longer than the {max}s the requirement allows")]
    TooLong {
        /// Seconds from now to `validBefore`.
        got: u64,
        /// The most accepted.
        max: u64,
    },
    /// The signature does not recover to `authorization.from`, or the chain would refuse it.
    #[error("signature does not recover to authorization.from")]
    InvalidSignature,
    /// The same authorization is being processed by another request right now.
    #[error("this authorization is already being processed")]
    InFlight,
    /// The authorization was already used for a served request.
    #[error("this authorization has already been used")]
    AlreadyUsed,
    /// The facilitator said the payment is invalid.
    #[error("facilitator rejected the payment: {reason}")]
    Facilitator {
        /// The facilitator's `invalidReason`.
        reason: ErrorReason,
        /// Its `invalidMessage`, if any (for the log only).
        message: Option<String>,
    },
}

impl PaymentRejection {
    /// The x402 reason (snake_case on the wire, as the reference facilitators name them).
    pub fn reason(&self) -> ErrorReason {
        match self {
            PaymentRejection::InvalidPayload(_) => ErrorReason::InvalidPayload,
            PaymentRejection::UnsupportedScheme(_) => ErrorReason::UnsupportedScheme,
            PaymentRejection::NoMatchingRequirements(_) => ErrorReason::NetworkMismatch,
            PaymentRejection::RecipientMismatch => ErrorReason::RecipientMismatch,
            PaymentRejection::AmountMismatch { .. } => ErrorReason::AuthorizationValue,
            PaymentRejection::NotYetValid => ErrorReason::ValidAfter,
            PaymentRejection::Expired | PaymentRejection::TooLong { .. } => {
                ErrorReason::ValidBefore
            }
            PaymentRejection::InvalidSignature => ErrorReason::InvalidSignature,
            PaymentRejection::InFlight => ErrorReason::PaymentInProgress,
            PaymentRejection::AlreadyUsed => ErrorReason::NonceAlreadyUsed,
            PaymentRejection::Facilitator { reason, .. } => reason.clone(),
        }
    }
}
