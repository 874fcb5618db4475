//! Planning a batch: which payments go in one transaction. Refused ones are dropped (answered
//! alone), calls that fail only in company are settled alone, and a batch whose gas estimate
//! fails or is too large is split in halves until each part fits. The chain is asked through
//! the [`Planner`] seam, so unit tests script it.

use std::future::Future;

/// What planning a batch asks of the chain (the seam unit tests script).
pub(in crate::facilitator) trait Planner {
    /// A payment.
    type Item: Send;
    /// Why one payment is refused.
    type Refusal: Send;
    /// Simulates the batch (every call allowed to fail).
    fn simulate(
        &self,
        items: &[Self::Item],
    ) -> impl Future<Output = Simulated<Self::Refusal>> + Send;
    /// Estimates the batch's gas against the safe share of a block.
    fn estimate(&self, items: &[Self::Item]) -> impl Future<Output = Estimate> + Send;
    /// Simulates one payment alone (it failed in its batch's simulation: its own fault, or
    /// another call starved it of gas).
    fn alone(&self, item: &Self::Item) -> impl Future<Output = Alone<Self::Refusal>> + Send;
}

/// One payment simulated alone.
pub(in crate::facilitator) enum Alone<V> {
    /// It passes: the batch starved it (another call burnt the gas).
    Passes,
    /// It is refused on its own.
    Refused(V),
    /// The chain did not answer.
    Outage(String),
}

/// A batch's simulation.
pub(in crate::facilitator) enum Simulated<V> {
    /// Per call, in order: passed, or refused (why).
    Each(Vec<Result<(), V>>),
    /// The call as a whole failed (out of gas, no batch contract): split it.
    Whole,
    /// The chain did not answer: nothing can be decided.
    Outage(String),
}

/// A batch's gas estimate.
pub(in crate::facilitator) enum Estimate {
    /// It fits; the estimated gas.
    Fits(u64),
    /// Estimation failed, or the batch is too big for a block: split it.
    Split,
    /// The chain did not answer.
    Outage(String),
}

/// A batch after [`plan`].
pub(in crate::facilitator) struct Plan<T, V> {
    /// Batches to send, each with its gas estimate.
    pub(in crate::facilitator) sends: Vec<(Vec<T>, u64)>,
    /// Payments to settle alone (the single-transfer path).
    pub(in crate::facilitator) singles: Vec<T>,
    /// Payments whose call failed in simulation.
    pub(in crate::facilitator) refused: Vec<(T, V)>,
    /// Payments nothing could be decided for (the chain did not answer).
    pub(in crate::facilitator) outage: Vec<(T, String)>,
}

/// Simulates `items`, drops the refused ones, and splits the rest in halves until each part's
/// gas fits (a part of one is settled alone).
pub(in crate::facilitator) async fn plan<P: Planner>(
    p: &P,
    items: Vec<P::Item>,
) -> Plan<P::Item, P::Refusal> {
    let mut out = Plan {
        sends: Vec::new(),
        singles: Vec::new(),
        refused: Vec::new(),
        outage: Vec::new(),
    };
    let mut parts = vec![items];
    while let Some(part) = parts.pop() {
        if part.len() <= 1 {
            out.singles.extend(part);
            continue;
        }
        let passed = match p.simulate(&part).await {
            Simulated::Outage(e) => {
                out.outage.extend(part.into_iter().map(|i| (i, e.clone())));
                continue;
            }
            Simulated::Each(verdicts) if verdicts.len() == part.len() => {
                let mut passed = Vec::with_capacity(part.len());
                for (item, verdict) in part.into_iter().zip(verdicts) {
                    if verdict.is_ok() {
                        passed.push(item);
                        continue;
                    }
                    // Refused in the batch: refused for good only if refused alone too. One
                    // payer (a smart wallet that burns the gas it is given) must never make
                    // another payer's payment fail: a starved one is settled alone.
                    match p.alone(&item).await {
                        Alone::Passes => out.singles.push(item),
                        Alone::Refused(v) => out.refused.push((item, v)),
                        Alone::Outage(e) => out.outage.push((item, e)),
                    }
                }
                passed
            }
            // An answer of the wrong length is read as a failure of the whole call.
            Simulated::Each(_) | Simulated::Whole => {
                halve(part, &mut parts);
                continue;
            }
        };
        if passed.len() <= 1 {
            out.singles.extend(passed);
            continue;
        }
        match p.estimate(&passed).await {
            Estimate::Fits(gas) => out.sends.push((passed, gas)),
            Estimate::Split => halve(passed, &mut parts),
            Estimate::Outage(e) => out
                .outage
                .extend(passed.into_iter().map(|i| (i, e.clone()))),
        }
    }
    out
}

/// Pushes both halves of `part`, the first half on top.
fn halve<T>(mut part: Vec<T>, parts: &mut Vec<Vec<T>>) {
    let second = part.split_off(part.len() / 2);
    parts.push(second);
    parts.push(part);
}
