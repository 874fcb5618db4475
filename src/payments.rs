//! The payment decisions, with no Pingora types: what a request falls under, whether it must
//! pay, whether its payment is good, and, through its [`crate::flow::PaymentFlow`], when it is
//! settled and what the client gets. Both front doors (the proxy and forward-auth) ask here and
//! write what they are told; neither decides anything about a payment.
//!
//! Owns: [`Payments`] (the shared handles: price table, verifier, ledger, reconciler,
//! facilitator, clock) and its parts:
//! - `payments/admit.rs`: admission of a request head (CORS preflights on priced paths, every
//!   method reading, `[server] unlisted_methods`, limits, the local checks, the claim);
//! - `payments/redeem.rs`: a retry of a payment that is pending, by what was journaled;
//! - `payments/driver.rs`: [`Payment`], a request's payment, and the driver that carries out
//!   its flow's effects;
//! - `payments/recover.rs`: what a crash or a restart left open, and background maintenance;
//! - `payments/deferred.rs`: the worker that settles owed deferred payments.
//!
//! Money safety: see `flow` for the rules every payment follows; unknown outcomes answer `503`
//! and stay redeemable with the same header, never `402`.
//!
//! Does not own: forwarding headers and peers (`proxy::upstream`), writing answers
//! (`proxy::respond`), the mapping from errors to answers (`error`), reading the chain
//! (`journal::reconcile`), the shared state (`ledger`).

mod admit;
pub mod deferred;
mod driver;
mod recover;
mod redeem;

use std::net::IpAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderMap, HeaderValue};
use http::Method;

use crate::clock::Clock;
use crate::config::{Config, UnlistedMethods};
use crate::error::Answer;
use crate::journal::reconcile::Reconciler;
use crate::journal::Journal;
use crate::ledger::Ledger;
use crate::limiter::RateLimiter;
use crate::metrics::Metrics;
use crate::pricing::{PriceTable, PricedRoute};
use crate::protocol::ErrorReason;
use crate::telemetry::Finished;
use crate::verify::Verifier;
pub use admit::{is_preflight, method_readings, ALLOW_HEADERS, METHOD_OVERRIDE_HEADERS};
pub use driver::{Decision, Payment};
pub use recover::Recovery;

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
    /// The verified payment (settled already when redeemed).
    pub payment: Option<Payment>,
    /// Whether a priced route covers the path (method overrides are then stripped).
    pub priced_path: bool,
    /// Whether the route allows `Upgrade: websocket`.
    pub websocket: bool,
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

/// The payment decisions, shared by all requests.
pub struct Payments {
    table: Arc<ArcSwap<PriceTable>>,
    verifier: Arc<Verifier>,
    ledger: Arc<dyn Ledger>,
    /// The journal (recovery, maintenance), when payments are journaled.
    journal: Option<Journal>,
    reconciler: Arc<Reconciler>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    unlisted: UnlistedMethods,
    challenges: Option<RateLimiter>,
    failures: Option<RateLimiter>,
    max_request_body: u64,
    public_url: Option<String>,
    cors_origin: Option<HeaderValue>,
    resolve_timeout: Duration,
    retention: Duration,
    /// The journal was recovered (no priced request is taken before: the replay guard would
    /// not know the authorizations used before the start).
    recovered: AtomicBool,
    /// Open payments another live process owned at the last recovery: recovered again by
    /// maintenance until none are left.
    leftovers: AtomicBool,
    /// After `run --upgrade`: the process handed over from (pid) and when its open payments
    /// are reconciled at the latest (ms); `None` once done.
    handover: std::sync::Mutex<Option<(Option<u32>, u64)>>,
}

/// What [`Payments::new`] is built from.
pub struct Parts {
    /// The price table now in use (swapped by reloads).
    pub table: Arc<ArcSwap<PriceTable>>,
    /// The verifier (and through it the facilitator).
    pub verifier: Arc<Verifier>,
    /// The shared payment state.
    pub ledger: Arc<dyn Ledger>,
    /// The journal the ledger records in, if any.
    pub journal: Option<Journal>,
    /// Reads outcomes from the chain.
    pub reconciler: Arc<Reconciler>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

impl Payments {
    /// The decisions for `config`, over `parts`.
    pub fn new(config: &Config, parts: Parts) -> Self {
        Payments {
            recovered: AtomicBool::new(parts.journal.is_none()),
            leftovers: AtomicBool::new(false),
            handover: std::sync::Mutex::new(None),
            table: parts.table,
            verifier: parts.verifier,
            ledger: parts.ledger,
            journal: parts.journal,
            reconciler: parts.reconciler,
            metrics: parts.metrics,
            clock: parts.clock,
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
            resolve_timeout: config.facilitator.resolve_timeout,
            retention: config.journal.retention,
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

    /// The shared payment state.
    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
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
        self.recovered.load(std::sync::atomic::Ordering::Acquire) && self.ledger.is_recording()
    }

    /// The journal, when payments are journaled.
    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// Payments pending now: (unknown outcome, settled and undelivered).
    pub fn pending_counts(&self) -> (usize, usize) {
        self.ledger.pending_counts()
    }

    /// Records a finished request in the metrics (request, challenge, payment outcome) and says
    /// how it went, for the access log and the span.
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
                let state = p.flow.state();
                done.outcome = if p.flow.is_redeemed() && state.is_settled() {
                    "redeemed"
                } else {
                    state.outcome()
                };
                let reason = state.reason();
                self.metrics
                    .payment(label, &p.verified.network, done.outcome, reason);
                done.reason = reason.map_or("", ErrorReason::as_str);
                done.payment = Some(p.line());
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
