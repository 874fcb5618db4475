//! The payment journal: every payment's life, durable, in embedded SQLite (WAL).
//!
//! Owns: [`Journal`] (the one writer, with group commit), [`Entry`] and [`JournalState`] (the
//! recorded life cycle `verified → forwarded → settling → settled | failed | unknown`, and
//! `settled → delivered`), the schema, and the queries of recovery and the `journal` command.
//!
//! Rules:
//! - A state is written before the irreversible step it guards: `settling` is durable (its
//!   commit acknowledged) before `/settle` is called. Other writes are queued without waiting;
//!   the writer keeps their order, so an acknowledged write implies every earlier one.
//! - One writer thread owns the write connection and commits whatever is queued as one
//!   transaction: a request waits for at most the fsync of the batch its write joined.
//! - If a commit fails (disk full, read-only), the journal is *unhealthy*: priced requests are
//!   refused with `503` and nothing is settled until a probe commit succeeds again.
//! - Payment-shaped data only: the authorization, the requirements and payload as sent to the
//!   facilitator (a signed authorization for one transfer to us), transaction hashes, reasons.
//!   No keys, no facilitator secrets, no request bodies.
//!
//! Does not own: deciding outcomes (`payments`), reading the chain (`journal::reconcile`).

pub mod reconcile;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use rusqlite::{params, Connection};

use crate::config::{JournalConfig, JournalSync};
use crate::verify::ReplayKey;

/// Where a payment is in its life, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JournalState {
    /// Verified and held; nothing forwarded or settled.
    Verified,
    /// Forwarded upstream (after-response mode), not settled yet.
    Forwarded,
    /// `/settle` is being called (durable before the call).
    Settling,
    /// Settled on chain.
    Settled,
    /// Settled, and the paid response's head went to the client.
    Delivered,
    /// Definitively not settled.
    Failed,
    /// The transfer may or may not have happened; being resolved.
    Unknown,
    /// Deferred: the paid answer went to the client; settlement is owed and not started.
    Queued,
}

impl JournalState {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalState::Verified => "verified",
            JournalState::Forwarded => "forwarded",
            JournalState::Settling => "settling",
            JournalState::Settled => "settled",
            JournalState::Delivered => "delivered",
            JournalState::Failed => "failed",
            JournalState::Unknown => "unknown",
            JournalState::Queued => "queued",
        }
    }

    /// Reads a recorded name.
    pub fn parse(s: &str) -> Option<JournalState> {
        Some(match s {
            "verified" => JournalState::Verified,
            "forwarded" => JournalState::Forwarded,
            "settling" => JournalState::Settling,
            "settled" => JournalState::Settled,
            "delivered" => JournalState::Delivered,
            "failed" => JournalState::Failed,
            "unknown" => JournalState::Unknown,
            "queued" => JournalState::Queued,
            _ => return None,
        })
    }

    /// Whether the outcome is final.
    pub fn is_final(self) -> bool {
        matches!(self, JournalState::Delivered | JournalState::Failed)
    }
}

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
    /// Current state.
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

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    crate::limiter::now_ms()
}

enum Op {
    Record(Box<Entry>),
    Transition {
        id: i64,
        state: JournalState,
        transaction: Option<String>,
        reason: Option<String>,
        from_block: Option<u64>,
    },
    Prune {
        before_ms: u64,
    },
    Probe,
    /// Test hook: cap the database's size (`PRAGMA max_page_count`), as a full disk does.
    MaxPages(u64),
}

impl Op {
    /// A move to `state` with nothing but the block its log searches start from.
    fn transition_at(id: i64, state: JournalState, from_block: Option<u64>) -> Op {
        Op::Transition {
            id,
            state,
            transaction: None,
            reason: None,
            from_block,
        }
    }
}

struct Cmd {
    op: Op,
    ack: Option<tokio::sync::oneshot::Sender<bool>>,
}

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS payments (
    id           INTEGER PRIMARY KEY,   -- time-ordered: appends only
    chain_id     INTEGER NOT NULL,
    asset        TEXT NOT NULL,
    payer        TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    pay_to       TEXT NOT NULL,
    amount       TEXT NOT NULL,
    network      TEXT NOT NULL,
    version      INTEGER NOT NULL,
    route        TEXT NOT NULL,
    resource     TEXT NOT NULL,
    valid_before INTEGER NOT NULL,
    state        TEXT NOT NULL,
    tx           TEXT,
    reason       TEXT,
    from_block   INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
-- Only open payments are indexed by state: recovery reads them; the index stays small.
CREATE INDEX IF NOT EXISTS payments_open ON payments(state)
    WHERE state IN ('verified', 'forwarded', 'settling', 'unknown', 'settled');
CREATE INDEX IF NOT EXISTS payments_created ON payments(created_at);
-- The request as sent to the facilitator, written once: updates of a payment's state rewrite
-- small rows only.
CREATE TABLE IF NOT EXISTS requests (
    id      INTEGER PRIMARY KEY,
    request TEXT NOT NULL
);
"#;

fn open(path: &Path, sync: JournalSync) -> Result<Connection, JournalError> {
    let e = sql(path);
    let conn = Connection::open(path).map_err(&e)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(&e)?;
    conn.pragma_update(
        None,
        "synchronous",
        match sync {
            JournalSync::Full => "FULL",
            JournalSync::Normal => "NORMAL",
        },
    )
    .map_err(&e)?;
    conn.execute_batch(SCHEMA).map_err(&e)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(&e)?;
    if version < 2 {
        conn.execute_batch(MIGRATE_2).map_err(&e)?;
    }
    conn.pragma_update(None, "user_version", 2).map_err(&e)?;
    Ok(conn)
}

/// Opens the journal for reading (the `journal` command, recovery) while a gateway may be
/// writing it.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    let e = sql(path);
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(&e)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
    Ok(conn)
}

/// Version 2: deferred settlement. `released`: the answer went out before settlement;
/// `cleared`: an operator cleared an unpaid delivery (`journal clear`). `queued` rows are open.
const MIGRATE_2: &str = r#"
ALTER TABLE payments ADD COLUMN released INTEGER NOT NULL DEFAULT 0;
ALTER TABLE payments ADD COLUMN cleared INTEGER NOT NULL DEFAULT 0;
DROP INDEX IF EXISTS payments_open;
CREATE INDEX payments_open ON payments(state)
    WHERE state IN ('verified', 'forwarded', 'settling', 'unknown', 'settled', 'queued');
CREATE INDEX payments_unpaid ON payments(payer)
    WHERE state = 'failed' AND released = 1 AND cleared = 0;
"#;

fn apply(t: &rusqlite::Transaction<'_>, op: &Op) -> rusqlite::Result<()> {
    match op {
        Op::Record(e) => {
            let id = e.id;
            t.prepare_cached(
                "INSERT INTO payments (id, chain_id, asset, payer, nonce, pay_to, amount, network,
                    version, route, resource, valid_before, state, tx, reason, from_block,
                    created_at, updated_at, released)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state,
                    released = max(released, excluded.released),
                    resource = excluded.resource, route = excluded.route,
                    tx = COALESCE(excluded.tx, tx), reason = COALESCE(excluded.reason, reason),
                    from_block = COALESCE(excluded.from_block, from_block),
                    updated_at = excluded.updated_at",
            )?
            .execute(params![
                id,
                e.key.chain_id as i64,
                hex_address(e.key.asset),
                hex_address(e.key.from),
                e.key.nonce.to_string(),
                hex_address(e.pay_to),
                e.amount.to_string(),
                e.network,
                i64::from(e.version),
                e.route,
                e.resource,
                i64::try_from(e.valid_before).unwrap_or(i64::MAX),
                e.state.as_str(),
                e.transaction,
                e.reason,
                e.from_block.map(|b| b as i64),
                e.created_at as i64,
                e.updated_at as i64,
                i64::from(e.released),
            ])?;
            t.prepare_cached("INSERT OR IGNORE INTO requests (id, request) VALUES (?1, ?2)")?
                .execute(params![id, e.request])?;
        }
        Op::Transition {
            id,
            state,
            transaction,
            reason,
            from_block,
        } => {
            // Forward only: a delivered or failed payment stays so, whoever reads its outcome
            // later (recovery in a process that took over from a running one, a stale pending
            // entry).
            t.prepare_cached(
                "UPDATE payments SET state = ?2, tx = COALESCE(?3, tx), reason = COALESCE(?4, reason),
                    from_block = COALESCE(?5, from_block), updated_at = ?6
                 WHERE id = ?1 AND state NOT IN ('delivered', 'failed')",
            )?
            .execute(params![
                    id,
                    state.as_str(),
                    transaction,
                    reason,
                from_block.map(|b| b as i64),
                now_ms() as i64,
            ])?;
        }
        Op::Prune { before_ms } => {
            let before = i64::try_from(*before_ms).unwrap_or(i64::MAX);
            t.execute(
                "DELETE FROM requests WHERE id IN (SELECT id FROM payments
                    WHERE state IN ('delivered', 'failed') AND updated_at < ?1
                    AND NOT (state = 'failed' AND released = 1 AND cleared = 0))",
                params![before],
            )?;
            t.execute(
                // Unpaid deliveries stay until an operator clears them.
                "DELETE FROM payments WHERE state IN ('delivered', 'failed') AND updated_at < ?1
                    AND NOT (state = 'failed' AND released = 1 AND cleared = 0)",
                params![before],
            )?;
        }
        Op::MaxPages(n) => {
            t.query_row(&format!("PRAGMA max_page_count = {n}"), [], |_| Ok(()))?;
        }
        Op::Probe => {
            t.execute_batch("CREATE TABLE IF NOT EXISTS probe (x); DELETE FROM probe; INSERT INTO probe VALUES (1);")?;
        }
    }
    Ok(())
}

/// The payment journal's write side, shared by all requests.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Cmd>,
    healthy: Arc<AtomicBool>,
    path: PathBuf,
    last_id: Arc<std::sync::atomic::AtomicI64>,
    /// This process's part of its row ids.
    tag: i64,
}

/// Row ids: `ms << ID_TIME_SHIFT | tag << ID_TAG_SHIFT | counter`.
const ID_TIME_SHIFT: u32 = 20;
const ID_TAG_SHIFT: u32 = 12;

/// The tag of this process's row ids: one more than the last writer's (so a process that takes
/// over from a running one never shares its ids), or random for a journal not open yet.
fn process_tag(conn: Option<&Connection>) -> i64 {
    let last: Option<i64> = conn.and_then(|c| {
        c.query_row("SELECT max(id) FROM payments", [], |r| r.get(0))
            .ok()
            .flatten()
    });
    match last {
        Some(id) => ((id >> ID_TAG_SHIFT) + 1) & 0xFF,
        None => {
            let mut b = [0u8; 1];
            let _ = getrandom::fill(&mut b);
            i64::from(b[0])
        }
    }
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
        let conn = open(&c.path, c.sync)?;
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
            .spawn(move || writer(conn, sync, &rx, &h, &path))
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
        let t = (i64::try_from(now_ms()).unwrap_or(i64::MAX >> ID_TIME_SHIFT) << ID_TIME_SHIFT)
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

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last commit succeeded.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn send(&self, op: Op, ack: Option<tokio::sync::oneshot::Sender<bool>>) {
        if self.tx.send(Cmd { op, ack }).is_err() {
            self.healthy.store(false, Ordering::Relaxed);
        }
    }

    async fn durable(&self, op: Op) -> Result<(), JournalError> {
        let (ack, done) = tokio::sync::oneshot::channel();
        self.send(op, Some(ack));
        match done.await {
            Ok(true) => Ok(()),
            _ => Err(JournalError::Unwritable),
        }
    }

    /// Records a payment (queued).
    pub fn record(&self, e: Entry) {
        self.send(Op::Record(Box::new(e)), None);
    }

    /// Records a payment and waits until it is durable.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn record_durable(&self, e: Entry) -> Result<(), JournalError> {
        self.durable(Op::Record(Box::new(e))).await
    }

    /// Moves a payment to `state` (queued).
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
            },
            None,
        );
    }

    /// Moves a payment to `state` (queued), noting a block at or before which nothing of it was
    /// sent (`from_block`, where log searches start).
    pub fn transition_at(&self, id: i64, state: JournalState, from_block: Option<u64>) {
        self.send(Op::transition_at(id, state, from_block), None);
    }

    /// Moves a payment to `state` and waits until it is durable (used for `settling`, before
    /// `/settle`).
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn transition_durable(
        &self,
        id: i64,
        state: JournalState,
        from_block: Option<u64>,
    ) -> Result<(), JournalError> {
        self.durable(Op::transition_at(id, state, from_block)).await
    }

    /// Waits until everything queued so far is durable.
    ///
    /// # Errors
    /// [`JournalError::Unwritable`].
    pub async fn flush(&self) -> Result<(), JournalError> {
        self.durable(Op::Probe).await
    }

    /// Deletes delivered and failed payments last changed before `before_ms` (queued).
    pub fn prune(&self, before_ms: u64) {
        self.send(Op::Prune { before_ms }, None);
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

/// The writer: takes everything queued, commits it as one transaction, acknowledges.
/// Writes that need no acknowledgement wait at most this long to share the commit (and the
/// fsync) of a durable one: a paid request costs one fsync, not one per state it passes.
const LAZY_COMMIT: Duration = Duration::from_millis(10);

/// The writer: gathers what is queued and commits it as one transaction (group commit) when a
/// durable write is among it or the oldest queued write is [`LAZY_COMMIT`] old; acknowledges.
fn writer(
    mut conn: Option<Connection>,
    sync: JournalSync,
    rx: &mpsc::Receiver<Cmd>,
    healthy: &AtomicBool,
    path: &Path,
) {
    let mut batch: Vec<Cmd> = Vec::new();
    let mut oldest: Option<std::time::Instant> = None;
    loop {
        if conn.is_none() {
            match open(path, sync) {
                Ok(c) => {
                    tracing::info!(journal = %path.display(), "journal opened");
                    conn = Some(c);
                    healthy.store(true, Ordering::Relaxed);
                }
                Err(_) => healthy.store(false, Ordering::Relaxed),
            }
        }
        let wait = match (&conn, oldest) {
            (None, _) => Some(Duration::from_secs(1)),
            (Some(_), Some(t)) => {
                Some((t + LAZY_COMMIT).saturating_duration_since(std::time::Instant::now()))
            }
            (Some(_), None) => None,
        };
        let got = match wait {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(d) => rx.recv_timeout(d),
        };
        let closed = match got {
            Ok(c) => {
                batch.push(c);
                while batch.len() < 4096 {
                    match rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let first = *oldest.get_or_insert_with(std::time::Instant::now);
        let durable = batch.iter().any(|c| c.ack.is_some());
        if conn.is_some() && !durable && !closed && first.elapsed() < LAZY_COMMIT {
            continue;
        }
        oldest = None;
        let ok = match conn.as_mut() {
            None => false,
            Some(db) => {
                // IMMEDIATE: take the write lock at BEGIN (waiting up to the busy timeout), so
                // that another process writing the same journal (during an upgrade) makes this
                // wait instead of failing.
                let result = db
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .and_then(|t| {
                        for c in &batch {
                            apply(&t, &c.op)?;
                        }
                        t.commit()
                    });
                match result {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(journal = %path.display(), error = %e, writes = batch.len(), "journal commit failed: priced routes answer 503 until it can be written");
                        false
                    }
                }
            }
        };
        if ok != healthy.swap(ok, Ordering::Relaxed) && ok {
            tracing::info!(journal = %path.display(), "journal writable again");
        }
        for c in batch.drain(..) {
            if let Some(ack) = c.ack {
                let _ = ack.send(ok);
            }
        }
        if closed {
            return;
        }
    }
}

// === Reading ===

fn row_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Entry, String>> {
    let text = |i: usize| r.get::<_, String>(i);
    let (asset, payer, nonce, pay_to, amount) = (text(2)?, text(3)?, text(4)?, text(5)?, text(6)?);
    let state: String = r.get(13)?;
    let parsed = (|| {
        Some(Entry {
            id: r.get(0).ok()?,
            key: ReplayKey {
                chain_id: u64::try_from(r.get::<_, i64>(1).ok()?).ok()?,
                asset: asset.parse().ok()?,
                from: payer.parse().ok()?,
                nonce: nonce.parse().ok()?,
            },
            pay_to: pay_to.parse().ok()?,
            amount: amount.parse().ok()?,
            network: r.get(7).ok()?,
            version: u8::try_from(r.get::<_, i64>(8).ok()?).ok()?,
            route: r.get(9).ok()?,
            resource: r.get(10).ok()?,
            request: r.get(11).ok()?,
            valid_before: u64::try_from(r.get::<_, i64>(12).ok()?).ok()?,
            state: JournalState::parse(&state)?,
            transaction: r.get(14).ok()?,
            reason: r.get(15).ok()?,
            from_block: r.get::<_, Option<i64>>(16).ok()?.map(|b| b as u64),
            created_at: u64::try_from(r.get::<_, i64>(17).ok()?).ok()?,
            updated_at: u64::try_from(r.get::<_, i64>(18).ok()?).ok()?,
            released: r.get::<_, i64>(19).ok()? != 0,
        })
    })();
    Ok(parsed.ok_or(format!("{payer}/{nonce}")))
}

const COLUMNS: &str = "id, chain_id, asset, payer, nonce, pay_to, amount, network, version, route,
    resource, COALESCE(requests.request, ''), valid_before, state, tx, reason, from_block,
    created_at, updated_at, released";

/// The payments joined with their requests.
const TABLES: &str = "payments LEFT JOIN requests USING (id)";

/// An address as stored: lowercase hex (no checksum: cheaper, and compared case-insensitively).
fn hex_address(a: Address) -> String {
    format!("{a:#x}")
}

/// A filter of [`query`].
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only these states.
    pub states: Vec<JournalState>,
    /// Only payments first recorded at or after this (unix ms).
    pub since_ms: Option<u64>,
    /// Only this route.
    pub route: Option<String>,
    /// Only payments that are still valid at this time (unix seconds).
    pub valid_at: Option<u64>,
}

/// Payments matching `f`, oldest first.
///
/// # Errors
/// [`JournalError`].
pub fn query(conn: &Connection, f: &Filter) -> Result<Vec<Entry>, JournalError> {
    let mut q = format!("SELECT {COLUMNS} FROM {TABLES} WHERE 1 = 1");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    if !f.states.is_empty() {
        let marks: Vec<String> = f
            .states
            .iter()
            .map(|s| {
                args.push(s.as_str().to_owned().into());
                format!("?{}", args.len())
            })
            .collect();
        q.push_str(&format!(" AND state IN ({})", marks.join(", ")));
    }
    if let Some(t) = f.since_ms {
        args.push((t as i64).into());
        q.push_str(&format!(" AND created_at >= ?{}", args.len()));
    }
    if let Some(r) = &f.route {
        args.push(r.clone().into());
        q.push_str(&format!(" AND route = ?{}", args.len()));
    }
    if let Some(t) = f.valid_at {
        args.push((t as i64).into());
        q.push_str(&format!(" AND valid_before > ?{}", args.len()));
    }
    q.push_str(" ORDER BY created_at, payments.rowid");
    collect(conn, &q, rusqlite::params_from_iter(args))
}

/// Runs a query of [`COLUMNS`] and reads every row.
fn collect(
    conn: &Connection,
    q: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Entry>, JournalError> {
    let err = |source| JournalError::Sqlite {
        path: "(journal)".into(),
        source,
    };
    let mut stmt = conn.prepare_cached(q).map_err(err)?;
    let rows = stmt.query_map(params, row_entry).map_err(err)?;
    let mut out = Vec::new();
    for r in rows {
        match r.map_err(err)? {
            Ok(e) => out.push(e),
            Err(id) => return Err(JournalError::Malformed(id)),
        }
    }
    Ok(out)
}

/// The state of payment `id` now, if it is in the journal.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn state_of(conn: &Connection, id: i64) -> Result<Option<JournalState>, JournalError> {
    use rusqlite::OptionalExtension;
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM payments WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()
        .map_err(|source| JournalError::Sqlite {
            path: "(journal)".into(),
            source,
        })?;
    Ok(state.as_deref().and_then(JournalState::parse))
}

/// Payments of a payer and nonce (the `journal show` lookup), any chain or asset.
///
/// # Errors
/// [`JournalError`].
pub fn find(conn: &Connection, payer: &str, nonce: &str) -> Result<Vec<Entry>, JournalError> {
    collect(
        conn,
        &format!("SELECT {COLUMNS} FROM {TABLES} WHERE payer = lower(?1) AND nonce = lower(?2)"),
        params![payer, nonce],
    )
}

/// Payers with unpaid deliveries (deferred payments that failed to settle) not cleared yet,
/// with how many each.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn unpaid_payers(conn: &Connection) -> Result<Vec<(Address, u64)>, JournalError> {
    let err = |source| JournalError::Sqlite {
        path: "(journal)".into(),
        source,
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT payer, count(*) FROM payments
             WHERE state = 'failed' AND released = 1 AND cleared = 0 GROUP BY payer",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .map_err(err)?;
    let mut out = Vec::new();
    for r in rows {
        let (payer, n) = r.map_err(err)?;
        let payer = payer.parse().map_err(|_| JournalError::Malformed(payer))?;
        out.push((payer, u64::try_from(n).unwrap_or(0)));
    }
    Ok(out)
}

/// Clears a payer's unpaid deliveries (`journal clear --payer`): the gateway settles their
/// payments deferred again from its next maintenance round. Returns how many were cleared.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn clear_unpaid(path: &Path, payer: Address) -> Result<usize, JournalError> {
    let e = sql(path);
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(&e)?;
    conn.busy_timeout(Duration::from_secs(5)).map_err(&e)?;
    conn.execute(
        "UPDATE payments SET cleared = 1, updated_at = ?2
         WHERE payer = ?1 AND state = 'failed' AND released = 1 AND cleared = 0",
        params![hex_address(payer), now_ms() as i64],
    )
    .map_err(&e)
}

#[cfg(test)]
mod tests;
