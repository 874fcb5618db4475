//! The paying side of x402: building and signing payment headers from a challenge.
//!
//! Owns: [`sign_v2`] and [`sign_v1`], which turn one offered requirement into a signed
//! `PAYMENT-SIGNATURE` / `X-PAYMENT` header value the way the reference clients do
//! (`validAfter = now - 600`, `validBefore = now + maxTimeoutSeconds`, random 32-byte nonce).
//! Used by the integration tests and by command-line payers. Does no IO.

use alloy::primitives::{Address, B256, U256};
use alloy::signers::local::PrivateKeySigner;
use alloy::signers::SignerSync;

use super::eip3009 as evm;
use super::wire::Authorization;
use crate::protocol::{self, parse_address, v1, v2, Network};

/// How far back `validAfter` is set, as the reference clients do, to absorb clock skew.
pub const VALID_AFTER_SLACK_SECONDS: u64 = 600;

/// Why a requirement cannot be paid.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The network is not an EVM network this client knows.
    #[error("unsupported network `{0}`")]
    Network(String),
    /// An address or amount in the requirement is malformed.
    #[error("malformed requirement field `{0}`")]
    Field(&'static str),
    /// Signing failed.
    #[error("signing failed")]
    Sign(#[from] alloy::signers::Error),
}

/// A fresh random nonce.
pub fn random_nonce() -> B256 {
    let mut b = [0u8; 32];
    // The OS random source does not fail on supported platforms; a zero nonce would only make
    // the payment collide with another zero-nonce payment, which the chain refuses.
    let _ = getrandom::fill(&mut b);
    B256::from(b)
}

/// The validity window of an authorization, in unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// `validAfter`.
    pub valid_after: u64,
    /// `validBefore`.
    pub valid_before: u64,
}

impl Window {
    /// The reference clients' window: `now - 600` to `now + maxTimeoutSeconds`.
    pub fn reference(now: u64, max_timeout_seconds: u64) -> Self {
        Window {
            valid_after: now.saturating_sub(VALID_AFTER_SLACK_SECONDS),
            valid_before: now.saturating_add(max_timeout_seconds),
        }
    }
}

struct Signed {
    signature: String,
    authorization: serde_json::Value,
}

#[allow(clippy::too_many_arguments)]
fn sign(
    signer: &PrivateKeySigner,
    network: &str,
    asset: &str,
    pay_to: &str,
    amount: &str,
    extra: &v2::Eip712Extra,
    window: Window,
    nonce: B256,
) -> Result<Signed, SignError> {
    let net = Network::parse(network).ok_or_else(|| SignError::Network(network.to_owned()))?;
    let asset: Address = parse_address(asset).ok_or(SignError::Field("asset"))?;
    let to = parse_address(pay_to).ok_or(SignError::Field("payTo"))?;
    let value: U256 = protocol::parse_uint(amount).ok_or(SignError::Field("amount"))?;
    let auth = Authorization {
        from: signer.address(),
        to,
        value,
        valid_after: window.valid_after,
        valid_before: window.valid_before,
        nonce,
    };
    let sep = evm::domain_separator(&extra.name, &extra.version, net.chain_id(), asset);
    let sig = signer.sign_hash_sync(&evm::signing_hash(&sep, &auth))?;
    Ok(Signed {
        signature: format!("0x{}", alloy::primitives::hex::encode(sig.as_bytes())),
        authorization: auth.to_json(),
    })
}

/// A signed v2 `PAYMENT-SIGNATURE` value for `accepts[index]` of a challenge.
///
/// # Errors
/// [`SignError`].
pub fn sign_v2(
    signer: &PrivateKeySigner,
    required: &v2::PaymentRequired,
    index: usize,
    now: u64,
    nonce: B256,
) -> Result<String, SignError> {
    let r = v2_option(required, index)?;
    let window = Window::reference(now, r.max_timeout_seconds);
    sign_v2_option(signer, required, r, window, nonce)
}

/// Like [`sign_v2`] with an explicit validity window (load generators pre-sign headers that
/// must stay valid for a whole run).
///
/// # Errors
/// [`SignError`].
pub fn sign_v2_in_window(
    signer: &PrivateKeySigner,
    required: &v2::PaymentRequired,
    index: usize,
    window: Window,
    nonce: B256,
) -> Result<String, SignError> {
    sign_v2_option(signer, required, v2_option(required, index)?, window, nonce)
}

fn v2_option(
    required: &v2::PaymentRequired,
    index: usize,
) -> Result<&v2::PaymentRequirements, SignError> {
    required
        .accepts
        .get(index)
        .ok_or(SignError::Field("accepts"))
}

fn sign_v2_option(
    signer: &PrivateKeySigner,
    required: &v2::PaymentRequired,
    r: &v2::PaymentRequirements,
    window: Window,
    nonce: B256,
) -> Result<String, SignError> {
    let s = sign(
        signer, &r.network, &r.asset, &r.pay_to, &r.amount, &r.extra, window, nonce,
    )?;
    let json = serde_json::json!({
        "x402Version": 2,
        "resource": required.resource,
        "accepted": r,
        "payload": {"signature": s.signature, "authorization": s.authorization},
    });
    Ok(protocol::encode_header(json.to_string().as_bytes()))
}

/// A signed v1 `X-PAYMENT` value for one v1 requirement.
///
/// # Errors
/// [`SignError`].
pub fn sign_v1(
    signer: &PrivateKeySigner,
    r: &v1::PaymentRequirements,
    now: u64,
    nonce: B256,
) -> Result<String, SignError> {
    let s = sign(
        signer,
        &r.network,
        &r.asset,
        &r.pay_to,
        &r.max_amount_required,
        &r.extra,
        Window::reference(now, r.max_timeout_seconds),
        nonce,
    )?;
    let json = serde_json::json!({
        "x402Version": 1,
        "scheme": r.scheme,
        "network": r.network,
        "payload": {"signature": s.signature, "authorization": s.authorization},
    });
    Ok(protocol::encode_header(json.to_string().as_bytes()))
}
