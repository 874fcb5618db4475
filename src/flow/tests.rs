//! The decision table of the payment flow, without sockets or a runtime: every combination of
//! settlement mode (and deferral), front door, upstream status, facilitator answer, chain
//! reading, journal failure and timing is run through the flow by a scripted world, and checked
//! against the rules (invariants that hold in every case) and against an independent oracle of
//! what the client must get.

use super::*;
use crate::config::SettlementMode;

mod examples;

const NOW: u64 = 1_800_000_000_000;

/// How a route settles, as admission left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Before,
    After,
    /// A deferred route's payment within the caps (reserved at admission).
    Deferred,
    /// A deferred route's payment over a cap at admission: settled first, shared batches.
    DeferredFallback,
}

/// What the upstream did (the proxy), or that forward-auth asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Upstream {
    Status(u16),
    /// `101` on a route that allows websockets.
    Websocket,
    /// `101` on a route that does not.
    Tunnel,
    /// No answer (connect failure, reset).
    Failed,
    /// The client left before the upstream answered.
    Gone,
    /// Forward-auth: allow? (within the proxy's patience, or after it).
    Authorize {
        late: bool,
    },
}

/// Which durable record fails (the journal's disk is full at that moment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Disk {
    Ok,
    FailsBeforeSettling,
    FailsBeforeRelease,
}

#[derive(Clone, Debug)]
struct Case {
    mode: Mode,
    upstream: Upstream,
    settle: Settled,
    chain: Outcome,
    disk: Disk,
    /// The deferral re-checked at release (deferred routes).
    deferral: Result<(), Fallback>,
}

#[derive(Debug, Default)]
struct Trace {
    effects: Vec<Effect>,
    answers: Vec<Answer>,
    /// The state when each durable record was made, and whether it committed.
    durable: Vec<(State, bool)>,
}

impl Trace {
    fn count(&self, f: impl Fn(&Effect) -> bool) -> usize {
        self.effects.iter().filter(|e| f(e)).count()
    }
    fn position(&self, f: impl Fn(&Effect) -> bool) -> Option<usize> {
        self.effects.iter().position(f)
    }
    fn final_answer(&self) -> Option<&Answer> {
        self.answers
            .iter()
            .rev()
            .find(|a| !matches!(a, Answer::Interim | Answer::Proceed))
    }
}

fn flow_of(c: &Case) -> PaymentFlow {
    let front = match c.upstream {
        Upstream::Authorize { late } => Front::Auth {
            deadline_ms: if late { NOW - 1 } else { NOW + 60_000 },
        },
        _ => Front::Proxy,
    };
    let (mode, reserved) = match c.mode {
        Mode::Before => (SettlementMode::BeforeUpstream, false),
        Mode::After => (SettlementMode::AfterResponse, false),
        Mode::Deferred => (SettlementMode::Deferred, true),
        Mode::DeferredFallback => (SettlementMode::Deferred, false),
    };
    PaymentFlow::new(mode, front, reserved, true)
}

/// Runs the case: the adapter's events, each effect answered by the scripted world.
fn run(c: &Case) -> (PaymentFlow, Trace) {
    let mut flow = flow_of(c);
    let mut t = Trace::default();
    let script: Vec<Event> = match c.upstream {
        Upstream::Authorize { .. } => vec![Event::Authorize, Event::Ended],
        Upstream::Gone => vec![Event::Forwarding, Event::Ended],
        Upstream::Failed => vec![
            Event::Forwarding,
            Event::Connected,
            Event::UpstreamFailed,
            Event::Ended,
        ],
        Upstream::Status(s) => vec![
            Event::Forwarding,
            Event::Connected,
            Event::Upstream {
                status: s,
                websocket: false,
            },
            Event::Ended,
        ],
        Upstream::Websocket | Upstream::Tunnel => vec![
            Event::Forwarding,
            Event::Connected,
            Event::Upstream {
                status: 101,
                websocket: c.upstream == Upstream::Websocket,
            },
            Event::Ended,
        ],
    };
    let mut stopped = false;
    for event in script {
        if stopped && event != Event::Ended {
            continue;
        }
        let mut queue = vec![event];
        while let Some(ev) = queue.pop() {
            for effect in flow.step(ev, NOW) {
                t.effects.push(effect.clone());
                if let Some(reply) = reply(c, &flow, &effect, &mut t) {
                    queue.push(reply);
                }
            }
        }
        if let Some(a) = flow.take_answer() {
            // The proxy stops at a refusal before the upstream (before_upstream): it answers.
            if matches!(a, Answer::Refuse(_)) {
                stopped = true;
            }
            t.answers.push(a);
        }
    }
    (flow, t)
}

fn reply(c: &Case, flow: &PaymentFlow, effect: &Effect, t: &mut Trace) -> Option<Event> {
    match effect {
        Effect::Record { durable: true } => {
            let ok = !matches!(
                (c.disk, flow.state()),
                (Disk::FailsBeforeSettling, State::Settling)
                    | (
                        Disk::FailsBeforeRelease,
                        State::Queued | State::Delivered { .. }
                    )
            );
            t.durable.push((flow.state().clone(), ok));
            Some(Event::Recorded(ok))
        }
        Effect::Settle { .. } => Some(Event::SettleAnswered(c.settle.clone())),
        Effect::Resolve => Some(Event::Resolved(c.chain.clone())),
        Effect::CheckDeferral => Some(Event::Deferral(c.deferral)),
        _ => None,
    }
}

// === The oracle ===

/// What the client must get, decided from the case alone.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expect {
    /// The upstream's answer, paid (`queued`: on credit).
    Paid { queued: bool },
    /// The upstream's answer, nothing charged (or paid and redeemable: `receipt`).
    Unpaid,
    /// Our refusal.
    Refused(Refusal),
    /// Nothing decided yet (a websocket tunnel the proxy passes, an interim answer).
    Nothing,
}

fn expect(c: &Case) -> Expect {
    let serving = match c.upstream {
        Upstream::Status(s) if s < 400 => true,
        Upstream::Websocket | Upstream::Authorize { .. } => true,
        _ => false,
    };
    let before = c.mode == Mode::Before
        && !matches!(c.upstream, Upstream::Authorize { .. } | Upstream::Gone);
    // What settling leads to, when it happens.
    let settled = || -> Result<(), Refusal> {
        if c.disk == Disk::FailsBeforeSettling {
            return Err(Refusal::JournalUnavailable);
        }
        match &c.settle {
            Settled::Yes { .. } => Ok(()),
            Settled::NotSent { reason } => Err(Refusal::NotAttempted(reason.clone())),
            s if s.is_final_refusal() => match s {
                Settled::No { reason, .. } => Err(Refusal::SettlementFailed(reason.clone())),
                _ => unreachable!(),
            },
            _ => match &c.chain {
                Outcome::Settled { .. } => Ok(()),
                Outcome::Failed { reason } => {
                    Err(Refusal::SettlementFailed(ErrorReason::parse(reason)))
                }
                Outcome::Open => Err(Refusal::Pending),
            },
        }
    };
    let deliver = |late: bool| -> Expect {
        if late {
            return Expect::Refused(Refusal::Pending);
        }
        if c.disk == Disk::FailsBeforeRelease {
            return Expect::Refused(Refusal::JournalUnavailable);
        }
        Expect::Paid { queued: false }
    };
    let late = matches!(c.upstream, Upstream::Authorize { late: true });
    if before {
        // Settled once the upstream connection is up, before anything is sent.
        if let Err(r) = settled() {
            return Expect::Refused(r);
        }
        return match c.upstream {
            Upstream::Failed | Upstream::Tunnel => Expect::Refused(Refusal::Upstream),
            _ if serving => deliver(false),
            _ => Expect::Unpaid,
        };
    }
    match c.upstream {
        Upstream::Gone => return Expect::Nothing,
        Upstream::Failed | Upstream::Tunnel => return Expect::Refused(Refusal::Upstream),
        _ if !serving => return Expect::Unpaid,
        _ => {}
    }
    if c.mode == Mode::Deferred && c.deferral.is_ok() {
        if c.disk == Disk::FailsBeforeRelease {
            return Expect::Refused(Refusal::JournalUnavailable);
        }
        return Expect::Paid { queued: true };
    }
    match settled() {
        Ok(()) => deliver(late),
        Err(r) => Expect::Refused(r),
    }
}

fn observed(t: &Trace) -> Expect {
    match t.final_answer() {
        None => Expect::Nothing,
        Some(Answer::Pass {
            private: true,
            queued,
        }) => Expect::Paid { queued: *queued },
        Some(Answer::Pass { private: false, .. }) => Expect::Unpaid,
        Some(Answer::Refuse(r)) => Expect::Refused(r.clone()),
        Some(a) => panic!("not a final answer: {a:?}"),
    }
}

// === The rules ===

fn check_rules(c: &Case, flow: &PaymentFlow, t: &Trace) {
    let ctx = || format!("{c:?}\n{t:#?}\nfinal state {:?}", flow.state());
    let settles = t.count(|e| matches!(e, Effect::Settle { .. }));
    assert!(settles <= 1, "settled twice: {}", ctx());
    if let Some(at) = t.position(|e| matches!(e, Effect::Settle { .. })) {
        // Settled only after the `settling` record committed, with the claim consumed first.
        assert!(
            t.durable.iter().any(|(s, ok)| *s == State::Settling && *ok),
            "settled without a durable settling record: {}",
            ctx()
        );
        assert_eq!(
            t.effects.get(at.wrapping_sub(1)),
            Some(&Effect::Spend(Spent::Settling)),
            "the claim is spent just before /settle: {}",
            ctx()
        );
        // A deferred route's payment settled before release uses the shared batches.
        let shared = matches!(c.mode, Mode::Deferred | Mode::DeferredFallback);
        assert_eq!(t.effects[at], Effect::Settle { shared }, "{}", ctx());
    }
    // Paid content goes out only delivered (durable) or queued (durable, re-checked).
    if let Some(Answer::Pass {
        private: true,
        queued,
    }) = t.final_answer()
    {
        if *queued {
            assert_eq!(flow.state(), &State::Queued, "{}", ctx());
            assert!(
                t.durable.iter().any(|(s, ok)| *s == State::Queued && *ok),
                "{}",
                ctx()
            );
            assert!(
                c.deferral.is_ok(),
                "released on credit after a failed re-check: {}",
                ctx()
            );
            assert_eq!(t.count(|e| *e == Effect::Enqueue), 1, "{}", ctx());
        } else {
            assert!(matches!(flow.state(), State::Delivered { .. }), "{}", ctx());
            assert!(
                t.durable
                    .iter()
                    .any(|(s, ok)| matches!(s, State::Delivered { .. }) && *ok),
                "paid content without a durable delivery: {}",
                ctx()
            );
        }
    }
    // An unknown outcome is never a 402.
    if matches!(flow.state(), State::Unknown { .. }) {
        assert_eq!(
            t.final_answer(),
            Some(&Answer::Refuse(Refusal::Pending)),
            "{}",
            ctx()
        );
        assert!(t.effects.contains(&Effect::KeepRedeemable), "{}", ctx());
    }
    // A claim is given back or kept, never both; given back only if nothing was attempted.
    let consumed = t.position(|e| matches!(e, Effect::Spend(_)));
    let released = t.position(|e| *e == Effect::ReleaseClaim);
    if let (Some(c_at), Some(r_at)) = (consumed, released) {
        panic!("claim consumed at {c_at} and released at {r_at}: {}", ctx());
    }
    if released.is_some() {
        assert_eq!(settles, 0, "{}", ctx());
        assert!(matches!(flow.state(), State::Released { .. }), "{}", ctx());
    }
    if flow.state().is_open() {
        panic!("the request ended with its payment still open: {}", ctx());
    }
    // A reserved payment that was not queued gives its reservation back.
    if c.mode == Mode::Deferred && flow.state() != &State::Queued {
        assert!(t.effects.contains(&Effect::DropReservation), "{}", ctx());
    }
    if let Some(q) = t.position(|e| *e == Effect::Enqueue) {
        assert!(
            !t.effects[q..].contains(&Effect::DropReservation),
            "the queue holds the reservation: {}",
            ctx()
        );
    }
    // A retry of a spent authorization is told what became of it: an answer that went out is
    // never followed by a 402 (the client would pay again); a refusal for good is.
    let last_spend = t.effects.iter().rev().find_map(|e| match e {
        Effect::Spend(s) => Some(*s),
        _ => None,
    });
    if matches!(t.final_answer(), Some(Answer::Pass { private: true, .. })) {
        assert_eq!(last_spend, Some(Spent::Answered), "{}", ctx());
    }
    if matches!(flow.state(), State::Failed { .. }) && consumed.is_some() {
        assert!(
            last_spend == Some(Spent::Refused) || t.effects.contains(&Effect::ForgetClaim),
            "a failed payment's retry would wait for nothing: {}",
            ctx()
        );
    }
    if matches!(flow.state(), State::Unknown { .. } | State::Settled { .. }) {
        assert_ne!(last_spend, Some(Spent::Refused), "{}", ctx());
    }
    // A settled payment whose answer did not go out stays redeemable.
    if matches!(flow.state(), State::Settled { .. }) {
        assert!(t.effects.contains(&Effect::KeepRedeemable), "{}", ctx());
    }
    // An upstream error never charges an after-response or deferred payment.
    if matches!(c.upstream, Upstream::Status(s) if s >= 400) && c.mode != Mode::Before {
        assert_eq!(settles, 0, "charged for an upstream error: {}", ctx());
    }
}

// === The table ===

fn settle_answers() -> Vec<Settled> {
    vec![
        Settled::Yes {
            transaction: "0x1".into(),
        },
        Settled::No {
            reason: ErrorReason::InsufficientBalance,
            transaction: None,
        },
        Settled::No {
            reason: ErrorReason::TransactionFailed,
            transaction: Some("0xdead".into()),
        },
        Settled::No {
            reason: ErrorReason::NonceAlreadyUsed,
            transaction: None,
        },
        Settled::Unknown {
            reason: ErrorReason::SettlementPending,
            transaction: Some("0xbeef".into()),
        },
        Settled::Unknown {
            reason: ErrorReason::SettlementTimeout,
            transaction: None,
        },
        Settled::NotSent {
            reason: ErrorReason::FacilitatorUnreachable,
        },
    ]
}

fn cases() -> Vec<Case> {
    let modes = [
        Mode::Before,
        Mode::After,
        Mode::Deferred,
        Mode::DeferredFallback,
    ];
    let upstreams = [
        Upstream::Status(200),
        Upstream::Status(204),
        Upstream::Status(304),
        Upstream::Status(404),
        Upstream::Status(500),
        Upstream::Websocket,
        Upstream::Tunnel,
        Upstream::Failed,
        Upstream::Gone,
        Upstream::Authorize { late: false },
        Upstream::Authorize { late: true },
    ];
    let chains = [
        Outcome::Settled {
            transaction: "0x2".into(),
        },
        Outcome::Failed {
            reason: "authorization_expired_unused".into(),
        },
        Outcome::Open,
    ];
    let mut out = Vec::new();
    for mode in modes {
        for upstream in upstreams {
            for settle in settle_answers() {
                for chain in &chains {
                    for disk in [
                        Disk::Ok,
                        Disk::FailsBeforeSettling,
                        Disk::FailsBeforeRelease,
                    ] {
                        for deferral in [Ok(()), Err(Fallback::Expiring)] {
                            if deferral.is_err() && mode != Mode::Deferred {
                                continue;
                            }
                            out.push(Case {
                                mode,
                                upstream,
                                settle: settle.clone(),
                                chain: chain.clone(),
                                disk,
                                deferral,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn the_decision_table() {
    let cases = cases();
    assert!(cases.len() > 2000, "{}", cases.len());
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for c in &cases {
        let (flow, t) = run(c);
        check_rules(c, &flow, &t);
        let want = expect(c);
        let got = observed(&t);
        assert_eq!(got, want, "{c:?}\n{t:#?}\nfinal state {:?}", flow.state());
        *outcomes.entry(format!("{want:?}")).or_default() += 1;
    }
    // Every kind of answer is reached by some case (the table is not vacuous).
    for kind in [
        "Paid { queued: false }",
        "Paid { queued: true }",
        "Unpaid",
        "Nothing",
    ] {
        assert!(
            outcomes.contains_key(kind),
            "{kind} never reached: {outcomes:?}"
        );
    }
    for r in [
        "Pending",
        "JournalUnavailable",
        "Upstream",
        "SettlementFailed",
        "NotAttempted",
    ] {
        assert!(
            outcomes.keys().any(|k| k.contains(r)),
            "{r} never reached: {outcomes:?}"
        );
    }
    eprintln!("decision table: {} cases, {outcomes:?}", cases.len());
}
