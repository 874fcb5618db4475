//! The `exact` EVM payload on the wire: a signature over an EIP-3009 authorization.
//!
//! Owns: [`Authorization`], [`Payload`], reading them from a payment payload's `payload` object
//! ([`Payload::decode`]) and writing them back canonically ([`Payload::canonical_json`]).
//! Integers arrive as decimal strings per spec; some clients send JSON numbers or `0x` hex
//! strings (crates.io `x402-reqwest` sends `value` as hex): both are read, and the signature
//! binds the numeric value, so the spelling cannot change what is paid.

use alloy::primitives::{Address, Bytes, B256, U256};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{parse_address, parse_uint, CodecError};

/// An EIP-3009 `TransferWithAuthorization` as it travels in the `exact` EVM payload.
///
/// JSON example (all integers are decimal strings on the wire):
/// `{"from":"0x857b…","to":"0x2096…","value":"10000","validAfter":"1740672089","validBefore":"1740672154","nonce":"0xf374…"}`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    /// The payer.
    pub from: Address,
    /// The payee; must equal the requirement's `payTo`.
    pub to: Address,
    /// Atomic units; must equal the requirement's amount.
    pub value: U256,
    /// Unix seconds; the authorization is not valid before this.
    pub valid_after: u64,
    /// Unix seconds; the authorization is not valid at or after this.
    pub valid_before: u64,
    /// 32 random bytes chosen by the payer; unique per authorization on chain.
    pub nonce: B256,
}

impl Authorization {
    /// The wire form: checksummed addresses, integers as decimal strings (the spec's spelling).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "from": self.from.to_checksum(None),
            "to": self.to.to_checksum(None),
            "value": self.value.to_string(),
            "validAfter": self.valid_after.to_string(),
            "validBefore": self.valid_before.to_string(),
            "nonce": self.nonce.to_string(),
        })
    }
}

/// The `exact` EVM payload: a signature over an [`Authorization`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// 65 bytes for an EOA; longer for smart wallets (EIP-1271 / ERC-6492).
    pub signature: Bytes,
    /// The signed authorization.
    pub authorization: Authorization,
}

#[derive(Deserialize)]
struct WireExactEvm {
    signature: String,
    authorization: WireAuthorization,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAuthorization {
    from: String,
    to: String,
    value: IntOrString,
    valid_after: IntOrString,
    valid_before: IntOrString,
    nonce: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u64),
    Str(String),
}

impl IntOrString {
    fn to_u256(&self) -> Option<U256> {
        match self {
            IntOrString::Int(n) => Some(U256::from(*n)),
            IntOrString::Str(s) => parse_uint(s),
        }
    }

    fn to_u64(&self) -> Option<u64> {
        self.to_u256().and_then(|v| u64::try_from(v).ok())
    }
}

fn parse_b256(s: &str) -> Option<B256> {
    let hex = s.strip_prefix("0x")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_hex_bytes(s: &str) -> Option<Bytes> {
    let hex = s.strip_prefix("0x")?;
    if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    s.parse().ok()
}

/// The payload as sent to facilitators: the spec's spelling (decimal strings, checksummed
/// addresses, 0x-hex bytes).
#[derive(Serialize)]
struct CanonicalPayload {
    signature: String,
    authorization: CanonicalAuthorization,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalAuthorization {
    from: String,
    to: String,
    value: String,
    valid_after: String,
    valid_before: String,
    nonce: String,
}

impl Payload {
    /// Reads the `payload` object of a payment payload.
    ///
    /// # Errors
    /// A [`CodecError`] naming the first problem found.
    pub fn decode(raw: &RawValue) -> Result<Payload, CodecError> {
        let wire: WireExactEvm = serde_json::from_str(raw.get()).map_err(CodecError::Json)?;
        let field = |field, problem| CodecError::Field { field, problem };
        let a = &wire.authorization;
        let authorization = Authorization {
            from: parse_address(&a.from).ok_or(field(
                "payload.authorization.from",
                "not a 20-byte hex address",
            ))?,
            to: parse_address(&a.to).ok_or(field(
                "payload.authorization.to",
                "not a 20-byte hex address",
            ))?,
            value: a.value.to_u256().ok_or(field(
                "payload.authorization.value",
                "not a non-negative integer",
            ))?,
            valid_after: a.valid_after.to_u64().ok_or(field(
                "payload.authorization.validAfter",
                "not an integer of unix seconds",
            ))?,
            valid_before: a.valid_before.to_u64().ok_or(field(
                "payload.authorization.validBefore",
                "not an integer of unix seconds",
            ))?,
            nonce: parse_b256(&a.nonce)
                .ok_or(field("payload.authorization.nonce", "not 32 bytes of hex"))?,
        };
        let signature = parse_hex_bytes(&wire.signature)
            .ok_or(field("payload.signature", "not 0x-prefixed hex"))?;
        if signature.len() < 65 {
            return Err(field("payload.signature", "shorter than 65 bytes"));
        }
        Ok(Payload {
            signature,
            authorization,
        })
    }

    /// The canonical JSON of the payload object, as sent to the facilitator: every integer
    /// written as a decimal string (the spec's form), whatever spelling the client used.
    pub fn canonical_json(&self) -> String {
        let a = &self.authorization;
        let out = CanonicalPayload {
            signature: self.signature.to_string(),
            authorization: CanonicalAuthorization {
                from: a.from.to_checksum(None),
                to: a.to.to_checksum(None),
                value: a.value.to_string(),
                valid_after: a.valid_after.to_string(),
                valid_before: a.valid_before.to_string(),
                nonce: a.nonce.to_string(),
            },
        };
        // Strings only: cannot fail.
        serde_json::to_string(&out).unwrap_or_default()
    }
}
