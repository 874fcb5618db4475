//! The adapter's steps, between Pingora's hooks and [`Payments`]: identifying a request,
//! applying what the payment core decided, answering, and the log line.

use super::*;

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
    pub(super) fn upstream_of(&self, route: Option<&Routed>) -> &Upstream {
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

    pub(super) fn close_if_closing(&self, session: &mut Session) {
        if self.closing.load(Ordering::Relaxed) {
            session.set_keepalive(None);
        }
    }

    pub(super) async fn answer(
        &self,
        session: &mut Session,
        answer: &Answer,
        id: &RequestCtx,
    ) -> Result<()> {
        self.close_if_closing(session);
        let cors = self.payments.cors_origin();
        respond::write(session, answer, cors, Some(&id.request_id)).await
    }

    /// Reads who the client is and what it asked for (a trusted proxy's forwarding headers
    /// believed), as the decisions see a request.
    pub(super) fn identify(&self, session: &Session, ctx: &mut RequestCtx) {
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
        ctx.client_ip = if ctx.trusted_peer {
            upstream::client_ip(
                ctx.peer,
                req.headers.get("x-forwarded-for"),
                &self.trusted_proxies,
            )
        } else {
            ctx.peer
        };
    }

    /// Takes in what admission decided; `Some(answer)` to write it now.
    pub(super) fn admitted(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        admission: Admission,
    ) -> Result<Option<Answer>> {
        match admission {
            Admission::Forward(f) => {
                if f.payment.is_some() && !self.upstream_of(f.route.as_ref()).is_addressable() {
                    // Nothing to forward to: answer before anything is charged (the payment
                    // drops here and gives its authorization back).
                    return Ok(Some(plain(&GatewayError::Upstream)));
                }
                ctx.route = f.route;
                ctx.payment = f.payment;
                ctx.priced_path = f.priced_path;
                ctx.websocket = f.websocket;
                if f.websocket {
                    ctx.upgrade_held = upstream::hold_upgrade_body(session.req_header_mut())?;
                }
                Ok(None)
            }
            Admission::Answer(e) => {
                ctx.route = e.route;
                ctx.payment = e.payment;
                ctx.rejection = e.rejection;
                Ok(Some(e.answer))
            }
        }
    }

    /// Applies the decision on the upstream's response head.
    pub(super) fn apply(
        &self,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
        d: Decision,
    ) -> Result<()> {
        match d {
            Decision::Interim | Decision::Proceed => Ok(()),
            Decision::Pass {
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
                        HeaderValue::from_static("queued"),
                    )?;
                }
                if private {
                    respond::make_private(response)?;
                }
                match self.payments.cors_origin() {
                    Some(origin) if ctx.priced() => respond::add_cors(response, origin),
                    _ => Ok(()),
                }
            }
            Decision::Replace(mut answer) => {
                // A response that ends at its header (204, 304, `content-length: 0`) gets no
                // body-filter call to carry the replacement: answer without a body then (the
                // challenge and the receipt are in the headers).
                if respond::ends_at_header(response) {
                    answer.body = Bytes::new();
                }
                respond::replace_header(response, &answer, self.payments.cors_origin())?;
                ctx.replacement = Some(answer.body);
                Ok(())
            }
        }
    }

    /// The access line and the span of a finished request.
    pub(super) fn log_finished(&self, session: &Session, ctx: &RequestCtx) {
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
            });
        }
    }

    /// What to answer when the upstream request failed (`None`: nothing, the exchange is over).
    pub(super) async fn failure_answer(&self, e: &Error, ctx: &mut RequestCtx) -> Option<Answer> {
        if let Some(a) = ctx.pending.take() {
            return Some(a);
        }
        // A refused websocket handshake ends when the client closes after the whole response:
        // delivered, nothing failed.
        if ctx.upgrade_held && ctx.response_done {
            return None;
        }
        tracing::warn!(error = %e, "upstream request failed");
        Some(match ctx.payment.as_mut() {
            Some(p) => self.payments.upstream_failed(p).await,
            None => plain(&GatewayError::Upstream),
        })
    }
}

/// The answer to an error that carries no challenge.
pub(super) fn plain(e: &GatewayError) -> Answer {
    rescue(
        e,
        None,
        Asking {
            url: "",
            browser: false,
        },
    )
}

pub(super) fn header_bytes(req: &RequestHeader) -> usize {
    req.headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// The request head as the decisions read it.
pub(super) fn incoming<'a>(session: &'a Session, ctx: &RequestCtx, trusted: bool) -> Incoming<'a> {
    let req = session.req_header();
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    let (scheme, host) = upstream::origin(req, tls, trusted);
    Incoming {
        method: &req.method,
        target: req.uri.path_and_query().map_or("/", |pq| pq.as_str()),
        headers: &req.headers,
        client_ip: ctx.client_ip,
        scheme,
        host,
    }
}

/// An error that ends the request with the answer put in `ctx.pending`.
pub(super) fn answer_instead(why: &'static str) -> Box<Error> {
    let mut e = Error::explain(ErrorType::InternalError, why);
    e.set_retry(false);
    e
}

/// What the upstream request must say of the client, as [`upstream::prepare_request`] wants it.
pub(super) fn forwarding(ctx: &RequestCtx) -> Forwarding<'_> {
    Forwarding {
        peer: ctx.peer,
        trusted_peer: ctx.trusted_peer,
        proto: ctx.proto,
        priced_path: ctx.priced_path,
        websocket: ctx.websocket,
        upgrade_held: ctx.upgrade_held,
        host: ctx.upstream_host.as_ref(),
    }
}
