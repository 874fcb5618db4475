use super::*;
use crate::ledger::ReplayKey;
use crate::protocol::{self, X402Version};
use alloy::primitives::{Address, B256, U256};

fn answer(json: &str) -> Result<SettleResponse, FacilitatorError> {
    Ok(serde_json::from_str(json).unwrap())
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
        valid_before: 2_000_000_000,
        pay_to: Address::repeat_byte(3),
        caip2: "eip155:84532".into(),
    }
}

fn decoded(r: Option<(http::HeaderName, String)>) -> SettleResponse {
    let (_, value) = r.expect("a receipt");
    serde_json::from_slice(&protocol::decode_header(value.as_bytes()).unwrap()).unwrap()
}

#[test]
fn only_success_with_a_transaction_is_settled() {
    assert_eq!(
        classify(answer(
            r#"{"success":true,"transaction":"0x1","network":"x"}"#
        )),
        Settled::Yes {
            transaction: "0x1".into()
        }
    );
    // A success without a transaction, or an answer without `success`: it may have happened.
    for json in [
        r#"{"success":true,"transaction":""}"#,
        r#"{"transaction":"0xabc","network":"eip155:84532"}"#,
    ] {
        assert!(
            matches!(classify(answer(json)), Settled::Unknown { .. }),
            "{json}"
        );
    }
}

#[test]
fn refusals_keep_their_transaction_and_reason() {
    assert_eq!(
        classify(answer(
            r#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"x"}"#
        )),
        Settled::No {
            reason: ErrorReason::Other("insufficient_funds".into()),
            transaction: None
        }
    );
    let reverted = classify(answer(
        r#"{"success":false,"errorReason":"invalid_exact_evm_transaction_failed","transaction":"0xdead"}"#,
    ));
    assert_eq!(
        reverted,
        Settled::No {
            reason: ErrorReason::TransactionFailed,
            transaction: Some("0xdead".into())
        }
    );
    assert!(
        !reverted.is_final_refusal(),
        "a transaction was sent: the chain decides"
    );
    let used = classify(answer(
        r#"{"success":false,"errorReason":"invalid_exact_evm_nonce_already_used","transaction":""}"#,
    ));
    assert!(
        !used.is_final_refusal(),
        "a used nonce may be our own transfer"
    );
}

#[test]
fn pending_timeouts_and_outages_are_told_apart() {
    assert_eq!(
        classify(answer(
            r#"{"success":false,"errorReason":"settlement_pending","transaction":"0xbeef"}"#
        )),
        Settled::Unknown {
            reason: ErrorReason::SettlementPending,
            transaction: Some("0xbeef".into())
        }
    );
    let timeout = FacilitatorError::Timeout {
        url: "u".into(),
        timeout: std::time::Duration::from_secs(1),
    };
    assert_eq!(
        classify(Err(timeout)),
        Settled::Unknown {
            reason: ErrorReason::SettlementTimeout,
            transaction: None
        }
    );
    let refused = FacilitatorError::Unreachable {
        url: "u".into(),
        source: "refused".into(),
        connect: true,
    };
    assert_eq!(
        classify(Err(refused)),
        Settled::NotSent {
            reason: ErrorReason::FacilitatorUnreachable
        }
    );
    assert_eq!(
        classify(Err(FacilitatorError::Busy)),
        Settled::NotSent {
            reason: ErrorReason::FacilitatorBusy
        }
    );
}

#[test]
fn receipts_say_what_became_of_the_payment() {
    let v = verified();
    let ok = decoded(receipt(
        &v,
        &State::Delivered {
            transaction: "0x1".into(),
        },
    ));
    assert!(ok.is_success());
    let pending = decoded(receipt(
        &v,
        &State::Unknown {
            reason: ErrorReason::SettlementTimeout,
            transaction: Some("0xbeef".into()),
        },
    ));
    assert_eq!(pending.error_reason.as_deref(), Some("settlement_pending"));
    assert_eq!(pending.transaction.as_deref(), Some("0xbeef"));
    let queued = decoded(receipt(&v, &State::Queued));
    assert_eq!(queued.success, Some(true));
    assert!(receipt(
        &v,
        &State::Released {
            reason: ErrorReason::UpstreamError
        }
    )
    .is_none());
}
