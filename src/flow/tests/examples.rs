//! Hand-written walks through single flows: redemption, a delivery that did not go out, a
//! request that ends while settling, and the states' journal names.

use super::super::*;
use super::NOW;
use crate::config::SettlementMode;
use crate::protocol::ErrorReason;

fn upstream_ok() -> Event {
    Event::Upstream {
        status: 200,
        websocket: false,
    }
}

/// Settles `f` (after_response) up to the paid answer: the upstream said 200, `settling` is
/// durable, `/settle` succeeded, `delivered` is durable.
fn deliver(f: &mut PaymentFlow) {
    assert!(f.step(Event::Forwarding, NOW).is_empty());
    assert_eq!(
        f.step(upstream_ok(), NOW),
        vec![Effect::Record { durable: true }]
    );
    assert_eq!(
        f.step(Event::Recorded(true), NOW),
        vec![
            Effect::Spend(Spent::Settling),
            Effect::Settle { shared: false }
        ]
    );
    let fx = f.step(
        Event::SettleAnswered(Settled::Yes {
            transaction: "0x1".into(),
        }),
        NOW,
    );
    assert_eq!(
        fx,
        vec![Effect::Revenue, Effect::Record { durable: true }],
        "delivered is durable before the answer"
    );
    assert_eq!(
        f.step(Event::Recorded(true), NOW),
        vec![Effect::Unredeemable, Effect::Spend(Spent::Answered)]
    );
}

#[test]
fn a_redeemed_unknown_payment_is_read_first_and_delivered_once_settled() {
    let unknown = State::Unknown {
        reason: ErrorReason::SettlementTimeout,
        transaction: Some("0x1".into()),
    };
    // Still open on chain: 503 again, redeemable.
    let mut f = PaymentFlow::redeem(unknown.clone(), Front::Proxy);
    assert_eq!(f.resume(), vec![Effect::Resolve]);
    assert!(f.is_waiting());
    assert_eq!(
        f.step(Event::Resolved(Outcome::Open), NOW),
        vec![Effect::Record { durable: false }, Effect::KeepRedeemable]
    );
    assert_eq!(f.take_answer(), Some(Answer::Refuse(Refusal::Pending)));

    // Settled on chain: redeemable now, and the retry that claims it is delivered once.
    let mut f = PaymentFlow::redeem(unknown, Front::Proxy);
    assert_eq!(f.resume(), vec![Effect::Resolve]);
    let fx = f.step(
        Event::Resolved(Outcome::Settled {
            transaction: "0x1".into(),
        }),
        NOW,
    );
    assert_eq!(
        fx,
        vec![
            Effect::Revenue,
            Effect::Record { durable: false },
            Effect::KeepRedeemable
        ]
    );
    assert_eq!(f.take_answer(), Some(Answer::Proceed));

    let mut f = PaymentFlow::redeem(
        State::Settled {
            transaction: "0x1".into(),
        },
        Front::Proxy,
    );
    assert!(f.resume().is_empty());
    assert!(f.step(Event::Forwarding, NOW).is_empty());
    assert_eq!(
        f.step(upstream_ok(), NOW),
        vec![Effect::Record { durable: true }]
    );
    assert_eq!(
        f.step(Event::Recorded(true), NOW),
        vec![Effect::Unredeemable, Effect::Spend(Spent::Answered)]
    );
    assert_eq!(
        f.take_answer(),
        Some(Answer::Pass {
            private: true,
            queued: false
        })
    );
    // Never settled again, whatever happens next.
    for e in [
        upstream_ok(),
        Event::Authorize,
        Event::UpstreamFailed,
        Event::Ended,
    ] {
        let fx = f.step(e, NOW);
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Settle { .. })),
            "{fx:?}"
        );
    }
}

#[test]
fn a_delivery_that_did_not_go_out_is_redeemable_again() {
    let mut f = PaymentFlow::new(SettlementMode::AfterResponse, Front::Proxy, false, false);
    deliver(&mut f);
    assert!(matches!(f.state(), State::Delivered { .. }));
    // The paid answer never reached the client (forward-auth: the proxy was gone).
    assert_eq!(
        f.step(Event::NotDelivered, NOW),
        vec![Effect::Record { durable: false }, Effect::KeepRedeemable]
    );
    assert_eq!(
        f.state(),
        &State::Settled {
            transaction: "0x1".into()
        }
    );
    // A journal that cannot make the delivery durable: nothing goes out, still redeemable.
    let mut f = PaymentFlow::new(SettlementMode::AfterResponse, Front::Proxy, false, false);
    f.step(Event::Forwarding, NOW);
    f.step(upstream_ok(), NOW);
    f.step(Event::Recorded(true), NOW);
    f.step(
        Event::SettleAnswered(Settled::Yes {
            transaction: "0x1".into(),
        }),
        NOW,
    );
    assert_eq!(
        f.step(Event::Recorded(false), NOW),
        vec![Effect::KeepRedeemable]
    );
    assert_eq!(
        f.take_answer(),
        Some(Answer::Refuse(Refusal::JournalUnavailable))
    );
    assert!(matches!(f.state(), State::Settled { .. }));
}

#[test]
fn a_request_that_ends_while_settling_stays_redeemable() {
    let mut f = PaymentFlow::new(SettlementMode::AfterResponse, Front::Proxy, false, false);
    f.step(Event::Forwarding, NOW);
    f.step(upstream_ok(), NOW);
    f.step(Event::Recorded(true), NOW);
    assert_eq!(f.state(), &State::Settling);
    // The request is dropped before `/settle` answers: the transfer may happen.
    assert_eq!(
        f.step(Event::Ended, NOW),
        vec![Effect::Record { durable: false }, Effect::KeepRedeemable]
    );
    assert!(matches!(f.state(), State::Unknown { .. }));
    // The late answer changes nothing now: the background reading decides.
    assert!(f
        .step(
            Event::SettleAnswered(Settled::Yes {
                transaction: "0x1".into()
            }),
            NOW
        )
        .is_empty());
}

#[test]
fn states_round_trip_through_their_record() {
    let states = [
        State::Verified,
        State::Forwarded,
        State::Settling,
        State::Settled {
            transaction: "0xab".into(),
        },
        State::Delivered {
            transaction: "0xab".into(),
        },
        State::Queued,
        State::Unknown {
            reason: ErrorReason::SettlementTimeout,
            transaction: Some("0xab".into()),
        },
        State::Failed {
            reason: ErrorReason::InsufficientBalance,
            transaction: None,
        },
    ];
    for s in states {
        let kind = Kind::parse(s.name()).unwrap();
        assert_eq!(kind, s.kind());
        let reason = s.reason().map(ErrorReason::as_str);
        assert_eq!(State::from_parts(kind, s.transaction(), reason), s, "{s:?}");
    }
    // A given-back payment is recorded failed, with its reason.
    let released = State::Released {
        reason: ErrorReason::UpstreamError,
    };
    assert_eq!(released.name(), "failed");
    assert_eq!(
        State::from_parts(Kind::Failed, None, Some("upstream_error")),
        State::Failed {
            reason: ErrorReason::UpstreamError,
            transaction: None
        }
    );
    for k in Kind::ALL {
        assert_eq!(Kind::parse(k.as_str()), Some(k));
    }
    assert!(Kind::Delivered.is_final() && Kind::Failed.is_final());
    assert!(!Kind::Unknown.is_final());
}
