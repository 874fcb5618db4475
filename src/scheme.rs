//! Payment schemes: what a payment of one kind is on the wire, how it is checked without the
//! network, what identifies it on chain, and how its settlement shows there.
//!
//! Owns: the [`Scheme`] trait (decoding a payment's `payload` object, the local checks, the
//! amount to settle, the canonical form sent to facilitators, the wire name), [`Authorized`] (a
//! payment's scheme payload, decoded: one variant per scheme, each in a folder of its own), [`PaymentRejection`] (why a payment is refused before anything is
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
use exact::Exact;
pub use rejection::PaymentRejection;
use serde_json::value::RawValue;

/// The schemes this gateway takes, by their wire names.
pub const NAMES: [&str; 1] = [Exact::NAME];

/// What the signature check concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureCheck {
    /// The signature was recovered to the payer in process.
    Recovered,
    /// A signature only the chain can check (a smart wallet): the facilitator must be asked.
    Deferred,
}

/// A payment scheme: what it reads from a payment's `payload` object, how it is checked
/// without the network, what it settles and how it is written for facilitators. One folder per
/// scheme implements it (`scheme/exact/`); [`Authorized`] dispatches to them by wire name.
pub trait Scheme {
    /// The wire name (`accepted.scheme`, v1 `scheme`).
    const NAME: &'static str;
    /// The decoded `payload` object.
    type Payload: Clone + std::fmt::Debug + PartialEq + Eq;

    /// Reads the `payload` object.
    ///
    /// # Errors
    /// [`PaymentRejection::InvalidPayload`].
    fn decode(raw: &RawValue) -> Result<Self::Payload, PaymentRejection>;
    /// The payer.
    fn payer(p: &Self::Payload) -> Address;
    /// Whom it pays, and the most it pays (atomic units).
    fn pays(p: &Self::Payload) -> (Address, U256);
    /// The last unix second it may settle in (exclusive).
    fn valid_before(p: &Self::Payload) -> u64;
    /// What makes it unique on chain.
    fn nonce(p: &Self::Payload) -> B256;
    /// Every local check for `option` at `now` (unix s), with the option's prepared domain.
    ///
    /// # Errors
    /// The first [`PaymentRejection`] found.
    fn check(
        p: &Self::Payload,
        option: &PaymentOption,
        domain: &B256,
        now: u64,
    ) -> Result<SignatureCheck, PaymentRejection>;
    /// What to settle for a request priced at `price`: the authorized amount for `exact`; a
    /// usage-based scheme may settle less than it authorized.
    fn settle_amount(p: &Self::Payload, price: U256) -> U256;
    /// The payload object in its canonical form, as sent to facilitators.
    fn canonical_json(p: &Self::Payload) -> String;
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
            Exact::NAME => Exact::decode(&p.payload).map(Authorized::Exact),
            other => Err(PaymentRejection::UnsupportedScheme(other.to_owned())),
        }
    }

    /// The scheme's wire name.
    pub fn scheme(&self) -> &'static str {
        match self {
            Authorized::Exact(_) => Exact::NAME,
        }
    }

    /// The payer.
    pub fn payer(&self) -> Address {
        match self {
            Authorized::Exact(e) => Exact::payer(e),
        }
    }

    /// Whom it pays, and the most it pays (atomic units).
    pub fn pays(&self) -> (Address, U256) {
        match self {
            Authorized::Exact(e) => Exact::pays(e),
        }
    }

    /// The last unix second it may settle in (exclusive).
    pub fn valid_before(&self) -> u64 {
        match self {
            Authorized::Exact(e) => Exact::valid_before(e),
        }
    }

    /// The nonce that makes it unique on chain.
    pub fn nonce(&self) -> B256 {
        match self {
            Authorized::Exact(e) => Exact::nonce(e),
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
            Authorized::Exact(e) => Exact::check(e, option, domain, now),
        }
    }

    /// What to settle for a request priced at `price`.
    pub fn settle_amount(&self, price: U256) -> U256 {
        match self {
            Authorized::Exact(e) => Exact::settle_amount(e, price),
        }
    }

    /// The payload object in its canonical form, as sent to facilitators.
    pub fn canonical_json(&self) -> String {
        match self {
            Authorized::Exact(e) => Exact::canonical_json(e),
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
