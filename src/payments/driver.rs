//! A request's payment, and the driver that carries out its flow.
//!
//! Owns: [`Payment`] (the flow, what verified it, what is journaled of it, and its exposure
//! reservation; dropped while still open, it gives its authorization back), the events the
//! front doors report ([`Payments::forwarding`], [`Payments::connected`],
//! [`Payments::on_response`], [`Payments::authorize`], [`Payments::upstream_failed`],
//! [`Payments::not_delivered`], [`Payments::ended`]), and [`Decision`], what they are told.
//! Every effect a flow asks for is carried out here, and nowhere else.

use std::collections::VecDeque;
use std::sync::Arc;

use http::HeaderName;

use super::{Payments, Routed};
use crate::error::{rescue, Answer, Asking, GatewayError};
use crate::flow::{self, Effect, Event, PaymentFlow, Refusal, State};
use crate::journal::{Entry, JournalState as Kind};
use crate::ledger::{Exposure, Ledger, Open};
use crate::settle::{classify, receipt};
use crate::telemetry::PaidLine;
use crate::verify::Verified;

/// What a front door does next.
#[derive(Debug)]
pub enum Decision {
    /// An interim (1xx) answer: pass it on, decide nothing yet.
    Interim,
    /// Go on (forward; nothing to tell the client yet).
    Proceed,
    /// Pass the upstream's answer (or allow the request), with this receipt; `private` marks
    /// paid content; `queued`: released on credit (`X-PAYMENT-STATUS: queued`).
    Pass {
        /// The receipt header.
        receipt: Option<(HeaderName, String)>,
        /// Paid content (`Cache-Control: private`).
        private: bool,
        /// Deferred: the settlement is queued.
        queued: bool,
    },
    /// Answer this instead (the upstream's answer, if any, is swallowed).
    Replace(Answer),
}

/// The payment of one request.
pub struct Payment {
    pub(crate) flow: PaymentFlow,
    pub(crate) verified: Verified,
    /// What is journaled of it (its state follows the flow's when recorded).
    pub(crate) entry: Entry,
    /// Its value on credit (a deferred route's payment), until settled or given back.
    pub(crate) exposure: Option<Exposure>,
    /// The route it was admitted under (for the challenge of a refusal).
    pub(crate) route: Option<Routed>,
    /// Whether its row is in the journal (later records are transitions).
    pub(crate) recorded: bool,
    /// Gives an open claim back if the payment is dropped unfinished.
    ledger: Option<Arc<dyn Ledger>>,
}

impl std::fmt::Debug for Payment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Payment")
            .field("state", self.flow.state())
            .field("payer", &self.verified.payer)
            .finish_non_exhaustive()
    }
}

impl Drop for Payment {
    fn drop(&mut self) {
        // Every path reports `Ended`; this is the net under it (a dropped future).
        if let Some(l) = &self.ledger {
            if self.flow.state().is_open() {
                l.release(&self.verified.key, self.entry.id);
                if let Some(x) = &self.exposure {
                    l.unreserve(&x.key);
                }
            }
        }
    }
}

impl Payment {
    /// A payment of `flow`, holding its claim in `ledger` until it is settled or given back.
    pub(crate) fn new(
        flow: PaymentFlow,
        verified: Verified,
        entry: Entry,
        exposure: Option<Exposure>,
        route: Option<Routed>,
        ledger: Arc<dyn Ledger>,
    ) -> Self {
        Payment {
            recorded: flow.is_redeemed(),
            flow,
            verified,
            entry,
            exposure,
            route,
            ledger: Some(ledger),
        }
    }

    /// Where it is.
    pub fn state(&self) -> &State {
        self.flow.state()
    }

    /// The receipt header for its state, if any.
    pub fn receipt(&self) -> Option<(HeaderName, String)> {
        receipt(&self.verified, self.flow.state())
    }

    /// Its access-log fields.
    pub fn line(&self) -> PaidLine<'_> {
        PaidLine {
            payer: self.verified.payer,
            amount: self.verified.amount,
            network: &self.verified.network,
            transaction: self.flow.state().transaction().unwrap_or(""),
        }
    }

    /// The journal record of its current state at `now_ms`.
    fn record(&self, now_ms: u64) -> Entry {
        let mut e = self.entry.clone();
        e.set_state(self.flow.state());
        e.released |= *self.flow.state() == State::Queued;
        e.updated_at = now_ms;
        e
    }

    fn front_url(&self) -> &str {
        &self.entry.resource
    }
}

impl Payments {
    // === Events of the front doors ===

    /// The request is being sent upstream.
    pub async fn forwarding(&self, p: &mut Payment) {
        let _ = self.drive(p, Event::Forwarding).await;
    }

    /// The upstream connection is up, nothing sent yet: a `before_upstream` payment settles
    /// now. `Some(answer)` when the request must not go upstream.
    pub async fn connected(&self, p: &mut Payment) -> Option<Answer> {
        match self.drive(p, Event::Connected).await {
            Some(Decision::Replace(a)) => Some(a),
            _ => None,
        }
    }

    /// The upstream's response head (`websocket`: the route allows an upgrade).
    pub async fn on_response(&self, p: &mut Payment, status: u16, websocket: bool) -> Decision {
        self.drive(p, Event::Upstream { status, websocket })
            .await
            .unwrap_or(Decision::Pass {
                receipt: None,
                private: false,
                queued: false,
            })
    }

    /// Forward-auth asks to allow the request: settle (or defer) first.
    pub async fn authorize(&self, p: &mut Payment) -> Decision {
        self.drive(p, Event::Authorize)
            .await
            .unwrap_or_else(|| Decision::Replace(self.refusal(p, Refusal::Upstream)))
    }

    /// The upstream gave no answer: the answer for the client (a `502`, with the receipt of a
    /// payment settled already).
    pub async fn upstream_failed(&self, p: &mut Payment) -> Answer {
        match self.drive(p, Event::UpstreamFailed).await {
            Some(Decision::Replace(a)) => a,
            _ => self.refusal(p, Refusal::Upstream),
        }
    }

    /// The paid answer did not reach the client: the payment stays redeemable.
    pub async fn not_delivered(&self, p: &mut Payment) {
        let _ = self.drive(p, Event::NotDelivered).await;
    }

    /// The request ended: anything still open is given back.
    pub async fn ended(&self, p: &mut Payment) {
        let _ = self.drive(p, Event::Ended).await;
    }

    // === The driver ===

    /// Steps `p`'s flow on `event` and carries out every effect until it waits for nothing;
    /// the decision for the front door, if the flow made one.
    pub(super) async fn drive(&self, p: &mut Payment, event: Event) -> Option<Decision> {
        let effects = p.flow.step(event, self.clock.now_ms());
        self.drive_effects(p, effects).await
    }

    /// Carries out `effects`, then every effect the events they report lead to.
    pub(super) async fn drive_effects(
        &self,
        p: &mut Payment,
        effects: Vec<Effect>,
    ) -> Option<Decision> {
        let mut events = VecDeque::new();
        for effect in effects {
            if let Some(next) = self.effect(p, effect).await {
                events.push_back(next);
            }
        }
        while let Some(ev) = events.pop_front() {
            let effects = p.flow.step(ev, self.clock.now_ms());
            for effect in effects {
                if let Some(next) = self.effect(p, effect).await {
                    events.push_back(next);
                }
            }
        }
        let answer = p.flow.take_answer()?;
        Some(self.decision(p, answer))
    }

    /// Carries out one effect; the event it reports, if it reports one.
    async fn effect(&self, p: &mut Payment, effect: Effect) -> Option<Event> {
        let now = self.clock.now_ms();
        let key = p.verified.key.clone();
        match effect {
            Effect::Record { durable } => self.record(p, durable, now).await,
            Effect::Settle { shared } => {
                let f = self.verifier.facilitator();
                let body = &p.verified.facilitator_body;
                let r = if shared {
                    f.settle_deferred(body).await
                } else {
                    f.settle(body).await
                };
                Some(Event::SettleAnswered(classify(r)))
            }
            Effect::Resolve => {
                let e = p.record(now);
                let o = if p.flow.is_redeemed() {
                    // A retry: one reading (the background keeps reading meanwhile).
                    self.reconciler.read(&e).await
                } else {
                    let o = self.reconciler.resolve(&e, self.resolve_timeout).await;
                    if o == flow::Outcome::Open {
                        tracing::warn!(payer = %p.verified.payer, transaction = e.transaction.as_deref().unwrap_or(""), "settlement outcome still unknown: answering 503, the payment stays redeemable");
                    }
                    o
                };
                Some(Event::Resolved(o))
            }
            Effect::CheckDeferral => {
                let d = match &p.exposure {
                    Some(x) => self.ledger.recheck(x, now),
                    None => Err(flow::Fallback::Expiring),
                };
                if let Err(why) = d {
                    tracing::debug!(payer = %p.verified.payer, reason = why.as_str(), "deferred payment settled first at release");
                    self.metrics.deferred_fallback(&p.entry.route, why.as_str());
                }
                Some(Event::Deferral(d))
            }
            Effect::DropReservation => {
                if let Some(x) = p.exposure.take() {
                    self.ledger.unreserve(&x.key);
                }
                None
            }
            Effect::Enqueue => {
                // The reservation goes with the owed settlement (released when it settles).
                p.exposure = None;
                self.metrics
                    .payment(&p.entry.route, &p.entry.network, "queued", None);
                self.ledger.enqueue(p.record(now), now);
                None
            }
            Effect::Spend(how) => {
                self.ledger.spend(&key, p.verified.valid_before, how);
                None
            }
            Effect::ReleaseClaim => {
                self.ledger.release(&key, p.entry.id);
                None
            }
            Effect::ForgetClaim => {
                self.ledger.forget(&key, p.entry.id);
                None
            }
            Effect::KeepRedeemable => {
                let open = match p.flow.state() {
                    State::Settled { transaction } => Open::Settled(transaction.clone()),
                    _ => Open::Unknown,
                };
                self.ledger.keep_redeemable(p.record(now), open, now);
                None
            }
            Effect::Unredeemable => {
                self.ledger.unredeemable(&key);
                None
            }
            Effect::Revenue => {
                self.metrics.revenue(
                    &p.entry.route,
                    &p.entry.network,
                    key.asset,
                    p.verified.amount,
                );
                None
            }
        }
    }

    /// Records the flow's state: the whole row the first time (taking the authorization for
    /// good in the journal when it is the first durable record), a transition afterwards.
    async fn record(&self, p: &mut Payment, durable: bool, now: u64) -> Option<Event> {
        let state = p.flow.state().clone();
        let first = matches!(state, State::Settling | State::Queued);
        if first && p.entry.from_block.is_none() {
            p.entry.from_block = self.reconciler.cached_head(p.verified.key.chain_id);
        }
        let ok = if !p.recorded {
            let e = p.record(now);
            p.recorded = true;
            if durable {
                // The first durable record takes the authorization for good, in every
                // process on this journal (a redemption's was taken already).
                self.ledger.record_durable(e, first).await
            } else {
                self.ledger.record(e);
                true
            }
        } else if p.entry.state == Kind::Delivered && state.kind() == Kind::Settled {
            // The paid answer did not go out after all.
            self.ledger.undeliver(p.entry.id);
            true
        } else if durable {
            self.ledger
                .transition_durable(p.entry.id, &state, p.entry.from_block)
                .await
        } else {
            self.ledger
                .transition(p.entry.id, &state, p.entry.from_block);
            true
        };
        p.entry.state = state.kind();
        if !durable {
            return None;
        }
        if !ok {
            tracing::error!(payer = %p.verified.payer, state = state.name(), "journal unwritable: nothing is settled or released");
        }
        Some(Event::Recorded(ok))
    }

    /// What a front door is told for the flow's answer.
    fn decision(&self, p: &Payment, answer: flow::Answer) -> Decision {
        match answer {
            flow::Answer::Interim => Decision::Interim,
            flow::Answer::Proceed => Decision::Proceed,
            flow::Answer::Pass { private, queued } => Decision::Pass {
                receipt: p.receipt(),
                private,
                queued,
            },
            flow::Answer::Refuse(r) => Decision::Replace(self.refusal(p, r)),
        }
    }

    /// The answer to a refusal, with the payment's receipt.
    pub(super) fn refusal(&self, p: &Payment, r: Refusal) -> Answer {
        let e = match r {
            Refusal::SettlementFailed(reason) => GatewayError::SettlementFailed { reason },
            Refusal::NotAttempted(reason) => GatewayError::SettlementNotAttempted { reason },
            Refusal::Pending => GatewayError::SettlementPending,
            Refusal::JournalUnavailable => GatewayError::JournalUnavailable,
            Refusal::Upstream => GatewayError::Upstream,
        };
        let route = match e {
            GatewayError::Upstream => None,
            _ => p.route.as_ref().map(Routed::route),
        };
        rescue(
            &e,
            route,
            Asking {
                url: p.front_url(),
                browser: false,
            },
        )
        .with_receipt(p.receipt())
    }
}
