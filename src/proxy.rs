//! The Pingora adapter: `Gateway` implements `ProxyHttp`, reports what it sees to
//! [`Payments`] and writes what it is told. No payment decision is made here.
//!
//! Owns: per-request state ([`RequestCtx`]) and which phase reports what:
//!
//! | Phase                     | reports to `Payments`                                   | writes                                            |
//! |---------------------------|---------------------------------------------------------|---------------------------------------------------|
//! | `request_filter`          | the request head: `admit`                               | 402 / 405 / 413 / 429 / 503 / preflight 204, or nothing |
//! | `request_body_filter`     | body bytes on priced routes: `body_allowed`             | 413 above the limit                               |
//! | `upstream_peer`           | `forwarding`                                            | the route's upstream peer                         |
//! | `upstream_request_filter` | `connected` (a `before_upstream` payment settles now)   | our answer if it did not settle; stripped/injected headers |
//! | `response_filter`         | the upstream's status: `on_response`                    | the receipt, or our answer in place of the upstream's head |
//! | `response_body_filter`    |                                                         | after a refused payment: our body, not the upstream's |
//! | `response_trailer_filter` |                                                         | no upstream receipt trailers; our body after a refusal |
//! | `fail_to_proxy`           | `upstream_failed`                                       | 502 (with the receipt of a payment settled already) |
//! | `logging`                 | `ended` (anything still open is given back)             | metrics, the access line                          |
//!
//! Every request gets an id (the client's sane `X-Request-Id`, else a generated one), sent
//! upstream and back to the client; the client's `traceparent` goes upstream unchanged.

mod peer;
pub mod pool;
pub mod respond;
mod steps;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::HeaderValue;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::clock::Instant;
use crate::config::{Cidr, Config};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::flow::Front;
use crate::payments::{Admission, Decision, Incoming, Payment, Payments, Routed};
use crate::protocol::{ErrorReason, SETTLEMENT_OVERRIDES};
use crate::telemetry::{
    self, RequestIds, SpanInfo, TraceContext, Tracer, TRACEPARENT, X_REQUEST_ID,
};
use pool::{HashInput, Upstream, Upstreams};
use steps::{answer_instead, forwarding, header_bytes, incoming, plain};
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
    request_id: HeaderValue,
    /// The request's trace context, when spans are exported.
    trace: Option<TraceContext>,
    route: Option<Routed>,
    payment: Option<Payment>,
    priced_path: bool,
    websocket: bool,
    peer: Option<IpAddr>,
    trusted_peer: bool,
    body_bytes: u64,
    /// Upstream connections that failed for this request (each tries the next address).
    connect_failures: usize,
    /// An answer to write instead of proxying (settlement before the upstream failed, body too
    /// large).
    pending: Option<Answer>,
    /// After a refused payment: the body replacing the upstream's.
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

    fn priced(&self) -> bool {
        self.route.as_ref().is_some_and(|r| r.route().is_priced())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            _in_flight: InFlight::new(&self.in_flight),
            started: crate::clock::instant(),
            request_id: HeaderValue::from_static(""),
            trace: None,
            route: None,
            payment: None,
            priced_path: false,
            websocket: false,
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
        self.identify(session, ctx);
        if header_bytes(session.req_header()) > self.max_header_bytes {
            self.answer(session, &plain(&GatewayError::HeadersTooLarge), ctx)
                .await?;
            return Ok(true);
        }
        let incoming = incoming(session, ctx, ctx.trusted_peer);
        ctx.proto = incoming.scheme;
        let admitting = crate::clock::instant();
        let admission = self.payments.admit(incoming, Front::Proxy).await;
        if matches!(&admission, Admission::Forward(f) if f.payment.is_some())
            || matches!(&admission, Admission::Answer(e) if e.payment.is_some() || e.rejection.is_some())
        {
            ctx.add_facilitator_time(admitting);
        }
        match self.admitted(session, ctx, admission)? {
            Some(answer) => {
                self.answer(session, &answer, ctx).await?;
                Ok(true)
            }
            None => Ok(false),
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
            if let Some(answer) = self
                .payments
                .body_refused(ctx.route.as_ref(), ctx.body_bytes)
            {
                ctx.pending = Some(answer);
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
            self.payments.forwarding(p).await;
        }
        ctx.upstream_sent.get_or_insert_with(crate::clock::instant);
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
            // The upstream connection is up and nothing was sent yet: a `before_upstream`
            // payment settles now, so that it is never taken for an unreachable upstream.
            let settling = crate::clock::instant();
            let refused = self.payments.connected(p).await;
            ctx.add_facilitator_time(settling);
            if let Some(answer) = refused {
                ctx.pending = Some(answer);
                return Err(answer_instead("settlement before the upstream failed"));
            }
        }
        upstream_request.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        if let Some(tp) = ctx.trace.as_ref().and_then(Tracer::traceparent) {
            upstream_request.insert_header(TRACEPARENT, tp)?;
        }
        upstream::prepare_request(upstream_request, forwarding(ctx))?;
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
        upstream::note_response(session, response, ctx.upgrade_held);
        if !response.status.is_informational() && ctx.upstream_took.is_none() {
            ctx.upstream_took = ctx.upstream_sent.map(|t| t.elapsed());
        }
        if !response.headers.contains_key(X_REQUEST_ID) {
            response.insert_header(X_REQUEST_ID, ctx.request_id.clone())?;
        }
        let Some(p) = ctx.payment.as_mut() else {
            return self.apply(response, ctx, Decision::Proceed);
        };
        // Only the gateway says what became of a payment.
        for h in &respond::PAYMENT_OUTCOME_HEADERS {
            response.remove_header(h);
        }
        let deciding = crate::clock::instant();
        let status = response.status.as_u16();
        let decision = self.payments.on_response(p, status, ctx.websocket).await;
        ctx.add_facilitator_time(deciding);
        self.apply(response, ctx, decision)
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
        let code = match self.failure_answer(e, ctx).await {
            Some(answer) if session.response_written().is_none() => {
                match self.answer(session, &answer, ctx).await {
                    Ok(()) => answer.status,
                    Err(_) => 0,
                }
            }
            _ => 0,
        };
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(p) = ctx.payment.as_mut() {
            // The last safety net: a payment still open here was never answered by the
            // upstream (client gone, error path): given back.
            self.payments.ended(p).await;
        }
        self.log_finished(session, ctx);
    }
}
