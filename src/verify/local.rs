//! The local fast path, scheme-neutral part: which of a route's options a payment is for.
//! The checks themselves are the scheme's (`scheme::Authorized::check`); a failure never
//! reaches the facilitator or the upstream.
//!
//! Owns: [`select_option`]. Re-exports the rejection set ([`PaymentRejection`]) and the
//! signature verdict ([`SignatureCheck`]) of `scheme`.

use crate::config::PaymentOption;
use crate::pricing::challenge::PreparedOption;
use crate::protocol::{PaymentPayload, X402Version};
use crate::scheme::Authorized;
pub use crate::scheme::{PaymentRejection, SignatureCheck};

/// Picks the route option a payment is for: same network (v1: the option must be offered to
/// v1 clients), same asset when the payload names one (v2). When several remain, the one whose
/// recipient and amount match the authorization wins, so that the later checks report the
/// most specific reason.
///
/// # Errors
/// [`PaymentRejection::NoMatchingRequirements`].
pub fn select_option(
    options: &[PaymentOption],
    prepared: &[PreparedOption],
    p: &PaymentPayload,
    a: &Authorized,
) -> Result<usize, PaymentRejection> {
    let (to, value) = a.pays();
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
        if o.pay_to == to && o.amount == value {
            return Ok(i);
        }
        first.get_or_insert(i);
    }
    first.ok_or_else(|| PaymentRejection::NoMatchingRequirements(p.network.clone()))
}

#[cfg(test)]
mod tests;
