//! The local checks of an `exact` payment: every check that needs no network, run before the
//! facilitator is asked anything. Thresholds follow the reference facilitators: `validAfter ≤
//! now`, `validBefore ≥ now + 6 s`, exact amount, recipient equal case-insensitively, 65-byte
//! signatures recovered in-process (longer ones, EIP-1271/6492, are left to the facilitator,
//! which checks them on chain). One bound is the gateway's own: `validBefore` may be at most
//! `maxTimeoutSeconds + 60 s` away, so that no client decides how long the replay guard must
//! remember its authorization.
//!
//! Owns: the pure `check_*` functions.

use alloy::primitives::{Address, B256};

use super::eip3009;
use super::wire::{Authorization, Payload};
use crate::config::PaymentOption;
use crate::scheme::{PaymentRejection, SignatureCheck};

/// Seconds of validity a payment must still have: the reference facilitators' buffer for the
/// settlement round trip.
pub const VALID_BEFORE_BUFFER_SECONDS: u64 = 6;

/// Slack beyond `maxTimeoutSeconds` allowed for `validBefore` (clock skew between client and
/// gateway; the official clients sign `validBefore = now + maxTimeoutSeconds`).
pub const VALID_BEFORE_SLACK_SECONDS: u64 = 60;

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

/// Recovers a 65-byte signature over `a` in the token's EIP-712 domain (`separator`) and
/// compares it with `from`.
///
/// # Errors
/// [`PaymentRejection::InvalidSignature`].
pub fn check_signature(
    a: &Authorization,
    signature: &[u8],
    separator: &B256,
) -> Result<SignatureCheck, PaymentRejection> {
    if signature.len() != 65 {
        return Ok(SignatureCheck::Deferred);
    }
    let digest = eip3009::signing_hash(separator, a);
    match eip3009::recover_signer(&digest, signature) {
        Some(signer) if signer == a.from => Ok(SignatureCheck::Recovered),
        _ => Err(PaymentRejection::InvalidSignature),
    }
}

/// Every local check. Returns the payer.
///
/// # Errors
/// The first [`PaymentRejection`] found.
pub fn check_payment(
    p: &Payload,
    o: &PaymentOption,
    separator: &B256,
    now: u64,
) -> Result<(Address, SignatureCheck), PaymentRejection> {
    let a = &p.authorization;
    // Cheap checks first, so junk costs no signature recovery.
    check_recipient(a, o)?;
    check_time(a, now, o.max_timeout_seconds)?;
    check_amount(a, o)?;
    let sig = check_signature(a, &p.signature, separator)?;
    Ok((a.from, sig))
}
