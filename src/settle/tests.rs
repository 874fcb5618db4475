use std::sync::Mutex;

use alloy::primitives::{Address, B256, U256};
use async_trait::async_trait;

use super::*;
use crate::protocol::{self, SettleResponse, SupportedResponse, VerifyResponse, X402Version};
use crate::verify::{Held, ReplayKey};

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
    }
}

fn settle_response(json: &str) -> Result<SettleResponse, FacilitatorError> {
    Ok(serde_json::from_str(json).unwrap())
}

async fn run(answer: Result<SettleResponse, FacilitatorError>) -> (Payment, ReplayGuard) {
    let replay = ReplayGuard::new();
    let v = verified();
    replay
        .acquire(v.key.clone(), v.valid_before, unix_now())
        .unwrap();
    let mut p = Payment::new(v, SettlementMode::AfterResponse);
    p.forwarded();
    Settler::new(Arc::new(Scripted(Mutex::new(Some(answer)))))
        .settle(&mut p, &replay)
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
async fn failures_never_count_as_settled_and_burn_the_authorization() {
    for answer in [
        settle_response(
            r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#,
        ),
        settle_response(r#"{"transaction":"0xabc","network":"eip155:84532"}"#),
        settle_response(r#"{"success":true,"transaction":""}"#),
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
        assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
    }
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
            reason: "settlement_timeout".into()
        }
    );
    assert_eq!(replay.state(&p.verified.key), Some(Held::Used));
}

#[tokio::test]
async fn release_gives_back_only_unsettled_payments() {
    let replay = ReplayGuard::new();
    let v = verified();
    replay
        .acquire(v.key.clone(), v.valid_before, unix_now())
        .unwrap();
    let mut p = Payment::new(v, SettlementMode::AfterResponse);
    let s = Settler::new(Arc::new(Scripted(Mutex::new(None))));
    s.release(&mut p, &replay, "upstream_error");
    assert_eq!(p.state().name(), "released");
    assert_eq!(replay.state(&p.verified.key), None);
    assert!(p.receipt().is_none());
    // A settled payment cannot be released.
    let (mut settled, replay) = run(settle_response(
        r#"{"success":true,"transaction":"0x1","network":"x"}"#,
    ))
    .await;
    s.release(&mut settled, &replay, "late");
    assert_eq!(settled.state().name(), "settled");
}
