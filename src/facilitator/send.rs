//! Sending a settlement: signing `transferWithAuthorization` from one of the signers, sending
//! it, and waiting for our own mined receipt, with a dropped transaction sent again and a
//! signer's nonce taken again from the chain when a send fails.

use super::*;

/// How long a transaction may be unknown to the node before it is taken for dropped (and how
/// often that is looked at).
pub(super) const DROPPED_AFTER: Duration = Duration::from_secs(2);

/// Whether a node refused a raw transaction for a nonce already used (by another sender of the
/// same key): nothing was sent.
fn nonce_too_low(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("nonce too low") || m.contains("nonce has already been used")
}

/// Whether a node's refusal of a raw transaction means it has the transaction already (so it
/// *was* sent).
fn already_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("known transaction") || m.contains("already imported")
}

/// What became of a signed transaction.
pub(super) enum Sent {
    /// The node took it: its hash and its signed bytes (sent again if a node drops it).
    Sent(B256, Bytes),
    /// The send's answer was lost: it may be in a mempool. Its outcome is unknown.
    Lost(B256),
}

impl Core {
    /// Signs and sends the transfer, then waits for its receipt: success only from our own
    /// mined receipt with status 1.
    pub(super) async fn submit(&self, c: &Checked<'_>) -> Result<SettleResponse, FacilitatorError> {
        let p = &c.parsed;
        let a = &p.exact.authorization;
        let payer = Some(a.from.to_checksum(None));
        let done = |success: bool, reason: Option<ErrorReason>, tx: String| SettleResponse {
            success: Some(success),
            error_reason: reason.map(|r| r.as_str().to_owned()),
            error_message: None,
            payer: payer.clone(),
            transaction: Some(tx),
            network: Some(p.network_name.clone()),
        };
        let chain = c.chain;
        let signer = chain.signer();
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let tx = transfer_request(signer.address, p.asset, &p.exact);
        let gas = match self
            .rpc(chain, chain.reader.estimate_gas(tx.clone()).into_future())
            .await
        {
            Ok(g) => g,
            Err(RpcFailure::Reverted(text)) => {
                return Ok(done(false, Some(revert_reason(&text)), String::new()));
            }
            // A node that cannot estimate (rate limited, "header not found", an internal
            // error) said nothing about the payment: nothing was sent, try again later.
            Err(e) => return Err(not_sent(e)),
        };
        let (hash, raw) = match self
            .sign_and_send(chain, signer, tx, gas.saturating_mul(12) / 10)
            .await?
        {
            Sent::Sent(hash, raw) => (hash, raw),
            Sent::Lost(hash) => {
                return Ok(done(
                    false,
                    Some(ErrorReason::SettlementPending),
                    hash.to_string(),
                ))
            }
        };
        match self.wait_receipt(chain, signer, hash, &raw).await {
            Some(r) if r.status() => Ok(done(true, None, hash.to_string())),
            Some(_) => Ok(done(
                false,
                Some(ErrorReason::TransactionFailed),
                hash.to_string(),
            )),
            None => {
                tracing::warn!(tx = %hash, timeout = ?self.receipt_timeout, "no receipt in time; settlement pending");
                Ok(done(
                    false,
                    Some(ErrorReason::SettlementPending),
                    hash.to_string(),
                ))
            }
        }
    }

    /// Prices `tx` (EIP-1559 fees), signs it with `signer` at its next nonce and sends it. The
    /// signer's nonce lock is held for the send only: the next transaction of this signer can
    /// go out before this one is mined.
    ///
    /// # Errors
    /// [`FacilitatorError::ChainNotSent`]: nothing was sent.
    pub(super) async fn sign_and_send(
        &self,
        chain: &Chain,
        signer: &Signer,
        tx: TransactionRequest,
        gas_limit: u64,
    ) -> Result<Sent, FacilitatorError> {
        let not_sent = |e: RpcFailure| FacilitatorError::ChainNotSent(e.to_string());
        let fees = self
            .rpc(chain, chain.reader.estimate_eip1559_fees())
            .await
            .map_err(not_sent)?;
        let tx = tx
            .with_chain_id(chain.network.chain_id())
            .with_gas_limit(gas_limit)
            .with_max_fee_per_gas(fees.max_fee_per_gas)
            .with_max_priority_fee_per_gas(fees.max_priority_fee_per_gas);
        let mut next = signer.nonce.lock().await;
        // A nonce another sender of this key used meanwhile is refused ("nonce too low"):
        // nothing was sent, so the pending count is read again and the send retried, once.
        let mut resync_left = 1;
        loop {
            let nonce = match *next {
                Some(n) => n,
                None => self
                    .rpc(
                        chain,
                        chain
                            .reader
                            .get_transaction_count(signer.address)
                            .pending()
                            .into_future(),
                    )
                    .await
                    .map_err(not_sent)?,
            };
            let envelope = tx
                .clone()
                .with_nonce(nonce)
                .build(&signer.wallet)
                .await
                .map_err(|e| FacilitatorError::ChainNotSent(format!("signing failed: {e}")))?;
            let hash: B256 = *envelope.tx_hash();
            let raw = Bytes::from(envelope.encoded_2718());
            match self
                .rpc(chain, chain.reader.send_raw_transaction(&raw))
                .await
            {
                Ok(_) => *next = Some(nonce + 1),
                Err(RpcFailure::Refused(text)) if already_known(&text) => {
                    *next = Some(nonce + 1);
                }
                Err(RpcFailure::Refused(text)) if nonce_too_low(&text) && resync_left > 0 => {
                    resync_left -= 1;
                    *next = None;
                    tracing::info!(signer = %signer.address, "settlement nonce was used by another sender; resynchronising and sending again");
                    continue;
                }
                Err(RpcFailure::Refused(text) | RpcFailure::Reverted(text)) => {
                    // The node refused it: nothing was sent. Resynchronise the nonce.
                    *next = None;
                    tracing::warn!(error = %text, signer = %signer.address, "settlement transaction refused by the node");
                    return Err(FacilitatorError::ChainNotSent(text));
                }
                Err(e @ (RpcFailure::Timeout | RpcFailure::Transport(_))) => {
                    // The answer was lost: the transaction may be in the mempool. Its hash is
                    // known; the outcome is unknown.
                    *next = None;
                    tracing::warn!(tx = %hash, signer = %signer.address, error = %e, "no answer to the settlement send; outcome unknown");
                    return Ok(Sent::Lost(hash));
                }
            }
            break Ok(Sent::Sent(hash, raw));
        }
    }

    /// Settles one request that passed the local checks: the on-chain checks, then one
    /// `transferWithAuthorization` transaction.
    pub(super) async fn settle_parsed(&self, chain: usize, parsed: Parsed) -> Answer {
        match self
            .check_parsed(&self.chains[chain], parsed, false)
            .await?
        {
            Ok(c) => self.submit(&c).await,
            Err(i) => Ok(refused(i)),
        }
    }

    /// Polls for a transaction's receipt until `receipt_timeout`: 10 ms after sending, doubling
    /// up to 500 ms. A local chain mines at once and answers on the first polls; a real chain's
    /// block time is met within half a second; nothing is polled while no settlement waits
    /// (alloy's block watcher polls every 250 ms even on a local chain, which capped
    /// settlements at about four per second per waiting request). Each poll has the RPC
    /// timeout.
    ///
    /// A transaction the node no longer knows (dropped from its mempool: evicted, a restarted
    /// node) is sent again, byte for byte, so its nonce never stays a gap that holds every later
    /// transaction of the signer; one still unknown when the wait ends makes the signer read its
    /// nonce from the node again.
    pub(super) async fn wait_receipt(
        &self,
        chain: &Chain,
        signer: &Signer,
        hash: B256,
        raw: &Bytes,
    ) -> Option<alloy::rpc::types::TransactionReceipt> {
        let deadline = crate::clock::instant() + self.receipt_timeout;
        let mut delay = Duration::from_millis(10);
        let mut next_look = crate::clock::instant() + DROPPED_AFTER;
        loop {
            match self
                .rpc(chain, chain.reader.get_transaction_receipt(hash))
                .await
            {
                Ok(Some(receipt)) => return Some(receipt),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, tx = %hash, "receipt not readable yet"),
            }
            let left = deadline.saturating_duration_since(crate::clock::instant());
            if crate::clock::instant() >= next_look || left.is_zero() {
                next_look = crate::clock::instant() + DROPPED_AFTER;
                if self.dropped(chain, hash).await {
                    if left.is_zero() {
                        tracing::warn!(tx = %hash, signer = %signer.address, "a settlement transaction the node no longer knows: the signer's nonce is read again");
                        *signer.nonce.lock().await = None;
                        return None;
                    }
                    self.resend(chain, hash, raw).await;
                }
            }
            if left.is_zero() {
                return None;
            }
            tokio::time::sleep(delay.min(left)).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    /// Whether the node does not know transaction `hash` (neither mined nor pending).
    pub(super) async fn dropped(&self, chain: &Chain, hash: B256) -> bool {
        matches!(
            self.rpc(
                chain,
                chain.reader.get_transaction_by_hash(hash).into_future()
            )
            .await,
            Ok(None)
        )
    }

    /// Sends a dropped transaction again (same bytes, same hash).
    pub(super) async fn resend(&self, chain: &Chain, hash: B256, raw: &Bytes) {
        match self
            .rpc(chain, chain.reader.send_raw_transaction(raw))
            .await
        {
            Ok(_) => {
                tracing::warn!(tx = %hash, "a settlement transaction was dropped by the node: sent again")
            }
            Err(RpcFailure::Refused(t) | RpcFailure::Reverted(t)) if already_known(&t) => {}
            Err(e) => {
                tracing::warn!(tx = %hash, error = %e, "a dropped settlement transaction could not be sent again")
            }
        }
    }
}
