//! Protocol version 2 wire types: the `PAYMENT-REQUIRED` challenge and its requirements.
//!
//! Owns: `PaymentRequirements` (v2 shape, `amount`), `ResourceInfo`, `PaymentRequired`.
//! Does not own: the payment payload (shared with v1 in `protocol`).

use serde::{Deserialize, Serialize};

/// EIP-712 domain hints of an EVM `exact` requirement.
///
/// JSON example: `{"name":"USDC","version":"2"}`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
pub struct Eip712Extra {
    /// EIP-712 domain `name`; must equal the token's on-chain `name()`.
    pub name: String,
    /// EIP-712 domain `version`.
    pub version: String,
}

/// One payment option of a v2 challenge.
///
/// JSON example:
/// `{"scheme":"exact","network":"eip155:84532","amount":"10000","asset":"0x036C…CF7e","payTo":"0x2096…287C","maxTimeoutSeconds":60,"extra":{"name":"USDC","version":"2"}}`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact`.
    pub scheme: String,
    /// CAIP-2 network id.
    pub network: String,
    /// Atomic units, decimal string.
    pub amount: String,
    /// Token contract address (checksummed).
    pub asset: String,
    /// Recipient address (checksummed).
    pub pay_to: String,
    /// Longest time the server may take between receiving a payment and settling it.
    pub max_timeout_seconds: u64,
    /// EIP-712 domain hints.
    pub extra: Eip712Extra,
}

/// `resource` of a v2 challenge.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceInfo {
    /// The public URL of the protected resource.
    pub url: String,
    /// Human description (optional in the spec; servers such as x402-axum may omit it, read as
    /// `""`; the gateway always sends it).
    #[serde(default)]
    pub description: String,
    /// MIME type of the resource (optional in the spec, as `description`).
    #[serde(default)]
    pub mime_type: String,
}

/// The decoded `PAYMENT-REQUIRED` header.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequired {
    /// Always 2.
    pub x402_version: u8,
    /// Why payment is (still) required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What is being paid for.
    pub resource: ResourceInfo,
    /// Payment options, in order of preference.
    pub accepts: Vec<PaymentRequirements>,
}
