//! Reading the journal: on a read-only connection of its own, while a gateway may be writing
//! it (recovery, the `journal` command, tests).
//!
//! Owns: [`open_reader`], [`query`] and its [`Filter`], the lookups of one payment ([`find`],
//! [`state_of`]), the unpaid deliveries ([`unpaid`], [`unpaid_payers`], [`clear_unpaid`]) and
//! the live writers ([`live_writers`]).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use rusqlite::{params, Connection, OptionalExtension};

use super::{hex_address, sql, Entry, JournalError, JournalState};
use crate::flow::ReplayKey;

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

fn err(source: rusqlite::Error) -> JournalError {
    JournalError::Sqlite {
        path: "(journal)".into(),
        source,
    }
}

/// Runs a query of [`COLUMNS`] and reads every row.
fn collect(
    conn: &Connection,
    q: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<Entry>, JournalError> {
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
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM payments WHERE id = ?1",
            params![id],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
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

/// The value of the unpaid deliveries not cleared yet, per payer and token: `(payer, asset)` →
/// atomic amount.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn unpaid(conn: &Connection) -> Result<HashMap<(Address, Address), U256>, JournalError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT payer, asset, amount FROM payments
             WHERE state = 'failed' AND released = 1 AND cleared = 0",
        )
        .map_err(err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .map_err(err)?;
    let mut out: HashMap<(Address, Address), U256> = HashMap::new();
    for r in rows {
        let (payer, asset, amount) = r.map_err(err)?;
        let parsed = (|| {
            Some((
                payer.parse().ok()?,
                asset.parse().ok()?,
                amount.parse().ok()?,
            ))
        })();
        let Some((payer, asset, amount)) = parsed else {
            return Err(JournalError::Malformed(payer));
        };
        let v: &mut U256 = out.entry((payer, asset)).or_default();
        *v = v.saturating_add(amount);
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
        params![hex_address(payer), crate::clock::now_ms() as i64],
    )
    .map_err(&e)
}

/// The processes writing the journal now (heartbeat within `WRITER_STALE_MS` of `now_ms`):
/// `(tag, pid)`.
///
/// # Errors
/// [`JournalError::Sqlite`] (an old journal without the `writers` table has none).
pub fn live_writers(conn: &Connection, now_ms: u64) -> Result<Vec<(i64, u32)>, JournalError> {
    let has: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'writers'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if !has {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached("SELECT tag, pid FROM writers WHERE heartbeat_ms > ?1")
        .map_err(err)?;
    let since = now_ms.saturating_sub(super::store::WRITER_STALE_MS) as i64;
    let rows = stmt
        .query_map(params![since], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(err)?;
    let mut out = Vec::new();
    for r in rows {
        let (tag, pid) = r.map_err(err)?;
        out.push((tag, u32::try_from(pid).unwrap_or(0)));
    }
    Ok(out)
}

/// The owner (writer tag) of payment `id`, if it has a row.
///
/// # Errors
/// [`JournalError::Sqlite`].
pub fn owner_of(conn: &Connection, id: i64) -> Result<Option<i64>, JournalError> {
    conn.query_row(
        "SELECT COALESCE(owner, (id >> 12) & 255) FROM payments WHERE id = ?1",
        params![id],
        |r| r.get(0),
    )
    .optional()
    .map_err(err)
}
