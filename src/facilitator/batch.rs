//! Batched settlement: many `transferWithAuthorization` calls in one transaction of the batch
//! contract's `aggregate3` (Multicall3's ABI, at its canonical address by default).
//!
//! Owns: the [`Queue`] that gathers settlements into batches (flushed at `batch_max` waiting,
//! or when the oldest has waited its window), the [`plan`] that drops refused payments and
//! splits a batch until each part fits, and the embedded facilitator's execution of a batch:
//! - ONE `eth_call` of `aggregate3` with `allowFailure = true` for every call, at the latest
//!   mined block: a call that fails is answered alone, as a definitive failure with its decoded
//!   revert reason, and leaves the batch;
//! - `eth_estimateGas` of the rest; a batch whose estimate fails or passes a third of the block
//!   gas limit is split in halves, recursively; one payment left takes the single-transfer
//!   path;
//! - sign and send (the signer's nonce lock held for the send only, so batches pipeline), wait
//!   for the receipt, and read each payment's outcome from its logs: settled only with its own
//!   `AuthorizationUsed` and `Transfer` in our mined transaction. A reverted transaction
//!   settled nothing: its payments are settled one by one. No receipt in time, or a lost send
//!   answer: every payment is `settlement_pending` with the transaction hash (the journal's
//!   reconciler reads each one's fate by its nonce).
//!
//! Does not own: the single-transfer path, nonces and receipts (`facilitator.rs`), nor when a
//! payment is handed over (the deferred queue, the settler).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, B256};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use tokio::sync::oneshot;

mod plan;

pub(super) use plan::{plan, Alone, Estimate, Planner, Simulated};

use super::check::{Invalid, Parsed};
use super::send::Sent;
use super::{refused, transfer_request, Answer, Chain, Core, RpcFailure};
use crate::protocol::{ErrorReason, SettleResponse};
use crate::scheme::exact::onchain::{revert_reason, transfer_input};
use crate::scheme::exact::proof::{settled_in, Transfer3009};
use crate::verify::FacilitatorError;

alloy::sol! {
    struct Call3 { address target; bool allowFailure; bytes callData; }
    struct Call3Result { bool success; bytes returnData; }
    function aggregate3(Call3[] calls) external payable returns (Call3Result[] returnData);
}

/// A batch's gas must stay under this share of the block gas limit (1/3): it fits a block
/// with room for other transactions, so it is not held back waiting for an emptier one.
const BLOCK_SHARE: u64 = 3;
/// Gas of a batch beyond its payments' own (the transaction, the first cold accesses).
const BATCH_OVERHEAD_GAS: u64 = 80_000;
/// Assumed when the block gas limit cannot be read (a common limit; the share stays safe).
const FALLBACK_BLOCK_GAS_LIMIT: u64 = 30_000_000;

// === Queue ===

/// Runs a flushed batch: one answer per item, in order.
pub(super) type Flush<T, R> =
    Arc<dyn Fn(Vec<T>) -> Pin<Box<dyn Future<Output = Vec<R>> + Send>> + Send + Sync>;

/// Gathers items into batches: a batch is flushed when `max` items wait, or when its first
/// item has waited `window`. Each flush runs as a task of its own, so the callers may leave
/// (or be cancelled) without stopping a batch that others share, and the next batch gathers
/// while earlier ones are in flight.
pub(super) struct Queue<T, R> {
    max: usize,
    window: Duration,
    flush: Flush<T, R>,
    open: Mutex<Open<T, R>>,
}

/// The batch being gathered.
struct Open<T, R> {
    /// Counts flushed batches: a window timer flushes only the batch it was started for.
    id: u64,
    waiting: Vec<(T, oneshot::Sender<R>)>,
}

/// A batch ended without answering this item (its task panicked).
#[derive(Debug)]
pub(super) struct Lost;

impl<T: Send + 'static, R: Send + 'static> Queue<T, R> {
    /// A queue flushing batches of at most `max` (at least 1) through `flush`.
    pub(super) fn new(max: usize, window: Duration, flush: Flush<T, R>) -> Arc<Self> {
        Arc::new(Queue {
            max: max.max(1),
            window,
            flush,
            open: Mutex::new(Open {
                id: 0,
                waiting: Vec::new(),
            }),
        })
    }

    /// Queues `item` and waits for its answer. Needs a Tokio runtime (timers and flushes are
    /// tasks on it).
    ///
    /// # Errors
    /// [`Lost`] when the batch ended without answering.
    pub(super) async fn submit(self: &Arc<Self>, item: T) -> Result<R, Lost> {
        let (tx, rx) = oneshot::channel();
        let full = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            open.waiting.push((item, tx));
            if open.waiting.len() == 1 && self.max > 1 {
                let (queue, id) = (Arc::clone(self), open.id);
                tokio::spawn(async move {
                    tokio::time::sleep(queue.window).await;
                    queue.flush_if(id);
                });
            }
            (open.waiting.len() >= self.max).then(|| take(&mut open))
        };
        if let Some(batch) = full {
            self.start(batch);
        }
        rx.await.map_err(|_| Lost)
    }

    /// Items waiting for their batch to be flushed.
    pub(super) fn waiting(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .waiting
            .len()
    }

    /// The window of batch `id` passed: flush it unless it was flushed already (full).
    fn flush_if(&self, id: u64) {
        let batch = {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            (open.id == id && !open.waiting.is_empty()).then(|| take(&mut open))
        };
        if let Some(batch) = batch {
            self.start(batch);
        }
    }

    fn start(&self, batch: Vec<(T, oneshot::Sender<R>)>) {
        let flush = Arc::clone(&self.flush);
        tokio::spawn(async move {
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.into_iter().unzip();
            let answers = flush(items).await;
            for (answer, reply) in answers.into_iter().zip(replies) {
                // The caller may have left; the item was settled all the same.
                let _ = reply.send(answer);
            }
        });
    }
}

fn take<T, R>(open: &mut Open<T, R>) -> Vec<(T, oneshot::Sender<R>)> {
    open.id += 1;
    std::mem::take(&mut open.waiting)
}

impl Queue<Parsed, Answer> {
    /// The queue of one chain of the embedded facilitator.
    pub(super) fn for_chain(core: &Arc<Core>, chain: usize, window: Duration) -> Arc<Self> {
        let for_flush = Arc::clone(core);
        Queue::new(
            core.batch.max,
            window,
            Arc::new(move |items| Box::pin(Arc::clone(&for_flush).settle_batch(chain, items))),
        )
    }
}

// === impl Core: batches on chain ===

/// One payment of a batch: its place in the batch, and the request.
type Item = (usize, Parsed);

/// The embedded facilitator's chain, as a [`Planner`].
struct OnChain<'a> {
    core: &'a Core,
    chain: &'a Chain,
}

impl Planner for OnChain<'_> {
    type Item = Item;
    type Refusal = Invalid;

    async fn simulate(&self, items: &[Item]) -> Simulated<Invalid> {
        let tx = self.core.aggregate_request(self.chain, items);
        let out = match self
            .core
            .rpc(
                self.chain,
                self.chain.reader.call(tx).latest().into_future(),
            )
            .await
        {
            Ok(out) => out,
            Err(RpcFailure::Reverted(text)) => {
                tracing::warn!(error = %text, payments = items.len(), "batch simulation reverted as a whole; splitting");
                return Simulated::Whole;
            }
            Err(e) => return Simulated::Outage(e.to_string()),
        };
        let Ok(results) = aggregate3Call::abi_decode_returns(&out) else {
            tracing::warn!(contract = %self.core.batch.contract, "the batch contract's answer is not aggregate3's (is it deployed?); splitting");
            return Simulated::Whole;
        };
        Simulated::Each(
            results
                .iter()
                .zip(items)
                .map(|(r, (_, p))| {
                    if r.success {
                        return Ok(());
                    }
                    let text = alloy::sol_types::decode_revert_reason(&r.returnData)
                        .unwrap_or_else(|| format!("reverted: {}", r.returnData));
                    let a = &p.exact.authorization;
                    Err(Invalid {
                        reason: revert_reason(&text),
                        message: text,
                        payer: Some(a.from),
                        network: p.network_name.clone(),
                    })
                })
                .collect(),
        )
    }

    async fn alone(&self, (_, p): &Item) -> Alone<Invalid> {
        let tx = transfer_request(self.chain.signers[0].address, p.asset, &p.exact);
        match self
            .core
            .rpc(
                self.chain,
                self.chain.reader.call(tx).latest().into_future(),
            )
            .await
        {
            Ok(_) => Alone::Passes,
            Err(RpcFailure::Reverted(text)) => {
                let a = &p.exact.authorization;
                Alone::Refused(Invalid {
                    reason: revert_reason(&text),
                    message: text,
                    payer: Some(a.from),
                    network: p.network_name.clone(),
                })
            }
            Err(e) => Alone::Outage(e.to_string()),
        }
    }

    /// The node's estimate for the first batch; then, from the gas per payment of the batches
    /// mined (the largest seen), with a margin: `eth_estimateGas` runs the batch several times
    /// on the node, which on a busy node costs more than the batch itself. A batch that runs out
    /// of gas reverts whole (nothing settled): its payments are settled one by one and the next
    /// batch is estimated by the node again.
    async fn estimate(&self, items: &[Item]) -> Estimate {
        let cap = self.core.block_gas_limit(self.chain).await / BLOCK_SHARE;
        let learned = self.chain.batch_gas.load(Ordering::Relaxed);
        if learned > 0 {
            let n = u64::try_from(items.len()).unwrap_or(u64::MAX);
            let gas = BATCH_OVERHEAD_GAS.saturating_add(learned.saturating_mul(5) / 4 * n);
            return if gas <= cap {
                Estimate::Fits(gas)
            } else {
                Estimate::Split
            };
        }
        let tx = self.core.aggregate_request(self.chain, items);
        match self
            .core
            .rpc(self.chain, self.chain.reader.estimate_gas(tx).into_future())
            .await
        {
            Ok(gas) if gas <= cap => Estimate::Fits(gas),
            Ok(gas) => {
                tracing::info!(
                    gas,
                    cap,
                    payments = items.len(),
                    "batch too big for a block; splitting"
                );
                Estimate::Split
            }
            Err(RpcFailure::Reverted(text)) => {
                tracing::info!(error = %text, payments = items.len(), "batch gas estimation failed; splitting");
                Estimate::Split
            }
            Err(e) => Estimate::Outage(e.to_string()),
        }
    }
}

/// A payment's answer from a batch transaction.
fn answer(p: &Parsed, reason: Option<ErrorReason>, tx: B256) -> SettleResponse {
    SettleResponse {
        success: Some(reason.is_none()),
        error_reason: reason.map(|r| r.as_str().to_owned()),
        error_message: None,
        payer: Some(p.exact.authorization.from.to_checksum(None)),
        transaction: Some(tx.to_string()),
        network: Some(p.network_name.clone()),
    }
}

/// What the payment must leave in the logs.
fn transfer_of(p: &Parsed) -> Transfer3009 {
    let a = &p.exact.authorization;
    Transfer3009 {
        asset: p.asset,
        from: a.from,
        nonce: a.nonce,
        to: p.pay_to,
        value: a.value,
    }
}

/// The same "not sent" error for each payment of a batch.
fn not_sent_copy(e: &FacilitatorError) -> FacilitatorError {
    match e {
        FacilitatorError::ChainNotSent(t) => FacilitatorError::ChainNotSent(t.clone()),
        other => FacilitatorError::Chain(other.to_string()),
    }
}

impl Core {
    /// Settles a flushed batch of chain `chain`: one answer per item, in order.
    pub(super) async fn settle_batch(
        self: Arc<Self>,
        chain: usize,
        items: Vec<Parsed>,
    ) -> Vec<Answer> {
        if items.len() == 1 {
            let mut answers = Vec::with_capacity(1);
            for p in items {
                answers.push(self.settle_parsed(chain, p).await);
            }
            return answers;
        }
        let n = items.len();
        let plan = plan(
            &OnChain {
                core: &self,
                chain: &self.chains[chain],
            },
            items.into_iter().enumerate().collect(),
        )
        .await;
        let mut answers: Vec<Option<Answer>> = (0..n).map(|_| None).collect();
        for ((i, _), why) in plan.refused {
            tracing::info!(reason = why.reason.as_str(), detail = %why.message, "payment refused in batch simulation");
            answers[i] = Some(Ok(refused(why)));
        }
        for ((i, _), e) in plan.outage {
            answers[i] = Some(Err(FacilitatorError::ChainNotSent(e)));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (group, gas) in plan.sends {
            tasks.spawn(Arc::clone(&self).send_batch(chain, group, gas));
        }
        for item in plan.singles {
            tasks.spawn(Arc::clone(&self).one_by_one(chain, vec![item]));
        }
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(list) => {
                    for (i, a) in list {
                        answers[i] = Some(a);
                    }
                }
                Err(e) => tracing::error!(error = %e, "a batch settlement task failed"),
            }
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(FacilitatorError::Chain(
                        "the batch ended without an answer for this payment".into(),
                    ))
                })
            })
            .collect()
    }

    /// Sends one planned batch and reads each payment's outcome from the receipt.
    async fn send_batch(
        self: Arc<Self>,
        chain: usize,
        group: Vec<Item>,
        gas: u64,
    ) -> Vec<(usize, Answer)> {
        let c = &self.chains[chain];
        let signer = c.signer();
        let tx = self.aggregate_request(c, &group).with_from(signer.address);
        let pending = |hash: B256| {
            group
                .iter()
                .map(|(i, p)| {
                    (
                        *i,
                        Ok(answer(p, Some(ErrorReason::SettlementPending), hash)),
                    )
                })
                .collect()
        };
        let (hash, raw) = match self
            .sign_and_send(c, signer, tx, gas.saturating_mul(12) / 10)
            .await
        {
            Ok(Sent::Sent(hash, raw)) => (hash, raw),
            Ok(Sent::Lost(hash)) => return pending(hash),
            Err(e) => {
                return group
                    .iter()
                    .map(|(i, _)| (*i, Err(not_sent_copy(&e))))
                    .collect()
            }
        };
        tracing::info!(tx = %hash, payments = group.len(), signer = %signer.address, "batch settlement sent");
        let Some(receipt) = self.wait_receipt(c, signer, hash, &raw).await else {
            tracing::warn!(tx = %hash, payments = group.len(), timeout = ?self.receipt_timeout, "no receipt for the batch in time; its payments are pending");
            return pending(hash);
        };
        if !receipt.status() {
            tracing::warn!(tx = %hash, payments = group.len(), "batch transaction reverted: nothing settled; settling its payments one by one");
            c.batch_gas.store(0, Ordering::Relaxed);
            return self.one_by_one(chain, group).await;
        }
        let logs = receipt.inner.logs();
        let mut out = Vec::with_capacity(group.len());
        let mut again = Vec::new();
        let mut failed = 0usize;
        for (i, p) in group {
            if settled_in(logs, &transfer_of(&p)) {
                out.push((i, Ok(answer(&p, None, hash))));
                continue;
            }
            failed += 1;
            match self.resimulate(c, &p).await {
                // It would settle alone: its call was starved in the batch (a payer's smart
                // wallet may burn the gas every later call needs). Submitted again, alone: the
                // nonce makes that safe, and no other payer can make it fail there.
                None => again.push((i, p)),
                Some(reason) => {
                    tracing::warn!(tx = %hash, payer = %p.exact.authorization.from, reason = reason.as_str(), "payment not settled by its batch transaction");
                    out.push((i, Ok(answer(&p, Some(reason), hash))));
                }
            }
        }
        if failed == 0 {
            // Learnt only from batches that settled every payment: a starved batch's gas says
            // nothing about the next one.
            let n = u64::try_from(out.len()).unwrap_or(u64::MAX).max(1);
            c.batch_gas
                .fetch_max(receipt.gas_used / n, Ordering::Relaxed);
        }
        tracing::info!(tx = %hash, payments = out.len() + again.len(), failed, resubmitted = again.len(), gas_used = receipt.gas_used, "batch settlement mined");
        if !again.is_empty() {
            tracing::warn!(tx = %hash, payments = again.len(), "payments that would settle alone failed in their batch: submitting each alone");
            out.extend(Arc::clone(&self).one_by_one(chain, again).await);
        }
        out
    }

    /// Settles each payment alone (the single-transfer path), concurrently.
    async fn one_by_one(self: Arc<Self>, chain: usize, items: Vec<Item>) -> Vec<(usize, Answer)> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, p) in items {
            let core = Arc::clone(&self);
            tasks.spawn(async move { (i, core.settle_parsed(chain, p).await) });
        }
        let mut out = Vec::new();
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(a) => out.push(a),
                Err(e) => tracing::error!(error = %e, "a settlement task failed"),
            }
        }
        out
    }

    /// Why a payment's call left no logs in our mined batch: its transfer simulated alone now
    /// (`None`: it passes alone, so the batch starved it), or `transaction_failed` when the
    /// simulation tells nothing more (the node did not answer: not submitted again blindly).
    async fn resimulate(&self, c: &Chain, p: &Parsed) -> Option<ErrorReason> {
        let tx = TransactionRequest::default()
            .with_from(self.batch.contract)
            .with_to(p.asset)
            .with_input(Bytes::from(transfer_input(&p.exact)));
        match self.rpc(c, c.reader.call(tx).latest().into_future()).await {
            Ok(_) => None,
            Err(RpcFailure::Reverted(text)) => Some(match revert_reason(&text) {
                ErrorReason::SimulationFailed => ErrorReason::TransactionFailed,
                reason => reason,
            }),
            Err(_) => Some(ErrorReason::TransactionFailed),
        }
    }

    /// `aggregate3` of the batch contract, every call allowed to fail, from the first signer.
    fn aggregate_request(&self, c: &Chain, items: &[Item]) -> TransactionRequest {
        let calls = items
            .iter()
            .map(|(_, p)| Call3 {
                target: p.asset,
                allowFailure: true,
                callData: Bytes::from(transfer_input(&p.exact)),
            })
            .collect();
        let from: Address = c.signers.first().map(|s| s.address).unwrap_or_default();
        TransactionRequest::default()
            .with_from(from)
            .with_to(self.batch.contract)
            .with_input(Bytes::from(aggregate3Call { calls }.abi_encode()))
    }

    /// The latest block's gas limit, read once per chain.
    async fn block_gas_limit(&self, c: &Chain) -> u64 {
        let known = c.block_gas_limit.load(Ordering::Relaxed);
        if known > 0 {
            return known;
        }
        let block = self
            .rpc(
                c,
                c.reader
                    .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
                    .into_future(),
            )
            .await;
        match block {
            Ok(Some(b)) if b.header.gas_limit > 0 => {
                c.block_gas_limit
                    .store(b.header.gas_limit, Ordering::Relaxed);
                b.header.gas_limit
            }
            _ => FALLBACK_BLOCK_GAS_LIMIT,
        }
    }
}

#[cfg(test)]
mod tests;
