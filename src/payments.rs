//! The payment decisions, with no Pingora types: what a request falls under, whether it must
//! pay, whether its payment is good, when it is settled and what the client gets when it is
//! not. The Pingora adapter (`proxy`) asks and writes what it is told.
//!
//! Owns: [`Payments`] (the price table, the verifier with its replay guard, the settler, the
//! abuse limits) and its two decisions: [`Payments::admit`] on the request head, and
//! [`Payments::on_response`] on the upstream's response head. Also the request-side rules
//! that are about money rather than HTTP plumbing: CORS preflights on priced paths (answered
//! here, never forwarded), method readings (the method, upper-cased, and any method override),
//! `[server] unlisted_methods`, body-size and rate limits on priced routes.
//!
//! Money safety: every payment is journaled (`journal`), `settling` durably before `/settle`.
//! An unknown settlement outcome is read from the chain for up to `resolve_timeout`; still
//! unknown, the client gets `503` + `Retry-After` and a `settlement_pending` receipt, never a
//! `402` (which makes clients pay again). A retry with the same payment header is redeemed:
//! settled and undelivered → delivered once; still unknown → `503`; definitively not settled →
//! `402` with the reason; delivered already → the replay refusal. At start, [`Payments::recover`]
//! reconciles what a crash left open.
//!
//! Does not own: forwarding headers and peers (`proxy::upstream`), writing answers
//! (`proxy::respond`), the mapping from errors to answers (`error`), reading the chain
//! (`journal::reconcile`).

pub mod deferred;
pub mod pending;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::Method;

use crate::config::{Config, SettlementMode, UnlistedMethods};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::journal::reconcile::{Outcome, Reconciler};
use crate::journal::{self, Entry, Journal, JournalState};
use crate::limiter::{now_ms, RateLimiter};
use crate::metrics::Metrics;
use crate::pricing::{Lookup, PriceTable, PricedRoute};
use crate::protocol::{ErrorReason, PAYMENT_SIGNATURE, X_PAYMENT};
use crate::settle::{Payment, PaymentState, Settler};
use crate::verify::{unix_now, Verified, Verifier, VerifyError};
use pending::{Claim, Open, Pending};

/// Request headers that ask a framework to treat the request as another method. Stripped
/// before the upstream on priced paths, and read as method readings.
pub const METHOD_OVERRIDE_HEADERS: [HeaderName; 3] = [
    HeaderName::from_static("x-http-method-override"),
    HeaderName::from_static("x-http-method"),
    HeaderName::from_static("x-method-override"),
];

/// Request headers a browser client must be allowed to send (preflight).
pub const ALLOW_HEADERS: &str =
    "PAYMENT-SIGNATURE, X-PAYMENT, Access-Control-Expose-Headers, SIGN-IN-WITH-X, Content-Type";

/// What the decisions need to know of a request head.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// The method as received.
    pub method: &'a Method,
    /// The request target as received (`/path?query`).
    pub target: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The client's address (the peer, or from `X-Forwarded-For` of a trusted proxy).
    pub client_ip: Option<IpAddr>,
    /// The scheme the client used: `https` behind the TLS listener, `http` otherwise, or a
    /// trusted proxy's `X-Forwarded-Proto` (see `proxy::upstream::origin`).
    pub scheme: &'static str,
    /// The host the client asked for: `Host` (`:authority` over HTTP/2), or a trusted proxy's
    /// `X-Forwarded-Host`.
    pub host: Option<&'a str>,
}

/// The route a request fell under, with the table snapshot it came from: a reload never changes
/// a request's route midway.
#[derive(Clone)]
pub struct Routed {
    table: Arc<PriceTable>,
    index: usize,
}

impl Routed {
    /// The route.
    pub fn route(&self) -> &PricedRoute {
        &self.table.routes()[self.index]
    }
}

/// A request to forward.
pub struct Forward {
    /// The route, if any matched.
    pub route: Option<Routed>,
    /// The verified payment (settled already in `before_upstream` mode).
    pub payment: Option<Payment>,
    /// Whether a priced route covers the path (method overrides are then stripped).
    pub priced_path: bool,
    /// Whether the route allows `Upgrade: websocket`.
    pub websocket: bool,
    /// The resource URL of a paid request.
    pub resource_url: String,
}

/// A request answered by the gateway itself.
pub struct Early {
    /// The answer.
    pub answer: Answer,
    /// The route, if any matched.
    pub route: Option<Routed>,
    /// A payment that was verified (and settled or not) before the answer.
    pub payment: Option<Payment>,
    /// Why a payment attempt was refused, for the log line.
    pub rejection: Option<ErrorReason>,
}

/// The decision on a request head.
pub enum Admission {
    /// Forward it upstream.
    Forward(Box<Forward>),
    /// Answer it now; nothing goes upstream.
    Answer(Box<Early>),
}

/// The decision on the upstream's response head.
#[derive(Debug)]
pub enum HeadAction {
    /// An interim (1xx) answer: pass it on, decide nothing yet.
    Interim,
    /// Pass the upstream's answer, with this receipt; `private` marks paid content.
    Pass {
        /// The receipt header.
        receipt: Option<(HeaderName, String)>,
        /// Whether the answer is paid content (`Cache-Control: private`).
        private: bool,
        /// Deferred: the settlement is queued (`X-PAYMENT-STATUS: queued`).
        queued: bool,
    },
    /// Replace the upstream's answer with this one (its body is swallowed).
    Replace(Answer),
}

/// The payment decisions, shared by all requests.
pub struct Payments {
    table: Arc<ArcSwap<PriceTable>>,
    verifier: Arc<Verifier>,
    settler: Settler,
    unlisted: UnlistedMethods,
    challenges: Option<RateLimiter>,
    failures: Option<RateLimiter>,
    max_request_body: u64,
    public_url: Option<String>,
    cors_origin: Option<HeaderValue>,
    journal: Option<Journal>,
    reconciler: Arc<Reconciler>,
    pending: Pending,
    resolve_timeout: Duration,
    retention: Duration,
    /// The journal was recovered (no priced request is taken before: the replay guard would
    /// not know the authorizations used before the start).
    recovered: std::sync::atomic::AtomicBool,
    /// After `run --upgrade`: the process handed over from (pid) and when its open payments
    /// are reconciled at the latest (ms); `None` once done.
    handover: std::sync::Mutex<Option<(Option<u32>, u64)>>,
    metrics: Arc<Metrics>,
    /// Deferred settlement: the queue, the caps and the payers settled first.
    deferred: deferred::Deferred,
}

/// Which open payments a recovery reconciles.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    /// All (a start with no other process writing the journal).
    All,
    /// None: only the replay guard learns (another process still owns them).
    GuardOnly,
    /// All but this process's own (after a hand-over: the other process has exited).
    NotOwn,
}

impl Payments {
    /// The decisions for `config`, over `table` and `verifier`, recording in `journal` and
    /// `metrics`, reading outcomes through `reconciler`.
    pub fn new(
        config: &Config,
        table: Arc<ArcSwap<PriceTable>>,
        verifier: Arc<Verifier>,
        journal: Option<Journal>,
        reconciler: Arc<Reconciler>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Payments {
            metrics,
            deferred: deferred::Deferred::new(
                config.deferred.clone(),
                match &config.facilitator.embedded {
                    Some(e) if verifier.facilitator().batches() => {
                        e.batch.max.saturating_mul(e.signer_keys.len().max(1)) * 4
                    }
                    _ => config.deferred.concurrency,
                },
            ),
            recovered: std::sync::atomic::AtomicBool::new(journal.is_none()),
            handover: std::sync::Mutex::new(None),
            journal,
            reconciler,
            pending: Pending::default(),
            resolve_timeout: config.facilitator.resolve_timeout,
            retention: config.journal.retention,
            table,
            settler: Settler::new(verifier.facilitator().clone()),
            verifier,
            unlisted: config.server.unlisted_methods,
            challenges: config.limits.challenge_rate.map(RateLimiter::new),
            failures: config.limits.failed_payment_rate.map(RateLimiter::new),
            max_request_body: config.limits.max_request_body,
            public_url: config.server.public_url.clone(),
            cors_origin: config
                .server
                .cors_allow_origin
                .as_deref()
                .and_then(|o| HeaderValue::from_str(o).ok()),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.verifier
    }

    /// The price table now in use.
    pub fn table(&self) -> &Arc<ArcSwap<PriceTable>> {
        &self.table
    }

    /// `Access-Control-Allow-Origin` of the gateway's CORS headers, if on.
    pub fn cors_origin(&self) -> Option<&HeaderValue> {
        self.cors_origin.as_ref()
    }

    /// Whether priced requests are taken: the journal is writable and was recovered.
    pub fn is_ready(&self) -> bool {
        self.recovered.load(std::sync::atomic::Ordering::Acquire)
            && self.journal.as_ref().is_none_or(Journal::is_healthy)
    }

    /// The journal, when payments are journaled.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Payments pending now: (unknown outcome, settled and undelivered).
    pub fn pending_counts(&self) -> (usize, usize) {
        self.pending.counts()
    }

    /// The journal entry of a payment, in `state`.
    fn entry(p: &Payment, state: JournalState) -> Entry {
        let v = &p.verified;
        let now = journal::now_ms();
        Entry {
            id: p.journal_id.unwrap_or_default(),
            key: v.key.clone(),
            pay_to: v.pay_to,
            amount: v.amount,
            network: v.caip2.clone(),
            version: v.version.number(),
            route: p.route.clone(),
            resource: p.resource.clone(),
            request: v.facilitator_body.to_string(),
            valid_before: v.valid_before,
            state,
            transaction: p.transaction().map(str::to_owned),
            reason: p.failure_reason().map(|r| r.as_str().to_owned()),
            from_block: None,
            created_at: p.verified_at,
            updated_at: now,
            released: false,
        }
    }

    fn record(&self, p: &Payment, state: JournalState) {
        if let (Some(j), Some(id)) = (&self.journal, p.journal_id) {
            j.transition(
                id,
                state,
                p.transaction().map(str::to_owned),
                p.failure_reason().map(|r| r.as_str().to_owned()),
            );
        }
    }

    /// Decides on a request head: forward (free, or with a verified payment) or answer now.
    pub async fn admit(&self, req: Incoming<'_>) -> Admission {
        // A borrowed snapshot serves unmatched paths without a refcount; an `Arc` is taken only
        // when a route matched and must outlive this call.
        let snapshot = self.table.load();
        if is_preflight(req) {
            if snapshot.covers_priced(req.target) {
                return early(self.preflight(req), None, None);
            }
            return forward(None, false, false);
        }
        let readings = method_readings(req);
        let routed = |table: &arc_swap::Guard<Arc<PriceTable>>, index: usize| Routed {
            table: Arc::clone(table),
            index,
        };
        let (index, charge_unlisted) = match snapshot.classify(&readings, req.target) {
            Lookup::None => return forward(None, false, false),
            Lookup::Route(r) if !r.is_priced() => {
                let (index, ws) = (r.rule.index, r.rule.websocket);
                return forward(Some(routed(&snapshot, index)), false, ws);
            }
            Lookup::FreeOnPricedPath(r) => {
                let (index, ws) = (r.rule.index, r.rule.websocket);
                return forward(Some(routed(&snapshot, index)), true, ws);
            }
            Lookup::Route(r) => (r.rule.index, false),
            Lookup::Unlisted { covering, allow } => match self.unlisted {
                UnlistedMethods::Pass => return forward(None, true, false),
                UnlistedMethods::Reject => {
                    let e = GatewayError::MethodNotAllowed { allow };
                    let answer = rescue(&e, None, asking(""));
                    return early(answer, None, Some(e.reason()));
                }
                UnlistedMethods::Charge => (covering.rule.index, true),
            },
        };
        let routed = routed(&snapshot, index);
        drop(snapshot);
        self.admit_priced(req, routed, charge_unlisted).await
    }

    async fn admit_priced(&self, req: Incoming<'_>, routed: Routed, unlisted: bool) -> Admission {
        let route = routed.route();
        let url = self.resource_url(req);
        let refuse = |e: GatewayError, routed: Routed| {
            let answer = rescue(&e, Some(routed.route()), asking(&url));
            early(answer, Some(routed), Some(e.reason()))
        };
        if !self.is_ready() {
            // Payments that cannot be recorded (or before the journal was recovered) are not
            // taken; free routes keep working.
            return refuse(GatewayError::JournalUnavailable, routed);
        }
        if content_length(req.headers).is_some_and(|n| n > self.max_request_body) {
            return refuse(GatewayError::RequestTooLarge, routed);
        }
        // PAYMENT-SIGNATURE wins when both are sent; the version inside decides the protocol.
        let header = req
            .headers
            .get(PAYMENT_SIGNATURE)
            .or_else(|| req.headers.get(X_PAYMENT));
        let Some(header) = header else {
            if let Err(retry_after) = limit(self.challenges.as_ref(), req.client_ip, true) {
                return refuse(GatewayError::RateLimited { retry_after }, routed);
            }
            let answer = rescue(
                &GatewayError::PaymentRequired,
                Some(route),
                Asking {
                    url: &url,
                    browser: is_browser(req.headers),
                },
            );
            return early(answer, Some(routed), None);
        };
        if let Err(retry_after) = limit(self.failures.as_ref(), req.client_ip, false) {
            return refuse(GatewayError::RateLimited { retry_after }, routed);
        }
        let (verified, hold) = match self.verifier.verify(route, header.as_bytes(), &url).await {
            Ok(v) => v,
            Err(VerifyError::Used(v)) => {
                return self.redeem(req, routed, url, *v, unlisted).await;
            }
            Err(e) => {
                let e = GatewayError::from(e);
                if e.status() == 402 {
                    let _ = limit(self.failures.as_ref(), req.client_ip, true);
                } else {
                    tracing::warn!(error = %e, source = ?std::error::Error::source(&e), "payment not verified");
                }
                return refuse(e, routed);
            }
        };
        let mut mode = route.rule.settlement;
        let mut reservation = None;
        if mode == SettlementMode::Deferred {
            let decimals = route
                .rule
                .options
                .get(verified.option)
                .map_or(6, |o| o.asset.decimals);
            let micro = deferred::micro_dollars(verified.amount, decimals);
            match self.deferred.reserve(
                verified.payer,
                micro,
                verified.valid_before,
                route.rule.settle_first_above,
                now_ms(),
            ) {
                Ok(r) => reservation = Some(r),
                Err(why) => {
                    tracing::debug!(payer = %verified.payer, reason = why.as_str(), "deferred payment settled first");
                    self.metrics
                        .deferred_fallback(&route.rule.path, why.as_str());
                    mode = SettlementMode::AfterResponse;
                }
            }
        }
        let mut payment = Payment::new(verified, mode, hold, route.rule.path.clone(), url.clone());
        // Over a cap with a batching facilitator: settled before release, but in the shared
        // transactions (a single one each would only slow the chain down further).
        payment.shared = route.rule.settlement == SettlementMode::Deferred
            && mode == SettlementMode::AfterResponse
            && self.verifier.facilitator().batches();
        payment.reservation = reservation;
        let websocket = route.rule.websocket && !unlisted;
        Admission::Forward(Box::new(Forward {
            route: Some(routed),
            payment: Some(payment),
            priced_path: true,
            websocket,
            resource_url: url,
        }))
    }

    /// A valid payment whose authorization was used already: a replay, or a retry of a payment
    /// that is pending (unknown outcome, or settled and undelivered).
    async fn redeem(
        &self,
        req: Incoming<'_>,
        routed: Routed,
        url: String,
        v: Verified,
        unlisted: bool,
    ) -> Admission {
        let (path, mode, websocket) = {
            let r = &routed.route().rule;
            (r.path.clone(), r.settlement, r.websocket && !unlisted)
        };
        let restored = |state: PaymentState| {
            Payment::restored(v.clone(), mode, state, path.clone(), url.clone())
        };
        let answer_with = |p: Payment, routed: Routed, rejection: Option<ErrorReason>| {
            let answer = self.settlement_answer(&p, Some(&routed), &url);
            Admission::Answer(Box::new(Early {
                answer,
                route: Some(routed),
                payment: Some(p),
                rejection,
            }))
        };
        let refuse = |e: GatewayError, routed: Routed| {
            let answer = rescue(&e, Some(routed.route()), asking(&url));
            early(answer, Some(routed), Some(e.reason()))
        };
        let (entry, transaction) = match self.pending.claim(&v.key, &path) {
            Claim::No => {
                let _ = limit(self.failures.as_ref(), req.client_ip, true);
                return refuse(
                    GatewayError::Rejected(crate::verify::PaymentRejection::AlreadyUsed),
                    routed,
                );
            }
            Claim::Busy => return refuse(GatewayError::InProgress, routed),
            Claim::Deliver(entry, tx) => (entry, tx),
            Claim::Unknown(entry) => match self.reconciler.read(&entry).await {
                Outcome::Settled { transaction } => {
                    self.resolved(&entry, &Outcome::Settled { transaction });
                    match self.pending.claim(&v.key, &path) {
                        Claim::Deliver(entry, tx) => (entry, tx),
                        _ => return refuse(GatewayError::InProgress, routed),
                    }
                }
                Outcome::Failed { reason } => {
                    self.resolved(
                        &entry,
                        &Outcome::Failed {
                            reason: reason.clone(),
                        },
                    );
                    let reason = ErrorReason::parse(&reason);
                    let p = restored(PaymentState::Failed {
                        reason: reason.clone(),
                    });
                    return answer_with(p, routed, Some(reason));
                }
                Outcome::Open => {
                    let p = restored(PaymentState::Unknown {
                        reason: ErrorReason::SettlementPending,
                        transaction: entry.transaction.clone(),
                    });
                    return answer_with(p, routed, None);
                }
            },
        };
        // Another process sharing the journal (the one this took over from) may have delivered
        // it since this one learnt of it: the journal has the last word.
        if self.journaled_state(entry.id).await == Some(JournalState::Delivered) {
            self.pending.remove(&v.key);
            return refuse(
                GatewayError::Rejected(crate::verify::PaymentRejection::AlreadyUsed),
                routed,
            );
        }
        tracing::info!(payer = %v.payer, transaction, resource = %entry.resource, "redeeming a settled payment");
        let mut p = restored(PaymentState::Settled { transaction });
        p.redeemed = true;
        p.journal_id = Some(entry.id);
        Admission::Forward(Box::new(Forward {
            route: Some(routed),
            payment: Some(p),
            priced_path: true,
            websocket,
            resource_url: url,
        }))
    }

    /// The state of journal entry `id` as written now (read off the request path's thread).
    async fn journaled_state(&self, id: i64) -> Option<JournalState> {
        let path = self.journal.as_ref()?.path().to_owned();
        tokio::task::spawn_blocking(move || {
            let conn = journal::open_reader(&path).ok()?;
            journal::state_of(&conn, id).ok().flatten()
        })
        .await
        .ok()
        .flatten()
    }

    /// Records an outcome read from the chain for a pending entry.
    fn resolved(&self, e: &Entry, o: &Outcome) {
        if e.released {
            self.resolved_owed(e, o);
            return;
        }
        match o {
            Outcome::Settled { transaction } => {
                self.metrics
                    .revenue(&e.route, &e.network, e.key.asset, e.amount);
                if let Some(j) = &self.journal {
                    j.transition(e.id, JournalState::Settled, Some(transaction.clone()), None);
                }
                let mut e = e.clone();
                e.state = JournalState::Settled;
                e.transaction = Some(transaction.clone());
                self.pending
                    .put(e, Open::Settled(transaction.clone()), journal::now_ms());
            }
            Outcome::Failed { reason } => {
                if let Some(j) = &self.journal {
                    j.transition(e.id, JournalState::Failed, None, Some(reason.clone()));
                }
                self.pending.remove(&e.key);
            }
            Outcome::Open => {}
        }
    }

    /// Settles `p` (the durable `settling` record first), and reads an unknown outcome from the
    /// chain for up to `resolve_timeout`.
    async fn settle(&self, p: &mut Payment) {
        if !p.is_unsettled() {
            return;
        }
        if let Some(j) = &self.journal {
            p.journal_id = Some(j.next_id());
            let mut e = Self::entry(p, JournalState::Settling);
            e.from_block = self.reconciler.cached_head(p.verified.key.chain_id);
            if j.record_durable(e).await.is_err() {
                tracing::error!(payer = %p.verified.payer, "journal unwritable: payment not settled");
                p.release(ErrorReason::JournalUnavailable);
                return;
            }
        }
        self.settler.settle(p).await;
        if matches!(p.state(), PaymentState::Unknown { .. }) {
            let mut e = Self::entry(p, JournalState::Unknown);
            e.from_block = self.reconciler.cached_head(p.verified.key.chain_id);
            match self.reconciler.resolve(&e, self.resolve_timeout).await {
                Outcome::Settled { transaction } => p.resolve(Ok(transaction)),
                Outcome::Failed { reason } => p.resolve(Err(ErrorReason::parse(&reason))),
                Outcome::Open => {
                    tracing::warn!(payer = %p.verified.payer, transaction = p.transaction().unwrap_or(""), "settlement outcome still unknown: answering 503, the payment stays redeemable");
                    self.pending.put(e, Open::Unknown, journal::now_ms());
                }
            }
        }
        // A settlement is written with its delivery (or as undelivered), one write later: a
        // crash before then leaves it `settling`, which recovery reads from the chain.
        match p.state() {
            PaymentState::Settled { .. } => {
                let v = &p.verified;
                self.metrics
                    .revenue(&p.route, &v.network, v.key.asset, v.amount);
            }
            PaymentState::Unknown { .. } => self.record(p, JournalState::Unknown),
            _ => self.record(p, JournalState::Failed),
        }
    }

    /// A settled payment's response head goes to the client.
    fn delivered(&self, p: &Payment) {
        self.record(p, JournalState::Delivered);
        if p.redeemed {
            self.pending.remove(&p.verified.key);
        }
    }

    /// The payment's request goes upstream (after-response mode: settled when it answers).
    /// Not written on its own: the `settling` record carries the payment's verification time,
    /// and a payment given back before settling is recorded as `failed`.
    pub fn forwarded(&self, p: &mut Payment) {
        p.forwarded();
    }

    /// Records a payment given back (nothing served, nothing settled) as failed.
    pub fn released(&self, p: &mut Payment) {
        if let (Some(j), PaymentState::Released { .. }) = (&self.journal, p.state()) {
            let id = *p.journal_id.get_or_insert_with(|| j.next_id());
            let mut e = Self::entry(p, JournalState::Failed);
            e.id = id;
            j.record(e);
        }
    }

    /// A settled payment whose paid content did not reach the client (upstream error or
    /// failure): it stays redeemable with the same payment header.
    pub fn undelivered(&self, p: &Payment) {
        if let PaymentState::Settled { transaction } = p.state() {
            self.record(p, JournalState::Settled);
            let e = Self::entry(p, JournalState::Settled);
            self.pending
                .put(e, Open::Settled(transaction.clone()), journal::now_ms());
        }
    }

    /// Settles a `before_upstream` payment once the upstream connection is up and before
    /// anything is sent to it. Returns the answer for the client when it did not settle.
    pub async fn before_upstream(
        &self,
        payment: &mut Payment,
        route: Option<&Routed>,
        resource_url: &str,
    ) -> Option<Answer> {
        if payment.mode != SettlementMode::BeforeUpstream {
            return None;
        }
        // A retried upstream attempt (Pingora retries a failed reused connection) finds the
        // payment settled, or answers as the first attempt did: never forwards it unsettled.
        self.settle(payment).await;
        match payment.state() {
            PaymentState::Settled { .. } => None,
            _ => Some(self.settlement_answer(payment, route, resource_url)),
        }
    }

    /// Decides on the upstream's response head: settle (after-response mode) before any byte
    /// reaches the client, and say what the client gets.
    pub async fn on_response(
        &self,
        payment: Option<&mut Payment>,
        route: Option<&Routed>,
        status: u16,
        resource_url: &str,
    ) -> HeadAction {
        // Interim answers (100 Continue, 103 Early Hints) decide nothing: only the final status
        // does. 101 is final (the connection becomes a tunnel).
        if (100..200).contains(&status) && status != 101 {
            return HeadAction::Interim;
        }
        let Some(payment) = payment else {
            return HeadAction::Pass {
                receipt: None,
                private: false,
                queued: false,
            };
        };
        if status == 101 && !route.is_some_and(|r| r.route().rule.websocket) {
            payment.release(ErrorReason::UpstreamError);
            self.released(payment);
            let answer = rescue(&GatewayError::Upstream, None, asking(resource_url));
            return HeadAction::Replace(answer);
        }
        if payment.is_unsettled() {
            if status >= 400 {
                // Upstream failed: nothing is charged, the client may retry the payment.
                payment.release(ErrorReason::UpstreamError);
                self.released(payment);
                payment.reservation = None;
            } else if payment.mode == SettlementMode::Deferred {
                if let Some(a) = self.defer(payment, route, resource_url).await {
                    return a;
                }
            } else {
                self.settle(payment).await;
            }
        }
        match payment.state() {
            PaymentState::Queued => HeadAction::Pass {
                receipt: payment.receipt(),
                private: true,
                queued: true,
            },
            PaymentState::Settled { .. } => {
                if status < 400 {
                    self.delivered(payment);
                } else {
                    // Paid (before the upstream ran, or redeemed) but not served: the same
                    // payment header may be retried for the content.
                    self.undelivered(payment);
                }
                HeadAction::Pass {
                    receipt: payment.receipt(),
                    private: status < 400,
                    queued: false,
                }
            }
            PaymentState::Released {
                reason: ErrorReason::UpstreamError,
            } => HeadAction::Pass {
                receipt: None,
                private: false,
                queued: false,
            },
            _ => HeadAction::Replace(self.settlement_answer(payment, route, resource_url)),
        }
    }

    /// Queues a deferred payment (durably) before its answer is released. Returns the answer
    /// instead when the journal cannot record it: nothing is released or settled then, and the
    /// authorization is given back (as in the other modes), so the same header may be retried.
    async fn defer(
        &self,
        payment: &mut Payment,
        route: Option<&Routed>,
        resource_url: &str,
    ) -> Option<HeadAction> {
        if let Some(j) = &self.journal {
            payment.journal_id = Some(j.next_id());
        }
        let mut e = Self::entry(payment, JournalState::Queued);
        e.released = true;
        e.from_block = self.reconciler.cached_head(payment.verified.key.chain_id);
        if self
            .queue_owed(e, payment.reservation.take())
            .await
            .is_err()
        {
            tracing::error!(payer = %payment.verified.payer, "journal unwritable: deferred payment not released");
            payment.release(ErrorReason::JournalUnavailable);
            return Some(HeadAction::Replace(self.settlement_answer(
                payment,
                route,
                resource_url,
            )));
        }
        payment.queue();
        None
    }

    /// Forward-auth: settles `payment` before the proxy forwards the request. Settled by
    /// `deadline`: delivered, allowed with the receipt. Settled later (the proxy has likely given
    /// up waiting): kept redeemable and answered `503` with the receipt, so the same payment
    /// header gets the content on retry. Not settled: the same answers as the proxy mode.
    pub async fn settle_for_auth(
        &self,
        payment: &mut Payment,
        route: Option<&Routed>,
        resource_url: &str,
        deadline: std::time::Instant,
    ) -> HeadAction {
        payment.forwarded();
        if payment.is_unsettled() {
            if payment.mode == SettlementMode::Deferred {
                // The upstream's answer is not seen here: queued when allowed.
                if let Some(a) = self.defer(payment, route, resource_url).await {
                    return a;
                }
            } else {
                self.settle(payment).await;
            }
        }
        match payment.state() {
            PaymentState::Queued => HeadAction::Pass {
                receipt: payment.receipt(),
                private: true,
                queued: true,
            },
            PaymentState::Settled { .. } if std::time::Instant::now() <= deadline => {
                self.delivered(payment);
                HeadAction::Pass {
                    receipt: payment.receipt(),
                    private: true,
                    queued: false,
                }
            }
            PaymentState::Settled { .. } => {
                self.undelivered(payment);
                let answer = rescue(
                    &GatewayError::SettlementPending,
                    route.map(Routed::route),
                    asking(resource_url),
                );
                HeadAction::Replace(answer.with_receipt(payment.receipt()))
            }
            _ => HeadAction::Replace(self.settlement_answer(payment, route, resource_url)),
        }
    }

    /// What the client gets for a payment that was not settled.
    fn settlement_answer(&self, p: &Payment, route: Option<&Routed>, url: &str) -> Answer {
        let e = match p.state() {
            PaymentState::Released {
                reason: ErrorReason::JournalUnavailable,
            } => GatewayError::JournalUnavailable,
            PaymentState::Released { reason } => GatewayError::SettlementNotAttempted {
                reason: reason.clone(),
            },
            PaymentState::Unknown { .. } => GatewayError::SettlementPending,
            _ => GatewayError::SettlementFailed {
                reason: p
                    .failure_reason()
                    .cloned()
                    .unwrap_or(ErrorReason::SettlementFailed),
            },
        };
        rescue(&e, route.map(Routed::route), asking(url)).with_receipt(p.receipt())
    }

    /// The answer to a CORS preflight on a priced path: `204`, the CORS headers, the payment
    /// headers allowed. With `cors_allow_origin = ""` the gateway still answers (it never
    /// forwards a preflight on a priced path) but adds no CORS headers.
    fn preflight(&self, req: Incoming<'_>) -> Answer {
        let mut a = Answer::empty(204).with_header(
            header::VARY,
            HeaderValue::from_static(
                "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
            ),
        );
        if self.cors_origin.is_none() {
            return a;
        }
        if let Some(m) = req.headers.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            a = a.with_header(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        let allow = match req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .and_then(|v| v.to_str().ok())
        {
            Some(asked) if !asked.trim().is_empty() => {
                HeaderValue::from_str(&format!("{ALLOW_HEADERS}, {asked}"))
                    .unwrap_or(HeaderValue::from_static(ALLOW_HEADERS))
            }
            _ => HeaderValue::from_static(ALLOW_HEADERS),
        };
        a.with_header(header::ACCESS_CONTROL_ALLOW_HEADERS, allow)
            .with_header(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600))
    }

    /// Decimals of a token any route accepts (6, USDC's, when none does any more).
    fn decimals_of(&self, asset: alloy::primitives::Address) -> u8 {
        self.table
            .load()
            .routes()
            .iter()
            .flat_map(|r| r.rule.options.iter())
            .find(|o| o.asset.address == asset)
            .map_or(6, |o| o.asset.decimals)
    }

    /// The public URL of a request: the configured origin (or the client's scheme and host)
    /// followed by the request target as received.
    fn resource_url(&self, req: Incoming<'_>) -> String {
        match &self.public_url {
            Some(origin) => format!("{origin}{}", req.target),
            None => format!(
                "{}://{}{}",
                req.scheme,
                req.host.unwrap_or("localhost"),
                req.target
            ),
        }
    }
}

/// How a finished request went, as metrics and the access log see it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Finished<'a> {
    /// The route's label (its path pattern), or [`crate::metrics::UNMATCHED`].
    pub route: &'a str,
    /// The payment outcome: a settlement state, `redeemed`, `rejected`, or empty.
    pub outcome: &'a str,
    /// Why the payment failed or was refused, or empty.
    pub reason: &'a str,
}

impl Payments {
    /// Records a finished request in the metrics (request, challenge, payment outcome) and says
    /// how it went, for the access log.
    pub fn finished<'a>(
        &self,
        route: Option<&'a Routed>,
        method: &Method,
        status: u16,
        payment: Option<&'a Payment>,
        rejection: Option<&'a ErrorReason>,
    ) -> Finished<'a> {
        let route = route.map(Routed::route);
        let label = route.map_or(crate::metrics::UNMATCHED, |r| r.rule.path.as_str());
        self.metrics.request(label, method, status);
        let mut done = Finished {
            route: label,
            ..Finished::default()
        };
        if !route.is_some_and(PricedRoute::is_priced) {
            return done;
        }
        if status == 402 {
            self.metrics.challenge(label);
        }
        match (payment, rejection) {
            (Some(p), _) => {
                done.outcome = match p.state() {
                    PaymentState::Settled { .. } if p.redeemed => "redeemed",
                    s => s.name(),
                };
                let reason = p.failure_reason();
                self.metrics
                    .payment(label, &p.verified.network, done.outcome, reason);
                done.reason = reason.map_or("", ErrorReason::as_str);
            }
            (None, Some(r)) => {
                self.metrics.payment(label, "", "rejected", Some(r));
                done.outcome = "rejected";
                done.reason = r.as_str();
            }
            (None, None) => {}
        }
        done
    }
}

/// What [`Payments::recover`] found in the journal at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Settled and undelivered: redeemable with the same payment header.
    pub settled: usize,
    /// Definitively not settled.
    pub failed: usize,
    /// Still unknown: read again in the background, with backoff.
    pub unknown: usize,
    /// Verified or forwarded but never submitted (the client may use them again).
    pub abandoned: usize,
    /// Authorizations the replay guard holds again (used, still valid).
    pub guarded: usize,
    /// Deferred payments released before a crash, queued to be settled.
    pub owed: usize,
    /// Deferred payments found settled on chain.
    pub settled_owed: usize,
}

impl Payments {
    /// Reconciles what the journal left open (a crash, a restart) before serving: `settling`
    /// and `unknown` payments are read from the chain (never submitted again without reading
    /// their on-chain state), deferred `queued` ones are queued again (one may have been sent:
    /// its second attempt's refusal is read from the chain), settled ones become redeemable,
    /// and every authorization used and still valid is refused as a replay again.
    ///
    /// # Errors
    /// The journal cannot be read.
    pub async fn recover(&self) -> Result<Recovery, journal::JournalError> {
        self.recover_scoped(Scope::All).await
    }

    /// Recovery of a process taking over from a running one (`run --upgrade`): the replay
    /// guard learns every authorization used, but the open payments are left to the running
    /// process, which is still settling and delivering them; they are reconciled once it has
    /// exited (pid `old`) or `within` has passed (see [`Payments::maintain`]).
    ///
    /// # Errors
    /// The journal cannot be read.
    pub async fn recover_for_handover(
        &self,
        old: Option<u32>,
        within: Duration,
    ) -> Result<Recovery, journal::JournalError> {
        let deadline = journal::now_ms() + u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        if let Ok(mut h) = self.handover.lock() {
            *h = Some((old, deadline));
        }
        self.recover_scoped(Scope::GuardOnly).await
    }

    /// Whether the process handed over from has exited (or had its time); forgotten then, so
    /// this says yes once.
    fn handover_finished(&self, now_ms: u64) -> bool {
        let Ok(mut h) = self.handover.lock() else {
            return false;
        };
        let finished = h.is_some_and(|(old, deadline)| {
            now_ms >= deadline || old.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        if finished {
            *h = None;
        }
        finished
    }

    async fn recover_scoped(&self, scope: Scope) -> Result<Recovery, journal::JournalError> {
        let Some(j) = &self.journal else {
            return Ok(Recovery::default());
        };
        let reader = journal::open_reader(j.path())?;
        let now = unix_now();
        let open = journal::query(
            &reader,
            &journal::Filter {
                states: vec![
                    JournalState::Verified,
                    JournalState::Forwarded,
                    JournalState::Settling,
                    JournalState::Unknown,
                    JournalState::Settled,
                    JournalState::Queued,
                ],
                ..journal::Filter::default()
            },
        )?;
        let closed = journal::query(
            &reader,
            &journal::Filter {
                states: vec![JournalState::Delivered, JournalState::Failed],
                valid_at: Some(now),
                ..journal::Filter::default()
            },
        )?;
        drop(reader);
        self.reconciler.refresh_heads().await;
        let guard = self.verifier.replay();
        let mut r = Recovery::default();
        let mut guarded = |e: &Entry| {
            if e.valid_before > now {
                guard.mark_used(&e.key, e.valid_before, now);
                r.guarded += 1;
            }
        };
        for e in &closed {
            if e.state == JournalState::Delivered || e.transaction.is_some() {
                guarded(e);
            }
        }
        for e in open {
            if scope == Scope::GuardOnly {
                // The running process owns these: only its replays are refused here.
                guarded(&e);
                continue;
            }
            if scope == Scope::NotOwn && j.is_own(e.id) {
                continue;
            }
            if e.released || e.state == JournalState::Queued {
                // Deferred: the answer went out; the settlement is owed.
                guarded(&e);
                let micro = deferred::micro_dollars(e.amount, self.decimals_of(e.key.asset));
                match self.recover_owed(e, micro).await {
                    deferred::RecoveredOwed::Queued => r.owed += 1,
                    deferred::RecoveredOwed::Settled => r.settled_owed += 1,
                    deferred::RecoveredOwed::Failed => r.failed += 1,
                }
                continue;
            }
            match e.state {
                JournalState::Verified | JournalState::Forwarded => {
                    // Never submitted: nothing was charged, nothing served.
                    j.transition(e.id, JournalState::Failed, None, Some("not_served".into()));
                    r.abandoned += 1;
                }
                JournalState::Settled => {
                    guarded(&e);
                    let tx = e.transaction.clone().unwrap_or_default();
                    self.pending.put(e, Open::Settled(tx), journal::now_ms());
                    r.settled += 1;
                }
                _ => {
                    guarded(&e);
                    let o = self.reconciler.read(&e).await;
                    match &o {
                        Outcome::Settled { .. } => r.settled += 1,
                        Outcome::Failed { .. } => r.failed += 1,
                        Outcome::Open => {
                            r.unknown += 1;
                            j.transition(e.id, JournalState::Unknown, None, None);
                            self.pending
                                .put(e.clone(), Open::Unknown, journal::now_ms());
                        }
                    }
                    self.resolved(&e, &o);
                }
            }
        }
        j.flush()
            .await
            .map_err(|_| journal::JournalError::Unwritable)?;
        self.refresh_unpaid().await;
        self.recovered
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(r)
    }

    /// One round of background work: read due unknown outcomes, refresh chain heads, probe an
    /// unhealthy journal, prune old rows (`prune` true).
    pub async fn maintain(&self, prune: bool) {
        self.maintain_at(journal::now_ms(), prune).await;
    }

    /// [`Payments::maintain`] as if it were `now_ms` (a time far ahead reads every unknown
    /// outcome now).
    pub async fn maintain_at(&self, now_ms: u64, prune: bool) {
        if !self.recovered.load(std::sync::atomic::Ordering::Acquire)
            && self.journal.as_ref().is_some_and(Journal::is_healthy)
        {
            let handing_over = self.handover.lock().is_ok_and(|h| h.is_some());
            let scope = if handing_over {
                Scope::GuardOnly
            } else {
                Scope::All
            };
            match self.recover_scoped(scope).await {
                Ok(r) => tracing::info!(?r, "journal recovered"),
                Err(e) => tracing::warn!(error = %e, "journal not recoverable yet"),
            }
        }
        if self.handover_finished(now_ms) {
            match self.recover_scoped(Scope::NotOwn).await {
                Ok(r) => tracing::info!(?r, "journal recovered after the hand-over"),
                Err(e) => tracing::warn!(error = %e, "journal not recoverable after the hand-over"),
            }
        }
        self.reconciler.refresh_heads().await;
        self.refresh_unpaid().await;
        let (micro, _) = self.deferred.exposure();
        self.metrics.deferred_state(self.deferred.owed(), micro);
        for e in self.pending.due(now_ms) {
            let o = self.reconciler.read(&e).await;
            if o == Outcome::Open {
                tracing::debug!(payer = %e.key.from, transaction = e.transaction.as_deref().unwrap_or(""), "settlement outcome still unknown");
            } else {
                tracing::info!(payer = %e.key.from, outcome = ?o, "unknown settlement resolved");
            }
            self.resolved(&e, &o);
        }
        if let Some(j) = &self.journal {
            if !j.is_healthy() {
                j.probe();
            }
            if prune {
                let keep_ms = u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX);
                j.prune(journal::now_ms().saturating_sub(keep_ms));
            }
        }
    }
}

fn asking(url: &str) -> Asking<'_> {
    Asking {
        url,
        browser: false,
    }
}

fn forward(route: Option<Routed>, priced_path: bool, websocket: bool) -> Admission {
    Admission::Forward(Box::new(Forward {
        route,
        payment: None,
        priced_path,
        websocket,
        resource_url: String::new(),
    }))
}

fn early(answer: Answer, route: Option<Routed>, rejection: Option<ErrorReason>) -> Admission {
    Admission::Answer(Box::new(Early {
        answer,
        route,
        payment: None,
        rejection,
    }))
}

/// Takes (or, with `take = false`, checks) a token of `limiter` for `ip`.
fn limit(limiter: Option<&RateLimiter>, ip: Option<IpAddr>, take: bool) -> Result<(), u32> {
    let (Some(l), Some(ip)) = (limiter, ip) else {
        return Ok(());
    };
    if take {
        l.take(ip, now_ms())
    } else {
        l.check(ip, now_ms())
    }
}

/// A real CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`. Any
/// other `OPTIONS` is an ordinary method.
pub fn is_preflight(req: Incoming<'_>) -> bool {
    req.method == Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The methods a request may be read as: as received, upper-cased (some frameworks upper-case
/// method tokens), and any method override (`X-HTTP-Method-Override` and kin, `_method` in the
/// query). The common request has one reading and costs no allocation.
pub fn method_readings(req: Incoming<'_>) -> std::borrow::Cow<'_, [Method]> {
    let upper = req.method.as_str().bytes().any(|b| b.is_ascii_lowercase());
    let overrides = METHOD_OVERRIDE_HEADERS
        .iter()
        .any(|h| req.headers.contains_key(h));
    let query_override = req.target.contains("_method");
    if !upper && !overrides && !query_override {
        return std::borrow::Cow::Borrowed(std::slice::from_ref(req.method));
    }
    let mut out = vec![req.method.clone()];
    let mut add = |raw: &[u8]| {
        let up = raw.trim_ascii().to_ascii_uppercase();
        if let Ok(m) = Method::from_bytes(&up) {
            if !out.contains(&m) {
                out.push(m);
            }
        }
    };
    add(req.method.as_str().as_bytes());
    for h in &METHOD_OVERRIDE_HEADERS {
        for v in req.headers.get_all(h) {
            add(v.as_bytes());
        }
    }
    if let Some(query) = req.target.split_once('?').map(|(_, q)| q) {
        for pair in query.split('&') {
            if let Some(v) = pair.strip_prefix("_method=") {
                add(v.as_bytes());
            }
        }
    }
    std::borrow::Cow::Owned(out)
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `Accept` has `text/html` and `User-Agent` has `Mozilla`: the reference servers' test.
fn is_browser(h: &HeaderMap) -> bool {
    let has = |name, needle: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(needle))
    };
    has(header::ACCEPT, "text/html") && has(header::USER_AGENT, "Mozilla")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming<'a>(m: &'a Method, target: &'a str, h: &'a HeaderMap) -> Incoming<'a> {
        Incoming {
            method: m,
            target,
            headers: h,
            client_ip: None,
            scheme: "http",
            host: None,
        }
    }

    #[test]
    fn method_readings_cover_case_and_overrides() {
        let h = HeaderMap::new();
        let get = Method::GET;
        assert!(matches!(
            method_readings(incoming(&get, "/a", &h)),
            std::borrow::Cow::Borrowed(_)
        ));
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(
            method_readings(incoming(&lower, "/a", &h)).as_ref(),
            [lower.clone(), Method::GET]
        );
        let mut h = HeaderMap::new();
        h.insert("x-http-method-override", HeaderValue::from_static("get"));
        h.insert("x-method-override", HeaderValue::from_static("DELETE"));
        let post = Method::POST;
        assert_eq!(
            method_readings(incoming(&post, "/a?_method=put", &h)).as_ref(),
            [Method::POST, Method::GET, Method::DELETE, Method::PUT]
        );
    }

    #[test]
    fn only_real_preflights_are_preflights() {
        let options = Method::OPTIONS;
        let mut h = HeaderMap::new();
        assert!(!is_preflight(incoming(&options, "/", &h)));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://a.example"),
        );
        assert!(!is_preflight(incoming(&options, "/", &h)));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("GET"),
        );
        assert!(is_preflight(incoming(&options, "/", &h)));
        assert!(!is_preflight(incoming(&Method::GET, "/", &h)));
    }
}
