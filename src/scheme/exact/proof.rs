//! Reading one payment's settlement from a mined transaction's logs: the proof both the
//! embedded facilitator's batches and the journal's reconciler accept.
//!
//! Owns: [`Transfer3009`] (what an EIP-3009 payment must have emitted) and [`settled_in`].
//! Does not own: fetching receipts or logs (callers do, with their own timeouts).
//!
//! A payment is settled in a transaction when the token emitted `AuthorizationUsed(from, nonce)`
//! together with `Transfer(from, payTo, value)` for it. A batch transaction holds many such
//! pairs, possibly several from one payer to one recipient; a payment must not borrow another
//! one's `Transfer`. EIP-3009's reference implementation (and Circle's FiatToken) marks the
//! authorization used and then transfers, so each `AuthorizationUsed` is directly followed by
//! its own `Transfer` among the token's logs. With a single `AuthorizationUsed` in the
//! transaction there is nothing to confuse, and any matching `Transfer` of the token counts
//! (whatever order a token emits them in).

use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::Log;

alloy::sol! {
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// What a settled EIP-3009 payment leaves in its transaction's logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer3009 {
    /// The token contract (the logs' address).
    pub asset: Address,
    /// The payer (`authorizer`, `from`).
    pub from: Address,
    /// The authorization's nonce.
    pub nonce: B256,
    /// The recipient.
    pub to: Address,
    /// The amount, atomic units.
    pub value: U256,
}

/// Whether `logs` (one transaction's, in emission order) hold this payment's
/// `AuthorizationUsed` and its own `Transfer`.
pub fn settled_in(logs: &[Log], p: &Transfer3009) -> bool {
    let token: Vec<&Log> = logs.iter().filter(|l| l.address() == p.asset).collect();
    let used = |l: &Log| {
        l.log_decode::<AuthorizationUsed>()
            .ok()
            .map(|d| d.inner.data)
    };
    let is_ours = |l: &Log| used(l).is_some_and(|u| u.authorizer == p.from && u.nonce == p.nonce);
    let pays = |l: &Log| {
        l.log_decode::<Transfer>().is_ok_and(|d| {
            d.inner.data.from == p.from && d.inner.data.to == p.to && d.inner.data.value == p.value
        })
    };
    let Some(at) = token.iter().position(|l| is_ours(l)) else {
        return false;
    };
    if token.iter().filter(|l| used(l).is_some()).count() == 1 {
        token.iter().any(|l| pays(l))
    } else {
        token.get(at + 1).is_some_and(|l| pays(l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, LogData};
    use alloy::sol_types::SolEvent;

    const USDC: Address = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
    const A: Address = address!("70997970C51812dc3A010C7d01b50e0d17dc79C8");
    const US: Address = address!("7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24");
    const ELSEWHERE: Address = address!("90F79bf6EB2c4f870365E785982E1f101E93b906");

    fn log(address: Address, data: LogData) -> Log {
        Log {
            inner: alloy::primitives::Log { address, data },
            ..Default::default()
        }
    }

    fn used(nonce: u8) -> Log {
        log(
            USDC,
            AuthorizationUsed {
                authorizer: A,
                nonce: B256::repeat_byte(nonce),
            }
            .encode_log_data(),
        )
    }

    fn transfer(to: Address, value: u64) -> Log {
        log(
            USDC,
            Transfer {
                from: A,
                to,
                value: U256::from(value),
            }
            .encode_log_data(),
        )
    }

    fn payment(nonce: u8, value: u64) -> Transfer3009 {
        Transfer3009 {
            asset: USDC,
            from: A,
            nonce: B256::repeat_byte(nonce),
            to: US,
            value: U256::from(value),
        }
    }

    #[test]
    fn a_single_payment_needs_its_authorization_and_transfer() {
        assert!(settled_in(&[used(1), transfer(US, 10)], &payment(1, 10)));
        // Either order, with one authorization in the transaction.
        assert!(settled_in(&[transfer(US, 10), used(1)], &payment(1, 10)));
        assert!(!settled_in(&[used(1)], &payment(1, 10)));
        assert!(!settled_in(&[transfer(US, 10)], &payment(1, 10)));
        assert!(!settled_in(&[used(1), transfer(US, 9)], &payment(1, 10)));
        assert!(!settled_in(
            &[used(1), transfer(ELSEWHERE, 10)],
            &payment(1, 10)
        ));
        assert!(!settled_in(&[used(2), transfer(US, 10)], &payment(1, 10)));
        // Logs of another contract never count.
        let mut fake = used(1);
        fake.inner.address = ELSEWHERE;
        assert!(!settled_in(&[fake, transfer(US, 10)], &payment(1, 10)));
    }

    #[test]
    fn in_a_batch_each_authorization_is_paired_with_its_own_transfer() {
        // Two payments of one payer, equal amounts: both settled.
        let logs = [used(1), transfer(US, 10), used(2), transfer(US, 10)];
        assert!(settled_in(&logs, &payment(1, 10)));
        assert!(settled_in(&logs, &payment(2, 10)));
        // Authorization 1 paid someone else: it must not borrow authorization 2's transfer.
        let logs = [used(1), transfer(ELSEWHERE, 10), used(2), transfer(US, 10)];
        assert!(!settled_in(&logs, &payment(1, 10)));
        assert!(settled_in(&logs, &payment(2, 10)));
        // A failed call in the batch left no logs: its payment is not settled.
        let logs = [used(2), transfer(US, 10), used(3), transfer(US, 10)];
        assert!(!settled_in(&logs, &payment(1, 10)));
    }
}

/// What is read of one payment's fate on chain.
#[derive(Clone, Copy, Debug)]
pub struct Settlement<'a> {
    /// The payment.
    pub payment: Transfer3009,
    /// Our own transaction for it, if one was sent (its receipt is the cheapest proof).
    pub transaction: Option<&'a str>,
    /// A block at or before which nothing of it was sent (where log searches start).
    pub from_block: u64,
    /// Its authorization's `validBefore`.
    pub valid_before: u64,
}

alloy::sol! {
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);
}

/// Reads an authorization's fate, always at a mined block:
/// - **settled** means the token's `AuthorizationUsed(authorizer, nonce)` event, with the
///   payment's own `Transfer(from, payTo, value)` in the same transaction ([`settled_in`]),
///   whoever submitted it. `authorizationState` alone is never enough: it is also true after
///   the payer's `cancelAuthorization`, or when the authorization paid someone else;
/// - **failed** means: cancelled (`AuthorizationCanceled`), used in a transaction that did not
///   pay us, or still unused at a block whose timestamp is at or past `validBefore` (the token
///   refuses it from then on);
/// - anything else is **open**.
///
/// # Errors
/// The RPC failed (the caller reads that as open).
pub async fn read_fate(
    p: &alloy::providers::DynProvider,
    s: &Settlement<'_>,
) -> Result<crate::flow::Outcome, String> {
    use crate::flow::Outcome;
    use alloy::network::TransactionBuilder;
    use alloy::providers::Provider;
    use alloy::rpc::types::{Filter, TransactionRequest};
    use alloy::sol_types::SolEvent;
    use std::future::IntoFuture;
    let e = &s.payment;
    let err = |x: alloy::transports::TransportError| x.to_string();
    // Our own transaction first.
    if let Some(hash) = s.transaction.and_then(|t| t.parse::<B256>().ok()) {
        if let Some(r) = p.get_transaction_receipt(hash).await.map_err(err)? {
            if r.status() && settled_in(r.inner.logs(), e) {
                return Ok(Outcome::Settled {
                    transaction: hash.to_string(),
                });
            }
        }
    }
    let topic_from = B256::left_padding_from(e.from.as_slice());
    let used = Filter::new()
        .address(e.asset)
        .event_signature(AuthorizationUsed::SIGNATURE_HASH)
        .topic1(topic_from)
        .topic2(e.nonce)
        .from_block(s.from_block);
    for log in p.get_logs(&used).await.map_err(err)? {
        let Some(hash) = log.transaction_hash else {
            continue;
        };
        let Some(r) = p.get_transaction_receipt(hash).await.map_err(err)? else {
            continue;
        };
        return Ok(if r.status() && settled_in(r.inner.logs(), e) {
            Outcome::Settled {
                transaction: hash.to_string(),
            }
        } else {
            Outcome::Failed {
                reason: "authorization_used_elsewhere".into(),
            }
        });
    }
    let cancelled = Filter::new()
        .address(e.asset)
        .event_signature(AuthorizationCanceled::SIGNATURE_HASH)
        .topic1(topic_from)
        .topic2(e.nonce)
        .from_block(s.from_block);
    if !p.get_logs(&cancelled).await.map_err(err)?.is_empty() {
        return Ok(Outcome::Failed {
            reason: "authorization_cancelled".into(),
        });
    }
    // Unused so far: it can still settle until the chain's time passes validBefore.
    let tx =
        TransactionRequest::default()
            .with_to(e.asset)
            .with_input(alloy::primitives::Bytes::from(
                super::onchain::authorization_state_input(e.from, e.nonce),
            ));
    let state = p.call(tx).latest().into_future().await.map_err(err)?;
    if super::onchain::decode_authorization_state(&state)? {
        // Used, yet no event found from `from_block`: keep looking (never counted as ours).
        return Ok(Outcome::Open);
    }
    let latest = p
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .map_err(err)?
        .ok_or("no latest block")?;
    if latest.header.timestamp >= s.valid_before {
        return Ok(Outcome::Failed {
            reason: "authorization_expired_unused".into(),
        });
    }
    Ok(Outcome::Open)
}
