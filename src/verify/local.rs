//! The local fast path: every check that needs no network, run before the facilitator is
//! asked anything. A failure here never reaches the facilitator or the upstream.
//!
//! Owns: [`PaymentRejection`] (the closed set of reasons a payment is refused, each with its
//! x402 reason) and the pure `check_*` functions. Thresholds follow the reference
//! facilitators: `validAfter ≤ now`, `validBefore ≥ now + 6 s`, exact amount, recipient equal
//! case-insensitively, 65-byte signatures recovered in-process (longer ones, EIP-1271/6492,
//! are left to the facilitator). One bound is the gateway's own: `validBefore` may be at most
//! `maxTimeoutSeconds + 60 s` away, so that no client decides how long the replay guard must
//! remember its authorization.

use alloy::primitives::Address;

use crate::config::PaymentOption;
use crate::pricing::challenge::PreparedOption;
use crate::protocol::{evm, Authorization, ErrorReason, PaymentPayload, X402Version};

/// Seconds of validity a payment must still have: the reference facilitators' buffer for the
/// settlement round trip.
pub const VALID_BEFORE_BUFFER_SECONDS: u64 = 6;

/// Slack beyond `maxTimeoutSeconds` allowed for `validBefore` (clock skew between client and
/// gateway; the official clients sign `validBefore = now + maxTimeoutSeconds`).
pub const VALID_BEFORE_SLACK_SECONDS: u64 = 60;

/// Why a payment is refused. Maps to the `error` of the 402 and to log fields.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PaymentRejection {
    /// The header could not be decoded (base64, JSON, a field).
    #[error("malformed payment header: {0}")]
    InvalidPayload(String),
    /// A scheme other than `exact`.
    #[error("scheme `{0}` is not accepted here (only `exact`)")]
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
    #[error("authorization has expired or expires within {VALID_BEFORE_BUFFER_SECONDS}s")]
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

/// Picks the route option a payment is for: same scheme and network (v1: the option must be
/// offered to v1 clients), same asset when the payload names one (v2). When several remain,
/// the one whose recipient and amount match the authorization wins, so that the later checks
/// report the most specific reason.
///
/// # Errors
/// [`PaymentRejection::UnsupportedScheme`] or [`PaymentRejection::NoMatchingRequirements`].
pub fn select_option(
    options: &[PaymentOption],
    prepared: &[PreparedOption],
    p: &PaymentPayload,
) -> Result<usize, PaymentRejection> {
    if p.scheme != "exact" {
        return Err(PaymentRejection::UnsupportedScheme(p.scheme.clone()));
    }
    let a = &p.payload.authorization;
    let candidates = options.iter().enumerate().filter(|(i, o)| match p.version {
        X402Version::V1 => {
            o.network.v1_name() == Some(p.network.as_str())
                && prepared[*i].v1_requirements.is_some()
        }
        X402Version::V2 => {
            o.network.caip2() == p.network
                && p.asset
                    .as_deref()
                    .is_none_or(|s| crate::protocol::parse_address(s) == Some(o.asset.address))
        }
    });
    let mut first = None;
    for (i, o) in candidates {
        if o.pay_to == a.to && o.amount == a.value {
            return Ok(i);
        }
        first.get_or_insert(i);
    }
    first.ok_or_else(|| PaymentRejection::NoMatchingRequirements(p.network.clone()))
}

/// `authorization.to` equals the option's `payTo` (addresses compare as bytes, so checksum
/// case does not matter).
///
/// # Errors
/// [`PaymentRejection::RecipientMismatch`].
pub fn check_recipient(a: &Authorization, o: &PaymentOption) -> Result<(), PaymentRejection> {
    if a.to == o.pay_to {
        Ok(())
    } else {
        Err(PaymentRejection::RecipientMismatch)
    }
}

/// `authorization.value` equals the price exactly (the v2 rule; more is refused as well, since
/// `exact` settles the signed value).
///
/// # Errors
/// [`PaymentRejection::AmountMismatch`].
pub fn check_amount(a: &Authorization, o: &PaymentOption) -> Result<(), PaymentRejection> {
    if a.value == o.amount {
        Ok(())
    } else {
        Err(PaymentRejection::AmountMismatch {
            got: a.value.to_string(),
            want: o.amount.to_string(),
        })
    }
}

/// `validAfter ≤ now`, `validBefore ≥ now + 6` and `validBefore ≤ now + maxTimeoutSeconds + 60`.
///
/// # Errors
/// [`PaymentRejection::NotYetValid`], [`PaymentRejection::Expired`] or
/// [`PaymentRejection::TooLong`].
pub fn check_time(
    a: &Authorization,
    now: u64,
    max_timeout_seconds: u64,
) -> Result<(), PaymentRejection> {
    if a.valid_after > now {
        return Err(PaymentRejection::NotYetValid);
    }
    if a.valid_before < now.saturating_add(VALID_BEFORE_BUFFER_SECONDS) {
        return Err(PaymentRejection::Expired);
    }
    let max = max_timeout_seconds.saturating_add(VALID_BEFORE_SLACK_SECONDS);
    if a.valid_before > now.saturating_add(max) {
        return Err(PaymentRejection::TooLong {
            got: a.valid_before - now,
            max,
        });
    }
    Ok(())
}

/// What the signature check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// A 65-byte signature recovered to `from`.
    Recovered,
    /// A longer signature (smart wallet): only the facilitator (on chain) can check it.
    Deferred,
}

/// Recovers a 65-byte signature and compares it with `from`.
///
/// # Errors
/// [`PaymentRejection::InvalidSignature`].
pub fn check_signature(
    a: &Authorization,
    signature: &[u8],
    o: &PaymentOption,
) -> Result<SignatureCheck, PaymentRejection> {
    if signature.len() != 65 {
        return Ok(SignatureCheck::Deferred);
    }
    let digest = evm::signing_hash(&o.domain_separator, a);
    match evm::recover_signer(&digest, signature) {
        Some(signer) if signer == a.from => Ok(SignatureCheck::Recovered),
        _ => Err(PaymentRejection::InvalidSignature),
    }
}

/// Every local check. Returns the payer.
///
/// # Errors
/// The first [`PaymentRejection`] found.
pub fn check_payment(
    p: &PaymentPayload,
    o: &PaymentOption,
    now: u64,
) -> Result<(Address, SignatureCheck), PaymentRejection> {
    let a = &p.payload.authorization;
    // Cheap checks first, so junk costs no signature recovery.
    check_recipient(a, o)?;
    check_time(a, now, o.max_timeout_seconds)?;
    check_amount(a, o)?;
    let sig = check_signature(a, &p.payload.signature, o)?;
    Ok((a.from, sig))
}

#[cfg(test)]
mod tests;
