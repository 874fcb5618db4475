//! What a crash, a restart or an upgrade hand-over left open, and the background round that
//! keeps reading unknown outcomes.
//!
//! Owns: [`Payments::recover`], [`Payments::recover_for_handover`] and
//! [`Payments::maintain`]. Recovery reads the journal before any priced request is taken:
//! every authorization used and still valid is refused as a replay again; `settling` and
//! `unknown` payments are read from the chain (never submitted again without reading their
//! on-chain state); settled ones become redeemable; deferred `queued` ones are owed again. A
//! row another live process owns (the process handed over from, a `journal` command) is left
//! to it: only its authorization is learnt.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use alloy::primitives::Address;

use super::Payments;
use crate::flow::Outcome;
use crate::journal::{self, Entry, JournalError, JournalState};
use crate::ledger::exposure::micro_dollars;
use crate::ledger::{Open, Spent};

/// What [`Payments::recover`] found in the journal at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Settled and undelivered: redeemable with the same payment header.
    pub settled: usize,
    /// Definitively not settled.
    pub failed: usize,
    /// Still unknown: read again in the background, with backoff.
    pub unknown: usize,
    /// Verified or forwarded but never submitted (the client may use them again).
    pub abandoned: usize,
    /// Authorizations the replay guard holds again (used, still valid).
    pub guarded: usize,
    /// Deferred payments released before a crash, queued to be settled.
    pub owed: usize,
    /// Deferred payments found settled on chain.
    pub settled_owed: usize,
    /// Open payments another live process owns (left to it).
    pub others: usize,
}

/// Which open payments a recovery reconciles.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Scope {
    /// All (a start with no other process writing the journal).
    All,
    /// None: only the replay guard learns (another process still owns them).
    GuardOnly,
    /// All but this process's own (after a hand-over: the other process has exited).
    NotOwn,
    /// All but this process's own, again: rows another live process owned at the last
    /// recovery (a `journal` command, a process that died moments before this one started).
    Leftovers,
}

impl Payments {
    /// Reconciles what the journal left open (a crash, a restart) before serving.
    ///
    /// # Errors
    /// The journal cannot be read.
    pub async fn recover(&self) -> Result<Recovery, JournalError> {
        self.recover_scoped(Scope::All).await
    }

    /// Recovery of a process taking over from a running one (`run --upgrade`): the replay
    /// guard learns every authorization used, but the open payments are left to the running
    /// process, which is still settling and delivering them; they are reconciled once it has
    /// exited (pid `old`) or `within` has passed (see [`Payments::maintain`]). Until then both
    /// processes serve from the journal, and a claim is taken in it before anything is
    /// forwarded.
    ///
    /// # Errors
    /// The journal cannot be read.
    pub async fn recover_for_handover(
        &self,
        old: Option<u32>,
        within: Duration,
    ) -> Result<Recovery, JournalError> {
        let deadline = self.clock.now_ms() + crate::clock::millis(within);
        if let Ok(mut h) = self.handover.lock() {
            *h = Some((old, deadline));
        }
        self.ledger.set_shared(true);
        self.recover_scoped(Scope::GuardOnly).await
    }

    /// This process hands its listening sockets over (SIGQUIT): from now on, claims are taken
    /// in the journal before anything is forwarded (the new process serves from it too).
    pub fn handing_over(&self) {
        self.ledger.set_shared(true);
    }

    /// Whether the process handed over from has exited (or had its time); forgotten then, so
    /// this says yes once.
    fn handover_finished(&self, now_ms: u64) -> bool {
        let Ok(mut h) = self.handover.lock() else {
            return false;
        };
        let finished = h.is_some_and(|(old, deadline)| {
            now_ms >= deadline || old.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        });
        if finished {
            *h = None;
        }
        finished
    }

    async fn recover_scoped(&self, scope: Scope) -> Result<Recovery, JournalError> {
        let Some(j) = &self.journal else {
            return Ok(Recovery::default());
        };
        if scope != Scope::GuardOnly {
            // A process killed without retiring (a crash just before this start) owns nothing.
            if let Err(e) = j.bury_dead_writers().await {
                tracing::warn!(error = %e, "cannot read the journal's writers");
            }
        }
        let (open, closed) = read_open_and_closed(j.path(), self.clock.unix())?;
        self.reconciler.refresh_heads().await;
        let now = self.clock.unix();
        let mut r = Recovery::default();
        let guard = |e: &Entry, r: &mut Recovery| {
            if e.valid_before > now {
                self.ledger.spend(&e.key, e.valid_before, spent(e));
                r.guarded += 1;
            }
        };
        for e in &closed {
            if e.state == JournalState::Delivered || e.transaction.is_some() || e.released {
                guard(e, &mut r);
            }
        }
        for e in open {
            guard(&e, &mut r);
            let not_own = matches!(scope, Scope::NotOwn | Scope::Leftovers);
            if scope == Scope::GuardOnly || (not_own && j.is_own(e.id)) {
                continue;
            }
            // One writer per payment: a row another live process owns stays its.
            if !self.ledger.take_over(e.id).await {
                r.others += 1;
                continue;
            }
            self.recover_one(e, &mut r).await;
        }
        j.flush().await.map_err(|_| JournalError::Unwritable)?;
        self.refresh_unpaid().await;
        if scope == Scope::NotOwn {
            self.ledger.set_shared(false);
        }
        if scope != Scope::GuardOnly {
            // Rows a live process owned are read again in the background once it is gone.
            self.leftovers
                .store(r.others > 0, std::sync::atomic::Ordering::Release);
        }
        self.recovered
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(r)
    }

    async fn recover_one(&self, e: Entry, r: &mut Recovery) {
        let Some(j) = &self.journal else {
            return;
        };
        if e.released || e.state == JournalState::Queued {
            // Deferred: the answer went out; the settlement is owed.
            let micro = micro_dollars(e.amount, self.decimals_of(e.key.asset));
            match self.recover_owed(e, micro).await {
                Recovered::Queued => r.owed += 1,
                Recovered::Settled => r.settled_owed += 1,
                Recovered::Failed => r.failed += 1,
            }
            return;
        }
        let now = self.clock.now_ms();
        match e.state {
            JournalState::Verified | JournalState::Forwarded => {
                // Never submitted: nothing was charged, nothing served.
                j.transition(e.id, JournalState::Failed, None, Some("not_served".into()));
                r.abandoned += 1;
            }
            JournalState::Settled => {
                let tx = e.transaction.clone().unwrap_or_default();
                self.ledger.keep_redeemable(e, Open::Settled(tx), now);
                r.settled += 1;
            }
            _ => {
                let o = self.reconciler.read(&e).await;
                match &o {
                    Outcome::Settled { .. } => r.settled += 1,
                    Outcome::Failed { .. } => r.failed += 1,
                    Outcome::Open => {
                        r.unknown += 1;
                        j.transition(e.id, JournalState::Unknown, None, None);
                        self.ledger.keep_redeemable(e.clone(), Open::Unknown, now);
                    }
                }
                self.resolved(&e, &o);
            }
        }
    }

    /// One round of background work: read due unknown outcomes, refresh chain heads, probe an
    /// unhealthy journal, prune old rows (`prune` true).
    pub async fn maintain(&self, prune: bool) {
        self.maintain_at(self.clock.now_ms(), prune).await;
    }

    /// [`Payments::maintain`] as if it were `now_ms` (a time far ahead reads every unknown
    /// outcome now).
    pub async fn maintain_at(&self, now_ms: u64, prune: bool) {
        if !self.recovered.load(std::sync::atomic::Ordering::Acquire)
            && self
                .journal
                .as_ref()
                .is_some_and(journal::Journal::is_healthy)
        {
            let handing_over = self.handover.lock().is_ok_and(|h| h.is_some());
            let scope = if handing_over {
                Scope::GuardOnly
            } else {
                Scope::All
            };
            match self.recover_scoped(scope).await {
                Ok(r) => tracing::info!(?r, "journal recovered"),
                Err(e) => tracing::warn!(error = %e, "journal not recoverable yet"),
            }
        }
        if self.leftovers.load(std::sync::atomic::Ordering::Acquire) {
            match self.recover_scoped(Scope::Leftovers).await {
                Ok(r) if r.others == 0 => {
                    tracing::info!(?r, "payments other processes owned recovered")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "journal not recoverable"),
            }
        }
        if self.handover_finished(now_ms) {
            match self.recover_scoped(Scope::NotOwn).await {
                Ok(r) => tracing::info!(?r, "journal recovered after the hand-over"),
                Err(e) => tracing::warn!(error = %e, "journal not recoverable after the hand-over"),
            }
        }
        self.reconciler.refresh_heads().await;
        self.refresh_unpaid().await;
        let (micro, _) = self.ledger.exposure();
        self.metrics.deferred_state(self.ledger.owed(), micro);
        for e in self.ledger.due(now_ms) {
            let o = self.reconciler.read(&e).await;
            if o == Outcome::Open {
                tracing::debug!(payer = %e.key.from, transaction = e.transaction.as_deref().unwrap_or(""), "settlement outcome still unknown");
            } else {
                tracing::info!(payer = %e.key.from, outcome = ?o, "unknown settlement resolved");
            }
            self.resolved(&e, &o);
        }
        if let Some(j) = &self.journal {
            if !j.is_healthy() {
                j.probe();
            }
            if prune {
                let keep_ms = crate::clock::millis(self.retention);
                j.prune(self.clock.now_ms().saturating_sub(keep_ms));
            }
        }
    }

    /// Records an outcome read from the chain for a pending entry.
    pub(super) fn resolved(&self, e: &Entry, o: &Outcome) {
        if e.released {
            self.resolved_owed(e, o);
            return;
        }
        let Some(j) = &self.journal else {
            return;
        };
        match o {
            Outcome::Settled { transaction } => {
                self.metrics
                    .revenue(&e.route, &e.network, e.key.asset, e.amount);
                j.transition(e.id, JournalState::Settled, Some(transaction.clone()), None);
                let mut e = e.clone();
                e.state = JournalState::Settled;
                e.transaction = Some(transaction.clone());
                self.ledger.keep_redeemable(
                    e,
                    Open::Settled(transaction.clone()),
                    self.clock.now_ms(),
                );
            }
            Outcome::Failed { reason } => {
                j.transition(e.id, JournalState::Failed, None, Some(reason.clone()));
                self.ledger.unredeemable(&e.key);
            }
            Outcome::Open => {}
        }
    }

    /// Decimals of a token any route accepts (6, USDC's, when none does any more).
    pub(super) fn decimals_of(&self, asset: Address) -> u8 {
        self.table
            .load()
            .routes()
            .iter()
            .flat_map(|r| r.rule.options.iter())
            .find(|o| o.asset.address == asset)
            .map_or(6, |o| o.asset.decimals)
    }

    /// Reads the unpaid deliveries from the journal (an operator may have cleared some with
    /// `journal clear`): their value stays counted against the caps until then.
    pub(super) async fn refresh_unpaid(&self) {
        let Some(j) = &self.journal else {
            return;
        };
        let path = j.path().to_owned();
        let read = tokio::task::spawn_blocking(move || {
            let conn = journal::open_reader(&path).ok()?;
            journal::unpaid(&conn).ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(rows) = read {
            let mut by_payer: HashMap<Address, u128> = HashMap::new();
            for ((payer, asset), amount) in rows {
                let micro = micro_dollars(amount, self.decimals_of(asset));
                *by_payer.entry(payer).or_default() += micro;
            }
            self.ledger.set_unpaid(by_payer);
        }
    }
}

/// What recovery did with one owed settlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Recovered {
    /// Queued to be settled.
    Queued,
    /// Found settled on chain.
    Settled,
    /// Found failed on chain (an unpaid delivery).
    Failed,
}

/// The open payments (oldest first), and the closed ones still valid at `now` (unix s).
fn read_open_and_closed(path: &Path, now: u64) -> Result<(Vec<Entry>, Vec<Entry>), JournalError> {
    let reader = journal::open_reader(path)?;
    let open = journal::query(
        &reader,
        &journal::Filter {
            states: vec![
                JournalState::Verified,
                JournalState::Forwarded,
                JournalState::Settling,
                JournalState::Unknown,
                JournalState::Settled,
                JournalState::Queued,
            ],
            ..journal::Filter::default()
        },
    )?;
    let closed = journal::query(
        &reader,
        &journal::Filter {
            states: vec![JournalState::Delivered, JournalState::Failed],
            valid_at: Some(now),
            ..journal::Filter::default()
        },
    )?;
    Ok((open, closed))
}

/// How a journaled payment's authorization stands, as a retry of it is told: answered
/// (delivered, or released on credit), refused for good (closed without an answer), or still
/// settling (open).
fn spent(e: &Entry) -> Spent {
    match e.state {
        _ if e.released => Spent::Answered,
        JournalState::Delivered | JournalState::Queued => Spent::Answered,
        JournalState::Failed => Spent::Refused,
        _ => Spent::Settling,
    }
}
