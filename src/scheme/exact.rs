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

pub use wire::{Authorization, Payload};

/// The scheme's name on the wire.
pub const NAME: &str = "exact";
