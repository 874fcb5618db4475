//! Payment schemes: what a payment of one kind is on the wire, how it is checked without the
//! network, what identifies it on chain, and how its settlement shows there.
//!
//! Owns: [`Authorized`] (a payment's scheme payload, decoded: one variant per scheme, each in a
//! folder of its own), [`PaymentRejection`] (why a payment is refused before anything is
//! settled) and [`SignatureCheck`]. `exact` on EVM, with EIP-3009 `transferWithAuthorization`,
//! is the one implemented (`scheme/exact/`): its wire payload, typed data and signature
//! recovery, local checks, the client's signing, the settlement call and the proof of a
//! settlement in a transaction's logs. Nothing outside `scheme/` knows what an `exact` payment
//! looks like; the embedded facilitator and the journal's chain reader are the exact scheme's
//! on-chain side, and take what they need from `scheme::exact`.
//!
//! Does not own: which route offers which option (`pricing`), asking facilitators (`verify`).

pub mod exact;
mod rejection;
#[cfg(test)]
mod tests;

use alloy::primitives::{Address, B256, U256};

use crate::config::PaymentOption;
use crate::flow::ReplayKey;
use crate::protocol::PaymentPayload;
pub use rejection::PaymentRejection;

/// The schemes this gateway takes, by their wire names.
pub const NAMES: [&str; 1] = [exact::NAME];

/// What the signature check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The signature was recovered to the payer in process.
    Recovered,
    /// A signature only the chain can check (a smart wallet): the facilitator must be asked.
    Deferred,
}

/// A payment's scheme payload, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorized {
    /// `exact` on EVM: an EIP-3009 authorization for exactly the price.
    Exact(exact::Payload),
}

impl Authorized {
    /// Decodes the scheme payload of `p`, by its scheme.
    ///
    /// # Errors
    /// [`PaymentRejection::UnsupportedScheme`], or [`PaymentRejection::InvalidPayload`].
    pub fn decode(p: &PaymentPayload) -> Result<Authorized, PaymentRejection> {
        match p.scheme.as_str() {
            exact::NAME => exact::Payload::decode(&p.payload)
                .map(Authorized::Exact)
                .map_err(|e| PaymentRejection::InvalidPayload(e.to_string())),
            other => Err(PaymentRejection::UnsupportedScheme(other.to_owned())),
        }
    }

    /// The payer.
    pub fn payer(&self) -> Address {
        match self {
            Authorized::Exact(e) => e.authorization.from,
        }
    }

    /// Whom it pays, and the most it pays (atomic units).
    pub fn pays(&self) -> (Address, U256) {
        match self {
            Authorized::Exact(e) => (e.authorization.to, e.authorization.value),
        }
    }

    /// The last unix second it may settle in (exclusive).
    pub fn valid_before(&self) -> u64 {
        match self {
            Authorized::Exact(e) => e.authorization.valid_before,
        }
    }

    /// The nonce that makes it unique on chain.
    pub fn nonce(&self) -> B256 {
        match self {
            Authorized::Exact(e) => e.authorization.nonce,
        }
    }

    /// Its identity on chain, paying with `option`'s token.
    pub fn key(&self, option: &PaymentOption) -> ReplayKey {
        ReplayKey {
            chain_id: option.network.chain_id(),
            asset: option.asset.address,
            from: self.payer(),
            nonce: self.nonce(),
        }
    }

    /// Every local check for `option` at `now` (unix s); `domain` is the option's prepared
    /// signing domain ([`domain`]).
    ///
    /// # Errors
    /// The first [`PaymentRejection`] found.
    pub fn check(
        &self,
        option: &PaymentOption,
        domain: &B256,
        now: u64,
    ) -> Result<SignatureCheck, PaymentRejection> {
        match self {
            Authorized::Exact(e) => {
                exact::verify::check_payment(e, option, domain, now).map(|(_, sig)| sig)
            }
        }
    }

    /// The payload object in its canonical form, as sent to facilitators.
    pub fn canonical_json(&self) -> String {
        match self {
            Authorized::Exact(e) => e.canonical_json(),
        }
    }
}

/// What checking a payment for `option` needs, computed once (at route table build): the
/// token's signing domain.
pub fn domain(option: &PaymentOption) -> B256 {
    exact::eip3009::domain_separator(
        &option.asset.name,
        &option.asset.version,
        option.network.chain_id(),
        option.asset.address,
    )
}
