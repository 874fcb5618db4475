//! Forward-auth mode (`[auth] listen`): x402 as the auth service of a proxy people already run.
//! The proxy asks before forwarding; the answer is "allow" (`200`, with the receipt header for
//! the proxy to copy into its response) or the gateway's own answer (the `402` challenge with
//! its headers and body, `405`, `429`, `503`…) for the proxy to return. Same price table,
//! ledger, journal and metrics as the proxy mode, and the same payment flow ([`Payments`]):
//! nothing about a payment is decided here.
//!
//! Owns: the endpoints (reading a sub-request is `auth/request.rs`) and how a verdict is told
//! to each proxy:
//!
//! | Path                   | Proxy                          | Original method / target / host |
//! |------------------------|--------------------------------|--------------------------------|
//! | `/nginx`               | nginx `auth_request`           | `original_method_header`, `original_uri_header`, `X-Forwarded-Host` |
//! | `/nginx/answer`        | nginx `error_page 401`         | the answer stored under `X-X402-Answer` |
//! | `/forward`             | Traefik `forwardAuth`, Caddy `forward_auth` | `X-Forwarded-Method`, `X-Forwarded-Uri`, `X-Forwarded-Host` |
//! | `{ext_authz_prefix}/…` | Envoy `ext_authz` (HTTP)       | the sub-request's own method, path after the prefix, `Host` |
//!
//! nginx understands only `2xx`, `401` and `403` from an auth sub-request, so its denials are a
//! `401` with an `X-X402-Answer` id; nginx's `error_page 401` then fetches the stored answer
//! from `/nginx/answer` and returns it as is. Others get the answer directly, except a `2xx` of
//! the gateway's own (a preflight's `204`), which would mean "forward" to them: `403`.
//! Upgrades are refused unless a websocket on a `websocket = true` route (the proxy mode strips
//! them; an auth service cannot).
//!
//! The auth service never sees the upstream's status, so a payment is settled before the
//! request is allowed (`after_response` and `before_upstream` alike) and recorded as delivered
//! before the allow is written; one settled after `[auth] timeout`, or after the proxy has
//! closed the sub-request, stays redeemable instead. A `deferred` route's payment is queued
//! when the request is allowed, and the `200` says so with `X-PAYMENT-STATUS: queued`.

mod request;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::config::{AuthConfig, Cidr, Config};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::flow::Front;
use crate::payments::{Admission, Decision, Incoming, Payment, Payments, Routed};
use crate::protocol::{ErrorReason, PAYMENT_SIGNATURE, X_PAYMENT, X_PAYMENT_STATUS};
use crate::proxy::{respond, InFlight};
use crate::telemetry::{self, RequestIds, TRACEPARENT, X_REQUEST_ID};
pub use request::{client_ip, original, style, AuthError, Original, Style};

/// The id of a stored nginx denial.
pub const X_X402_ANSWER: HeaderName = HeaderName::from_static("x-x402-answer");

/// How long a stored nginx denial waits for its `/nginx/answer` fetch.
const ANSWER_TTL: Duration = Duration::from_secs(30);

/// How many bytes of stored nginx denials are kept at most (least recently stored go first).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// Whether the original request's `Upgrade` (if any) may go through: only `websocket`, on a
/// route with `websocket = true`.
fn upgrade_allowed(headers: &HeaderMap, websocket_route: bool) -> bool {
    match headers.get(header::UPGRADE) {
        None => true,
        Some(v) => websocket_route && v.as_bytes().eq_ignore_ascii_case(b"websocket"),
    }
}

/// What the proxy is told.
#[derive(Debug)]
pub enum Verdict {
    /// Forward the request; copy the receipt header (and, for a queued payment,
    /// `X-PAYMENT-STATUS: queued`) into the response.
    Allow {
        /// The receipt header of a paid request.
        receipt: Option<(HeaderName, String)>,
        /// The payment is queued for deferred settlement, not settled yet.
        queued: bool,
    },
    /// Return this answer instead.
    Deny(Answer),
}

/// The forward-auth service.
pub struct AuthApp {
    payments: Arc<Payments>,
    in_flight: Arc<AtomicUsize>,
    closing: Arc<AtomicBool>,
    trusted_proxies: Vec<Cidr>,
    config: AuthConfig,
    /// nginx denials waiting for their `/nginx/answer` fetch.
    answers: moka::sync::Cache<u128, Arc<Answer>>,
    ids: RequestIds,
    access_log: bool,
}

/// What one decision did, for the access log.
#[derive(Default)]
struct Decided {
    route: Option<Routed>,
    payment: Option<Payment>,
    rejection: Option<ErrorReason>,
    facilitator: Option<Duration>,
}

/// The answer to an error of the auth service's own (no challenge).
fn refusal(e: &GatewayError) -> Answer {
    rescue(
        e,
        None,
        Asking {
            url: "",
            browser: false,
        },
    )
}

// === impl AuthApp ===

impl AuthApp {
    /// The auth service over the gateway's `payments`, counting its requests in `in_flight`
    /// (the drain waits for them) and closing connections once `closing` is set.
    pub fn new(
        config: &Config,
        payments: Arc<Payments>,
        in_flight: Arc<AtomicUsize>,
        closing: Arc<AtomicBool>,
    ) -> Self {
        AuthApp {
            payments,
            in_flight,
            closing,
            trusted_proxies: config.server.trusted_proxies.clone(),
            config: config.auth.clone(),
            answers: moka::sync::Cache::builder()
                .max_capacity(MAX_ANSWER_BYTES)
                .weigher(|_, a: &Arc<Answer>| {
                    let headers: usize = a
                        .headers
                        .iter()
                        .map(|(n, v)| n.as_str().len() + v.len())
                        .sum();
                    u32::try_from(a.body.len() + headers + 128).unwrap_or(u32::MAX)
                })
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .time_to_live(ANSWER_TTL)
                .build(),
            ids: RequestIds::default(),
            access_log: config.logging.access_log,
        }
    }

    /// Decides on the original request as the proxy mode would; a payment is settled (or
    /// queued) before the request is allowed. The proxy closing the sub-request meanwhile
    /// keeps a settled payment redeemable.
    async fn decide(
        &self,
        s: &mut ServerSession,
        original: &Original,
        client_ip: Option<IpAddr>,
        log: &mut Decided,
    ) -> Verdict {
        let started = crate::clock::instant();
        let deadline_ms =
            self.payments.clock().now_ms() + crate::clock::millis(self.config.timeout);
        let admission = {
            let headers = &s.req_header().headers;
            let incoming = Incoming {
                method: &original.method,
                target: &original.target,
                headers,
                client_ip,
                scheme: original.scheme,
                host: original
                    .host
                    .as_deref()
                    .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok())),
            };
            self.payments
                .admit(incoming, Front::Auth { deadline_ms })
                .await
        };
        let verdict = match admission {
            Admission::Answer(e) => {
                log.route = e.route;
                log.payment = e.payment;
                log.rejection = e.rejection;
                Verdict::Deny(e.answer)
            }
            Admission::Forward(f) if !upgrade_allowed(&s.req_header().headers, f.websocket) => {
                // The proxy mode strips the upgrade; an auth service can only refuse it: a
                // tunnel (h2c, or a websocket the route does not allow) is never priced again.
                // A payment it carried drops here, given back.
                log.route = f.route;
                Verdict::Deny(refusal(&GatewayError::UpgradeNotAllowed))
            }
            Admission::Forward(f) => {
                log.route = f.route;
                match f.payment {
                    None => Verdict::Allow {
                        receipt: None,
                        queued: false,
                    },
                    Some(mut p) => {
                        let v = self.settle_before_allowing(s, &mut p).await;
                        log.payment = Some(p);
                        v
                    }
                }
            }
        };
        if log.payment.is_some() || log.rejection.is_some() {
            log.facilitator = Some(started.elapsed());
        }
        verdict
    }

    /// Settles (or queues) `p` while watching whether the proxy is still there: a proxy that
    /// closed the sub-request meanwhile gets nothing, and the payment stays redeemable.
    async fn settle_before_allowing(&self, s: &mut ServerSession, p: &mut Payment) -> Verdict {
        let mut gone = false;
        let decision = {
            let settle = self.payments.authorize(p);
            tokio::pin!(settle);
            let mut watching = true;
            loop {
                tokio::select! {
                    d = &mut settle => break d,
                    r = s.read_body_or_idle(true), if watching => {
                        watching = false;
                        gone = r.is_err();
                    }
                }
            }
        };
        match decision {
            Decision::Pass {
                receipt, queued, ..
            } if !gone => Verdict::Allow { receipt, queued },
            Decision::Pass { .. } => {
                tracing::warn!(payer = %p.line().payer, "the proxy closed the sub-request before the payment settled: kept redeemable");
                self.payments.not_delivered(p).await;
                Verdict::Deny(refusal(&GatewayError::RetrySamePayment))
            }
            Decision::Replace(answer) => Verdict::Deny(answer),
            Decision::Interim | Decision::Proceed => {
                Verdict::Deny(refusal(&GatewayError::Upstream))
            }
        }
    }

    /// The stored nginx denial; for an unknown id (expired, another instance), the answer to
    /// the original request when it carries no payment, else `503` asking for the same payment
    /// again: never a verification or a settlement.
    async fn stored_answer(
        &self,
        s: &mut ServerSession,
        original: Result<Original, AuthError>,
        client_ip: Option<IpAddr>,
    ) -> Answer {
        let id = s
            .req_header()
            .headers
            .get(X_X402_ANSWER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u128::from_str_radix(v, 16).ok());
        if let Some(answer) = id.and_then(|id| self.answers.remove(&id)) {
            return Arc::unwrap_or_clone(answer);
        }
        let original = match original {
            Ok(o) => o,
            Err(e) => return misconfigured(&e),
        };
        let req = s.req_header();
        if req.headers.contains_key(PAYMENT_SIGNATURE) || req.headers.contains_key(X_PAYMENT) {
            // The verdict on this payment is lost (another instance, a restart, an eviction).
            // A fresh 402 would make the client sign a second payment while the first may
            // settle: ask for the same payment again instead, which is then decided anew.
            return refusal(&GatewayError::RetrySamePayment);
        }
        let mut log = Decided::default();
        match self.decide(s, &original, client_ip, &mut log).await {
            Verdict::Deny(a) => a,
            // Unpriced after all (a reload): nginx forwards nothing on this path; say so.
            Verdict::Allow { .. } => refusal(&GatewayError::RouteChanged),
        }
    }

    fn nginx_denial(&self, answer: Answer) -> Response<Vec<u8>> {
        let mut id = [0u8; 16];
        if getrandom::fill(&mut id).is_err() {
            return response(&refusal(&GatewayError::Busy), None);
        }
        let id = u128::from_le_bytes(id);
        self.answers.insert(id, Arc::new(answer));
        let mut r = bare(401);
        if let Ok(v) = HeaderValue::from_str(&format!("{id:032x}")) {
            r.headers_mut().insert(X_X402_ANSWER, v);
        }
        r
    }

    /// The response to a verdict, as `style`'s proxy reads it; and the status it stands for.
    fn tell(&self, style: Style, verdict: Verdict) -> (Response<Vec<u8>>, u16) {
        let cors = self.payments.cors_origin();
        match verdict {
            Verdict::Allow { receipt, queued } => {
                let mut r = bare(200);
                if let Some((name, value)) = receipt {
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        r.headers_mut().insert(name, v);
                    }
                }
                if queued {
                    r.headers_mut()
                        .insert(X_PAYMENT_STATUS, HeaderValue::from_static("queued"));
                }
                (r, 200)
            }
            Verdict::Deny(a) if style == Style::Nginx => {
                let status = a.status;
                (self.nginx_denial(a), status)
            }
            Verdict::Deny(a) if (200..300).contains(&a.status) => {
                // A 2xx means "forward" to these proxies: the gateway's own 2xx answer (a CORS
                // preflight on a priced path) must not let the request through. The proxy
                // answers preflights itself (see deploy/caddy/Caddyfile).
                (
                    response(&refusal(&GatewayError::PreflightAtProxy), cors),
                    403,
                )
            }
            Verdict::Deny(a) => (response(&a, cors), a.status),
        }
    }
}

/// An empty response with `Content-Length: 0`.
fn bare(status: u16) -> Response<Vec<u8>> {
    let mut r = Response::new(Vec::new());
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
    r.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A sub-request that cannot be read is refused (never allowed): the proxy returns an error.
fn misconfigured(e: &AuthError) -> Answer {
    tracing::warn!(error = %e, "forward-auth request refused");
    match e {
        AuthError::UnknownEndpoint(_) => refusal(&GatewayError::NoSuchEndpoint),
        _ => refusal(&GatewayError::ProxyMisconfigured),
    }
}

/// The answer as a response, with the gateway's cache and CORS headers.
fn response(answer: &Answer, cors: Option<&HeaderValue>) -> Response<Vec<u8>> {
    match respond::header(answer, cors) {
        Ok(h) => {
            let mut parts = h.as_owned_parts();
            if answer.status == 204 {
                parts.headers.remove(header::CONTENT_LENGTH);
            }
            Response::from_parts(parts, answer.body.to_vec())
        }
        Err(_) => bare(500),
    }
}

#[async_trait]
impl ServeHttp for AuthApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let _in_flight = InFlight::new(&self.in_flight);
        let started = crate::clock::instant();
        if self.closing.load(Ordering::Relaxed) {
            s.set_keepalive(None);
        }
        let req = s.req_header();
        let request_id = self.ids.for_request(req.headers.get(X_REQUEST_ID));
        let peer = s.client_addr().and_then(|a| a.as_inet()).map(|a| a.ip());
        let client_ip = client_ip(peer, &req.headers, &self.trusted_proxies);
        let style = match style(req.uri.path(), &self.config.ext_authz_prefix) {
            Ok(st) => st,
            Err(e) => return response(&misconfigured(&e), None),
        };
        let original = original(style, req, &self.config);
        if style == Style::NginxAnswer {
            // The continuation of a denial the `/nginx` request decided and recorded.
            let answer = self.stored_answer(s, original, client_ip).await;
            let mut resp = response(&answer, self.payments.cors_origin());
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            return resp;
        }
        let original = match original {
            Ok(o) => o,
            Err(e) => return response(&misconfigured(&e), None),
        };
        let mut log = Decided::default();
        let verdict = self.decide(s, &original, client_ip, &mut log).await;
        let (mut resp, status) = self.tell(style, verdict);
        resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        self.log(s, &original, &log, status, &request_id, started);
        resp
    }
}

impl AuthApp {
    /// Metrics and the access line of one decision.
    fn log(
        &self,
        s: &ServerSession,
        o: &Original,
        log: &Decided,
        status: u16,
        request_id: &HeaderValue,
        started: crate::clock::Instant,
    ) {
        let finished = self.payments.finished(
            log.route.as_ref(),
            &o.method,
            status,
            log.payment.as_ref(),
            log.rejection.as_ref(),
        );
        if self.access_log {
            telemetry::access(&telemetry::Access {
                request_id: request_id.to_str().unwrap_or(""),
                trace_id: telemetry::trace_id(s.req_header().headers.get(TRACEPARENT))
                    .unwrap_or(""),
                method: o.method.as_str(),
                path: o.target.split('?').next().unwrap_or(""),
                status,
                duration: started.elapsed(),
                upstream: None,
                facilitator: log.facilitator,
                finished,
            });
        }
    }
}
