//! The payment journal: every payment's life, durable, in embedded SQLite (WAL).
//!
//! Owns: [`Journal`] (the write side: one writer thread with group commit, `journal/store.rs`),
//! [`Entry`] (one payment as recorded: its [`crate::flow::State`] as kind, transaction and
//! reason, plus what recovery and the `journal` command need), and the queries
//! (`journal/read.rs`).
//!
//! Rules:
//! - A state is written before the irreversible step it guards: `settling` before `/settle`,
//!   `queued` before a deferred answer, `delivered` before a paid answer's first byte (the
//!   durable writes, acknowledged once committed). Other writes are queued without waiting;
//!   the writer keeps their order, so an acknowledged write implies every earlier one.
//! - One writer thread owns the write connection and commits whatever is queued as one
//!   transaction: a request waits for at most the fsync of the batch its write joined.
//! - If a commit fails (disk full, read-only), the journal is *unhealthy*: priced requests are
//!   refused with `503` and nothing is settled until a commit succeeds again; the lazy writes
//!   of the failed batch are kept and written then.
//! - One writer per payment: each row has an owner (the process that wrote it, or took it
//!   over), and processes say they are alive in `writers` every second. Another process (the
//!   `journal` command, a process taking over in an upgrade) settles a row only after taking it
//!   over, which it cannot while its owner is alive.
//! - Payment-shaped data only: the authorization, the requirements and payload as sent to the
//!   facilitator, transaction hashes, reasons. No keys, no facilitator secrets, no request
//!   bodies.
//!
//! Does not own: deciding outcomes (`flow`, `payments`), reading the chain (`journal::reconcile`).

mod read;
pub mod reconcile;
mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use alloy::primitives::{Address, U256};
use rusqlite::Connection;

use crate::config::JournalConfig;
pub use crate::flow::Kind as JournalState;
use crate::flow::ReplayKey;
use crate::flow::State;
pub use read::{
    clear_unpaid, find, live_writers, open_reader, owner_of, query, state_of, unpaid,
    unpaid_payers, Filter,
};
pub use store::WRITER_STALE_MS;
use store::{Cmd, Op};

/// One payment as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The row (increasing with time: rows are appended, never inserted at random places).
    pub id: i64,
    /// The authorization's identity on chain.
    pub key: ReplayKey,
    /// The recipient.
    pub pay_to: Address,
    /// Atomic amount.
    pub amount: U256,
    /// CAIP-2 network.
    pub network: String,
    /// Protocol version of the payment (1 or 2).
    pub version: u8,
    /// The route (its `path` as configured; bounded set, never a raw request path).
    pub route: String,
    /// The resource URL the payment was made for.
    pub resource: String,
    /// The facilitator request as sent (payload and requirements).
    pub request: String,
    /// `validBefore` of the authorization.
    pub valid_before: u64,
    /// Current state's kind.
    pub state: JournalState,
    /// Transaction hash, once known.
    pub transaction: Option<String>,
    /// Why it failed or is unknown.
    pub reason: Option<String>,
    /// A block at or before the settlement was sent (where log searches start).
    pub from_block: Option<u64>,
    /// Unix milliseconds of the first record.
    pub created_at: u64,
    /// Unix milliseconds of the last change.
    pub updated_at: u64,
    /// Deferred: the paid answer was released before settlement (a failed settlement is then
    /// an unpaid delivery, and a settled one is `delivered`).
    pub released: bool,
}

impl Entry {
    /// The payment's state as the flow knows it.
    pub fn flow_state(&self) -> State {
        State::from_parts(
            self.state,
            self.transaction.as_deref(),
            self.reason.as_deref(),
        )
    }

    /// Sets the recorded state to `s` (kind, transaction, reason).
    pub fn set_state(&mut self, s: &State) {
        self.state = s.kind();
        if let Some(t) = s.transaction() {
            self.transaction = Some(t.to_owned());
        }
        self.reason = s.reason().map(|r| r.as_str().to_owned());
    }
}

/// Why the journal could not do something.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// SQLite failed (open, migrate, commit, query).
    #[error("journal {path}: {source}")]
    Sqlite {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: rusqlite::Error,
    },
    /// The writer is gone or its commit failed: nothing can be made durable.
    #[error("the journal cannot be written")]
    Unwritable,
    /// A row that cannot be read back (hand-edited file).
    #[error("journal row {0} is malformed")]
    Malformed(String),
}

fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> JournalError + '_ {
    move |source| JournalError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

/// An address as stored: lowercase hex (no checksum: cheaper, and compared case-insensitively).
fn hex_address(a: Address) -> String {
    format!("{a:#x}")
}

/// The payment journal's write side, shared by all requests.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
    last_id: Arc<std::sync::atomic::AtomicI64>,
    /// This process's part of its row ids, and its name in `writers`.
    tag: i64,
}

/// Row ids: `ms << ID_TIME_SHIFT | tag << ID_TAG_SHIFT | counter`.
const ID_TIME_SHIFT: u32 = 20;
const ID_TAG_SHIFT: u32 = 12;

/// The tag of this process's row ids: one more than the last writer's (so a process that takes
/// over from a running one never shares its ids), skipping the tags of live writers (a
/// `journal` command running), or random for a journal not open yet.
fn process_tag(conn: Option<&Connection>) -> i64 {
    let mut b = [0u8; 1];
    let _ = getrandom::fill(&mut b);
    let Some(c) = conn else {
        return i64::from(b[0]);
    };
    let last: Option<i64> = c
        .query_row("SELECT (max(id) >> 12) & 255 FROM payments", [], |r| {
            r.get(0)
        })
        .ok()
        .flatten();
    let live: Vec<i64> = read::live_writers(c, crate::clock::now_ms())
        .map(|w| w.into_iter().map(|(tag, _)| tag).collect())
        .unwrap_or_default();
    let mut tag = last.map_or(i64::from(b[0]), |t| (t + 1) & 0xFF);
    for _ in 0..256 {
        if !live.contains(&tag) {
            break;
        }
        tag = (tag + 1) & 0xFF;
    }
    tag
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Opens (creating and migrating) the journal and starts its writer thread.
    ///
    /// # Errors
    /// [`JournalError::Sqlite`] when the file cannot be opened or migrated.
    pub fn open(c: &JournalConfig) -> Result<Journal, JournalError> {
        if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = store::open(&c.path, c.sync)?;
        Self::spawn(c, Some(conn))
    }

    /// Opens the journal, or, when it cannot be opened now (a read-only or full disk), returns
    /// an unhealthy journal whose writer tries again every second: the gateway starts, free
    /// routes work, and priced routes answer `503` until it opens.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`] when no writer thread can be started.
    pub fn open_or_retry(c: &JournalConfig) -> Result<Journal, JournalError> {
        match Self::open(c) {
            Ok(j) => Ok(j),
            Err(e) => {
                tracing::error!(error = %e, "the payment journal cannot be opened: priced routes answer 503 until it can");
                Self::spawn(c, None)
            }
        }
    }

    fn spawn(c: &JournalConfig, conn: Option<Connection>) -> Result<Journal, JournalError> {
        let tag = process_tag(conn.as_ref());
        let (tx, rx) = mpsc::channel::<Cmd>();
        let healthy = Arc::new(AtomicBool::new(conn.is_some()));
        let h = healthy.clone();
        let (path, sync) = (c.path.clone(), c.sync);
        std::thread::Builder::new()
            .name("x402-journal".into())
            .spawn(move || {
                store::writer(store::Writer {
                    conn,
                    sync,
                    rx,
                    healthy: &h,
                    path: &path,
                    tag,
                });
            })
            .map_err(|_| JournalError::Unwritable)?;
        Ok(Journal {
            tx,
            healthy,
            path: c.path.clone(),
            last_id: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            tag,
        })
    }

    /// A new row id: the time in milliseconds, this process's tag and a counter
    /// (`ms << 20 | tag << 12 | n`), so ids increase with time across restarts, the tables only
    /// ever grow at their end, and two processes sharing the journal during an upgrade never
    /// pick the same id (the tag differs from the last writer's).
    pub fn next_id(&self) -> i64 {
        let t = (i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX >> ID_TIME_SHIFT)
            << ID_TIME_SHIFT)
            | (self.tag << ID_TAG_SHIFT);
        let mut last = self.last_id.load(Ordering::Relaxed);
        loop {
            let id = t.max(last + 1);
            match self
                .last_id
                .compare_exchange_weak(last, id, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return id,
                Err(now) => last = now,
            }
        }
    }

    /// Whether row `id` was written by this process (its tag; see [`Journal::next_id`]).
    pub fn is_own(&self, id: i64) -> bool {
        id >> ID_TIME_SHIFT != 0 && (id >> ID_TAG_SHIFT) & 0xFF == self.tag
    }

    /// This process's tag (its name in `writers`).
    pub fn tag(&self) -> i64 {
        self.tag
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last commit succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op, ack: Option<tokio::sync::oneshot::Sender<Option<usize>>>) {
        if self.tx.send(Cmd { op, ack }).is_err() {
            self.healthy.store(false, Ordering::Relaxed);
        }
    }

    /// Queues `op` and waits until it is committed; returns the rows it changed.
    async fn durable(&self, op: Op) -> Result<usize, JournalError> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.send(op, Some(ack));
        match done.await {
            Ok(Some(n)) => Ok(n),
            _ => Err(JournalError::Unwritable),
        }
    }

    /// Records a payment (queued).
    pub fn record(&self, e: Entry) {
        self.send(
            Op::Record {
                entry: Box::new(e),
                claim: false,
            },
            None,
        );
    }

    /// Records a payment and waits until it is durable. With `claim`, the payment also takes
    /// its authorization (`false` is returned, and nothing written, when another payment of
    /// any process on this journal holds it).
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn record_durable(&self, e: Entry, claim: bool) -> Result<bool, JournalError> {
        let n = self
            .durable(Op::Record {
                entry: Box::new(e),
                claim,
            })
            .await?;
        Ok(n > 0)
    }

    /// Moves a payment to `state` (queued; forward only).
    pub fn transition(
        &self,
        id: i64,
        state: JournalState,
        transaction: Option<String>,
        reason: Option<String>,
    ) {
        self.send(
            Op::Transition {
                id,
                state,
                transaction,
                reason,
                from_block: None,
                expect: None,
            },
            None,
        );
    }

    /// Moves a payment to the flow's `state` (queued; forward only), with its transaction and
    /// reason.
    pub fn transition_state(&self, id: i64, state: &State, from_block: Option<u64>) {
        self.send(Self::state_op(id, state, from_block), None);
    }

    /// As [`Journal::transition_state`], waiting until it is durable; whether it was recorded.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn transition_state_durable(
        &self,
        id: i64,
        state: &State,
        from_block: Option<u64>,
    ) -> Result<bool, JournalError> {
        Ok(self.durable(Self::state_op(id, state, from_block)).await? > 0)
    }

    fn state_op(id: i64, state: &State, from_block: Option<u64>) -> Op {
        Op::Transition {
            id,
            state: state.kind(),
            transaction: state.transaction().map(str::to_owned),
            reason: state.reason().map(|r| r.as_str().to_owned()),
            from_block,
            expect: None,
        }
    }

    /// Moves a payment back from `from` (a delivery that did not happen), queued.
    pub fn transition_from(&self, id: i64, from: JournalState, state: JournalState) {
        self.send(
            Op::Transition {
                id,
                state,
                transaction: None,
                reason: None,
                from_block: None,
                expect: Some(from),
            },
            None,
        );
    }

    /// Moves a payment to `state` (queued), noting a block at or before which nothing of it was
    /// sent (`from_block`, where log searches start).
    pub fn transition_at(&self, id: i64, state: JournalState, from_block: Option<u64>) {
        self.send(
            Op::Transition {
                id,
                state,
                transaction: None,
                reason: None,
                from_block,
                expect: None,
            },
            None,
        );
    }

    /// Records an outcome read while the payment was in `expect` (the `journal` command reads
    /// rows another process owns: it records only what it read, and only if nothing changed
    /// meanwhile). Returns whether it was recorded.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn transition_if(
        &self,
        id: i64,
        expect: JournalState,
        state: JournalState,
        transaction: Option<String>,
        reason: Option<String>,
    ) -> Result<bool, JournalError> {
        let n = self
            .durable(Op::Transition {
                id,
                state,
                transaction,
                reason,
                from_block: None,
                expect: Some(expect),
            })
            .await?;
        Ok(n > 0)
    }

    /// Takes authorization `key` for payment `id` and waits until it is durable: `false` when
    /// another payment (of any process on this journal) holds it.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn claim(
        &self,
        key: &ReplayKey,
        id: i64,
        valid_before: u64,
    ) -> Result<bool, JournalError> {
        let n = self
            .durable(Op::Claim {
                key: key.clone(),
                id,
                valid_before,
            })
            .await?;
        Ok(n > 0)
    }

    /// Gives payment `id`'s claim on `key` back (queued).
    pub fn unclaim(&self, key: &ReplayKey, id: i64) {
        self.send(
            Op::Unclaim {
                key: key.clone(),
                id,
            },
            None,
        );
    }

    /// Makes this process the one that settles payment `id`, unless another live process owns
    /// it. Returns whether it is this process's now.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn take_over(&self, id: i64) -> Result<bool, JournalError> {
        let n = self
            .durable(Op::TakeOver {
                id,
                owner: self.tag,
                now_ms: crate::clock::now_ms(),
            })
            .await?;
        Ok(n > 0)
    }

    /// Waits until everything queued so far is durable.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.durable(Op::Probe).await.map(|_| ())
    }

    /// Deletes delivered and failed payments last changed before `before_ms` (queued).
    pub fn prune(&self, before_ms: u64) {
        self.send(
            Op::Prune {
                before_ms,
                now_s: crate::clock::unix_now(),
            },
            None,
        );
    }

    /// Stops writing: everything queued so far is committed, this process leaves `writers`
    /// (the payments it owned are anyone's to take over at once), and the writer thread ends.
    /// Later writes fail.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn close(&self) -> Result<(), JournalError> {
        self.durable(Op::Retire { tag: self.tag }).await.map(|_| ())
    }

    /// Removes the rows of writers whose process is gone (on this host; a process killed
    /// without retiring), so that their payments can be taken over at once instead of after
    /// their heartbeat goes stale.
    ///
    /// # Errors
    /// [`JournalError`].
    pub async fn bury_dead_writers(&self) -> Result<usize, JournalError> {
        let path = self.path.clone();
        let me = self.tag;
        let own_pid = std::process::id();
        let dead = tokio::task::spawn_blocking(move || -> Result<Vec<i64>, JournalError> {
            let conn = open_reader(&path)?;
            let live = live_writers(&conn, crate::clock::now_ms())?;
            Ok(live
                .into_iter()
                .filter(|(tag, pid)| {
                    *tag != me
                        && *pid != own_pid
                        && *pid != 0
                        && !Path::new(&format!("/proc/{pid}")).exists()
                })
                .map(|(tag, _)| tag)
                .collect())
        })
        .await
        .map_err(|_| JournalError::Unwritable)??;
        for tag in &dead {
            self.durable(Op::Bury { tag: *tag }).await?;
        }
        Ok(dead.len())
    }

    /// Tries a commit, to find out whether an unhealthy journal can be written again.
    pub fn probe(&self) {
        self.send(Op::Probe, None);
    }

    /// Test hook: caps the database at `pages` pages, so that writes beyond fail as on a full
    /// disk (`SQLITE_FULL`).
    #[doc(hidden)]
    pub async fn limit_pages(&self, pages: u64) {
        let _ = self.durable(Op::MaxPages(pages)).await;
    }
}

#[cfg(test)]
mod tests;
