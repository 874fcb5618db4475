//! Writing the gateway's own answers ([`Answer`]s decided elsewhere) to a Pingora session.
//!
//! Owns: turning an answer into a response header (cache and CORS headers added), writing it,
//! draining or closing on an unread request body, and the header edits on upstream answers
//! (CORS exposure, `Cache-Control: private`). Never panics.
//! Responses written in `request_filter` skip `response_filter`, so CORS and cache headers are
//! added here.

use http::header::{self, HeaderName, HeaderValue};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use crate::error::Answer;
use crate::protocol::{PAYMENT_RESPONSE, X_PAYMENT_RESPONSE, X_PAYMENT_STATUS};

/// Headers a browser client must be allowed to read.
pub const EXPOSE_HEADERS: &str =
    "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE, X-PAYMENT-STATUS";

/// Requests with a body larger than this are not drained before an early answer; the
/// connection is closed instead.
const MAX_DRAIN_BYTES: u64 = 64 * 1024;

/// Builds the response header of an answer, with cache and CORS headers.
///
/// # Errors
/// Header construction errors.
pub fn header(answer: &Answer, cors_origin: Option<&HeaderValue>) -> Result<ResponseHeader> {
    // No case map: header names go out in lower case (HTTP/1.1 names are case-insensitive),
    // which saves an allocation per header.
    let mut h = ResponseHeader::build_no_case(answer.status, Some(8 + answer.headers.len()))?;
    if answer.status != 204 {
        h.insert_header(header::CONTENT_TYPE, answer.content_type)?;
        h.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
    }
    h.insert_header(header::CACHE_CONTROL, "no-store")?;
    if answer.status == 402 {
        h.insert_header(header::VARY, "Accept")?;
    }
    if let Some(origin) = cors_origin {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
        h.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS)?;
    }
    for (name, value) in &answer.headers {
        h.append_header(name.clone(), value.clone())?;
    }
    Ok(h)
}

/// Writes `answer` as the whole response (with the request id, if any), after draining a small request body so the
/// connection can be reused.
///
/// # Errors
/// When the client connection fails.
pub async fn write(
    session: &mut Session,
    answer: &Answer,
    cors_origin: Option<&HeaderValue>,
    request_id: Option<&HeaderValue>,
) -> Result<()> {
    prepare_early_answer(session).await;
    let mut header = header(answer, cors_origin)?;
    if let Some(id) = request_id {
        header.insert_header(crate::telemetry::X_REQUEST_ID, id.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD || answer.body.is_empty();
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
    *upstream = header(answer, cors_origin)?;
    Ok(())
}

/// Adds the gateway's CORS headers to a response of a priced route: the origin if the
/// upstream set none, and the payment headers to the exposed list.
///
/// # Errors
/// Header construction errors.
pub fn add_cors(h: &mut ResponseHeader, origin: &HeaderValue) -> Result<()> {
    if !h.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        h.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone())?;
    }
    merge_list(h, header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS)
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

/// The headers that say what became of a payment (both receipts and `X-PAYMENT-STATUS`), for
/// stripping any an upstream might set itself on a paid answer: only the gateway says them.
pub const PAYMENT_OUTCOME_HEADERS: [HeaderName; 3] =
    [PAYMENT_RESPONSE, X_PAYMENT_RESPONSE, X_PAYMENT_STATUS];

/// Whether an upstream response carries no body at all.
pub fn ends_at_header(r: &ResponseHeader) -> bool {
    matches!(r.status.as_u16(), 204 | 304)
        || r.headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"0")
}
