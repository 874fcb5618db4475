//! The standalone facilitator (`x402-gateway facilitator`) on Pingora's `ServeHttp`: serves any
//! [`Facilitator`] in the x402 facilitator API.
//!
//! Owns: request routing, authentication and limits of that server. The facilitator
//! answers `GET /supported`, `POST /verify` and `POST /settle` with the v1 and v2 request
//! shapes (the version is inside the body); verdicts are HTTP 200, outages 502 with a fixed
//! text. Because its signer keys pay gas for every settlement it submits, it is not an open
//! service:
//! - every request carries `Authorization: Bearer <server_token>` when a token is configured
//!   (and `check` refuses a listener beyond loopback without one);
//! - it settles only for recipients of `server_pay_to` (default: this config's `pay_to`s) and
//!   values of at least `server_min_value`, refused before any RPC call;
//! - request bodies are capped (`server_max_body`) and each client IP is rate-limited
//!   (`server_rate`).

use std::sync::Arc;

use alloy::primitives::{Address, U256};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::services::listening::Service;
use serde::Deserialize;

use crate::config::{assets, money, FacilitatorServerConfig};
use crate::limiter::{now_ms, RateLimiter};
use crate::protocol::{json_string, parse_address, parse_uint, ErrorReason, Network};
use crate::verify::Facilitator;

pub(crate) fn json(status: StatusCode, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

/// A JSON error answer with a fixed text: `{"error": reason, "message": text}`.
fn error(status: StatusCode, reason: &ErrorReason) -> Response<Vec<u8>> {
    json(
        status,
        format!(
            r#"{{"error":{},"message":{}}}"#,
            json_string(reason.as_str()),
            json_string(reason.text())
        ),
    )
}

/// Reads a request body of at most `max` bytes; `None` when larger, unreadable or not UTF-8.
pub(crate) async fn read_body(s: &mut ServerSession, max: usize) -> Option<String> {
    let mut body = Vec::new();
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > max {
                    return None;
                }
            }
            Ok(None) => return String::from_utf8(body).ok(),
            Err(_) => return None,
        }
    }
}

/// Which requests the standalone facilitator takes.
pub struct ServerPolicy {
    token: Option<String>,
    pay_to: Vec<Address>,
    min_value: money::Price,
    limiter: Option<RateLimiter>,
    max_body: usize,
}

impl ServerPolicy {
    /// The policy of `[facilitator] server_*`.
    pub fn new(c: &FacilitatorServerConfig) -> Self {
        ServerPolicy {
            token: c.token.as_ref().map(|t| format!("Bearer {}", t.expose())),
            pay_to: c.pay_to.clone(),
            min_value: c.min_value.clone(),
            limiter: c.rate.map(RateLimiter::new),
            max_body: c.max_body,
        }
    }

    /// Whether the request carries the bearer token (compared in constant time).
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let got = authorization.unwrap_or_default();
        let want = want.as_bytes();
        // Constant time in the length of the expected value.
        let mut diff = u8::from(got.len() != want.len());
        for (i, w) in want.iter().enumerate() {
            diff |= w ^ got.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }

    /// Whether a facilitator request is for a recipient and value this server settles;
    /// checked before any chain call.
    ///
    /// # Errors
    /// [`ErrorReason::PayToNotAccepted`], [`ErrorReason::ValueTooLow`] or
    /// [`ErrorReason::InvalidPaymentRequirements`] (an asset whose minimum cannot be known).
    pub fn admit(&self, body: &[u8]) -> Result<(), ErrorReason> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Req {
            payment_requirements: Requirements,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Requirements {
            network: String,
            asset: String,
            pay_to: String,
            #[serde(default)]
            amount: Option<String>,
            #[serde(default)]
            max_amount_required: Option<String>,
        }
        let Ok(req) = serde_json::from_slice::<Req>(body) else {
            // Unreadable requests get the facilitator's own verdict (invalid_payload).
            return Ok(());
        };
        let r = req.payment_requirements;
        let pay_to = parse_address(&r.pay_to).ok_or(ErrorReason::InvalidPaymentRequirements)?;
        if !self.pay_to.contains(&pay_to) {
            return Err(ErrorReason::PayToNotAccepted);
        }
        let amount = r
            .amount
            .as_deref()
            .or(r.max_amount_required.as_deref())
            .and_then(parse_uint)
            .ok_or(ErrorReason::InvalidPaymentRequirements)?;
        let min = match &self.min_value {
            money::Price::Atomic(n) => *n,
            price => {
                let network =
                    Network::parse(&r.network).ok_or(ErrorReason::InvalidPaymentRequirements)?;
                let asset = parse_address(&r.asset)
                    .and_then(|a| assets::by_address(network.chain_id(), a))
                    .ok_or(ErrorReason::InvalidPaymentRequirements)?;
                money::resolve(price, &asset)
                    .map_err(|_| ErrorReason::InvalidPaymentRequirements)?
            }
        };
        if amount < min.max(U256::from(1)) {
            return Err(ErrorReason::ValueTooLow);
        }
        Ok(())
    }
}

/// The facilitator API over any [`Facilitator`].
pub struct FacilitatorApp {
    inner: Arc<dyn Facilitator>,
    policy: ServerPolicy,
    /// The last `/readyz` answer and when it was made: probes share one round of RPC reads a
    /// second. Two bodies: signers by their place (anyone), and by their address (the token).
    readiness: tokio::sync::Mutex<Option<(crate::clock::Instant, StatusCode, [String; 2])>>,
}

/// How long one `/readyz` answer is reused.
const READINESS_TTL: std::time::Duration = std::time::Duration::from_secs(1);

impl FacilitatorApp {
    /// Serves `inner` under `policy`.
    pub fn new(inner: Arc<dyn Facilitator>, policy: ServerPolicy) -> Self {
        FacilitatorApp {
            inner,
            policy,
            readiness: tokio::sync::Mutex::new(None),
        }
    }

    /// `/readyz`: every chain's RPC answers and every signer has gas. A probe without the
    /// token learns which signer (by its place in `signer_keys`) and what is wrong, never its
    /// address: anyone who reaches the probe could otherwise list the operator's hot wallets.
    async fn readiness(&self, named: bool) -> (StatusCode, String) {
        let mut last = self.readiness.lock().await;
        if let Some((at, status, bodies)) = last.as_ref() {
            if at.elapsed() < READINESS_TTL {
                return (*status, bodies[usize::from(named)].clone());
            }
        }
        let (mut anonymous, mut addressed) = (Vec::new(), Vec::new());
        let mut place: std::collections::HashMap<String, usize> = Default::default();
        for b in self.inner.signer_balances().await {
            let n = place.entry(b.network.clone()).or_default();
            *n += 1;
            let failed = match b.wei {
                Ok(w) if w.is_zero() => Some("no gas: its settlements would fail".to_owned()),
                Ok(_) => None,
                Err(e) => Some(format!("RPC unreachable: {e}")),
            };
            anonymous.push((format!("signer {n} on {}", b.network), failed.clone()));
            addressed.push((
                format!("signer {} on {}", b.signer.to_checksum(None), b.network),
                failed,
            ));
        }
        if anonymous.is_empty() {
            let none = ("signers".to_owned(), Some("none configured".to_owned()));
            anonymous.push(none.clone());
            addressed.push(none);
        }
        let (status, anonymous) = crate::probe::readiness(&anonymous);
        let (_, addressed) = crate::probe::readiness(&addressed);
        let bodies = [anonymous, addressed];
        let body = bodies[usize::from(named)].clone();
        *last = Some((crate::clock::instant(), status, bodies));
        (status, body)
    }
}

#[async_trait]
impl ServeHttp for FacilitatorApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().trim_end_matches('/').to_owned();
        if let (Some(l), Some(ip)) = (
            &self.policy.limiter,
            s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip()),
        ) {
            if let Err(wait) = l.take(ip, now_ms()) {
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, &ErrorReason::RateLimited);
                if let Ok(v) = http::HeaderValue::from_str(&wait.to_string()) {
                    r.headers_mut().insert(http::header::RETRY_AFTER, v);
                }
                return r;
            }
        }
        // Probes need no token; their answers hold no secrets (RPC errors are redacted, signer
        // addresses only for the token).
        let auth = s
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let plain = "text/plain; charset=utf-8";
        match (method.as_str(), path.as_str()) {
            ("GET", "/livez") => return crate::probe::text(StatusCode::OK, plain, "ok\n".into()),
            ("GET", "/readyz") => {
                let named = self.policy.authorized(auth);
                let (status, body) = self.readiness(named).await;
                return crate::probe::text(status, plain, body);
            }
            _ => {}
        }
        if !self.policy.authorized(auth) {
            let mut r = error(StatusCode::UNAUTHORIZED, &ErrorReason::Unauthorized);
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let outage = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "facilitator request failed");
            error(
                StatusCode::BAD_GATEWAY,
                &ErrorReason::FacilitatorUnavailable,
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/supported") => match self.inner.supported().await {
                Ok(r) => ok(&r),
                Err(e) => outage(&e),
            },
            ("POST", "/verify") | ("POST", "/settle") => {
                let too_large = s
                    .req_header()
                    .headers
                    .get(http::header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .is_some_and(|n| n > self.policy.max_body);
                if too_large {
                    return error(StatusCode::PAYLOAD_TOO_LARGE, &ErrorReason::RequestTooLarge);
                }
                let Some(body) = read_body(s, self.policy.max_body).await else {
                    return error(StatusCode::BAD_REQUEST, &ErrorReason::InvalidPayload);
                };
                let verify = path == "/verify";
                if let Err(reason) = self.policy.admit(body.as_bytes()) {
                    return refused(verify, &reason);
                }
                if verify {
                    match self.inner.verify(&body).await {
                        Ok(r) => ok(&r),
                        Err(e) => outage(&e),
                    }
                } else {
                    match self.inner.settle(&body).await {
                        Ok(r) => ok(&r),
                        Err(e) => outage(&e),
                    }
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                r#"{"error":"not_found","message":"use GET /supported, POST /verify, POST /settle"}"#
                    .into(),
            ),
        }
    }
}

/// A verdict refusing a request by policy, in the endpoint's answer shape.
fn refused(verify: bool, reason: &ErrorReason) -> Response<Vec<u8>> {
    let (name, text) = (json_string(reason.as_str()), json_string(reason.text()));
    let body = if verify {
        format!(r#"{{"isValid":false,"invalidReason":{name},"invalidMessage":{text}}}"#)
    } else {
        format!(
            r#"{{"success":false,"errorReason":{name},"errorMessage":{text},"transaction":""}}"#
        )
    };
    json(StatusCode::OK, body)
}

/// A 200 answer of a facilitator result (plain structs of strings: serialising cannot fail).
fn ok<T: serde::Serialize>(v: &T) -> Response<Vec<u8>> {
    json(StatusCode::OK, serde_json::to_string(v).unwrap_or_default())
}

/// Adds the facilitator API on `listen` to a server.
pub fn add_facilitator_service(
    server: &mut Server,
    inner: Arc<dyn Facilitator>,
    policy: ServerPolicy,
    listen: &str,
) {
    let mut service = Service::new(
        "x402 facilitator".to_owned(),
        FacilitatorApp::new(inner, policy),
    );
    service.add_tcp(listen);
    server.add_service(service);
}
