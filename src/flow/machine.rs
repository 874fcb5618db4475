//! [`PaymentFlow`]: the transitions, `(state, event) → (state, effects)`. The rules they hold
//! are listed in the `flow` module.

use super::{Answer, Effect, Event, Fallback, Front, Outcome, Refusal, Settled, Spent, State};
use crate::config::SettlementMode;
use crate::protocol::ErrorReason;

/// What a durable record or a report in flight is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    /// The `settling` record, before `/settle`.
    SettlingRecord,
    /// `/settle`.
    Settle,
    /// The chain reading of an unknown outcome.
    Resolve,
    /// The deferral check at release.
    Deferral,
    /// The `queued` record, before a deferred answer.
    QueuedRecord,
    /// The `delivered` record, before a paid answer.
    DeliveredRecord,
}

/// One payment's flow.
#[derive(Clone, Debug)]
pub struct PaymentFlow {
    state: State,
    /// How this payment settles now (`deferred` falls back to `after_response`).
    mode: SettlementMode,
    /// Settled through the facilitator's shared transactions (a deferred route's payment settled
    /// first, with a batching facilitator).
    batching: bool,
    front: Front,
    /// Restored from the journal for a retry of the same header.
    redeemed: bool,
    /// The upstream answered with a final status below 400 (or forward-auth allows): the
    /// paid answer goes out once settled.
    serving: bool,
    /// The final status the upstream answered, if any.
    upstream: Option<u16>,
    awaiting: Option<Awaiting>,
    answer: Option<Answer>,
    settle_asked: bool,
}

impl PaymentFlow {
    /// A freshly verified payment on a route settling in `mode`, driven by `front`.
    /// `reserved`: a deferred route's payment that got an exposure reservation at admission
    /// (without one it is settled first); `batching`: the facilitator settles in shared
    /// transactions (a deferred route's payments settled first use them).
    pub fn new(mode: SettlementMode, front: Front, reserved: bool, batching: bool) -> Self {
        let deferred_route = mode == SettlementMode::Deferred;
        let mode = match mode {
            SettlementMode::Deferred if !reserved => SettlementMode::AfterResponse,
            m => m,
        };
        PaymentFlow {
            state: State::Verified,
            mode,
            batching: batching && deferred_route,
            front,
            redeemed: false,
            serving: false,
            upstream: None,
            awaiting: None,
            answer: None,
            settle_asked: false,
        }
    }

    /// A payment restored from the journal for a retry of the same header: settled and
    /// undelivered (`state` settled), or with an unknown outcome (read first).
    pub fn redeem(state: State, front: Front) -> Self {
        PaymentFlow {
            state,
            mode: SettlementMode::AfterResponse,
            batching: false,
            front,
            redeemed: true,
            serving: false,
            upstream: None,
            awaiting: None,
            answer: None,
            settle_asked: true,
        }
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// How it settles now.
    pub fn mode(&self) -> SettlementMode {
        self.mode
    }

    /// Whether it was restored for a retry of the same header.
    pub fn is_redeemed(&self) -> bool {
        self.redeemed
    }

    /// Whether the settlement goes through the facilitator's shared transactions.
    pub fn is_shared(&self) -> bool {
        self.batching
    }

    /// The answer decided so far (taken by the adapter).
    pub fn take_answer(&mut self) -> Option<Answer> {
        self.answer.take()
    }

    /// The answer decided so far.
    pub fn answer(&self) -> Option<&Answer> {
        self.answer.as_ref()
    }

    /// Whether a reported effect is awaited.
    pub fn is_waiting(&self) -> bool {
        self.awaiting.is_some()
    }

    /// Starts a restored flow: an unknown outcome is read first ([`Effect::Resolve`]);
    /// anything else needs nothing.
    pub fn resume(&mut self) -> Vec<Effect> {
        if let State::Unknown { .. } = self.state {
            self.awaiting = Some(Awaiting::Resolve);
            return vec![Effect::Resolve];
        }
        Vec::new()
    }

    /// Moves the flow on `event` at `now_ms` (unix ms); returns the effects to carry out, in
    /// order. An event that does not apply to the current state changes nothing.
    pub fn step(&mut self, event: Event, now_ms: u64) -> Vec<Effect> {
        match event {
            Event::Forwarding => {
                if self.state == State::Verified {
                    self.state = State::Forwarded;
                }
                Vec::new()
            }
            Event::Connected => self.connected(),
            Event::Upstream { status, websocket } => self.upstream(status, websocket, now_ms),
            Event::Authorize => self.serve(now_ms),
            Event::UpstreamFailed => self.upstream_failed(),
            Event::NotDelivered => self.not_delivered(),
            Event::Ended => self.ended(),
            Event::Recorded(ok) => self.recorded(ok),
            Event::SettleAnswered(s) if self.awaiting == Some(Awaiting::Settle) => {
                self.awaiting = None;
                self.settle_answered(s, now_ms)
            }
            Event::Resolved(o) if self.awaiting == Some(Awaiting::Resolve) => {
                self.awaiting = None;
                self.resolved(o, now_ms)
            }
            Event::Deferral(d) if self.awaiting == Some(Awaiting::Deferral) => {
                self.awaiting = None;
                self.deferral(d)
            }
            Event::SettleAnswered(_) | Event::Resolved(_) | Event::Deferral(_) => Vec::new(),
        }
    }

    // === Steps ===

    /// `before_upstream`: settle once the upstream connection is up, before anything is sent.
    fn connected(&mut self) -> Vec<Effect> {
        if self.mode == SettlementMode::BeforeUpstream && self.state.is_open() && !self.settle_asked
        {
            return self.begin_settle();
        }
        if self.state.is_settled() || self.state.is_open() {
            self.answer = Some(Answer::Proceed);
        }
        Vec::new()
    }

    /// The upstream's response head.
    fn upstream(&mut self, status: u16, websocket: bool, now_ms: u64) -> Vec<Effect> {
        if (100..200).contains(&status) && status != 101 {
            self.answer = Some(Answer::Interim);
            return Vec::new();
        }
        self.upstream = Some(status);
        if status == 101 && !websocket {
            // A tunnel the route does not allow: nothing is served (a payment settled before
            // the upstream stays redeemable).
            return self.unserved(ErrorReason::UpstreamError);
        }
        if status >= 400 {
            return self.upstream_error();
        }
        self.serve(now_ms)
    }

    /// The upstream answered an error: nothing is charged if nothing was settled; a settled
    /// payment stays redeemable (paid, not served).
    fn upstream_error(&mut self) -> Vec<Effect> {
        if self.state.is_open() {
            let mut fx = self.give_back(ErrorReason::UpstreamError);
            fx.push(Effect::DropReservation);
            self.answer = Some(Answer::Pass {
                private: false,
                queued: false,
            });
            return fx;
        }
        if let State::Settled { .. } = self.state {
            self.answer = Some(Answer::Pass {
                private: false,
                queued: false,
            });
            return vec![Effect::Record { durable: false }, Effect::KeepRedeemable];
        }
        // Settling or unknown already (a retried upstream attempt): the decision stands.
        Vec::new()
    }

    /// The paid answer is about to go out (the upstream answered below 400, or forward-auth
    /// allows): settle first, defer, or deliver what is settled.
    fn serve(&mut self, now_ms: u64) -> Vec<Effect> {
        self.serving = true;
        match &self.state {
            State::Verified | State::Forwarded => {
                if self.mode == SettlementMode::Deferred {
                    self.awaiting = Some(Awaiting::Deferral);
                    vec![Effect::CheckDeferral]
                } else {
                    self.begin_settle()
                }
            }
            State::Settled { .. } => self.deliver(now_ms),
            // Settling (before_upstream, a retried attempt), unknown, failed: decided by the
            // settlement, not by the upstream.
            _ => Vec::new(),
        }
    }

    fn begin_settle(&mut self) -> Vec<Effect> {
        if self.settle_asked {
            return Vec::new();
        }
        self.state = State::Settling;
        self.awaiting = Some(Awaiting::SettlingRecord);
        vec![Effect::Record { durable: true }]
    }

    /// The deferral re-checked at release.
    fn deferral(&mut self, d: Result<(), Fallback>) -> Vec<Effect> {
        match d {
            Ok(()) => {
                self.state = State::Queued;
                self.awaiting = Some(Awaiting::QueuedRecord);
                vec![Effect::Record { durable: true }]
            }
            Err(_) => {
                // Settled first, in the shared transactions when the facilitator batches.
                self.mode = SettlementMode::AfterResponse;
                let mut fx = vec![Effect::DropReservation];
                fx.extend(self.begin_settle());
                fx
            }
        }
    }

    /// A durable record finished.
    fn recorded(&mut self, ok: bool) -> Vec<Effect> {
        let Some(what) = self.awaiting.take() else {
            return Vec::new();
        };
        match (what, ok) {
            (Awaiting::SettlingRecord, true) => {
                self.settle_asked = true;
                self.awaiting = Some(Awaiting::Settle);
                vec![
                    Effect::Spend(Spent::Settling),
                    Effect::Settle {
                        shared: self.batching,
                    },
                ]
            }
            (Awaiting::SettlingRecord, false) => {
                self.state = State::Released {
                    reason: ErrorReason::JournalUnavailable,
                };
                self.answer = Some(Answer::Refuse(Refusal::JournalUnavailable));
                vec![Effect::ReleaseClaim, Effect::DropReservation]
            }
            (Awaiting::QueuedRecord, true) => {
                self.answer = Some(Answer::Pass {
                    private: true,
                    queued: true,
                });
                vec![Effect::Spend(Spent::Answered), Effect::Enqueue]
            }
            (Awaiting::QueuedRecord, false) => {
                self.state = State::Released {
                    reason: ErrorReason::JournalUnavailable,
                };
                self.answer = Some(Answer::Refuse(Refusal::JournalUnavailable));
                vec![Effect::ReleaseClaim, Effect::DropReservation]
            }
            (Awaiting::DeliveredRecord, true) => {
                self.answer = Some(Answer::Pass {
                    private: true,
                    queued: false,
                });
                vec![Effect::Unredeemable, Effect::Spend(Spent::Answered)]
            }
            (Awaiting::DeliveredRecord, false) => {
                // Settled; the delivery cannot be made durable, so nothing goes out: the
                // payment stays redeemable with the same header.
                if let State::Delivered { transaction } = &self.state {
                    self.state = State::Settled {
                        transaction: transaction.clone(),
                    };
                }
                self.answer = Some(Answer::Refuse(Refusal::JournalUnavailable));
                vec![Effect::KeepRedeemable]
            }
            (other, _) => {
                self.awaiting = Some(other);
                Vec::new()
            }
        }
    }

    /// `/settle` answered.
    fn settle_answered(&mut self, s: Settled, now_ms: u64) -> Vec<Effect> {
        match s {
            Settled::Yes { transaction } => {
                self.state = State::Settled { transaction };
                let mut fx = vec![Effect::Revenue];
                fx.extend(self.after_settled(now_ms));
                fx
            }
            Settled::NotSent { reason } => {
                // Certainly not received: nothing happened; the client may retry it.
                self.state = State::Released {
                    reason: reason.clone(),
                };
                self.answer = Some(Answer::Refuse(Refusal::NotAttempted(reason)));
                vec![
                    Effect::ForgetClaim,
                    Effect::Record { durable: false },
                    Effect::DropReservation,
                ]
            }
            s @ Settled::No { .. } if s.is_final_refusal() => {
                let Settled::No { reason, .. } = s else {
                    return Vec::new();
                };
                self.state = State::Failed {
                    reason: reason.clone(),
                    transaction: None,
                };
                self.answer = Some(Answer::Refuse(Refusal::SettlementFailed(reason)));
                vec![
                    Effect::ForgetClaim,
                    Effect::Record { durable: false },
                    Effect::DropReservation,
                ]
            }
            Settled::No {
                reason,
                transaction,
            }
            | Settled::Unknown {
                reason,
                transaction,
            } => {
                // It may have happened (a transaction was sent, or the nonce is used by
                // whoever): the chain decides.
                self.state = State::Unknown {
                    reason,
                    transaction,
                };
                self.awaiting = Some(Awaiting::Resolve);
                vec![Effect::Record { durable: false }, Effect::Resolve]
            }
        }
    }

    /// The chain was read for an unknown outcome.
    fn resolved(&mut self, o: Outcome, now_ms: u64) -> Vec<Effect> {
        match o {
            Outcome::Settled { transaction } if self.redeemed => {
                // A retry found it settled: redeemable now, delivered by the retry that
                // claims it.
                self.state = State::Settled { transaction };
                self.answer = Some(Answer::Proceed);
                vec![
                    Effect::Revenue,
                    Effect::Record { durable: false },
                    Effect::KeepRedeemable,
                ]
            }
            Outcome::Settled { transaction } => {
                self.state = State::Settled { transaction };
                let mut fx = vec![Effect::Revenue];
                fx.extend(self.after_settled(now_ms));
                fx
            }
            Outcome::Failed { reason } => {
                let transaction = self.state.transaction().map(str::to_owned);
                let reason = ErrorReason::parse(&reason);
                self.state = State::Failed {
                    reason: reason.clone(),
                    transaction,
                };
                self.answer = Some(Answer::Refuse(Refusal::SettlementFailed(reason)));
                vec![
                    Effect::Record { durable: false },
                    Effect::Unredeemable,
                    Effect::Spend(Spent::Refused),
                    Effect::DropReservation,
                ]
            }
            Outcome::Open => {
                self.answer = Some(Answer::Refuse(Refusal::Pending));
                vec![Effect::Record { durable: false }, Effect::KeepRedeemable]
            }
        }
    }

    /// Settled: deliver now when the answer is going out; otherwise (before_upstream, or a
    /// redemption before forwarding) go on.
    fn after_settled(&mut self, now_ms: u64) -> Vec<Effect> {
        if self.serving {
            return self.deliver(now_ms);
        }
        self.answer = Some(Answer::Proceed);
        Vec::new()
    }

    /// Settled, and the paid answer goes out now: the delivery is durable first.
    fn deliver(&mut self, now_ms: u64) -> Vec<Effect> {
        let State::Settled { transaction } = &self.state else {
            return Vec::new();
        };
        if let Front::Auth { deadline_ms } = self.front {
            if now_ms > deadline_ms {
                // The proxy has likely given up waiting: kept redeemable, told to retry.
                self.answer = Some(Answer::Refuse(Refusal::Pending));
                return vec![Effect::Record { durable: false }, Effect::KeepRedeemable];
            }
        }
        self.state = State::Delivered {
            transaction: transaction.clone(),
        };
        self.awaiting = Some(Awaiting::DeliveredRecord);
        vec![Effect::Record { durable: true }]
    }

    /// The upstream gave no answer.
    fn upstream_failed(&mut self) -> Vec<Effect> {
        self.unserved(ErrorReason::UpstreamUnavailable)
    }

    /// Nothing is served (`502`): an open payment is given back; a settled one (before the
    /// upstream, or redeemed) stays redeemable.
    fn unserved(&mut self, reason: ErrorReason) -> Vec<Effect> {
        if self.state.is_open() {
            return self.not_served(reason, Refusal::Upstream);
        }
        if let State::Settled { .. } = self.state {
            self.answer = Some(Answer::Refuse(Refusal::Upstream));
            return vec![Effect::Record { durable: false }, Effect::KeepRedeemable];
        }
        Vec::new()
    }

    /// The paid answer did not reach the client: delivered becomes settled-undelivered again.
    fn not_delivered(&mut self) -> Vec<Effect> {
        if let State::Delivered { transaction } = &self.state {
            self.state = State::Settled {
                transaction: transaction.clone(),
            };
            return vec![Effect::Record { durable: false }, Effect::KeepRedeemable];
        }
        Vec::new()
    }

    /// The request ended: anything still open is given back (the last safety net); a
    /// settlement whose answer never came (the request was dropped meanwhile) is unknown and
    /// stays redeemable.
    fn ended(&mut self) -> Vec<Effect> {
        if self.state.is_open() {
            let mut fx = self.give_back(ErrorReason::NotServed);
            fx.push(Effect::DropReservation);
            return fx;
        }
        if self.state == State::Settling && self.awaiting == Some(Awaiting::Settle) {
            self.awaiting = None;
            self.state = State::Unknown {
                reason: ErrorReason::SettlementUnknown,
                transaction: None,
            };
            return vec![Effect::Record { durable: false }, Effect::KeepRedeemable];
        }
        Vec::new()
    }

    /// Nothing was served and nothing settled: answer `refusal`.
    fn not_served(&mut self, reason: ErrorReason, refusal: Refusal) -> Vec<Effect> {
        if !self.state.is_open() {
            return Vec::new();
        }
        let mut fx = self.give_back(reason);
        fx.push(Effect::DropReservation);
        self.answer = Some(Answer::Refuse(refusal));
        fx
    }

    fn give_back(&mut self, reason: ErrorReason) -> Vec<Effect> {
        self.state = State::Released { reason };
        vec![Effect::ReleaseClaim, Effect::Record { durable: false }]
    }
}
