//! Writing the gateway's own answers: 402 challenges, settlement-failure 402s, 503 and 502.
//!
//! Owns: response construction (status, headers, body) for every answer the gateway makes
//! itself. Never panics: header values that cannot be built are left out and logged.
//! Responses written in `request_filter` skip `response_filter`, so CORS and cache headers are
//! added here.

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::GatewayError;
use crate::protocol::{PAYMENT_REQUIRED, PAYMENT_RESPONSE, X_PAYMENT_RESPONSE};

/// Headers a browser client must be allowed to read.
pub const EXPOSE_HEADERS: &str = "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE";
/// Request headers a browser client must be allowed to send (preflight).
pub const ALLOW_HEADERS: &str =
    "PAYMENT-SIGNATURE, X-PAYMENT, Access-Control-Expose-Headers, SIGN-IN-WITH-X, Content-Type";

/// Requests with a body larger than this are not drained before an early answer; the
/// connection is closed instead.
const MAX_DRAIN_BYTES: u64 = 64 * 1024;

/// One answer of the gateway's own.
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

    /// A JSON error answer for an error without a challenge (503, 502).
    pub fn error(e: &GatewayError) -> Answer {
        let body = serde_json::json!({"error": e.reason(), "message": e.to_string()}).to_string();
        let mut headers = Vec::new();
        if let Some(s) = e.retry_after() {
            headers.push((header::RETRY_AFTER, HeaderValue::from(s)));
        }
        Answer {
            status: e.status(),
            content_type: "application/json",
            headers,
            body: Bytes::from(body),
        }
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

    /// Builds the response header, with cache and CORS headers.
    pub fn header(&self, cors_origin: Option<&HeaderValue>) -> Result<ResponseHeader> {
        // No case map: header names go out in lower case (HTTP/1.1 names are case-insensitive),
        // which saves an allocation per header.
        let mut h = ResponseHeader::build_no_case(self.status, Some(8 + self.headers.len()))?;
        h.insert_header(header::CONTENT_TYPE, self.content_type)?;
        h.insert_header(header::CONTENT_LENGTH, self.body.len())?;
        h.insert_header(header::CACHE_CONTROL, "no-store")?;
        if self.status == 402 {
            h.insert_header(header::VARY, "Accept")?;
        }
        if let Some(origin) = cors_origin {
            h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
            h.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS)?;
        }
        for (name, value) in &self.headers {
            h.append_header(name.clone(), value.clone())?;
        }
        Ok(h)
    }
}

/// Writes `answer` as the whole response, after draining a small request body so the
/// connection can be reused.
///
/// # Errors
/// When the client connection fails.
pub async fn write(
    session: &mut Session,
    answer: &Answer,
    cors_origin: Option<&HeaderValue>,
) -> Result<()> {
    prepare_early_answer(session).await;
    let header = answer.header(cors_origin)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(answer.body.clone()), true)
            .await?;
    }
    Ok(())
}

/// An unread request body breaks keep-alive: read (and drop) a small one, close the
/// connection after a large or chunked one.
async fn prepare_early_answer(session: &mut Session) {
    let req = session.req_header();
    let chunked = req.headers.contains_key(header::TRANSFER_ENCODING);
    let len = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match (chunked, len) {
        (false, None | Some(0)) => {}
        (false, Some(n)) if n <= MAX_DRAIN_BYTES => {
            if session.drain_request_body().await.is_err() {
                session.set_keepalive(None);
            }
        }
        _ => session.set_keepalive(None),
    }
}

/// Rewrites an upstream response header in place into the gateway's `answer` (used when an
/// after-response settlement fails: the upstream body is then swallowed).
///
/// # Errors
/// Header construction errors.
pub fn replace_header(
    upstream: &mut ResponseHeader,
    answer: &Answer,
    cors_origin: Option<&HeaderValue>,
) -> Result<()> {
    *upstream = answer.header(cors_origin)?;
    Ok(())
}

/// Adds the gateway's CORS headers to a response of a priced route: the origin if the
/// upstream set none, the payment headers to the exposed list, and (for preflights) the payment
/// request headers to the allowed list.
///
/// # Errors
/// Header construction errors.
pub fn add_cors(h: &mut ResponseHeader, origin: &HeaderValue, preflight: bool) -> Result<()> {
    if !h.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    }
    merge_list(h, header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS)?;
    if preflight {
        merge_list(h, header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)?;
    }
    Ok(())
}

fn merge_list(h: &mut ResponseHeader, name: HeaderName, ours: &str) -> Result<()> {
    let merged = match h.headers.get(&name).and_then(|v| v.to_str().ok()) {
        Some(theirs) if !theirs.trim().is_empty() => {
            if theirs.trim() == "*" {
                return Ok(());
            }
            format!("{theirs}, {ours}")
        }
        _ => ours.to_owned(),
    };
    h.insert_header(name, merged)?;
    Ok(())
}

/// Merges `private` into `Cache-Control` of a paid response, so shared caches do not serve
/// paid content to others.
///
/// # Errors
/// Header construction errors.
pub fn make_private(h: &mut ResponseHeader) -> Result<()> {
    let value = match h
        .headers
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
    {
        Some(cc)
            if cc
                .split(',')
                .any(|d| matches!(d.trim(), "private" | "no-store")) =>
        {
            return Ok(())
        }
        Some(cc) if !cc.trim().is_empty() => {
            let kept: Vec<&str> = cc
                .split(',')
                .map(str::trim)
                .filter(|d| *d != "public")
                .collect();
            if kept.is_empty() {
                "private".to_owned()
            } else {
                format!("private, {}", kept.join(", "))
            }
        }
        _ => "private".to_owned(),
    };
    h.insert_header(header::CACHE_CONTROL, value)?;
    Ok(())
}

/// Both receipt header names, for stripping any an upstream might set itself.
pub const RECEIPT_HEADERS: [HeaderName; 2] = [PAYMENT_RESPONSE, X_PAYMENT_RESPONSE];
