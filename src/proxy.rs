//! The Pingora adapter: `Gateway` implements `ProxyHttp`, asks [`Payments`] for every decision
//! and writes what it is told.
//!
//! Owns: per-request state ([`RequestCtx`]) and which phase does what:
//!
//! | Phase                     | `before_upstream`                     | `after_response` (default)                      |
//! |---------------------------|---------------------------------------|-------------------------------------------------|
//! | `request_filter`          | header size; admit: price → 402 / 405 / 429 / preflight 204, or verify | same                |
//! | `request_body_filter`     | count body bytes on priced routes (413 above the limit)                 ||
//! | `upstream_peer`           | the route's upstream: an address in turn, or a healthy pool backend (skipping refused ones) | same |
//! | `upstream_request_filter` | settle (the upstream connection is up; nothing sent yet), then strip credentials, overrides, upgrades, forwarding headers; set injected headers | strip and inject, no settlement |
//! | `response_filter`         | 1xx: pass; attach receipt             | 1xx: pass; final status < 400: settle, then receipt or our answer; ≥ 400: release unsettled |
//! | `response_body_filter`    | pass                                  | after a failed settlement: swallow the upstream body, emit ours |
//! | `response_trailer_filter` | drop the upstream's receipt trailers | same; after a failed settlement: ours as the last body chunk, no trailers |
//! | `fail_to_proxy`           | our pending answer, or 502 with any receipt | release, 502                              |
//! | `logging`                 | metrics and the access line; the payment's hold is dropped here at the latest ||
//!
//! Every request gets an id (the client's sane `X-Request-Id`, else a generated one), sent
//! upstream and back to the client; the client's `traceparent` goes upstream unchanged.
//!
//! The pending payment is an `Option` in the context and carries its replay-guard hold, which
//! gives the authorization back when dropped unless settlement consumed it, so no path has to
//! remember to release it. Nothing here decides whether a payment is valid.

pub mod pool;
pub mod respond;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::config::{Cidr, Config, SettlementMode};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::payments::{Admission, HeadAction, Incoming, Payments, Routed};
use crate::protocol::{ErrorReason, SETTLEMENT_OVERRIDES};
use crate::settle::Payment;
use crate::telemetry::{
    self, RequestIds, SpanInfo, TraceContext, Tracer, TRACEPARENT, X_REQUEST_ID,
};
use http::HeaderValue;
use pool::{HashInput, Upstream, Upstreams};
use upstream::Forwarding;

/// The gateway service: shared state of all requests.
pub struct Gateway {
    payments: Arc<Payments>,
    in_flight: Arc<AtomicUsize>,
    /// Set when the listening sockets are being handed over (SIGQUIT): every answer closes its
    /// connection, so clients move to the new process between requests, not in the middle of
    /// one.
    closing: Arc<AtomicBool>,
    upstreams: Arc<Upstreams>,
    trusted_proxies: Vec<Cidr>,
    client_timeout: Duration,
    max_header_bytes: usize,
    max_request_body: u64,
    ids: RequestIds,
    access_log: bool,
    tracer: Tracer,
}

/// Counts a request in flight while it lives (the graceful stop waits for none).
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    pub(crate) fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per-request state.
pub struct RequestCtx {
    _in_flight: InFlight,
    started: Instant,
    request_id: http::HeaderValue,
    /// The request's trace context, when spans are exported.
    trace: Option<TraceContext>,
    route: Option<Routed>,
    payment: Option<Payment>,
    priced_path: bool,
    websocket: bool,
    resource_url: String,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    body_bytes: u64,
    /// Upstream connections that failed for this request (each tries the next address).
    connect_failures: usize,
    /// An answer to write instead of proxying (settlement before the upstream failed, body too
    /// large).
    pending: Option<Answer>,
    /// After a failed after-response settlement: the body replacing the upstream's.
    replacement: Option<Bytes>,
    /// A rejection of a payment attempt, for the log line.
    rejection: Option<ErrorReason>,
    /// A websocket handshake whose (empty) request body is held open until the upstream
    /// answers; see [`upstream::hold_upgrade_body`].
    upgrade_held: bool,
    /// The response's last body byte went out.
    response_done: bool,
    /// When the request was first sent upstream, and how long its response header took.
    upstream_sent: Option<Instant>,
    upstream_took: Option<Duration>,
    /// The scheme the client used (the listener's, or a trusted proxy's).
    proto: &'static str,
    /// The client's address (a trusted proxy's `X-Forwarded-For` believed).
    client_ip: Option<IpAddr>,
    /// Backend addresses that refused a connection for this request (skipped on retry).
    failed: Vec<SocketAddr>,
    /// The `Host` for the chosen upstream peer (`None`: the client's).
    upstream_host: Option<HeaderValue>,
    /// Time spent verifying and settling the payment.
    facilitator_took: Option<Duration>,
}

impl RequestCtx {
    fn add_facilitator_time(&mut self, since: Instant) {
        *self.facilitator_took.get_or_insert(Duration::ZERO) += since.elapsed();
    }
}

// === impl Gateway ===

impl Gateway {
    /// A gateway over `payments`, forwarding to `upstreams`.
    pub fn new(config: &Config, payments: Arc<Payments>, upstreams: Arc<Upstreams>) -> Self {
        Gateway {
            payments,
            in_flight: Arc::new(AtomicUsize::new(0)),
            closing: Arc::new(AtomicBool::new(false)),
            upstreams,
            trusted_proxies: config.server.trusted_proxies.clone(),
            client_timeout: config.server.client_timeout,
            max_header_bytes: config.limits.max_header_bytes,
            max_request_body: config.limits.max_request_body,
            ids: RequestIds::default(),
            access_log: config.logging.access_log,
            tracer: Tracer::new(&config.logging),
        }
    }

    /// The payment decisions.
    pub fn payments(&self) -> &Arc<Payments> {
        &self.payments
    }

    /// The upstreams.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The upstream a route sends to (the default one for unrouted requests).
    fn upstream_of(&self, route: Option<&Routed>) -> &Upstream {
        self.upstreams
            .get(route.and_then(|r| r.route().rule.upstream.as_deref()))
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> &Arc<AtomicUsize> {
        &self.in_flight
    }

    /// Set to close every connection after its current answer (a hand-over began).
    pub fn closing(&self) -> &Arc<AtomicBool> {
        &self.closing
    }

    fn close_if_closing(&self, session: &mut Session) {
        if self.closing.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
    }

    async fn answer(&self, session: &mut Session, answer: &Answer, id: &RequestCtx) -> Result<()> {
        self.close_if_closing(session);
        let cors = self.payments.cors_origin();
        respond::write(session, answer, cors, Some(&id.request_id)).await
    }
}

/// The answer to an error that carries no challenge.
fn plain(e: &GatewayError) -> Answer {
    rescue(
        e,
        None,
        Asking {
            url: "",
            browser: false,
        },
    )
}

fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

fn priced_route(ctx: &RequestCtx) -> bool {
    ctx.route.as_ref().is_some_and(|r| r.route().is_priced())
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::new(&self.in_flight),
            started: Instant::now(),
            request_id: http::HeaderValue::from_static(""),
            trace: None,
            route: None,
            payment: None,
            priced_path: false,
            websocket: false,
            resource_url: String::new(),
            peer: None,
            trusted_peer: false,
            body_bytes: 0,
            connect_failures: 0,
            pending: None,
            replacement: None,
            rejection: None,
            upgrade_held: false,
            response_done: false,
            upstream_sent: None,
            upstream_took: None,
            proto: "http",
            client_ip: None,
            failed: Vec::new(),
            upstream_host: None,
            facilitator_took: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        session.set_read_timeout(Some(self.client_timeout));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.trusted_peer = ctx
            .peer
            .is_some_and(|p| self.trusted_proxies.iter().any(|c| c.contains(p)));
        let req = session.req_header();
        ctx.request_id = self.ids.for_request(req.headers.get(X_REQUEST_ID));
        ctx.trace = self.tracer.begin(req.headers.get(TRACEPARENT));
        if header_bytes(req) > self.max_header_bytes {
            let answer = plain(&GatewayError::HeadersTooLarge);
            self.answer(session, &answer, ctx).await?;
            return Ok(true);
        }
        let client_ip = if ctx.trusted_peer {
            upstream::client_ip(
                ctx.peer,
                req.headers.get("x-forwarded-for"),
                &self.trusted_proxies,
            )
        } else {
            ctx.peer
        };
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let (scheme, host) = upstream::origin(req, tls, ctx.trusted_peer);
        ctx.proto = scheme;
        ctx.client_ip = client_ip;
        let incoming = Incoming {
            method: &req.method,
            target: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
            headers: &req.headers,
            client_ip,
            scheme,
            host,
        };
        let admitting = Instant::now();
        match self.payments.admit(incoming).await {
            Admission::Forward(f) => {
                if f.payment.is_some() {
                    ctx.add_facilitator_time(admitting);
                }
                if f.payment.is_some() && !self.upstream_of(f.route.as_ref()).is_addressable() {
                    // Nothing to forward to: answer before anything is charged.
                    let answer = plain(&GatewayError::Upstream);
                    self.answer(session, &answer, ctx).await?;
                    return Ok(true);
                }
                ctx.route = f.route;
                ctx.payment = f.payment;
                ctx.priced_path = f.priced_path;
                ctx.websocket = f.websocket;
                ctx.resource_url = f.resource_url;
                if f.websocket {
                    ctx.upgrade_held = upstream::hold_upgrade_body(session.req_header_mut())?;
                }
                Ok(false)
            }
            Admission::Answer(e) => {
                ctx.route = e.route;
                ctx.payment = e.payment;
                ctx.rejection = e.rejection;
                if ctx.payment.is_some() || ctx.rejection.is_some() {
                    ctx.add_facilitator_time(admitting);
                }
                self.answer(session, &e.answer, ctx).await?;
                Ok(true)
            }
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if ctx.body_bytes > self.max_request_body && priced_route(ctx) {
                ctx.pending = Some(plain(&GatewayError::RequestTooLarge));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over [limits] max_request_body",
                ));
            }
        }
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(p) = ctx.payment.as_mut() {
            self.payments.forwarded(p);
        }
        ctx.upstream_sent.get_or_insert_with(Instant::now);
        let input = HashInput {
            client_ip: ctx.client_ip,
            req: session.req_header(),
        };
        let chosen = self
            .upstream_of(ctx.route.as_ref())
            .choose(input, &ctx.failed)?;
        ctx.upstream_host = chosen.host;
        let mut peer = chosen.peer;
        if ctx.upgrade_held {
            // A websocket handshake is an HTTP/1.1 upgrade: never offered HTTP/2.
            peer.options.set_http_version(1, 1);
        }
        Ok(peer)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing was sent (and nothing settled: `before_upstream` settles once connected), so
        // the next address (or backend) of the upstream may be tried, once each.
        ctx.connect_failures += 1;
        if let Some(a) = peer._address.as_inet() {
            ctx.failed.push(*a);
        }
        if ctx.connect_failures < self.upstream_of(ctx.route.as_ref()).attempts() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(p) = ctx.payment.as_mut() {
            if p.mode == SettlementMode::BeforeUpstream {
                // The upstream connection is up and nothing was sent yet: settle now, so that a
                // payment is never taken for an upstream that cannot be reached.
                let settling = Instant::now();
                let refused = self
                    .payments
                    .before_upstream(p, ctx.route.as_ref(), &ctx.resource_url)
                    .await;
                ctx.add_facilitator_time(settling);
                if let Some(answer) = refused {
                    ctx.pending = Some(answer);
                    let mut e = Error::explain(
                        ErrorType::InternalError,
                        "settlement before the upstream failed",
                    );
                    e.set_retry(false);
                    return Err(e);
                }
            }
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        if let Some(tp) = ctx.trace.as_ref().and_then(Tracer::traceparent) {
            upstream_request.insert_header(TRACEPARENT, tp)?;
        }
        upstream::prepare_request(
            upstream_request,
            Forwarding {
                peer: ctx.peer,
                trusted_peer: ctx.trusted_peer,
                proto: ctx.proto,
                priced_path: ctx.priced_path,
                websocket: ctx.websocket,
                upgrade_held: ctx.upgrade_held,
                host: ctx.upstream_host.as_ref(),
            },
        )?;
        // Injected headers replace whatever the client sent under those names.
        for (name, value) in self.upstream_of(ctx.route.as_ref()).headers() {
            upstream_request.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.remove_header(&SETTLEMENT_OVERRIDES);
        self.close_if_closing(session);
        if !response.status.is_informational() && ctx.upstream_took.is_none() {
            ctx.upstream_took = ctx.upstream_sent.map(|t| t.elapsed());
        }
        if ctx.upgrade_held
            && response.status.as_u16() != 101
            && !response.status.is_informational()
        {
            // A refused handshake: the held request body never ends, so neither may the
            // connection (the client's close ends the exchange).
            session.set_keepalive(None);
        }
        if ctx.payment.is_some() {
            for h in &respond::PAYMENT_OUTCOME_HEADERS {
                response.remove_header(h);
            }
        }
        if !response.headers.contains_key(X_REQUEST_ID) {
            response.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        }
        let status = response.status.as_u16();
        let settling = ctx
            .payment
            .as_ref()
            .is_some_and(Payment::is_unsettled)
            .then(Instant::now);
        let action = self
            .payments
            .on_response(
                ctx.payment.as_mut(),
                ctx.route.as_ref(),
                status,
                &ctx.resource_url,
            )
            .await;
        if let Some(t) = settling {
            ctx.add_facilitator_time(t);
        }
        match action {
            HeadAction::Interim => return Ok(()),
            HeadAction::Pass {
                receipt,
                private,
                queued,
            } => {
                if let Some((name, value)) = receipt {
                    response.insert_header(name, value)?;
                }
                if queued {
                    response.insert_header(
                        crate::protocol::X_PAYMENT_STATUS,
                        http::HeaderValue::from_static("queued"),
                    )?;
                }
                if private {
                    respond::make_private(response)?;
                }
            }
            HeadAction::Replace(mut answer) => {
                // A response that ends at its header (204, 304, `content-length: 0`) gets no
                // body-filter call to carry the replacement: answer without a body then (the
                // challenge and the receipt are in the headers).
                if respond::ends_at_header(response) {
                    answer.body = Bytes::new();
                }
                respond::replace_header(response, &answer, self.payments.cors_origin())?;
                ctx.replacement = Some(answer.body);
                return Ok(());
            }
        }
        if let Some(origin) = self.payments.cors_origin() {
            if priced_route(ctx) {
                respond::add_cors(response, origin)?;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let Some(replacement) = &ctx.replacement {
            *body = end_of_stream.then(|| replacement.clone());
        }
        ctx.response_done |= end_of_stream;
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Bytes>> {
        ctx.response_done = true;
        if let Some(replacement) = &ctx.replacement {
            // The upstream's body ended with trailers, not with an end-of-stream chunk: our
            // answer goes out here, as the last body chunk, and none of its trailers.
            return Ok(Some(replacement.clone()));
        }
        if ctx.payment.is_some() {
            // As in `response_filter`: only the gateway says what became of a payment.
            for h in &respond::PAYMENT_OUTCOME_HEADERS {
                trailers.remove(h);
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let answer = match ctx.pending.take() {
            Some(a) => a,
            // A refused websocket handshake ends when the client closes after the whole
            // response: delivered, nothing failed.
            None if ctx.upgrade_held && ctx.response_done => {
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            None => {
                if let Some(p) = ctx.payment.as_mut() {
                    if p.is_unsettled() {
                        p.release(ErrorReason::UpstreamUnavailable);
                        self.payments.released(p);
                    } else {
                        // Paid already (before the upstream, or redeemed): redeemable later.
                        self.payments.undelivered(p);
                    }
                }
                tracing::warn!(error = %e, "upstream request failed");
                plain(&GatewayError::Upstream)
                    .with_receipt(ctx.payment.as_ref().and_then(Payment::receipt))
            }
        };
        let code = if session.response_written().is_none() {
            match self.answer(session, &answer, ctx).await {
                Ok(()) => answer.status,
                Err(_) => 0,
            }
        } else {
            0
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(p) = ctx.payment.as_mut() {
            // The last safety net: a payment still unsettled here was never answered by the
            // upstream (client gone, error path): give it back.
            if p.is_unsettled() {
                p.release(ErrorReason::NotServed);
                self.payments.released(p);
            }
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let req = session.req_header();
        let finished = self.payments.finished(
            ctx.route.as_ref(),
            &req.method,
            status,
            ctx.payment.as_ref(),
            ctx.rejection.as_ref(),
        );
        if let Some(took) = ctx.upstream_took {
            self.payments.metrics().upstream(finished.route, took);
        }
        let request_id = ctx.request_id.to_str().unwrap_or("");
        let exported = ctx.trace.as_ref().map(|t| {
            self.tracer.finish(
                t,
                &SpanInfo {
                    method: req.method.as_str(),
                    route: finished.route,
                    status,
                    outcome: finished.outcome,
                    reason: finished.reason,
                    request_id,
                },
            );
            Tracer::trace_id(t)
        });
        if self.access_log {
            let client_trace = telemetry::trace_id(req.headers.get(TRACEPARENT)).unwrap_or("");
            telemetry::access(&telemetry::Access {
                request_id,
                trace_id: exported.as_deref().unwrap_or(client_trace),
                method: req.method.as_str(),
                path: req.uri.path(),
                status,
                duration: ctx.started.elapsed(),
                upstream: ctx.upstream_took,
                facilitator: ctx.facilitator_took,
                finished,
                payment: ctx.payment.as_ref(),
            });
        }
    }
}
