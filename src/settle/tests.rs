use std::sync::Mutex;

use alloy::primitives::{Address, B256, U256};
use async_trait::async_trait;

use super::*;
use crate::protocol::{self, SettleResponse, SupportedResponse, VerifyResponse, X402Version};
use crate::verify::{unix_now, Held, ReplayGuard, ReplayKey};

struct Scripted(Mutex<Option<Result<SettleResponse, FacilitatorError>>>);

#[async_trait]
impl Facilitator for Scripted {
    async fn verify(&self, _: &str) -> Result<VerifyResponse, FacilitatorError> {
        unreachable!("settlement never verifies")
    }
    async fn settle(&self, _: &str) -> Result<SettleResponse, FacilitatorError> {
        self.0.lock().unwrap().take().expect("settle called twice")
    }
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        Ok(SupportedResponse::default())
    }
}

fn verified() -> Verified {
    Verified {
        version: X402Version::V2,
        option: 0,
        payer: Address::repeat_byte(2),
        amount: U256::from(1000),
        network: "eip155:84532".into(),
        facilitator_body: "{}".into(),
        key: ReplayKey {
            chain_id: 84532,
            asset: Address::repeat_byte(1),
            from: Address::repeat_byte(2),
            nonce: B256::ZERO,
        },
        valid_before: unix_now() + 300,
        pay_to: Address::repeat_byte(3),
        caip2: "eip155:84532".into(),
    }
}

fn settle_response(json: &str) -> Result<SettleResponse, FacilitatorError> {
    Ok(serde_json::from_str(json).unwrap())
}

/// A verified payment holding its authorization in `replay`.
fn held(replay: &Arc<ReplayGuard>) -> Payment {
    let v = verified();
    replay
        .acquire(v.key.clone(), v.valid_before, unix_now())
        .unwrap();
    let hold = Hold::new(replay.clone(), v.key.clone(), v.valid_before);
    Payment::new(
        v,
        SettlementMode::AfterResponse,
        hold,
        "/paid/**".into(),
        "http://gw/paid/x".into(),
    )
}

async fn run(answer: Result<SettleResponse, FacilitatorError>) -> (Payment, Arc<ReplayGuard>) {
    let replay = Arc::new(ReplayGuard::new(100));
    let mut p = held(&replay);
    p.forwarded();
    Settler::new(Arc::new(Scripted(Mutex::new(Some(answer)))))
        .settle(&mut p)
        .await;
    (p, replay)
}

#[tokio::test]
async fn success_settles_with_a_receipt() {
    let (p, replay) = run(settle_response(
        r#"{"success":true,"transaction":"0xabc","network":"eip155:84532"}"#,
    ))
    .await;
    assert_eq!(
        p.state(),
        &PaymentState::Settled {
            transaction: "0xabc".into()
        }
    );
    let (name, value) = p.receipt().unwrap();
    assert_eq!(name, protocol::PAYMENT_RESPONSE);
    let r: SettleResponse =
        serde_json::from_slice(&protocol::decode_header(value.as_bytes()).unwrap()).unwrap();
    assert!(r.is_success());
    assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
}

#[tokio::test]
async fn failures_never_count_as_settled() {
    for (answer, held) in [
        (
            settle_response(
                r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#,
            ),
            None,
        ),
        // No `success`, but a transaction: it may have been mined, so it stays used.
        (
            settle_response(r#"{"transaction":"0xabc","network":"eip155:84532"}"#),
            Some(Held::Used),
        ),
        (
            settle_response(r#"{"success":true,"transaction":""}"#),
            None,
        ),
    ] {
        let (p, replay) = run(answer).await;
        assert!(
            matches!(p.state(), PaymentState::Failed { .. }),
            "{:?}",
            p.state()
        );
        let (_, value) = p.receipt().unwrap();
        let r: SettleResponse =
            serde_json::from_slice(&protocol::decode_header(value.as_bytes()).unwrap()).unwrap();
        assert!(!r.is_success());
        // Refused without a transaction: the chain refuses it again, so nothing is held.
        assert_eq!(replay.state(&p.verified.key), held);
    }
    // A failure with a transaction (mined and reverted) stays used.
    let (p, replay) = run(settle_response(
        r#"{"success":false,"errorReason":"invalid_exact_evm_transaction_failed","transaction":"0xdead","network":"eip155:84532"}"#,
    ))
    .await;
    assert_eq!(
        p.state(),
        &PaymentState::Failed {
            reason: ErrorReason::TransactionFailed
        }
    );
    assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
}

#[tokio::test]
async fn a_facilitator_never_reached_releases_the_payment() {
    let e = FacilitatorError::Unreachable {
        url: "u".into(),
        source: "refused".into(),
        connect: true,
    };
    let (p, replay) = run(Err(e)).await;
    assert_eq!(
        p.state(),
        &PaymentState::Released {
            reason: ErrorReason::FacilitatorUnreachable
        }
    );
    assert_eq!(replay.state(&p.verified.key), None);
    let (p, _) = run(Err(FacilitatorError::Busy)).await;
    assert_eq!(p.failure_reason(), Some(&ErrorReason::FacilitatorBusy));
}

#[tokio::test]
async fn a_pending_settlement_is_unknown_with_its_transaction() {
    let (p, replay) = run(settle_response(
        r#"{"success":false,"errorReason":"settlement_pending","transaction":"0xbeef","network":"eip155:84532"}"#,
    ))
    .await;
    assert_eq!(
        p.state(),
        &PaymentState::Unknown {
            reason: ErrorReason::SettlementPending,
            transaction: Some("0xbeef".into())
        }
    );
    assert_eq!(p.transaction(), Some("0xbeef"));
    assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
}

#[tokio::test]
async fn a_timeout_is_unknown_not_failed() {
    let e = FacilitatorError::Timeout {
        url: "u".into(),
        timeout: std::time::Duration::from_secs(1),
    };
    let (p, replay) = run(Err(e)).await;
    assert_eq!(
        p.state(),
        &PaymentState::Unknown {
            reason: ErrorReason::SettlementTimeout,
            transaction: None
        }
    );
    assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
}

#[tokio::test]
async fn release_gives_back_only_unsettled_payments() {
    let replay = Arc::new(ReplayGuard::new(100));
    let mut p = held(&replay);
    assert_eq!(replay.state(&p.verified.key), Some(Held::InFlight));
    p.release(ErrorReason::UpstreamError);
    assert_eq!(p.state().name(), "released");
    assert_eq!(replay.state(&p.verified.key), None);
    assert!(p.receipt().is_none());
    // A settled payment cannot be released.
    let (mut settled, replay) = run(settle_response(
        r#"{"success":true,"transaction":"0x1","network":"x"}"#,
    ))
    .await;
    settled.release(ErrorReason::NotServed);
    assert_eq!(settled.state().name(), "settled");
    assert_eq!(replay.state(&settled.verified.key), Some(Held::Used));
}

#[test]
fn dropping_a_payment_gives_its_authorization_back() {
    let replay = Arc::new(ReplayGuard::new(100));
    let p = held(&replay);
    let key = p.verified.key.clone();
    assert_eq!(replay.state(&key), Some(Held::InFlight));
    drop(p);
    assert_eq!(replay.state(&key), None);
}
