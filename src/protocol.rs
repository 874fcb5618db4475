//! Wire types and codecs of the x402 protocol, shared by both versions.
//!
//! Owns: header names, the strict base64 + JSON header codec, the payment payload as the gateway
//! reads it from either header (`PAYMENT-SIGNATURE` or `X-PAYMENT`, branching on `x402Version`
//! inside), facilitator request/response shapes and settlement receipts.
//! Does not own: which requirements a route has (`pricing`), whether a payment is acceptable
//! (`verify`), or any IO. Nothing here imports another module of this crate except its children.
//!
//! Spec references: `x402-specification-v1.md`, `x402-specification-v2.md`,
//! `transports-v1/http.md`, `transports-v2/http.md` (see `docs/` of the x402 repository).

pub mod network;
pub mod reason;
pub mod v1;
pub mod v2;

use alloy::primitives::{Address, U256};
use base64::Engine as _;
use http::HeaderName;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub use network::Network;
pub use reason::ErrorReason;

// === Header names ===

/// v2 challenge header (server → client, on 402): base64 JSON `PaymentRequired`.
pub const PAYMENT_REQUIRED: HeaderName = HeaderName::from_static("payment-required");
/// v2 payment header (client → server): base64 JSON `PaymentPayload`.
pub const PAYMENT_SIGNATURE: HeaderName = HeaderName::from_static("payment-signature");
/// v2 settlement receipt header (server → client): base64 JSON `SettleResponse`.
pub const PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("payment-response");
/// v1 payment header (client → server): base64 JSON `PaymentPayload`.
pub const X_PAYMENT: HeaderName = HeaderName::from_static("x-payment");
/// v1 settlement receipt header (server → client).
pub const X_PAYMENT_RESPONSE: HeaderName = HeaderName::from_static("x-payment-response");
/// Sign-in-with-X extension header; a credential, never forwarded upstream.
pub const SIGN_IN_WITH_X: HeaderName = HeaderName::from_static("sign-in-with-x");
/// Handler-to-middleware header of the `upto` scheme; internal, never shown to clients.
pub const SETTLEMENT_OVERRIDES: HeaderName = HeaderName::from_static("settlement-overrides");

/// Request headers that carry payment credentials: stripped before anything goes upstream.
pub const CREDENTIAL_HEADERS: [HeaderName; 3] = [PAYMENT_SIGNATURE, X_PAYMENT, SIGN_IN_WITH_X];

/// The largest payment header accepted, in bytes of its base64 text. An EOA payment is about
/// 1 KiB; smart-wallet (ERC-6492) signatures can be a few KiB.
pub const MAX_PAYMENT_HEADER_BYTES: usize = 16 * 1024;

// === Codec ===

/// Why a payment header could not be read. Each maps to a client-facing reason.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The header is larger than [`MAX_PAYMENT_HEADER_BYTES`].
    #[error("payment header is {0} bytes, larger than the {MAX_PAYMENT_HEADER_BYTES}-byte limit")]
    TooLarge(usize),
    /// Not standard-alphabet base64.
    #[error("payment header is not valid base64 (standard alphabet)")]
    Base64(#[source] base64::DecodeError),
    /// The decoded bytes are not the JSON the version requires.
    #[error("payment header JSON is invalid: {0}")]
    Json(#[source] serde_json::Error),
    /// `x402Version` is missing or not 1 or 2.
    #[error("unsupported x402Version {0}")]
    Version(String),
    /// A field has the right JSON type but an invalid value (address, hex, integer).
    #[error("invalid field `{field}`: {problem}")]
    Field {
        /// The JSON path of the field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
}

const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Encodes JSON bytes as a header value (standard alphabet, padded), as every x402 SDK does.
pub fn encode_header(json: &[u8]) -> String {
    B64.encode(json)
}

/// Decodes a base64 header value into bytes. Padding is optional (browsers' `atob` accepts
/// both); the URL-safe alphabet is rejected, as the reference SDKs reject it.
///
/// # Errors
/// [`CodecError::TooLarge`] or [`CodecError::Base64`].
pub fn decode_header(value: &[u8]) -> Result<Vec<u8>, CodecError> {
    if value.len() > MAX_PAYMENT_HEADER_BYTES {
        return Err(CodecError::TooLarge(value.len()));
    }
    B64.decode(value.trim_ascii()).map_err(CodecError::Base64)
}

// === Payment payload ===

/// Which protocol version a message uses. Serialises as the number `1` or `2`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum X402Version {
    /// Protocol version 1 (`X-PAYMENT`, JSON body challenge, v1 network names).
    V1,
    /// Protocol version 2 (`PAYMENT-SIGNATURE`, `PAYMENT-REQUIRED` header, CAIP-2 networks).
    V2,
}

impl X402Version {
    /// The number on the wire.
    pub fn number(self) -> u8 {
        match self {
            X402Version::V1 => 1,
            X402Version::V2 => 2,
        }
    }

    /// The receipt header name for this version.
    pub fn receipt_header(self) -> HeaderName {
        match self {
            X402Version::V1 => X_PAYMENT_RESPONSE,
            X402Version::V2 => PAYMENT_RESPONSE,
        }
    }
}

impl Serialize for X402Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.number())
    }
}

/// A decoded payment header of either version, with the parts the gateway needs typed and the
/// parts it only passes on (`resource`, `extensions`) kept as raw JSON.
#[derive(Clone, Debug)]
pub struct PaymentPayload {
    /// Protocol version, from `x402Version` inside the JSON (not from the header name).
    pub version: X402Version,
    /// The scheme the client chose (`exact`).
    pub scheme: String,
    /// The network the client chose: a v1 name (v1) or CAIP-2 id (v2), as sent.
    pub network: String,
    /// v2 only: the `accepted.asset` the client chose.
    pub asset: Option<String>,
    /// v2 only: the `accepted.payTo` the client chose.
    pub pay_to: Option<String>,
    /// v2 only: the `accepted.amount` the client chose.
    pub amount: Option<String>,
    /// The scheme's own payload object (`payload`), as sent: the scheme reads it
    /// (`scheme::Authorized::decode`).
    pub payload: Box<RawValue>,
    /// v2: the whole `accepted` object, echoed to the facilitator unchanged.
    pub accepted: Option<Box<RawValue>>,
    /// v2: `resource`, passed on unchanged.
    pub resource: Option<Box<RawValue>>,
    /// v2: `extensions`, passed on unchanged.
    pub extensions: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePayload<'a> {
    x402_version: Option<serde_json::Value>,
    scheme: Option<String>,
    network: Option<String>,
    #[serde(borrow)]
    accepted: Option<&'a RawValue>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    #[serde(borrow)]
    extensions: Option<&'a RawValue>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAccepted {
    scheme: String,
    network: String,
    #[serde(default)]
    asset: Option<String>,
    #[serde(default)]
    pay_to: Option<String>,
    #[serde(default)]
    amount: Option<String>,
}

/// Parses a non-negative integer written in decimal, or in hex with a `0x` prefix.
pub fn parse_uint(s: &str) -> Option<U256> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        return U256::from_str_radix(hex, 16).ok();
    }
    if s.is_empty() || s.len() > 78 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    U256::from_str_radix(s, 10).ok()
}

/// Parses `0x` + 40 hex digits (any case; the checksum is not enforced, as the SDKs do not).
pub fn parse_address(s: &str) -> Option<Address> {
    let hex = s.strip_prefix("0x")?;
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    s.parse().ok()
}

impl PaymentPayload {
    /// Decodes a payment header value (base64 JSON) of either version.
    ///
    /// # Errors
    /// A [`CodecError`] naming the first problem found.
    pub fn from_header(value: &[u8]) -> Result<Self, CodecError> {
        let json = decode_header(value)?;
        Self::from_json(&json)
    }

    /// Decodes the JSON of a payment payload of either version.
    ///
    /// # Errors
    /// A [`CodecError`] naming the first problem found.
    pub fn from_json(json: &[u8]) -> Result<Self, CodecError> {
        let wire: WirePayload<'_> = serde_json::from_slice(json).map_err(CodecError::Json)?;
        // The SIWX spec examples write the version as a string; accept "1"/"2" too.
        let version = match &wire.x402_version {
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(1) => X402Version::V1,
            Some(serde_json::Value::Number(n)) if n.as_u64() == Some(2) => X402Version::V2,
            Some(serde_json::Value::String(s)) if s == "1" => X402Version::V1,
            Some(serde_json::Value::String(s)) if s == "2" => X402Version::V2,
            Some(other) => return Err(CodecError::Version(other.to_string())),
            None => return Err(CodecError::Version("(missing)".into())),
        };
        let field = |field, problem| CodecError::Field { field, problem };
        let (scheme, network, asset, pay_to, amount, accepted) = match version {
            X402Version::V1 => (
                wire.scheme.ok_or(field("scheme", "missing"))?,
                wire.network.ok_or(field("network", "missing"))?,
                None,
                None,
                None,
                None,
            ),
            X402Version::V2 => {
                let raw = wire.accepted.ok_or(field("accepted", "missing"))?;
                let acc: WireAccepted =
                    serde_json::from_str(raw.get()).map_err(CodecError::Json)?;
                (
                    acc.scheme,
                    acc.network,
                    acc.asset,
                    acc.pay_to,
                    acc.amount,
                    Some(raw.to_owned()),
                )
            }
        };
        if !wire.payload.get().trim_start().starts_with('{') {
            return Err(field("payload", "not an object"));
        }
        Ok(PaymentPayload {
            version,
            scheme,
            network,
            asset,
            pay_to,
            amount,
            payload: wire.payload.to_owned(),
            accepted,
            resource: wire.resource.map(RawValue::to_owned),
            extensions: wire.extensions.map(RawValue::to_owned),
        })
    }

    /// The canonical JSON of this payload, as sent to the facilitator: the client's own fields,
    /// with the scheme's payload object in its canonical form (`payload_json`, from the
    /// scheme: every integer a decimal string, whatever spelling the client used).
    pub fn to_canonical_json(&self, payload_json: &str) -> String {
        // The scheme's canonical payload is JSON it wrote itself; a failure here is a bug.
        let payload = RawValue::from_string(payload_json.to_owned()).unwrap_or_default();
        let written = match self.version {
            X402Version::V1 => serde_json::to_string(&CanonicalV1 {
                x402_version: 1,
                scheme: &self.scheme,
                network: &self.network,
                payload: &payload,
            }),
            X402Version::V2 => serde_json::to_string(&CanonicalV2 {
                x402_version: 2,
                resource: self.resource.as_deref(),
                accepted: self.accepted.as_deref(),
                extensions: self.extensions.as_deref(),
                payload: &payload,
            }),
        };
        written.unwrap_or_default()
    }
}

/// A v1 payment payload as sent to facilitators.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalV1<'a> {
    x402_version: u8,
    scheme: &'a str,
    network: &'a str,
    payload: &'a RawValue,
}

/// A v2 payment payload as sent to facilitators: the client's own objects, verbatim.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CanonicalV2<'a> {
    x402_version: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accepted: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    extensions: Option<&'a RawValue>,
    payload: &'a RawValue,
}

/// A facilitator's `/verify` and `/settle` request body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FacilitatorRequest<'a> {
    /// The protocol version of the payment.
    pub x402_version: u8,
    /// The payment payload, canonical ([`PaymentPayload::to_canonical_json`]).
    pub payment_payload: &'a RawValue,
    /// The requirements it was accepted against (prepared once per route option).
    pub payment_requirements: &'a RawValue,
}

impl FacilitatorRequest<'_> {
    /// The body as JSON.
    pub fn to_json(&self) -> String {
        // Two JSON values and a number: cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

// === Facilitator responses ===

/// `POST /verify` answer. `null` is accepted for every optional field, as the TS SDK does.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VerifyResponse {
    /// The verdict.
    pub is_valid: bool,
    /// Machine reason when invalid, e.g. `invalid_exact_evm_signature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_reason: Option<String>,
    /// Free-text detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invalid_message: Option<String>,
    /// The payer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
}

/// `POST /settle` answer, and the decoded content of a receipt header.
///
/// `success` is optional on input so that a reply without it can be read and treated as a
/// failure (fail closed), never as success.
///
/// JSON example: `{"success":true,"transaction":"0xabc…","network":"eip155:84532","payer":"0x857b…"}`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SettleResponse {
    /// Whether the transfer happened. Missing means failure.
    #[serde(default)]
    pub success: Option<bool>,
    /// Machine reason on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    /// Free-text detail on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_message: Option<String>,
    /// The payer address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer: Option<String>,
    /// Transaction hash; `""` on failure.
    #[serde(default)]
    pub transaction: Option<String>,
    /// The network, in the version's naming.
    #[serde(default)]
    pub network: Option<String>,
}

impl SettleResponse {
    /// True only for an explicit `success: true` with a non-empty transaction.
    pub fn is_success(&self) -> bool {
        self.success == Some(true) && self.transaction.as_deref().is_some_and(|t| !t.is_empty())
    }
}

/// Receipt sent to the client in `PAYMENT-RESPONSE` / `X-PAYMENT-RESPONSE`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt<'a> {
    /// Whether the payment settled.
    pub success: bool,
    /// Failure reason, when not successful.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<&'a str>,
    /// The payer, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payer: Option<&'a str>,
    /// Transaction hash, `""` on failure.
    pub transaction: &'a str,
    /// Network in the naming of the payment's protocol version.
    pub network: &'a str,
    /// `{"deferred": {"status": "queued"}}` on a deferred payment's receipt: accepted, its
    /// settlement queued (no transaction yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extensions: Option<ReceiptExtensions>,
}

/// The gateway's extensions of a receipt.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct ReceiptExtensions {
    /// Deferred settlement.
    pub deferred: DeferredReceipt,
}

/// A deferred payment's status on its receipt.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DeferredReceipt {
    /// `queued`: accepted, settled in the background.
    pub status: &'static str,
}

/// The response header of a deferred payment's answer: `X-PAYMENT-STATUS: queued`.
pub const X_PAYMENT_STATUS: http::HeaderName = http::HeaderName::from_static("x-payment-status");

impl Receipt<'_> {
    /// The header value: base64 of the JSON.
    pub fn to_header(&self) -> String {
        // Serialising a struct of strings and bools cannot fail.
        encode_header(serde_json::to_string(self).unwrap_or_default().as_bytes())
    }
}

/// `GET /supported` answer.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
pub struct SupportedResponse {
    /// Every (version, scheme, network) the facilitator handles.
    pub kinds: Vec<SupportedKind>,
}

/// One entry of `/supported`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct SupportedKind {
    /// 1 or 2.
    pub x402_version: u8,
    /// e.g. `exact`.
    pub scheme: String,
    /// v1 name or CAIP-2 id, in the version's naming.
    pub network: String,
}

/// Escapes a string as a JSON string literal, quotes included.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
pub(crate) mod tests;
