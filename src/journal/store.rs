//! The journal's file: schema and migrations, and the one writer thread that applies queued
//! operations with group commit.
//!
//! Owns: the SQLite schema (`payments`, `requests`, `claims`, `writers`), [`Op`] (every write,
//! applied inside the writer's transaction) and [`writer`], which commits what is queued as one
//! transaction, acknowledges each durable operation with its result, heartbeats this process's
//! row of `writers` (so other processes, the `journal` command among them, know a row's owner
//! is alive), and keeps the lazy writes of a batch whose commit failed until a commit succeeds
//! (a failed commit loses nothing it was not told about).
//!
//! Does not own: deciding what to write (`ledger`, `payments`), reading (`journal::read`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{hex_address, Entry, JournalError};
use crate::config::JournalSync;
use crate::flow::Kind;
use crate::flow::ReplayKey;

/// Writes of a batch that need no acknowledgement wait at most this long to share the commit (and
/// the fsync) of a durable one.
pub(super) const LAZY_COMMIT: Duration = Duration::from_millis(10);

/// How often a writer says it is alive; a writer silent for [`WRITER_STALE_MS`] is dead.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A writer that has not said it is alive for this long owns nothing any more.
pub const WRITER_STALE_MS: u64 = 3_000;

/// Lazy writes kept after failed commits, at most (then the oldest go, loudly).
const MAX_RETAINED: usize = 100_000;

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

/// Version 3: one writer per payment. `claims`: one row per authorization taken by a payment
/// (the replay guard shared by processes on this journal, e.g. during an upgrade hand-over);
/// `writers`: the processes writing the journal, with a heartbeat; `owner`: the writer that
/// settles a row (NULL: the one whose tag is in its id).
const MIGRATE_3: &str = r#"
CREATE TABLE IF NOT EXISTS claims (
    chain_id     INTEGER NOT NULL,
    asset        TEXT NOT NULL,
    payer        TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    id           INTEGER NOT NULL,
    valid_before INTEGER NOT NULL,
    PRIMARY KEY (chain_id, asset, payer, nonce)
);
CREATE TABLE IF NOT EXISTS writers (
    tag          INTEGER PRIMARY KEY,
    pid          INTEGER NOT NULL,
    heartbeat_ms INTEGER NOT NULL
);
ALTER TABLE payments ADD COLUMN owner INTEGER;
INSERT OR IGNORE INTO claims (chain_id, asset, payer, nonce, id, valid_before)
    SELECT chain_id, asset, payer, nonce, max(id), valid_before FROM payments
    WHERE state IN ('settling', 'settled', 'delivered', 'unknown', 'queued')
    GROUP BY chain_id, asset, payer, nonce;
"#;

/// Opens (creating and migrating) the journal's write connection.
pub(super) fn open(path: &Path, sync: JournalSync) -> Result<Connection, JournalError> {
    let e = super::sql(path);
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
    if version < 3 {
        conn.execute_batch(MIGRATE_3).map_err(&e)?;
    }
    conn.pragma_update(None, "user_version", 3).map_err(&e)?;
    Ok(conn)
}

/// One write, applied inside the writer's transaction.
#[derive(Debug)]
pub(super) enum Op {
    /// Inserts (or updates) a payment. With `claim`, takes the authorization in `claims` first:
    /// when another payment holds it, nothing is written and the result is 0.
    Record { entry: Box<Entry>, claim: bool },
    /// Moves a payment to `state`: forward only (a delivered or failed payment stays so), or,
    /// with `expect`, only from that state (a delivery that did not happen goes back to
    /// settled).
    Transition {
        id: i64,
        state: Kind,
        transaction: Option<String>,
        reason: Option<String>,
        from_block: Option<u64>,
        expect: Option<Kind>,
    },
    /// Takes an authorization for payment `id` (0 when another payment holds it).
    Claim {
        key: ReplayKey,
        id: i64,
        valid_before: u64,
    },
    /// Gives payment `id`'s claim on an authorization back.
    Unclaim { key: ReplayKey, id: i64 },
    /// Makes `owner` the settler of payment `id`, unless a live writer other than it owns it.
    TakeOver { id: i64, owner: i64, now_ms: u64 },
    /// Registers (or refreshes) a writer.
    Heartbeat { tag: i64, pid: u32, now_ms: u64 },
    /// Removes a writer: it exits (the writer thread stops after this commit).
    Retire { tag: i64 },
    /// Removes the row of a writer that is dead (its process is gone) without its retiring.
    Bury { tag: i64 },
    /// Deletes delivered and failed payments last changed before `before_ms`, and claims of
    /// authorizations that expired.
    Prune { before_ms: u64, now_s: u64 },
    /// A commit with nothing to write (flush, probe).
    Probe,
    /// Test hook: cap the database's size (`PRAGMA max_page_count`), as a full disk does.
    MaxPages(u64),
}

impl Op {
    /// Whether it adds rows (a commit of it shows the file has room).
    fn adds_rows(&self) -> bool {
        matches!(self, Op::Record { .. } | Op::Claim { .. } | Op::Probe)
    }

    /// Whether re-applying it after a failed commit is safe and still meant (every write is;
    /// a probe or a heartbeat is not worth keeping).
    fn worth_keeping(&self) -> bool {
        !matches!(self, Op::Probe | Op::Heartbeat { .. } | Op::MaxPages(_))
    }
}

/// An operation and, for a durable one, where its result goes: `None` when the commit failed,
/// else the rows it changed.
pub(super) struct Cmd {
    pub(super) op: Op,
    pub(super) ack: Option<tokio::sync::oneshot::Sender<Option<usize>>>,
}

fn claim(
    t: &rusqlite::Transaction<'_>,
    key: &ReplayKey,
    id: i64,
    valid_before: u64,
) -> rusqlite::Result<bool> {
    let (asset, payer, nonce) = (
        hex_address(key.asset),
        hex_address(key.from),
        key.nonce.to_string(),
    );
    t.prepare_cached(
        "INSERT INTO claims (chain_id, asset, payer, nonce, id, valid_before)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
    )?
    .execute(params![
        key.chain_id as i64,
        asset,
        payer,
        nonce,
        id,
        i64::try_from(valid_before).unwrap_or(i64::MAX)
    ])?;
    let holder: Option<i64> = t
        .prepare_cached(
            "SELECT id FROM claims WHERE chain_id = ?1 AND asset = ?2 AND payer = ?3 AND nonce = ?4",
        )?
        .query_row(params![key.chain_id as i64, asset, payer, nonce], |r| r.get(0))
        .optional()?;
    Ok(holder == Some(id))
}

/// Applies `op`; returns the rows it changed.
fn apply(t: &rusqlite::Transaction<'_>, op: &Op, tag: i64) -> rusqlite::Result<usize> {
    match op {
        Op::Record { entry: e, claim: with_claim } => {
            if *with_claim && !claim(t, &e.key, e.id, e.valid_before)? {
                return Ok(0);
            }
            let n = t
                .prepare_cached(
                    "INSERT INTO payments (id, chain_id, asset, payer, nonce, pay_to, amount, network,
                    version, route, resource, valid_before, state, tx, reason, from_block,
                    created_at, updated_at, released, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18, ?19, ?20)
                 ON CONFLICT(id) DO UPDATE SET state = excluded.state,
                    released = max(released, excluded.released),
                    resource = excluded.resource, route = excluded.route,
                    tx = COALESCE(excluded.tx, tx), reason = COALESCE(excluded.reason, reason),
                    from_block = COALESCE(excluded.from_block, from_block),
                    updated_at = excluded.updated_at
                 WHERE state NOT IN ('delivered', 'failed')",
                )?
                .execute(params![
                    e.id,
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
                    tag,
                ])?;
            t.prepare_cached("INSERT OR IGNORE INTO requests (id, request) VALUES (?1, ?2)")?
                .execute(params![e.id, e.request])?;
            Ok(n)
        }
        Op::Transition {
            id,
            state,
            transaction,
            reason,
            from_block,
            expect,
        } => t
            .prepare_cached(
                "UPDATE payments SET state = ?2, tx = COALESCE(?3, tx), reason = COALESCE(?4, reason),
                    from_block = COALESCE(?5, from_block), updated_at = ?6
                 WHERE id = ?1 AND CASE WHEN ?7 IS NULL
                    THEN state NOT IN ('delivered', 'failed') ELSE state = ?7 END",
            )?
            .execute(params![
                id,
                state.as_str(),
                transaction,
                reason,
                from_block.map(|b| b as i64),
                crate::clock::now_ms() as i64,
                expect.map(Kind::as_str),
            ]),
        Op::Claim {
            key,
            id,
            valid_before,
        } => Ok(usize::from(claim(t, key, *id, *valid_before)?)),
        Op::Unclaim { key, id } => t
            .prepare_cached(
                "DELETE FROM claims WHERE chain_id = ?1 AND asset = ?2 AND payer = ?3 AND nonce = ?4
                    AND id = ?5",
            )?
            .execute(params![
                key.chain_id as i64,
                hex_address(key.asset),
                hex_address(key.from),
                key.nonce.to_string(),
                id
            ]),
        Op::TakeOver { id, owner, now_ms } => t
            .prepare_cached(
                "UPDATE payments SET owner = ?2
                 WHERE id = ?1 AND COALESCE(owner, (id >> 12) & 255) NOT IN
                    (SELECT tag FROM writers WHERE heartbeat_ms > ?3 AND tag != ?2)",
            )?
            .execute(params![
                id,
                owner,
                now_ms.saturating_sub(WRITER_STALE_MS) as i64
            ]),
        Op::Heartbeat { tag, pid, now_ms } => t
            .prepare_cached(
                "INSERT INTO writers (tag, pid, heartbeat_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT(tag) DO UPDATE SET pid = excluded.pid, heartbeat_ms = excluded.heartbeat_ms",
            )?
            .execute(params![tag, i64::from(*pid), *now_ms as i64]),
        Op::Retire { tag } | Op::Bury { tag } => {
            t.execute("DELETE FROM writers WHERE tag = ?1", params![tag])
        }
        Op::Prune { before_ms, now_s } => {
            let before = i64::try_from(*before_ms).unwrap_or(i64::MAX);
            t.execute(
                "DELETE FROM requests WHERE id IN (SELECT id FROM payments
                    WHERE state IN ('delivered', 'failed') AND updated_at < ?1
                    AND NOT (state = 'failed' AND released = 1 AND cleared = 0))",
                params![before],
            )?;
            let n = t.execute(
                // Unpaid deliveries stay until an operator clears them.
                "DELETE FROM payments WHERE state IN ('delivered', 'failed') AND updated_at < ?1
                    AND NOT (state = 'failed' AND released = 1 AND cleared = 0)",
                params![before],
            )?;
            t.execute(
                "DELETE FROM claims WHERE valid_before < ?1",
                params![i64::try_from(*now_s).unwrap_or(i64::MAX)],
            )?;
            Ok(n)
        }
        Op::MaxPages(n) => {
            t.query_row(&format!("PRAGMA max_page_count = {n}"), [], |_| Ok(()))?;
            Ok(0)
        }
        Op::Probe => {
            t.execute_batch("CREATE TABLE IF NOT EXISTS probe (x); DELETE FROM probe; INSERT INTO probe VALUES (1);")?;
            Ok(0)
        }
    }
}

/// What the writer thread works with.
pub(super) struct Writer<'a> {
    pub(super) conn: Option<Connection>,
    pub(super) sync: JournalSync,
    pub(super) rx: mpsc::Receiver<Cmd>,
    pub(super) healthy: &'a AtomicBool,
    pub(super) path: &'a Path,
    /// This process's tag (its row in `writers`).
    pub(super) tag: i64,
}

/// The writer: gathers what is queued and commits it as one transaction (group commit) when a
/// durable write is among it or the oldest queued write is [`LAZY_COMMIT`] old; acknowledges
/// each durable write with its result; heartbeats once a second.
pub(super) fn writer(mut w: Writer<'_>) {
    let mut batch: Vec<Cmd> = Vec::new();
    let mut retained: Vec<Op> = Vec::new();
    let mut oldest: Option<crate::clock::Instant> = None;
    let mut beat_at = crate::clock::instant();
    let pid = std::process::id();
    loop {
        if w.conn.is_none() {
            match open(w.path, w.sync) {
                Ok(c) => {
                    tracing::info!(journal = %w.path.display(), "journal opened");
                    w.conn = Some(c);
                    w.healthy.store(true, Ordering::Relaxed);
                }
                Err(_) => w.healthy.store(false, Ordering::Relaxed),
            }
        }
        let now = crate::clock::instant();
        let mut wait = beat_at.saturating_duration_since(now);
        if let Some(t) = oldest {
            wait = wait.min((t + LAZY_COMMIT).saturating_duration_since(now));
        }
        if w.conn.is_none() {
            wait = wait.min(Duration::from_secs(1));
        }
        let closed = match w.rx.recv_timeout(wait) {
            Ok(c) => {
                batch.push(c);
                while batch.len() < 4096 {
                    match w.rx.try_recv() {
                        Ok(c) => batch.push(c),
                        Err(_) => break,
                    }
                }
                false
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let beat = crate::clock::instant() >= beat_at || closed;
        if beat {
            beat_at = crate::clock::instant() + HEARTBEAT;
            let op = if closed {
                Op::Retire { tag: w.tag }
            } else {
                Op::Heartbeat {
                    tag: w.tag,
                    pid,
                    now_ms: crate::clock::now_ms(),
                }
            };
            batch.push(Cmd { op, ack: None });
        }
        if batch.is_empty() && retained.is_empty() {
            if closed {
                return;
            }
            continue;
        }
        let first = *oldest.get_or_insert_with(crate::clock::instant);
        let durable = batch.iter().any(|c| c.ack.is_some());
        if w.conn.is_some() && !durable && !closed && !beat && first.elapsed() < LAZY_COMMIT {
            continue;
        }
        oldest = None;
        let results = commit(w.conn.as_mut(), &retained, &batch, w.tag);
        let ok = results.is_ok();
        if let Err(e) = &results {
            tracing::error!(journal = %w.path.display(), error = %e, writes = batch.len() + retained.len(), "journal commit failed: priced routes answer 503 until it can be written; queued writes are kept");
        }
        // An update in place or a delete (a heartbeat, a transition, a claim given back) proves
        // nothing about room for new payments: only a commit that adds rows (a probe, a
        // payment, a claim) makes the journal healthy again.
        let proves = retained.iter().any(Op::adds_rows) || batch.iter().any(|c| c.op.adds_rows());
        if !ok {
            w.healthy.store(false, Ordering::Relaxed);
        } else if proves && !w.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(journal = %w.path.display(), "journal writable again");
        }
        let counts = results.ok();
        if counts.is_some() {
            retained.clear();
        }
        let retired = counts.is_some() && batch.iter().any(|c| matches!(c.op, Op::Retire { .. }));
        for (i, c) in batch.drain(..).enumerate() {
            match (c.ack, &counts) {
                (Some(ack), Some(n)) => {
                    let _ = ack.send(Some(n.get(i).copied().unwrap_or(0)));
                }
                (Some(ack), None) => {
                    let _ = ack.send(None);
                }
                // A lazy write of a failed commit waits for the next one that succeeds.
                (None, None) if c.op.worth_keeping() => retained.push(c.op),
                (None, _) => {}
            }
        }
        if retained.len() > MAX_RETAINED {
            let drop = retained.len() - MAX_RETAINED;
            tracing::error!(
                dropped = drop,
                "journal unwritable for long: the oldest queued writes are lost"
            );
            retained.drain(..drop);
        }
        if closed || retired {
            if retired {
                w.healthy.store(false, Ordering::Relaxed);
            }
            return;
        }
    }
}

/// The outcome of one commit: per batch command, the rows it changed; or why it failed.
type Committed = Result<Vec<usize>, String>;

/// Applies the retained writes, then the batch, in one transaction.
fn commit(conn: Option<&mut Connection>, retained: &[Op], batch: &[Cmd], tag: i64) -> Committed {
    let Some(db) = conn else {
        return Err("the journal file is not open".into());
    };
    // IMMEDIATE: take the write lock at BEGIN (waiting up to the busy timeout), so that another
    // process writing the same journal (during an upgrade) makes this wait instead of failing.
    let t = db
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(|e| e.to_string())?;
    for op in retained {
        apply(&t, op, tag).map_err(|e| e.to_string())?;
    }
    let mut counts = Vec::with_capacity(batch.len());
    for c in batch {
        counts.push(apply(&t, &c.op, tag).map_err(|e| e.to_string())?);
    }
    t.commit().map_err(|e| e.to_string())?;
    Ok(counts)
}
