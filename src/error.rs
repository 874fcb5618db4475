//! The one place where gateway errors become HTTP answers.
//!
//! Owns: [`GatewayError`] (every way a request can end early), [`Answer`] (an answer the gateway
//! writes itself, as plain data) and [`rescue`], the single mapping from an error to its answer:
//! status, machine reason, fixed text for people, `Retry-After`, and for payment problems on a
//! priced route the route's challenge. Client-facing text never carries a detail of the
//! facilitator, the chain or the configuration (URLs, keys, answers): those go to the logs.
//! Leaf modules keep their own error types; this module wraps them.

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ALLOW, RETRY_AFTER};

use crate::pricing::PricedRoute;
use crate::protocol::{ErrorReason, PAYMENT_REQUIRED};
use crate::verify::{FacilitatorError, PaymentRejection, VerifyError};

/// Every early end of a request, as the client sees it.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No payment header on a priced route.
    #[error("payment required")]
    PaymentRequired,
    /// The payment was refused.
    #[error(transparent)]
    Rejected(#[from] PaymentRejection),
    /// The facilitator could not be asked.
    #[error("facilitator unavailable")]
    FacilitatorUnavailable(#[source] FacilitatorError),
    /// Settlement definitively failed; nothing is released.
    #[error("settlement failed: {reason}")]
    SettlementFailed {
        /// Reason for the client.
        reason: ErrorReason,
    },
    /// Settlement was not attempted (the facilitator was certainly not reached, or too busy);
    /// the authorization was given back and the client may retry it.
    #[error("settlement not attempted: {reason}")]
    SettlementNotAttempted {
        /// Why.
        reason: ErrorReason,
    },
    /// The upstream could not be reached or failed before answering.
    #[error("upstream failed")]
    Upstream,
    /// A method no route lists on a priced path (`[server] unlisted_methods = "reject"`).
    #[error("method not allowed")]
    MethodNotAllowed {
        /// The `Allow` header value.
        allow: HeaderValue,
    },
    /// A per-client limit was reached.
    #[error("rate limited")]
    RateLimited {
        /// Seconds until a retry may succeed.
        retry_after: u32,
    },
    /// The replay guard is full of live authorizations (`[limits] max_pending_payments`).
    #[error("too many pending payments")]
    Busy,
    /// The request body is larger than `[limits] max_request_body`.
    #[error("request body too large")]
    RequestTooLarge,
    /// The request headers are larger than `[limits] max_header_bytes`.
    #[error("request headers too large")]
    HeadersTooLarge,
    /// The settlement's outcome is not known yet: retry with the same payment (never a 402,
    /// which makes clients pay again).
    #[error("settlement pending")]
    SettlementPending,
    /// Another request is settling or delivering this payment right now.
    #[error("payment in progress")]
    InProgress,
    /// The payment's answer went out already (delivered, or released on credit): it is not
    /// served again, and a `402` would make the client pay a second time.
    #[error("payment already redeemed")]
    AlreadyRedeemed,
    /// The journal cannot be written: nothing is settled.
    #[error("journal unavailable")]
    JournalUnavailable,
    /// Forward-auth: no endpoint at the sub-request's path.
    #[error("no such forward-auth endpoint")]
    NoSuchEndpoint,
    /// Forward-auth: the sub-request does not say what the original request was.
    #[error("forward-auth request without the original request")]
    ProxyMisconfigured,
    /// An upgrade the route does not allow (forward-auth cannot strip it: it refuses).
    #[error("upgrade not allowed")]
    UpgradeNotAllowed,
    /// Forward-auth: a preflight on a priced path (a 2xx would mean "forward it").
    #[error("preflight at the proxy")]
    PreflightAtProxy,
    /// Forward-auth: the verdict on this payment was lost; ask again with the same payment.
    #[error("retry with the same payment")]
    RetrySamePayment,
    /// Forward-auth: the route changed between the proxy's two sub-requests.
    #[error("route changed")]
    RouteChanged,
}

impl From<VerifyError> for GatewayError {
    fn from(e: VerifyError) -> Self {
        match e {
            // Another request holds the same authorization now: a retry of it is not a reason
            // to pay again (a 402 would make the client sign a second payment).
            VerifyError::Rejected(PaymentRejection::InFlight) => GatewayError::InProgress,
            VerifyError::Rejected(r) => GatewayError::Rejected(r),
            VerifyError::Unavailable(f) => GatewayError::FacilitatorUnavailable(f),
        }
    }
}

impl GatewayError {
    /// The HTTP status: 402 for everything about the payment (what the reference servers do,
    /// so clients can read the challenge again), 503 when the facilitator or the gateway is
    /// busy or down, 502 when the upstream is, 405/413/429/431 for the request's shape and rate.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::PaymentRequired
            | GatewayError::Rejected(_)
            | GatewayError::SettlementFailed { .. } => 402,
            GatewayError::FacilitatorUnavailable(_)
            | GatewayError::SettlementNotAttempted { .. }
            | GatewayError::Busy
            | GatewayError::SettlementPending
            | GatewayError::InProgress
            | GatewayError::JournalUnavailable
            | GatewayError::RetrySamePayment => 503,
            GatewayError::Upstream => 502,
            GatewayError::NoSuchEndpoint => 404,
            GatewayError::ProxyMisconfigured | GatewayError::UpgradeNotAllowed => 400,
            GatewayError::PreflightAtProxy => 403,
            GatewayError::RouteChanged | GatewayError::AlreadyRedeemed => 409,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::RateLimited { .. } => 429,
            GatewayError::RequestTooLarge => 413,
            GatewayError::HeadersTooLarge => 431,
        }
    }

    /// The machine reason.
    pub fn reason(&self) -> ErrorReason {
        match self {
            GatewayError::PaymentRequired => ErrorReason::PaymentRequired,
            GatewayError::Rejected(r) => r.reason(),
            GatewayError::FacilitatorUnavailable(_) => ErrorReason::FacilitatorUnavailable,
            GatewayError::SettlementFailed { reason }
            | GatewayError::SettlementNotAttempted { reason } => reason.clone(),
            GatewayError::Upstream => ErrorReason::UpstreamUnavailable,
            GatewayError::MethodNotAllowed { .. } => ErrorReason::MethodNotAllowed,
            GatewayError::RateLimited { .. } => ErrorReason::RateLimited,
            GatewayError::Busy => ErrorReason::GatewayBusy,
            GatewayError::RequestTooLarge => ErrorReason::RequestTooLarge,
            GatewayError::HeadersTooLarge => ErrorReason::HeadersTooLarge,
            GatewayError::SettlementPending => ErrorReason::SettlementPending,
            GatewayError::InProgress => ErrorReason::PaymentInProgress,
            GatewayError::AlreadyRedeemed => ErrorReason::PaymentAlreadyRedeemed,
            GatewayError::JournalUnavailable => ErrorReason::JournalUnavailable,
            GatewayError::NoSuchEndpoint => ErrorReason::NoSuchEndpoint,
            GatewayError::ProxyMisconfigured => ErrorReason::ProxyMisconfigured,
            GatewayError::UpgradeNotAllowed => ErrorReason::UpgradeNotAllowed,
            GatewayError::PreflightAtProxy => ErrorReason::PreflightAtProxy,
            GatewayError::RetrySamePayment => ErrorReason::RetrySamePayment,
            GatewayError::RouteChanged => ErrorReason::RouteChanged,
        }
    }

    /// Seconds after which a retry may succeed.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            GatewayError::FacilitatorUnavailable(_)
            | GatewayError::Upstream
            | GatewayError::SettlementNotAttempted { .. }
            | GatewayError::SettlementPending
            | GatewayError::JournalUnavailable => Some(5),
            GatewayError::Busy | GatewayError::InProgress => Some(2),
            GatewayError::RetrySamePayment => Some(1),
            GatewayError::RateLimited { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The text put in a challenge's `error` field: the reason, then its fixed sentence.
    pub fn challenge_error(&self) -> String {
        let r = self.reason();
        format!("{r}: {}", r.text())
    }
}

/// One answer of the gateway's own, as data: the Pingora adapter writes it.
#[derive(Clone, Debug)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: &'static str,
    /// Extra headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// A 402 challenge or rejection: `PAYMENT-REQUIRED` (v2) + v1 JSON body (or HTML).
    pub fn payment_required(payment_required: HeaderValue, body: Bytes, html: bool) -> Answer {
        Answer {
            status: 402,
            content_type: if html {
                "text/html; charset=utf-8"
            } else {
                "application/json"
            },
            headers: vec![(PAYMENT_REQUIRED, payment_required)],
            body,
        }
    }

    /// A JSON error answer without a challenge: `{"error": reason, "message": fixed text}`.
    pub fn error(status: u16, reason: &ErrorReason) -> Answer {
        let body = format!(
            r#"{{"error":{},"message":{}}}"#,
            crate::protocol::json_string(reason.as_str()),
            crate::protocol::json_string(reason.text())
        );
        Answer {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: Bytes::from(body),
        }
    }

    /// A short `text/plain` answer.
    pub fn text(status: u16, body: &'static str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    /// An answer with no body (a preflight's `204`).
    pub fn empty(status: u16) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Answer {
        self.headers.push((name, value));
        self
    }

    /// Adds a receipt header.
    pub fn with_receipt(mut self, receipt: Option<(HeaderName, String)>) -> Answer {
        if let Some((name, value)) = receipt {
            match HeaderValue::try_from(value) {
                Ok(v) => self.headers.push((name, v)),
                Err(_) => {
                    tracing::error!(header = %name, "dropped a receipt that is not a valid header value")
                }
            }
        }
        self
    }
}

/// What [`rescue`] needs to know of the request.
#[derive(Clone, Copy, Debug)]
pub struct Asking<'a> {
    /// The resource URL of the request (for the challenge).
    pub url: &'a str,
    /// Whether a browser asked (unpaid challenges then get the HTML page).
    pub browser: bool,
}

/// The answer to an error: a payment problem on a priced route is answered with the route's
/// challenge (v2 header + v1 body, or the HTML page for a browser without a payment); anything
/// else with a JSON body of the reason and its fixed text. `Retry-After` and `Allow` are added
/// where they apply.
pub fn rescue(e: &GatewayError, route: Option<&PricedRoute>, asking: Asking<'_>) -> Answer {
    let status = e.status();
    let challenge = route.and_then(|r| r.challenge.as_ref());
    let mut answer = match (status, challenge) {
        (402, Some(c)) => match e {
            GatewayError::PaymentRequired if asking.browser => Answer::payment_required(
                c.payment_required(asking.url, crate::pricing::challenge::V2_PAYMENT_REQUIRED),
                Bytes::from(c.html(asking.url)),
                true,
            ),
            GatewayError::PaymentRequired => {
                let (header, body) = c.unpaid(asking.url);
                Answer::payment_required(header, body, false)
            }
            other => {
                let text = other.challenge_error();
                Answer::payment_required(
                    c.payment_required(asking.url, &text),
                    Bytes::from(c.v1_body(asking.url, &text)),
                    false,
                )
            }
        },
        _ => Answer::error(status, &e.reason()),
    };
    if let Some(s) = e.retry_after() {
        answer.headers.push((RETRY_AFTER, HeaderValue::from(s)));
    }
    if let GatewayError::MethodNotAllowed { allow } = e {
        answer.headers.push((ALLOW, allow.clone()));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_fixed_text_only() {
        let e = GatewayError::FacilitatorUnavailable(FacilitatorError::Chain(
            "error sending request for url (https://rpc.example/v2/SECRETKEY)".into(),
        ));
        let a = rescue(
            &e,
            None,
            Asking {
                url: "http://x/y",
                browser: false,
            },
        );
        assert_eq!(a.status, 503);
        let body = String::from_utf8(a.body.to_vec()).unwrap();
        assert!(
            !body.contains("SECRETKEY") && !body.contains("rpc.example"),
            "{body}"
        );
        assert!(body.contains("facilitator_unavailable"));
        assert!(a.headers.iter().any(|(n, _)| n == RETRY_AFTER));
    }

    #[test]
    fn statuses() {
        assert_eq!(GatewayError::Busy.status(), 503);
        assert_eq!(GatewayError::RateLimited { retry_after: 3 }.status(), 429);
        assert_eq!(GatewayError::RequestTooLarge.status(), 413);
        assert_eq!(GatewayError::HeadersTooLarge.status(), 431);
        let e = GatewayError::MethodNotAllowed {
            allow: HeaderValue::from_static("GET, HEAD"),
        };
        let a = rescue(
            &e,
            None,
            Asking {
                url: "",
                browser: false,
            },
        );
        assert_eq!(a.status, 405);
        assert!(a
            .headers
            .iter()
            .any(|(n, v)| n == ALLOW && v == "GET, HEAD"));
    }
}
