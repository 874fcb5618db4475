//! Reading a facilitator request (`/verify`, `/settle` body) and running every check that needs
//! no chain: the pure front half of the embedded facilitator, and a fuzz target.
//!
//! Owns: [`parse_request`] (body → [`Parsed`] or an [`Invalid`] verdict with a reference
//! reason) and [`Invalid`]. Does not own: chain reads, submission, HTTP.

use alloy::primitives::{Address, U256};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::{Asset, PaymentOption};
use crate::protocol::{
    parse_address, parse_uint, v2::Eip712Extra, ErrorReason, Network, PaymentPayload,
};
use crate::scheme::exact::{self as exact, eip3009, verify};
use crate::scheme::{Authorized, PaymentRejection};

/// A verdict of "invalid", with the payer when known. `message` is for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The reference reason.
    pub reason: ErrorReason,
    /// Detail, for the log (never the client).
    pub message: String,
    /// The payer, once the payload was read.
    pub payer: Option<Address>,
    /// The network in the payload version's naming, once known.
    pub network: String,
}

/// An invalid verdict without payer or network.
pub fn invalid(reason: ErrorReason, message: impl Into<String>) -> Invalid {
    Invalid {
        reason,
        message: message.into(),
        payer: None,
        network: String::new(),
    }
}

/// A request that passed every local check.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The payment.
    pub payload: PaymentPayload,
    /// Its `exact` payload (the authorization and its signature).
    pub exact: exact::Payload,
    /// The network of the requirements.
    pub network: Network,
    /// The token contract.
    pub asset: Address,
    /// The recipient of the requirements.
    pub pay_to: Address,
    /// The amount of the requirements.
    pub amount: U256,
    /// The network in the payload version's naming (for answers).
    pub network_name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequest<'a> {
    x402_version: serde_json::Value,
    #[serde(borrow)]
    payment_payload: &'a RawValue,
    payment_requirements: WireRequirements,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireRequirements {
    scheme: String,
    network: String,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    max_amount_required: Option<String>,
    asset: String,
    pay_to: String,
    #[serde(default)]
    max_timeout_seconds: Option<u64>,
    #[serde(default)]
    extra: Option<serde_json::Value>,
}

/// Reads a facilitator request body (v1 or v2 shape) and runs the local checks at `now`:
/// versions, scheme, networks, EIP-712 domain, recipient, amount, time window, signature.
///
/// # Errors
/// An [`Invalid`] verdict with the reference reason.
pub fn parse_request(body: &[u8], now: u64) -> Result<Parsed, Invalid> {
    let Ok(req) = serde_json::from_slice::<WireRequest<'_>>(body) else {
        return Err(invalid(
            ErrorReason::InvalidPayload,
            "the request is not an x402 facilitator request",
        ));
    };
    let payload = PaymentPayload::from_json(req.payment_payload.get().as_bytes())
        .map_err(|e| invalid(ErrorReason::InvalidPayload, e.to_string()))?;
    let exact = match Authorized::decode(&payload) {
        Ok(Authorized::Exact(e)) => e,
        Err(PaymentRejection::UnsupportedScheme(_)) => {
            return Err(invalid(
                ErrorReason::InvalidScheme,
                "only the exact scheme is supported",
            ))
        }
        Err(e) => return Err(invalid(ErrorReason::InvalidPayload, e.to_string())),
    };
    let r = &req.payment_requirements;
    if req.x402_version.as_u64() != Some(u64::from(payload.version.number())) {
        return Err(invalid(
            ErrorReason::InvalidX402Version,
            "x402Version differs from the payload's",
        ));
    }
    if r.scheme != exact::NAME || payload.scheme != exact::NAME {
        return Err(invalid(
            ErrorReason::InvalidScheme,
            "only the exact scheme is supported",
        ));
    }
    let Some(network) = Network::parse(&r.network) else {
        return Err(invalid(
            ErrorReason::InvalidNetwork,
            format!("unknown network {}", r.network),
        ));
    };
    if !network.is_named(&payload.network) {
        return Err(invalid(
            ErrorReason::NetworkMismatch,
            "payload and requirements name different networks",
        ));
    }
    let extra: Option<Eip712Extra> = r.extra.clone().and_then(|e| serde_json::from_value(e).ok());
    let Some(extra) = extra else {
        return Err(invalid(
            ErrorReason::MissingEip712Domain,
            "extra.name and extra.version are required",
        ));
    };
    let amount = r
        .amount
        .as_deref()
        .or(r.max_amount_required.as_deref())
        .and_then(parse_uint);
    let (Some(asset), Some(pay_to), Some(amount)) =
        (parse_address(&r.asset), parse_address(&r.pay_to), amount)
    else {
        return Err(invalid(
            ErrorReason::InvalidPaymentRequirements,
            "asset, payTo or amount is malformed",
        ));
    };
    let option = PaymentOption {
        network: network.clone(),
        asset: Asset {
            symbol: String::new(),
            address: asset,
            decimals: 0,
            name: extra.name,
            version: extra.version,
            usd_stable: false,
        },
        amount,
        pay_to,
        // Requirements without maxTimeoutSeconds put no bound of their own on validBefore.
        max_timeout_seconds: r.max_timeout_seconds.unwrap_or(u64::MAX / 4),
    };
    let network_name = if payload.version.number() == 1 {
        network.v1_name().unwrap_or_default().to_owned()
    } else {
        network.caip2().to_owned()
    };
    let separator = eip3009::domain_separator(
        &option.asset.name,
        &option.asset.version,
        network.chain_id(),
        asset,
    );
    if let Err(e) = verify::check_payment(&exact, &option, &separator, now) {
        return Err(Invalid {
            reason: e.reason(),
            message: e.to_string(),
            payer: Some(exact.authorization.from),
            network: network_name,
        });
    }
    Ok(Parsed {
        payload,
        exact,
        network,
        asset,
        pay_to,
        amount,
        network_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn junk_is_an_invalid_payload_verdict_never_a_panic() {
        for body in [
            &b""[..],
            b"{}",
            b"null",
            br#"{"x402Version":2,"paymentPayload":{},"paymentRequirements":{}}"#,
            br#"{"x402Version":2,"paymentPayload":"x","paymentRequirements":{"scheme":"exact","network":"eip155:84532","asset":"0x","payTo":"0x"}}"#,
        ] {
            let e = parse_request(body, 0).unwrap_err();
            assert!(
                matches!(
                    e.reason,
                    ErrorReason::InvalidPayload | ErrorReason::InvalidPaymentRequirements
                ),
                "{e:?}"
            );
        }
    }
}
