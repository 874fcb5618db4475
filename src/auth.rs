//! Forward-auth mode (`[auth] listen`): x402 as the auth service of a proxy people already run.
//! The proxy asks before forwarding; the answer is "allow" (`200`, with the receipt header for
//! the proxy to copy into its response) or the gateway's own answer (the `402` challenge with
//! its headers and body, `405`, `429`, `503`…) for the proxy to return. Same price table,
//! journal, replay guard and metrics as the proxy mode ([`Payments`]).
//!
//! Owns: reading the original request from each proxy's sub-request ([`original`]), the
//! decision ([`AuthApp::decide`]), and the answers. Endpoints, chosen by the sub-request's path
//! (set in the proxy's config, never by the client):
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
//! request is allowed (`after_response` and `before_upstream` alike) and recorded as delivered;
//! one settled after `[auth] timeout` (the proxy has likely given up) stays redeemable instead.
//! A `deferred` route's payment is queued when the request is allowed, and the `200` says so
//! with `X-PAYMENT-STATUS: queued` for the proxy to copy.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response};
use pingora::apps::http_app::ServeHttp;
use pingora::http::RequestHeader;
use pingora::protocols::http::ServerSession;

use crate::config::{AuthConfig, Cidr, Config};
use crate::error::Answer;
use crate::payments::{Admission, HeadAction, Incoming, Payments, Routed};
use crate::protocol::{ErrorReason, PAYMENT_SIGNATURE, X_PAYMENT, X_PAYMENT_STATUS};
use crate::proxy::{respond, InFlight};
use crate::settle::Payment;
use crate::telemetry::{self, RequestIds, TRACEPARENT, X_REQUEST_ID};

/// The id of a stored nginx denial.
pub const X_X402_ANSWER: HeaderName = HeaderName::from_static("x-x402-answer");

/// How long a stored nginx denial waits for its `/nginx/answer` fetch.
const ANSWER_TTL: Duration = Duration::from_secs(30);

/// How many bytes of stored nginx denials are kept at most (least recently stored go first).
const MAX_ANSWER_BYTES: u64 = 64 * 1024 * 1024;

/// Which proxy asks, by the path of its sub-request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// nginx `auth_request` (`/nginx`).
    Nginx,
    /// nginx fetching a stored denial (`/nginx/answer`).
    NginxAnswer,
    /// Traefik `forwardAuth`, Caddy `forward_auth` (`/forward`).
    Forwarded,
    /// Envoy `ext_authz` HTTP (`{ext_authz_prefix}/…`).
    ExtAuthz,
}

/// The request the proxy asks about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Original {
    /// Its method.
    pub method: Method,
    /// Its target (`/path?query`).
    pub target: String,
    /// Its host, when the proxy said it in a header of its own.
    pub host: Option<String>,
    /// `https` when the proxy said so (`X-Forwarded-Proto`), else `http`.
    pub scheme: &'static str,
}

/// A sub-request the auth service cannot read: the proxy is misconfigured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No endpoint at this path.
    #[error("no forward-auth endpoint at {0}: use /nginx, /nginx/answer, /forward or the ext_authz prefix")]
    UnknownEndpoint(String),
    /// A header the proxy must set is missing.
    #[error("the proxy did not send {0}: see the forward-auth examples in deploy/")]
    MissingHeader(HeaderName),
    /// The original method is not a method.
    #[error("{0} is not an HTTP method")]
    BadMethod(HeaderName),
    /// The original target is not an origin-form target (`/path?query`).
    #[error("{0} is not a request target starting with /")]
    BadTarget(HeaderName),
}

/// The endpoint a sub-request path names.
///
/// # Errors
/// [`AuthError::UnknownEndpoint`].
pub fn style(path: &str, ext_authz_prefix: &str) -> Result<Style, AuthError> {
    match path {
        "/nginx" => Ok(Style::Nginx),
        "/nginx/answer" => Ok(Style::NginxAnswer),
        "/forward" => Ok(Style::Forwarded),
        p if p
            .strip_prefix(ext_authz_prefix)
            .is_some_and(|rest| rest.starts_with('/')) =>
        {
            Ok(Style::ExtAuthz)
        }
        p => Err(AuthError::UnknownEndpoint(p.chars().take(100).collect())),
    }
}

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Reads the original request out of a sub-request.
///
/// # Errors
/// A header the style needs is missing or unreadable.
pub fn original(style: Style, req: &RequestHeader, c: &AuthConfig) -> Result<Original, AuthError> {
    let headers = &req.headers;
    let required = |name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| AuthError::MissingHeader(name.clone()))
    };
    let method_from = |name: &HeaderName| {
        Method::from_bytes(required(name)?.as_bytes())
            .map_err(|_| AuthError::BadMethod(name.clone()))
    };
    let target_from = |name: &HeaderName| {
        let t = required(name)?;
        if t.starts_with('/') && !t.starts_with("//") {
            Ok(t.to_owned())
        } else {
            Err(AuthError::BadTarget(name.clone()))
        }
    };
    let (method, target) = match style {
        Style::Nginx | Style::NginxAnswer => (
            method_from(&c.original_method_header)?,
            target_from(&c.original_uri_header)?,
        ),
        Style::Forwarded => (
            method_from(&X_FORWARDED_METHOD)?,
            target_from(&X_FORWARDED_URI)?,
        ),
        Style::ExtAuthz => {
            let pq = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
            let target = pq.get(c.ext_authz_prefix.len()..).unwrap_or("/");
            (req.method.clone(), target.to_owned())
        }
    };
    let host = headers
        .get(X_FORWARDED_HOST)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty() && style != Style::ExtAuthz);
    let https = headers
        .get(X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    Ok(Original {
        method,
        target,
        host,
        scheme: if https { "https" } else { "http" },
    })
}

/// The client's address: the last `X-Forwarded-For` hop that is not a trusted proxy (the proxy
/// asking appended it), else the proxy's own address.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let hops = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    hops.rsplit(',')
        .filter_map(|h| h.trim().parse::<IpAddr>().ok())
        .find(|ip| !trusted.iter().any(|c| c.contains(*ip)))
        .or(peer)
}

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

    /// Decides on the original request: admit it as the proxy mode would, and settle a payment
    /// before allowing it.
    async fn decide(
        &self,
        original: &Original,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
        log: &mut Decided,
    ) -> Verdict {
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
        let started = Instant::now();
        let verdict = match self.payments.admit(incoming).await {
            Admission::Answer(e) => {
                log.route = e.route;
                log.payment = e.payment;
                log.rejection = e.rejection;
                Verdict::Deny(e.answer)
            }
            Admission::Forward(f) if !upgrade_allowed(headers, f.websocket) => {
                // The proxy mode strips the upgrade; an auth service can only refuse it: a
                // tunnel (h2c, or a websocket the route does not allow) is never priced again.
                log.route = f.route;
                Verdict::Deny(Answer::text(400, "upgrade not allowed on this route\n"))
            }
            Admission::Forward(f) => {
                log.route = f.route;
                match f.payment {
                    None => Verdict::Allow {
                        receipt: None,
                        queued: false,
                    },
                    Some(mut p) => {
                        // Allowed means served as far as the gateway can know: settle first.
                        let deadline = started + self.config.timeout;
                        let action = self
                            .payments
                            .settle_for_auth(&mut p, log.route.as_ref(), &f.resource_url, deadline)
                            .await;
                        log.payment = Some(p);
                        match action {
                            HeadAction::Pass {
                                receipt, queued, ..
                            } => Verdict::Allow { receipt, queued },
                            HeadAction::Replace(answer) => Verdict::Deny(answer),
                            // `settle_for_auth` never answers an interim.
                            HeadAction::Interim => Verdict::Deny(Answer::empty(500)),
                        }
                    }
                }
            }
        };
        if log.payment.is_some() || log.rejection.is_some() {
            log.facilitator = Some(started.elapsed());
        }
        verdict
    }

    /// The stored nginx denial; for an unknown id (expired, another instance), the answer to
    /// the original request when it carries no payment, else `503` asking for the same payment
    /// again: never a verification or a settlement.
    async fn stored_answer(
        &self,
        s: &ServerSession,
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
            return Answer::text(503, "retry the request with the same payment\n")
                .with_header(header::RETRY_AFTER, HeaderValue::from(1));
        }
        let mut log = Decided::default();
        match self
            .decide(&original, &req.headers, client_ip, &mut log)
            .await
        {
            Verdict::Deny(a) => a,
            // Unpriced after all (a reload): nginx forwards nothing on this path; say so.
            Verdict::Allow { .. } => Answer::text(409, "the route changed: retry the request\n"),
        }
    }

    fn nginx_denial(&self, answer: Answer) -> Response<Vec<u8>> {
        let mut id = [0u8; 16];
        if getrandom::fill(&mut id).is_err() {
            return response(&Answer::text(503, "no randomness for an answer id\n"), None);
        }
        let id = u128::from_le_bytes(id);
        self.answers.insert(id, Arc::new(answer));
        let mut r = bare(401);
        if let Ok(v) = HeaderValue::from_str(&format!("{id:032x}")) {
            r.headers_mut().insert(X_X402_ANSWER, v);
        }
        r
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
        AuthError::UnknownEndpoint(_) => Answer::text(404, "no such forward-auth endpoint\n"),
        _ => Answer::text(400, "forward-auth request without the original request\n"),
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
        let started = Instant::now();
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
        let cors = self.payments.cors_origin();
        if style == Style::NginxAnswer {
            // The continuation of a denial the `/nginx` request decided and recorded.
            let answer = self.stored_answer(s, original, client_ip).await;
            let mut resp = response(&answer, cors);
            resp.headers_mut().insert(X_REQUEST_ID, request_id);
            return resp;
        }
        let original = match original {
            Ok(o) => o,
            Err(e) => return response(&misconfigured(&e), None),
        };
        let mut log = Decided::default();
        let (mut resp, status) = match self
            .decide(&original, &req.headers, client_ip, &mut log)
            .await
        {
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
                let refused = Answer::text(403, "answer CORS preflights at the proxy\n");
                (response(&refused, cors), 403)
            }
            Verdict::Deny(a) => (response(&a, cors), a.status),
        };
        resp.headers_mut().insert(X_REQUEST_ID, request_id.clone());
        let o = &original;
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
                trace_id: telemetry::trace_id(req.headers.get(TRACEPARENT)).unwrap_or(""),
                method: o.method.as_str(),
                path: o.target.split('?').next().unwrap_or(""),
                status,
                duration: started.elapsed(),
                upstream: None,
                facilitator: log.facilitator,
                finished,
                payment: log.payment.as_ref(),
            });
        }
        resp
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, path.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.insert_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn the_path_names_the_proxy() {
        let p = "/ext_authz";
        assert_eq!(style("/nginx", p), Ok(Style::Nginx));
        assert_eq!(style("/nginx/answer", p), Ok(Style::NginxAnswer));
        assert_eq!(style("/forward", p), Ok(Style::Forwarded));
        assert_eq!(style("/ext_authz/weather/x", p), Ok(Style::ExtAuthz));
        for other in ["/", "/ext_authzz/a", "/ext_authz", "/nginx/", "/forward/x"] {
            assert!(
                matches!(style(other, p), Err(AuthError::UnknownEndpoint(_))),
                "{other}"
            );
        }
    }

    #[test]
    fn each_proxy_says_the_original_request_its_own_way() {
        let c = AuthConfig::default();
        let nginx = req(
            "GET",
            "/nginx",
            &[
                ("x-original-uri", "/weather/paris?u=c"),
                ("x-original-method", "POST"),
                ("x-forwarded-host", "api.example.com"),
                ("x-forwarded-proto", "https"),
                // A client's own X-Forwarded-Uri means nothing to the nginx endpoint.
                ("x-forwarded-uri", "/health"),
            ],
        );
        assert_eq!(
            original(Style::Nginx, &nginx, &c).unwrap(),
            Original {
                method: Method::POST,
                target: "/weather/paris?u=c".into(),
                host: Some("api.example.com".into()),
                scheme: "https",
            }
        );
        let caddy = req(
            "GET",
            "/forward",
            &[
                ("x-forwarded-method", "GET"),
                ("x-forwarded-uri", "/weather/rome"),
                ("x-original-uri", "/health"),
            ],
        );
        let o = original(Style::Forwarded, &caddy, &c).unwrap();
        assert_eq!(
            (o.method, o.target.as_str(), o.scheme),
            (Method::GET, "/weather/rome", "http")
        );
        let envoy = req(
            "DELETE",
            "/ext_authz/weather/oslo?x=1",
            &[("host", "api.example.com")],
        );
        let o = original(Style::ExtAuthz, &envoy, &c).unwrap();
        assert_eq!(
            (o.method, o.target.as_str(), o.host),
            (Method::DELETE, "/weather/oslo?x=1", None)
        );
    }

    #[test]
    fn a_sub_request_without_the_original_is_refused() {
        let c = AuthConfig::default();
        let no_uri = req("GET", "/nginx", &[("x-original-method", "GET")]);
        assert_eq!(
            original(Style::Nginx, &no_uri, &c),
            Err(AuthError::MissingHeader(c.original_uri_header.clone()))
        );
        let no_method = req("GET", "/forward", &[("x-forwarded-uri", "/a")]);
        assert!(matches!(
            original(Style::Forwarded, &no_method, &c),
            Err(AuthError::MissingHeader(_))
        ));
        for bad in ["weather", "//evil.example/a", "http://x/a", ""] {
            let r = req(
                "GET",
                "/forward",
                &[("x-forwarded-method", "GET"), ("x-forwarded-uri", bad)],
            );
            assert!(original(Style::Forwarded, &r, &c).is_err(), "{bad}");
        }
        let r = req(
            "GET",
            "/forward",
            &[("x-forwarded-method", "G E T"), ("x-forwarded-uri", "/a")],
        );
        assert!(matches!(
            original(Style::Forwarded, &r, &c),
            Err(AuthError::BadMethod(_))
        ));
    }

    #[test]
    fn the_client_is_the_last_untrusted_forwarded_hop() {
        let trusted = vec![Cidr::parse("10.0.0.0/8").unwrap()];
        let peer = Some("127.0.0.1".parse().unwrap());
        let mut h = HeaderMap::new();
        assert_eq!(client_ip(peer, &h, &trusted), peer);
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2, 10.0.0.5"),
        );
        assert_eq!(
            client_ip(peer, &h, &trusted),
            Some("2.2.2.2".parse().unwrap())
        );
    }
}
