//! The closed set of reasons a payment is refused, fails or is held, with their snake_case wire
//! names (the reference facilitators' spelling where one exists), and the fixed text a client
//! is shown for each.
//!
//! Owns: [`ErrorReason`]. Used by local rejections, settlement states, the embedded facilitator
//! and every answer the gateway writes itself. Reasons that arrive from a remote facilitator and
//! are not in the set travel as [`ErrorReason::Other`], unchanged.
//! Does not own: which HTTP status a reason gets (`error`).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $wire:literal, $text:literal; )*) => {
        /// Why a payment was refused, failed, or is not finished. Serialises as its wire name.
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorReason {
            $( $(#[$doc])* $variant, )*
            /// A reason from a remote facilitator that is not in this set, kept as sent.
            Other(String),
        }

        impl ErrorReason {
            /// Every named reason (not [`ErrorReason::Other`]).
            pub const ALL: &'static [ErrorReason] = &[$(ErrorReason::$variant),*];

            /// The wire name (snake_case).
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorReason::$variant => $wire, )*
                    ErrorReason::Other(s) => s,
                }
            }

            /// A fixed sentence for people, the same for every occurrence of this reason: it
            /// carries no detail of the request, the facilitator or the chain (those go to the
            /// logs).
            pub fn text(&self) -> &'static str {
                match self {
                    $( ErrorReason::$variant => $text, )*
                    ErrorReason::Other(_) => "the facilitator refused the payment",
                }
            }

            /// Reads a wire name; unknown names become [`ErrorReason::Other`].
            pub fn parse(s: &str) -> ErrorReason {
                match s {
                    $( $wire => ErrorReason::$variant, )*
                    other => ErrorReason::Other(other.to_owned()),
                }
            }
        }
    };
}

reasons! {
    // --- No payment, or a payment the gateway cannot read ---
    /// No payment header on a priced route.
    PaymentRequired = "payment_required", "payment required";
    /// The payment header could not be decoded.
    InvalidPayload = "invalid_payload", "the payment header is malformed";
    /// A scheme other than `exact`.
    UnsupportedScheme = "unsupported_scheme", "only the exact scheme is accepted";
    /// The facilitator request names another scheme than `exact`.
    InvalidScheme = "invalid_exact_evm_scheme", "only the exact scheme is accepted";
    /// No offered option has the payment's network (and asset).
    NetworkMismatch = "invalid_exact_evm_network_mismatch", "no payment option of this resource matches the payment's network and asset";
    /// A network nobody here can settle on.
    InvalidNetwork = "invalid_network", "the network is not supported";
    /// `x402Version` of the request differs from the payload's.
    InvalidX402Version = "invalid_x402_version", "the x402 version is not supported";
    /// Requirements without the EIP-712 domain.
    MissingEip712Domain = "invalid_exact_evm_missing_eip712_domain", "the requirements lack the token's EIP-712 domain";
    /// Requirements that cannot be read, or that this facilitator does not accept.
    InvalidPaymentRequirements = "invalid_payment_requirements", "the payment requirements are not accepted";

    // --- The local checks ---
    /// `authorization.to` is not the option's `payTo`.
    RecipientMismatch = "invalid_exact_evm_recipient_mismatch", "the authorization pays the wrong recipient";
    /// `authorization.value` is not the price.
    AuthorizationValue = "invalid_exact_evm_authorization_value", "the authorization value is not the price";
    /// `validAfter` is in the future.
    ValidAfter = "invalid_exact_evm_payload_authorization_valid_after", "the authorization is not valid yet";
    /// `validBefore` has passed, is too close, or is further away than the requirement allows.
    ValidBefore = "invalid_exact_evm_payload_authorization_valid_before", "the authorization's validBefore is outside the accepted window";
    /// The signature does not recover to `from`.
    InvalidSignature = "invalid_exact_evm_signature", "the signature does not match the authorization";
    /// Another request is processing the same authorization now.
    PaymentInProgress = "payment_in_progress", "this authorization is being processed by another request; retry shortly";
    /// The payment paid for an answer that went out already.
    PaymentAlreadyRedeemed = "payment_already_redeemed", "this payment paid for an answer the gateway already gave; it is neither served nor charged again";
    /// The authorization was used already (served, settled, or on chain).
    NonceAlreadyUsed = "invalid_exact_evm_nonce_already_used", "this authorization has already been used";

    // --- The chain's verdict ---
    /// The payer's balance is below the value.
    InsufficientBalance = "invalid_exact_evm_insufficient_balance", "the payer's balance is too low";
    /// The `eth_call` simulation reverted.
    SimulationFailed = "invalid_exact_evm_transaction_simulation_failed", "the transfer would fail on chain";
    /// The settlement transaction was mined and reverted.
    TransactionFailed = "invalid_exact_evm_transaction_failed", "the settlement transaction failed on chain";
    /// A facilitator said "invalid" without a reason.
    InvalidPayment = "invalid_payment", "the facilitator refused the payment";

    // --- Settlement ---
    /// Settlement failed for a reason the facilitator did not name.
    SettlementFailed = "settlement_failed", "the payment could not be settled";
    /// A settlement transaction was sent and its outcome is not known yet.
    SettlementPending = "settlement_pending", "the payment's settlement is not confirmed yet: retry this request with the same payment header (do not sign a new payment)";
    /// The facilitator did not answer `/settle` in time: the transfer may have happened.
    SettlementTimeout = "settlement_timeout", "the settlement's outcome is not known yet; retry with the same payment header";
    /// The facilitator's `/settle` answer was unreadable: the transfer may have happened.
    SettlementUnknown = "settlement_unknown", "the settlement's outcome is not known yet; retry with the same payment header";

    // --- Nothing served, nothing charged ---
    /// The upstream answered with an error; the authorization was given back.
    UpstreamError = "upstream_error", "the upstream failed; nothing was charged";
    /// The upstream could not be reached.
    UpstreamUnavailable = "upstream_unavailable", "the upstream is unavailable; nothing was charged";
    /// The request ended before anything was served; the authorization was given back.
    NotServed = "not_served", "nothing was served; nothing was charged";
    /// The facilitator could not be reached (certainly not processed).
    FacilitatorUnreachable = "facilitator_unreachable", "the payment facilitator is unreachable; nothing was charged";
    /// The facilitator gave no usable answer to `/verify` or `/supported`.
    FacilitatorUnavailable = "facilitator_unavailable", "the payment facilitator is unavailable; retry later";
    /// Too many facilitator calls are in flight.
    FacilitatorBusy = "facilitator_busy", "the gateway is busy; retry later";

    // --- Abuse limits and request shape ---
    /// Too many challenges or failed payments from this client.
    RateLimited = "rate_limited", "too many requests; retry later";
    /// The replay guard is full of live authorizations.
    GatewayBusy = "gateway_busy", "the gateway holds too many pending payments; retry later";
    /// The method is not listed on a priced path.
    MethodNotAllowed = "method_not_allowed", "this method is not allowed on this resource";
    /// The request body is over `[limits] max_request_body`.
    RequestTooLarge = "request_too_large", "the request body is too large";
    /// The request headers are over `[limits] max_header_bytes`.
    HeadersTooLarge = "headers_too_large", "the request headers are too large";
    // --- Forward-auth ---
    /// No forward-auth endpoint at the sub-request's path.
    NoSuchEndpoint = "no_such_endpoint", "there is no forward-auth endpoint at this path";
    /// The proxy's sub-request does not say what the original request was.
    ProxyMisconfigured = "forward_auth_misconfigured", "the proxy did not send the original request; see the forward-auth examples";
    /// An upgrade (h2c, or a websocket on a route without `websocket = true`).
    UpgradeNotAllowed = "upgrade_not_allowed", "upgrades are not allowed on this route";
    /// A CORS preflight on a priced path, which only the proxy may answer.
    PreflightAtProxy = "preflight_at_proxy", "CORS preflights on priced paths are answered by the proxy";
    /// The verdict on a payment was lost (another instance, a restart): ask again with it.
    RetrySamePayment = "retry_same_payment", "retry the request with the same payment header (do not sign a new payment)";
    /// The route changed between the proxy's two sub-requests.
    RouteChanged = "route_changed", "the route changed; retry the request";

    /// The payment journal cannot be written; nothing is settled.
    JournalUnavailable = "journal_unavailable", "the gateway cannot record payments right now; nothing was charged; retry later";
    /// The standalone facilitator's bearer token is missing or wrong.
    Unauthorized = "unauthorized", "a valid bearer token is required";
    /// The standalone facilitator does not settle for this recipient.
    PayToNotAccepted = "pay_to_not_accepted", "this facilitator does not settle payments to this recipient";
    /// The value is below the standalone facilitator's minimum.
    ValueTooLow = "value_below_minimum", "the value is below this facilitator's minimum";
}

impl ErrorReason {
    /// Whether this reason says the transfer may have happened (nothing may be released, and
    /// the authorization must never be offered to the chain again without reading its state).
    pub fn is_unknown_outcome(&self) -> bool {
        matches!(
            self,
            ErrorReason::SettlementPending
                | ErrorReason::SettlementTimeout
                | ErrorReason::SettlementUnknown
        )
    }
}

impl fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for ErrorReason {
    fn from(s: &str) -> Self {
        ErrorReason::parse(s)
    }
}

impl Serialize for ErrorReason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorReason::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_and_are_snake_case() {
        for r in ErrorReason::ALL {
            let name = r.as_str();
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{name}"
            );
            assert_eq!(&ErrorReason::parse(name), r);
            let json = serde_json::to_string(r).unwrap();
            assert_eq!(serde_json::from_str::<ErrorReason>(&json).unwrap(), *r);
        }
        assert_eq!(
            ErrorReason::parse("insufficient_funds"),
            ErrorReason::Other("insufficient_funds".into())
        );
        assert_eq!(
            ErrorReason::parse("insufficient_funds").as_str(),
            "insufficient_funds"
        );
    }

    #[test]
    fn texts_are_fixed_and_free_of_detail() {
        for r in ErrorReason::ALL {
            let t = r.text();
            assert!(
                !t.is_empty() && !t.contains("http") && !t.contains("0x"),
                "{t}"
            );
        }
        assert_eq!(
            ErrorReason::Other("anything: https://rpc.example/KEY".into()).text(),
            "the facilitator refused the payment"
        );
    }
}
