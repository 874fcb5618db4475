//! Redemption: a retry, with the same header, of a payment that is pending (its outcome
//! unknown, or settled and not delivered).
//!
//! Owns: [`Payments::redeem`]. A pending payment is redeemed by what was journaled for it: the
//! resource it paid for (the request must name the same path and query), its amount, recipient
//! and requirements as recorded, never by today's price table (a reload in between must not
//! make a paid request unredeemable, or the client pays twice). The header must carry the very
//! authorization and signature that were journaled. An unknown outcome is read from the chain
//! first: settled, it is delivered once; definitively not, the client gets the reason; still
//! unknown, `503` again.

use super::admit::early;
use super::driver::{Decision, Payment};
use super::{Admission, Forward, Incoming, Payments, Routed};
use crate::error::{rescue, GatewayError};
use crate::flow::{Front, PaymentFlow, State};
use crate::journal::{Entry, JournalState};
use crate::ledger::{Open, Redeem, Spent};
use crate::protocol::{Network, PaymentPayload, X402Version};
use crate::scheme::Authorized;
use crate::verify::{PaymentRejection, Verified};

impl Payments {
    /// Redeems `payload` if it is a retry of a pending payment for this request's resource;
    /// `Err(routed)` gives the route back when there is nothing to redeem.
    pub(super) async fn redeem(
        &self,
        req: Incoming<'_>,
        routed: Routed,
        url: &str,
        payload: &PaymentPayload,
        websocket: bool,
        front: Front,
    ) -> Result<Admission, Routed> {
        let Ok(authorized) = Authorized::decode(payload) else {
            return Err(routed);
        };
        let entry = match self
            .ledger
            .redeemable(authorized.payer(), authorized.nonce(), req.target)
        {
            Redeem::No => return Err(routed),
            Redeem::Elsewhere => {
                let e = GatewayError::Rejected(PaymentRejection::AlreadyUsed);
                return Ok(refuse(&e, routed, url));
            }
            Redeem::Busy => {
                return Ok(refuse(&GatewayError::InProgress, routed, url));
            }
            Redeem::Deliver(e) | Redeem::Unknown(e) if !same_payment(&e, &authorized) => {
                // Another signature over the same authorization, or another payload: not
                // the payment that was journaled. Hand it back; the claim refuses this one.
                self.unclaim(*e);
                return Err(routed);
            }
            Redeem::Deliver(e) => *e,
            Redeem::Unknown(e) => match self.resolve_pending(*e, &routed, front).await {
                Ok(e) => e,
                Err(admission) => return Ok(admission),
            },
        };
        // Another process sharing the journal (the one this took over from) may have delivered
        // it since this one learnt of it: the journal has the last word.
        if self.ledger.recorded_state(entry.id).await == Some(JournalState::Delivered) {
            self.ledger.unredeemable(&entry.key);
            self.ledger
                .spend(&entry.key, entry.valid_before, Spent::Answered);
            return Ok(refuse(&GatewayError::AlreadyRedeemed, routed, url));
        }
        let tx = entry.transaction.clone().unwrap_or_default();
        tracing::info!(payer = %entry.key.from, transaction = tx, resource = %entry.resource, "redeeming a settled payment");
        let flow = PaymentFlow::redeem(State::Settled { transaction: tx }, front);
        let payment = self.restored(flow, entry, Some(routed.clone()));
        Ok(Admission::Forward(Box::new(Forward {
            route: Some(routed),
            payment: Some(payment),
            priced_path: true,
            websocket,
        })))
    }

    /// Reads an unknown outcome once for a retry: settled, the payment is claimed for delivery
    /// (`Ok`); otherwise the answer (`Err`).
    async fn resolve_pending(
        &self,
        entry: Entry,
        routed: &Routed,
        front: Front,
    ) -> Result<Entry, Admission> {
        let state = entry.flow_state();
        let key = entry.key.clone();
        let target = entry.resource.clone();
        let mut p = self.restored(
            PaymentFlow::redeem(state, front),
            entry,
            Some(routed.clone()),
        );
        match self.resume(&mut p).await {
            Some(Decision::Replace(answer)) => Err(Admission::Answer(Box::new(super::Early {
                answer,
                route: Some(routed.clone()),
                rejection: p.state().reason().cloned(),
                payment: Some(p),
            }))),
            _ => {
                // Settled: claimed for delivery now, once (a concurrent retry gets 503).
                let path = crate::ledger::pending::resource_target(&target).to_owned();
                match self.ledger.redeemable(key.from, key.nonce, &path) {
                    Redeem::Deliver(e) => Ok(*e),
                    _ => Err(refuse(
                        &GatewayError::InProgress,
                        routed.clone(),
                        &p.entry.resource,
                    )),
                }
            }
        }
    }

    /// Starts a restored flow (an unknown outcome is read first).
    async fn resume(&self, p: &mut Payment) -> Option<Decision> {
        let effects = p.flow.resume();
        if effects.is_empty() {
            return None;
        }
        self.drive_effects(p, effects).await
    }

    /// A payment restored from its journal record.
    fn restored(&self, flow: PaymentFlow, entry: Entry, route: Option<Routed>) -> Payment {
        let verified = verified_from(&entry);
        Payment::new(flow, verified, entry, None, route, self.ledger.clone())
    }

    /// Hands a pending payment claimed for delivery back, unchanged.
    fn unclaim(&self, e: Entry) {
        let open = match e.state {
            JournalState::Settled => Open::Settled(e.transaction.clone().unwrap_or_default()),
            _ => Open::Unknown,
        };
        self.ledger.keep_redeemable(e, open, self.clock.now_ms());
    }
}

fn refuse(e: &GatewayError, routed: Routed, url: &str) -> Admission {
    let answer = rescue(e, Some(routed.route()), super::admit::asking(url));
    early(answer, Some(routed), Some(e.reason()))
}

/// Whether `presented` is the authorization, with its signature, journaled in `e`'s facilitator
/// request.
fn same_payment(e: &Entry, presented: &Authorized) -> bool {
    let journaled = serde_json::from_str::<serde_json::Value>(&e.request)
        .ok()
        .and_then(|r| r.get("paymentPayload")?.get("payload").cloned());
    let presented = serde_json::from_str::<serde_json::Value>(&presented.canonical_json()).ok();
    journaled.is_some() && journaled == presented
}

/// What verified a journaled payment, as the receipts and the journal need it.
pub(super) fn verified_from(e: &Entry) -> Verified {
    let version = if e.version == 1 {
        X402Version::V1
    } else {
        X402Version::V2
    };
    let network = match version {
        X402Version::V1 => Network::parse(&e.network)
            .and_then(|n| n.v1_name().map(str::to_owned))
            .unwrap_or_else(|| e.network.clone()),
        X402Version::V2 => e.network.clone(),
    };
    Verified {
        version,
        option: 0,
        payer: e.key.from,
        amount: e.amount,
        network,
        facilitator_body: e.request.as_str().into(),
        key: e.key.clone(),
        valid_before: e.valid_before,
        pay_to: e.pay_to,
        caip2: e.network.clone(),
    }
}
