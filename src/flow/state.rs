//! Where a payment is: [`State`] (with its data) and [`Kind`] (without: what the journal
//! indexes and filters by), and their names on the wire, in metrics and in the journal.

use crate::protocol::ErrorReason;

/// Where a payment is in its life. The journal records exactly this (its [`State::name`], the
/// transaction and the reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Verified and held in flight; nothing forwarded, nothing settled.
    Verified,
    /// The request went upstream; not settled yet.
    Forwarded,
    /// `/settle` is being called (durable before the call).
    Settling,
    /// Settled on chain; the paid answer has not gone out (redeemable with the same header).
    Settled {
        /// The transaction hash.
        transaction: String,
    },
    /// Settled, and the paid answer went out (durable before its first byte).
    Delivered {
        /// The transaction hash.
        transaction: String,
    },
    /// Deferred: the answer went out on credit; the settlement is owed (durable before).
    Queued,
    /// The transfer may or may not have happened; being read from the chain.
    Unknown {
        /// What made it unknown.
        reason: ErrorReason,
        /// The transaction the facilitator named, if any.
        transaction: Option<String>,
    },
    /// Definitively not settled.
    Failed {
        /// Why.
        reason: ErrorReason,
        /// A transaction that was sent and did not settle it, if any.
        transaction: Option<String>,
    },
    /// Neither served nor settled: the authorization was given back to the client.
    Released {
        /// Why.
        reason: ErrorReason,
    },
}

impl State {
    /// The recorded name. A given-back payment is recorded `failed` (with its reason): nothing
    /// was settled or served, and nothing more will happen to it.
    pub fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The state's name as metrics and the access log label outcomes.
    pub fn outcome(&self) -> &'static str {
        match self {
            State::Verified => "verified",
            State::Forwarded => "forwarded",
            State::Settling => "settling",
            State::Settled { .. } | State::Delivered { .. } => "settled",
            State::Queued => "queued",
            State::Unknown { .. } => "settle_unknown",
            State::Failed { .. } => "settle_failed",
            State::Released { .. } => "released",
        }
    }

    /// The transaction, when one is known.
    pub fn transaction(&self) -> Option<&str> {
        match self {
            State::Settled { transaction } | State::Delivered { transaction } => Some(transaction),
            State::Unknown { transaction, .. } | State::Failed { transaction, .. } => {
                transaction.as_deref()
            }
            _ => None,
        }
    }

    /// The reason of a failed, unknown or given-back payment.
    pub fn reason(&self) -> Option<&ErrorReason> {
        match self {
            State::Unknown { reason, .. }
            | State::Failed { reason, .. }
            | State::Released { reason } => Some(reason),
            _ => None,
        }
    }

    /// Whether settlement has not been attempted (the payment can still be given back).
    pub fn is_open(&self) -> bool {
        matches!(self, State::Verified | State::Forwarded)
    }

    /// Whether it settled on chain.
    pub fn is_settled(&self) -> bool {
        matches!(self, State::Settled { .. } | State::Delivered { .. })
    }
}

/// A [`State`] without its data: what the journal indexes and filters by (`journal list
/// --state`). `released` payments are recorded as `failed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// [`State::Verified`].
    Verified,
    /// [`State::Forwarded`].
    Forwarded,
    /// [`State::Settling`].
    Settling,
    /// [`State::Settled`].
    Settled,
    /// [`State::Delivered`].
    Delivered,
    /// [`State::Failed`] and [`State::Released`].
    Failed,
    /// [`State::Unknown`].
    Unknown,
    /// [`State::Queued`].
    Queued,
}

impl Kind {
    /// Every kind, in life-cycle order.
    pub const ALL: [Kind; 8] = [
        Kind::Verified,
        Kind::Forwarded,
        Kind::Queued,
        Kind::Settling,
        Kind::Settled,
        Kind::Delivered,
        Kind::Failed,
        Kind::Unknown,
    ];

    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Verified => "verified",
            Kind::Forwarded => "forwarded",
            Kind::Settling => "settling",
            Kind::Settled => "settled",
            Kind::Delivered => "delivered",
            Kind::Failed => "failed",
            Kind::Unknown => "unknown",
            Kind::Queued => "queued",
        }
    }

    /// Reads a recorded name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether nothing more will happen to the payment.
    pub fn is_final(self) -> bool {
        matches!(self, Kind::Delivered | Kind::Failed)
    }
}

impl State {
    /// The state's kind.
    pub fn kind(&self) -> Kind {
        match self {
            State::Verified => Kind::Verified,
            State::Forwarded => Kind::Forwarded,
            State::Settling => Kind::Settling,
            State::Settled { .. } => Kind::Settled,
            State::Delivered { .. } => Kind::Delivered,
            State::Queued => Kind::Queued,
            State::Unknown { .. } => Kind::Unknown,
            State::Failed { .. } | State::Released { .. } => Kind::Failed,
        }
    }

    /// The state a record describes: its kind, transaction and reason.
    pub fn from_parts(kind: Kind, transaction: Option<&str>, reason: Option<&str>) -> State {
        let tx = transaction.filter(|t| !t.is_empty()).map(str::to_owned);
        let reason = || {
            reason
                .filter(|r| !r.is_empty())
                .map_or(ErrorReason::SettlementFailed, |r| {
                    ErrorReason::parse(r.split(':').next().unwrap_or(r))
                })
        };
        match kind {
            Kind::Verified => State::Verified,
            Kind::Forwarded => State::Forwarded,
            Kind::Settling => State::Settling,
            Kind::Settled => State::Settled {
                transaction: tx.unwrap_or_default(),
            },
            Kind::Delivered => State::Delivered {
                transaction: tx.unwrap_or_default(),
            },
            Kind::Queued => State::Queued,
            Kind::Unknown => State::Unknown {
                reason: reason(),
                transaction: tx,
            },
            Kind::Failed => State::Failed {
                reason: reason(),
                transaction: tx,
            },
        }
    }
}
