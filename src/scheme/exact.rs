//! The `exact` scheme on EVM chains: the payer signs an EIP-3009 `TransferWithAuthorization`
//! for exactly the price; settling submits it to the token.
//!
//! Owns: [`wire`] (the payload on the wire), [`eip3009`] (typed data, domain separators,
//! signature recovery), [`verify`] (the local checks), [`client`] (signing payments, for tests
//! and command-line payers), [`onchain`] (the calls a facilitator makes: reading an
//! authorization's state, the transfer itself, what its reverts mean) and [`proof`] (reading a
//! settlement from a mined transaction's logs).

pub mod client;
pub mod eip3009;
pub mod onchain;
pub mod proof;
pub mod verify;
pub mod wire;

use alloy::primitives::{Address, B256, U256};
use serde_json::value::RawValue;

use super::{PaymentRejection, Scheme, SignatureCheck};
use crate::config::PaymentOption;
pub use wire::{Authorization, Payload};

/// The scheme's name on the wire.
pub const NAME: &str = "exact";

/// `exact` on EVM, with EIP-3009 `transferWithAuthorization`.
#[derive(Clone, Copy, Debug)]
pub struct Exact;

impl Scheme for Exact {
    const NAME: &'static str = NAME;
    type Payload = Payload;

    fn decode(raw: &RawValue) -> Result<Payload, PaymentRejection> {
        Payload::decode(raw).map_err(|e| PaymentRejection::InvalidPayload(e.to_string()))
    }

    fn payer(p: &Payload) -> Address {
        p.authorization.from
    }

    fn pays(p: &Payload) -> (Address, U256) {
        (p.authorization.to, p.authorization.value)
    }

    fn valid_before(p: &Payload) -> u64 {
        p.authorization.valid_before
    }

    fn nonce(p: &Payload) -> B256 {
        p.authorization.nonce
    }

    fn check(
        p: &Payload,
        option: &PaymentOption,
        domain: &B256,
        now: u64,
    ) -> Result<SignatureCheck, PaymentRejection> {
        verify::check_payment(p, option, domain, now).map(|(_, sig)| sig)
    }

    /// Exactly what was authorized (the local checks made it the price).
    fn settle_amount(p: &Payload, _price: U256) -> U256 {
        p.authorization.value
    }

    fn canonical_json(p: &Payload) -> String {
        p.canonical_json()
    }
}
