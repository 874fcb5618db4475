//! The Pingora adapter: `Gateway` implements `ProxyHttp` and delegates every decision to the
//! pure modules (`pricing`, `verify`, `settle`).
//!
//! Owns: per-request state ([`RequestCtx`]) and which phase does what:
//!
//! | Phase                     | `before_upstream`               | `after_response` (default)                         |
//! |---------------------------|---------------------------------|----------------------------------------------------|
//! | `request_filter`          | price → 402, or verify → settle | price → 402, or verify                             |
//! | `upstream_request_filter` | strip payment headers           | strip payment headers                              |
//! | `response_filter`         | attach receipt                  | status < 400: settle, then receipt or 402; ≥ 400: release unsettled |
//! | `response_body_filter`    | pass                            | after a failed settlement: swallow upstream body, emit the 402 body |
//! | `fail_to_proxy`           | 502 with receipt                | release, 502                                       |
//! | `logging`                 | one line per paid request; release anything still held        ||
//!
//! The pending payment is an `Option` in the context, consumed on every terminal path; `logging`
//! is the last safety net. Nothing here decides whether a payment is valid.

pub mod respond;
pub mod upstream;

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::header::HeaderValue;
use http::Method;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, Result};

use crate::config::{Config, SettlementMode};
use crate::error::GatewayError;
use crate::pricing::{PriceTable, PricedRoute};
use crate::protocol::{PAYMENT_SIGNATURE, SETTLEMENT_OVERRIDES, X_PAYMENT};
use crate::settle::{Payment, PaymentState, Settler};
use crate::verify::Verifier;
use respond::Answer;
use upstream::UpstreamTarget;

/// The gateway service: shared state of all requests.
pub struct Gateway {
    table: Arc<ArcSwap<PriceTable>>,
    verifier: Arc<Verifier>,
    settler: Settler,
    upstream: UpstreamTarget,
    public_url: Option<String>,
    cors_origin: Option<HeaderValue>,
    client_timeout: std::time::Duration,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    table: Option<Arc<PriceTable>>,
    route: Option<usize>,
    preflight: bool,
    resource_url: String,
    payment: Option<Payment>,
    /// After a failed after-response settlement: the 402 body replacing the upstream's.
    replacement: Option<Bytes>,
    /// A rejection of a payment attempt, for the log line.
    rejection: Option<String>,
}

impl RequestCtx {
    fn route(&self) -> Option<&PricedRoute> {
        Some(&self.table.as_ref()?.routes()[self.route?])
    }
}

// === impl Gateway ===

impl Gateway {
    /// A gateway serving `table`.
    pub fn new(config: &Config, table: Arc<ArcSwap<PriceTable>>, verifier: Arc<Verifier>) -> Self {
        Gateway {
            table,
            settler: Settler::new(verifier.facilitator().clone()),
            verifier,
            upstream: UpstreamTarget::new(&config.upstream),
            public_url: config.server.public_url.clone(),
            client_timeout: config.server.client_timeout,
            cors_origin: config
                .server
                .cors_allow_origin
                .as_deref()
                .and_then(|o| HeaderValue::from_str(o).ok()),
        }
    }

    /// The public URL of this request: the configured origin (or `http://` + `Host`) followed
    /// by the request target as received.
    fn resource_url(&self, req: &RequestHeader) -> String {
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        match &self.public_url {
            Some(origin) => format!("{origin}{target}"),
            None => {
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .or_else(|| req.uri.authority().map(|a| a.as_str()))
                    .unwrap_or("localhost");
                format!("http://{host}{target}")
            }
        }
    }

    /// Answers a priced request that carries no usable payment with the route's challenge.
    async fn challenge(
        &self,
        session: &mut Session,
        route: &PricedRoute,
        url: &str,
        error: Option<&GatewayError>,
        receipt: Option<(http::HeaderName, String)>,
    ) -> Result<()> {
        let Some(challenge) = route.challenge.as_ref() else {
            return Err(Error::explain(
                pingora::ErrorType::InternalError,
                "free route has no challenge",
            ));
        };
        let browser = error.is_none() && is_browser(session.req_header());
        let (header, body) = match error {
            None => challenge.unpaid(url),
            Some(e) => {
                let text = e.challenge_error();
                (
                    challenge.payment_required(url, &text),
                    Bytes::from(challenge.v1_body(url, &text)),
                )
            }
        };
        let body = if browser {
            Bytes::from(challenge.html(url))
        } else {
            body
        };
        let answer = Answer::payment_required(header, body, browser).with_receipt(receipt);
        respond::write(session, &answer, self.cors_origin.as_ref()).await
    }
}

/// Whether an upstream response carries no body at all.
fn ends_at_header(r: &ResponseHeader) -> bool {
    matches!(r.status.as_u16(), 204 | 304)
        || r.headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes().trim_ascii() == b"0")
}

/// `Accept` has `text/html` and `User-Agent` has `Mozilla`: the reference servers' test.
fn is_browser(req: &RequestHeader) -> bool {
    let has = |name, needle: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(needle))
    };
    has(http::header::ACCEPT, "text/html") && has(http::header::USER_AGENT, "Mozilla")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
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
        // A borrowed snapshot of the config (no refcount) serves unmatched paths; an `Arc` is
        // taken only when a route matched and must outlive this phase.
        let snapshot = self.table.load();
        let req = session.req_header();
        let target = req.uri.path_and_query().map_or("/", |pq| pq.as_str());
        // Preflights pass unpaid; the route they ask about only shapes the CORS headers.
        let method = if req.method == Method::OPTIONS {
            ctx.preflight = true;
            req.headers
                .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
                .unwrap_or(Method::GET)
        } else {
            req.method.clone()
        };
        let Some(index) = snapshot.lookup(&method, target).map(|r| r.rule.index) else {
            return Ok(false);
        };
        let table = arc_swap::Guard::into_inner(snapshot);
        let route = &table.routes()[index];
        ctx.route = Some(index);
        if ctx.preflight || !route.is_priced() {
            ctx.table = Some(table);
            return Ok(false);
        }
        let url = self.resource_url(req);
        // PAYMENT-SIGNATURE wins when both are sent; the version inside decides the protocol.
        let header = req
            .headers
            .get(PAYMENT_SIGNATURE)
            .or_else(|| req.headers.get(X_PAYMENT))
            .cloned();
        let Some(header) = header else {
            self.challenge(session, route, &url, None, None).await?;
            return Ok(true);
        };
        match self.verifier.verify(route, header.as_bytes(), &url).await {
            Ok(verified) => {
                let mut payment = Payment::new(verified, route.rule.settlement);
                if payment.mode == SettlementMode::BeforeUpstream {
                    self.settler
                        .settle(&mut payment, self.verifier.replay())
                        .await;
                    if !matches!(payment.state(), PaymentState::Settled { .. }) {
                        let e = GatewayError::SettlementFailed {
                            reason: payment
                                .failure_reason()
                                .unwrap_or("settlement_failed")
                                .to_owned(),
                        };
                        let receipt = payment.receipt();
                        self.challenge(session, route, &url, Some(&e), receipt)
                            .await?;
                        ctx.payment = Some(payment);
                        ctx.table = Some(table);
                        return Ok(true);
                    }
                }
                ctx.payment = Some(payment);
            }
            Err(e) => {
                let e = GatewayError::from(e);
                ctx.rejection = Some(e.reason().to_owned());
                if e.status() == 402 {
                    self.challenge(session, route, &url, Some(&e), None).await?;
                } else {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "payment not verified");
                    respond::write(session, &Answer::error(&e), self.cors_origin.as_ref()).await?;
                }
                ctx.table = Some(table);
                return Ok(true);
            }
        }
        ctx.resource_url = url;
        ctx.table = Some(table);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        if let Some(p) = ctx.payment.as_mut() {
            p.forwarded();
        }
        Ok(self.upstream.peer())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string());
        upstream::prepare_request(upstream_request, ip)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        response.remove_header(&SETTLEMENT_OVERRIDES);
        if let Some(mut payment) = ctx.payment.take() {
            for h in &respond::RECEIPT_HEADERS {
                response.remove_header(h);
            }
            if payment.is_unsettled() {
                let status = response.status.as_u16();
                if status >= 400 {
                    // Upstream failed: nothing is charged, the client may retry the payment.
                    self.settler
                        .release(&mut payment, self.verifier.replay(), "upstream_error");
                } else {
                    self.settler
                        .settle(&mut payment, self.verifier.replay())
                        .await;
                }
            }
            match payment.state() {
                PaymentState::Settled { .. } => {
                    if let Some((name, value)) = payment.receipt() {
                        response.insert_header(name, value)?;
                    }
                    respond::make_private(response)?;
                }
                PaymentState::Failed { .. } | PaymentState::Unknown { .. } => {
                    let reason = payment
                        .failure_reason()
                        .unwrap_or("settlement_failed")
                        .to_owned();
                    let e = GatewayError::SettlementFailed { reason };
                    let mut answer = self.settlement_failure(ctx, &e, payment.receipt());
                    // A response that ends at its header (204, 304, `content-length: 0`) gets
                    // no body-filter call to carry the replacement: answer without a body then
                    // (the challenge and the receipt are in the headers).
                    if ends_at_header(response) {
                        answer.body = Bytes::new();
                    }
                    respond::replace_header(response, &answer, self.cors_origin.as_ref())?;
                    ctx.replacement = Some(answer.body);
                }
                _ => {}
            }
            ctx.payment = Some(payment);
        }
        if let (Some(origin), Some(route)) = (&self.cors_origin, ctx.route()) {
            if route.is_priced() && ctx.replacement.is_none() {
                respond::add_cors(response, origin, ctx.preflight)?;
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
    ) -> Result<Option<std::time::Duration>> {
        if let Some(replacement) = &ctx.replacement {
            *body = end_of_stream.then(|| replacement.clone());
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(p) = ctx.payment.as_mut() {
            self.settler
                .release(p, self.verifier.replay(), "upstream_unreachable");
        }
        let receipt = ctx.payment.as_ref().and_then(Payment::receipt);
        let answer = Answer::error(&GatewayError::Upstream).with_receipt(receipt);
        let code = if session.response_written().is_none() {
            tracing::warn!(error = %e, "upstream request failed");
            match respond::write(session, &answer, self.cors_origin.as_ref()).await {
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
            self.settler
                .release(p, self.verifier.replay(), "not_served");
        }
        let Some(route) = ctx.route() else { return };
        if !route.is_priced() || (ctx.payment.is_none() && ctx.rejection.is_none()) {
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let path = route.rule.path.as_str();
        match &ctx.payment {
            Some(p) => tracing::info!(
                target: "x402_gateway::payment",
                route = path,
                outcome = p.state().name(),
                reason = p.failure_reason().unwrap_or(""),
                payer = %p.verified.payer,
                amount = %p.verified.amount,
                network = p.verified.network.as_str(),
                transaction = p.transaction().unwrap_or(""),
                status,
                "paid request"
            ),
            None => tracing::info!(
                target: "x402_gateway::payment",
                route = path,
                outcome = "rejected",
                reason = ctx.rejection.as_deref().unwrap_or(""),
                status,
                "paid request"
            ),
        }
    }
}

impl Gateway {
    fn settlement_failure(
        &self,
        ctx: &RequestCtx,
        e: &GatewayError,
        receipt: Option<(http::HeaderName, String)>,
    ) -> Answer {
        match ctx.route().and_then(|r| r.challenge.as_ref()) {
            Some(c) => {
                let text = e.challenge_error();
                Answer::payment_required(
                    c.payment_required(&ctx.resource_url, &text),
                    Bytes::from(c.v1_body(&ctx.resource_url, &text)),
                    false,
                )
                .with_receipt(receipt)
            }
            None => Answer::error(e).with_receipt(receipt),
        }
    }
}
