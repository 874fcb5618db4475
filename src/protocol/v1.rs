//! Protocol version 1 wire types: the JSON 402 body and its requirements.
//!
//! Owns: `PaymentRequirements` (v1 shape, `maxAmountRequired` and per-entry `resource`) and
//! `PaymentRequirementsResponse` (the 402 body). Every field a legacy client's zod schema
//! requires is always present.
//! Does not own: the payment payload (shared with v2 in `protocol`).

use serde::{Deserialize, Serialize};

use super::v2::Eip712Extra;

/// One payment option of a v1 challenge.
///
/// JSON example:
/// `{"scheme":"exact","network":"base-sepolia","maxAmountRequired":"10000","resource":"https://api.example.com/premium-data","description":"","mimeType":"application/json","payTo":"0x2096…287C","maxTimeoutSeconds":60,"asset":"0x036C…CF7e","extra":{"name":"USDC","version":"2"}}`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirements {
    /// `exact`.
    pub scheme: String,
    /// v1 network name.
    pub network: String,
    /// Atomic units, decimal string.
    pub max_amount_required: String,
    /// Full URL of the resource (legacy clients validate it as a URL).
    pub resource: String,
    /// Human description (required as a string by legacy clients).
    pub description: String,
    /// MIME type (required as a string by legacy clients).
    pub mime_type: String,
    /// Recipient address (checksummed).
    pub pay_to: String,
    /// Longest time between payment and settlement.
    pub max_timeout_seconds: u64,
    /// Token contract address (checksummed).
    pub asset: String,
    /// EIP-712 domain hints.
    pub extra: Eip712Extra,
}

/// The JSON body of a v1 402.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PaymentRequirementsResponse {
    /// Always 1.
    pub x402_version: u8,
    /// Why payment is (still) required; any string.
    pub error: String,
    /// Payment options a legacy client can read, in order of preference.
    pub accepts: Vec<PaymentRequirements>,
}
