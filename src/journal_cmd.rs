//! `x402-gateway journal`: read the payment journal (while the gateway runs), reconcile open
//! payments against the chain, report revenue.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use alloy::primitives::U256;
use clap::{Args, Subcommand, ValueEnum};
use x402_gateway::config::{assets, money, Asset, Config};
use x402_gateway::journal::reconcile::Outcome;
use x402_gateway::journal::{self, Entry, Filter, Journal, JournalState};

/// `journal` arguments.
#[derive(Args, Debug)]
pub(crate) struct JournalArgs {
    /// The configuration file (its `[journal] path` is read).
    #[arg(long, short, default_value = "gateway.toml", global = true)]
    pub(crate) config: std::path::PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: JournalCommand,
}

/// `journal` subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum JournalCommand {
    /// List payments, oldest first.
    List {
        /// Only this state (verified, forwarded, queued, settling, settled, delivered, failed,
        /// unknown); repeatable.
        #[arg(long)]
        state: Vec<String>,
        /// Only payments since: a duration ago ("24h", "7d"), a date ("2026-11-01") or a time
        /// ("2026-11-01T12:00:00Z").
        #[arg(long)]
        since: Option<String>,
        /// Only this route (its configured `path`).
        #[arg(long)]
        route: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show one payment: KEY is `PAYER/NONCE`, a nonce, or a transaction hash.
    Show {
        /// The payment.
        key: String,
    },
    /// Read every settling or unknown payment's outcome from the chain now (as recovery does
    /// at start) and record it.
    Reconcile,
    /// Payers with unpaid deliveries: deferred payments that failed to settle. The gateway
    /// settles their payments first (before release) until they are cleared.
    Unpaid,
    /// Clears a payer's unpaid deliveries (after collecting the debt some other way, or
    /// writing it off): the gateway defers their payments again within a few seconds.
    Clear {
        /// The payer's address.
        #[arg(long)]
        payer: String,
    },
    /// Revenue (settled and delivered) in dollars and atomic units, and counts per outcome.
    Report {
        /// Group by.
        #[arg(long, value_enum, default_value = "route")]
        by: By,
        /// Only payments since (as for `list`).
        #[arg(long)]
        since: Option<String>,
    },
}

/// Output format of `list`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Grouping of `report`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum By {
    /// The route.
    Route,
    /// The UTC day the payment was first recorded.
    Day,
    /// The payer.
    Payer,
    /// The network.
    Network,
}

/// Reads `--since`.
fn since_ms(s: &str) -> Result<u64, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        return Ok(x402_gateway::clock::now_ms().saturating_sub(ms));
    }
    let text = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_owned()
    };
    let t = humantime::parse_rfc3339_weak(&text).map_err(|_| {
        format!("--since {s}: use a duration (\"24h\"), a date (\"2026-11-01\") or a time")
    })?;
    let ms = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| "--since is before 1970".to_owned())?
        .as_millis();
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn states(names: &[String]) -> Result<Vec<JournalState>, String> {
    names
        .iter()
        .map(|n| JournalState::parse(n).ok_or_else(|| format!("unknown state {n}")))
        .collect()
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// The assets of the config and the built-in table, by (chain, address).
fn asset_of(config: &Config, e: &Entry) -> Option<Asset> {
    config
        .routes
        .iter()
        .flat_map(|r| &r.options)
        .find(|o| o.network.chain_id() == e.key.chain_id && o.asset.address == e.key.asset)
        .map(|o| o.asset.clone())
        .or_else(|| assets::by_address(e.key.chain_id, e.key.asset))
}

fn dollars(config: &Config, e: &Entry) -> Option<String> {
    let a = asset_of(config, e)?;
    a.usd_stable
        .then(|| format!("${}", money::format_units(e.amount, a.decimals)))
}

fn json(e: &Entry, config: &Config) -> serde_json::Value {
    serde_json::json!({
        "payer": e.key.from.to_checksum(None),
        "nonce": e.key.nonce.to_string(),
        "chain_id": e.key.chain_id,
        "asset": e.key.asset.to_checksum(None),
        "pay_to": e.pay_to.to_checksum(None),
        "amount": e.amount.to_string(),
        "amount_usd": dollars(config, e),
        "network": e.network,
        "x402_version": e.version,
        "route": e.route,
        "resource": e.resource,
        "state": e.state.as_str(),
        "transaction": e.transaction,
        "reason": e.reason,
        "valid_before": e.valid_before,
        "created_at": time(e.created_at),
        "updated_at": time(e.updated_at),
    })
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Runs a `journal` command. Returns the process exit code.
pub(crate) async fn run(a: JournalArgs, config: &Config) -> Result<bool, String> {
    let path = &config.journal.path;
    if !path.exists() {
        return Err(format!("no journal at {}", path.display()));
    }
    let reader = journal::open_reader(path).map_err(|e| e.to_string())?;
    match a.command {
        JournalCommand::List {
            state,
            since,
            route,
            format,
        } => {
            let f = Filter {
                states: states(&state)?,
                since_ms: since.as_deref().map(since_ms).transpose()?,
                route,
                valid_at: None,
            };
            let rows = journal::query(&reader, &f).map_err(|e| e.to_string())?;
            print_rows(&rows, format, config);
            Ok(true)
        }
        JournalCommand::Show { key } => {
            let key = key.trim();
            let rows = journal::query(&reader, &Filter::default()).map_err(|e| e.to_string())?;
            let (payer, nonce) = key.split_once('/').unwrap_or(("", key));
            let found: Vec<&Entry> = rows
                .iter()
                .filter(|e| {
                    let nonce_ok = e.key.nonce.to_string().eq_ignore_ascii_case(nonce);
                    let payer_ok =
                        payer.is_empty() || e.key.from.to_string().eq_ignore_ascii_case(payer);
                    (nonce_ok && payer_ok)
                        || e.transaction
                            .as_deref()
                            .is_some_and(|t| t.eq_ignore_ascii_case(key))
                })
                .collect();
            if found.is_empty() {
                return Err(format!("no payment {key} in {}", path.display()));
            }
            for e in found {
                let mut v = json(e, config);
                v["request"] = serde_json::from_str(&e.request).unwrap_or(serde_json::Value::Null);
                outln!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
            Ok(true)
        }
        JournalCommand::Reconcile => reconcile(&a.config, &reader).await,
        JournalCommand::Unpaid => {
            let payers = journal::unpaid_payers(&reader).map_err(|e| e.to_string())?;
            if payers.is_empty() {
                outln!("no unpaid deliveries");
            }
            for (payer, n) in payers {
                outln!("{}  {n} unpaid", payer.to_checksum(None));
            }
            Ok(true)
        }
        JournalCommand::Clear { payer } => {
            let addr: alloy::primitives::Address = payer
                .trim()
                .parse()
                .map_err(|_| format!("`{payer}` is not an address"))?;
            drop(reader);
            let n = journal::clear_unpaid(path, addr).map_err(|e| e.to_string())?;
            outln!(
                "cleared {n} unpaid deliver{} of {}",
                if n == 1 { "y" } else { "ies" },
                addr.to_checksum(None)
            );
            Ok(true)
        }
        JournalCommand::Report { by, since } => {
            let f = Filter {
                since_ms: since.as_deref().map(since_ms).transpose()?,
                ..Filter::default()
            };
            let rows = journal::query(&reader, &f).map_err(|e| e.to_string())?;
            report(&rows, by, config);
            Ok(true)
        }
    }
}

fn print_rows(rows: &[Entry], format: Format, config: &Config) {
    match format {
        Format::Json => {
            let all: Vec<_> = rows.iter().map(|e| json(e, config)).collect();
            outln!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
        }
        Format::Csv => {
            outln!("created_at,state,route,payer,nonce,amount,amount_usd,network,transaction,reason,resource");
            for e in rows {
                let fields = [
                    time(e.created_at),
                    e.state.as_str().to_owned(),
                    e.route.clone(),
                    e.key.from.to_checksum(None),
                    e.key.nonce.to_string(),
                    e.amount.to_string(),
                    dollars(config, e).unwrap_or_default(),
                    e.network.clone(),
                    e.transaction.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.resource.clone(),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                outln!("{}", line.join(","));
            }
        }
        Format::Table => {
            outln!(
                "{:<20} {:<9} {:<16} {:<42} {:>10} {:<18} {:<14} REASON",
                "CREATED (UTC)",
                "STATE",
                "ROUTE",
                "PAYER",
                "AMOUNT",
                "NONCE",
                "TRANSACTION"
            );
            for e in rows {
                let short = |s: &str| {
                    if s.len() > 14 {
                        format!("{}…", &s[..13])
                    } else {
                        s.to_owned()
                    }
                };
                outln!(
                    "{:<20} {:<9} {:<16} {:<42} {:>10} {:<18} {:<14} {}",
                    time(e.created_at),
                    e.state.as_str(),
                    e.route,
                    e.key.from.to_checksum(None),
                    dollars(config, e).unwrap_or_else(|| e.amount.to_string()),
                    short(&e.key.nonce.to_string()),
                    short(e.transaction.as_deref().unwrap_or("-")),
                    e.reason.as_deref().unwrap_or(""),
                );
            }
            outln!("{} payment(s)", rows.len());
        }
    }
}

#[derive(Default)]
struct Group {
    counts: BTreeMap<&'static str, usize>,
    revenue: BTreeMap<(u64, String), U256>,
    usd_micros: Option<U256>,
}

fn report(rows: &[Entry], by: By, config: &Config) {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    for e in rows {
        let key = match by {
            By::Route => e.route.clone(),
            By::Day => time(e.created_at)[..10].to_owned(),
            By::Payer => e.key.from.to_checksum(None),
            By::Network => e.network.clone(),
        };
        let g = groups.entry(key).or_default();
        *g.counts.entry(e.state.as_str()).or_default() += 1;
        if matches!(e.state, JournalState::Settled | JournalState::Delivered) {
            *g.revenue
                .entry((e.key.chain_id, e.key.asset.to_checksum(None)))
                .or_default() += e.amount;
            if let Some(a) = asset_of(config, e).filter(|a| a.usd_stable) {
                // Dollars in millionths, exactly: amount × 10^6 / 10^decimals.
                let micros = e.amount * U256::from(1_000_000u64)
                    / U256::from(10u64).pow(U256::from(a.decimals));
                g.usd_micros = Some(g.usd_micros.unwrap_or_default() + micros);
            }
        }
    }
    outln!(
        "{:<28} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}  REVENUE (ATOMIC, PER CHAIN/ASSET)",
        match by {
            By::Route => "ROUTE",
            By::Day => "DAY (UTC)",
            By::Payer => "PAYER",
            By::Network => "NETWORK",
        },
        "REVENUE USD",
        "DELIVERED",
        "SETTLED",
        "FAILED",
        "UNKNOWN",
        "OTHER"
    );
    for (k, g) in &groups {
        let c = |s: &str| g.counts.get(s).copied().unwrap_or(0);
        let other = c("verified") + c("forwarded") + c("settling");
        let usd = g.usd_micros.map_or("-".to_owned(), |m| {
            format!("${}", money::format_units(m, 6))
        });
        let atomic: Vec<String> = g
            .revenue
            .iter()
            .map(|((chain, asset), v)| format!("{v} on {chain}/{asset}"))
            .collect();
        outln!(
            "{:<28} {:>12} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            k,
            usd,
            c("delivered"),
            c("settled"),
            c("failed"),
            c("unknown"),
            other,
            atomic.join("; ")
        );
    }
}

/// Reads every settling or unknown payment's outcome and records it, one writer per payment: a
/// payment a running gateway owns is left to it (only read from the chain, when an RPC is
/// configured, and recorded only if nothing changed meanwhile); any other is taken over first,
/// then read (and, without a chain RPC, settled again through the facilitator: the nonce admits
/// one transfer).
async fn reconcile(path: &Path, reader: &rusqlite::Connection) -> Result<bool, String> {
    // The facilitator and the chain RPCs need their secrets: the strict load.
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let open = journal::query(
        reader,
        &Filter {
            states: vec![JournalState::Settling, JournalState::Unknown],
            ..Filter::default()
        },
    )
    .map_err(|e| e.to_string())?;
    if open.is_empty() {
        outln!("nothing to reconcile: no settling or unknown payment");
        return Ok(true);
    }
    let facilitator = x402_gateway::connect_facilitator(&config)
        .await
        .map_err(|e| e.to_string())?;
    let reconciler =
        Arc::new(x402_gateway::reconciler(&config, facilitator).map_err(|e| e.to_string())?);
    let journal = Journal::open(&config.journal).map_err(|e| e.to_string())?;
    let live =
        journal::live_writers(reader, x402_gateway::clock::now_ms()).map_err(|e| e.to_string())?;
    let (mut settled, mut failed, mut still, mut left) = (0, 0, 0, 0);
    for e in &open {
        let who = format!("{}/{}", e.key.from.to_checksum(None), e.key.nonce);
        let owner = journal::owner_of(reader, e.id).map_err(|e| e.to_string())?;
        let running = live
            .iter()
            .find(|(tag, _)| Some(*tag) == owner && *tag != journal.tag());
        let o = match running {
            Some((_, pid)) if !reconciler.reads_chain(e.key.chain_id) => {
                left += 1;
                outln!("left      {who}: the running gateway (pid {pid}) settles it; configure [chain] rpc to read it from here");
                continue;
            }
            Some(_) => reconciler.read(e).await,
            None => {
                if !journal.take_over(e.id).await.map_err(|e| e.to_string())? {
                    left += 1;
                    outln!("left      {who}: another running process took it over");
                    continue;
                }
                reconciler.read(e).await
            }
        };
        let (state, transaction, reason) = match &o {
            Outcome::Settled { transaction } if e.released => {
                // Deferred: its answer went out before settlement.
                settled += 1;
                outln!("settled   {who} in {transaction} (deferred, delivered already)");
                (JournalState::Delivered, Some(transaction.clone()), None)
            }
            Outcome::Settled { transaction } => {
                settled += 1;
                outln!(
                    "settled   {who} in {transaction} (redeemable with the same payment header)"
                );
                (JournalState::Settled, Some(transaction.clone()), None)
            }
            Outcome::Failed { reason } => {
                failed += 1;
                outln!("failed    {who}: {reason}");
                (JournalState::Failed, None, Some(reason.clone()))
            }
            Outcome::Open => {
                still += 1;
                outln!("unknown   {who}: not readable yet");
                (JournalState::Unknown, None, None)
            }
        };
        // Recorded only if nothing moved it meanwhile (its owner may be settling it).
        journal
            .transition_if(e.id, e.state, state, transaction, reason)
            .await
            .map_err(|e| e.to_string())?;
    }
    journal.close().await.map_err(|e| e.to_string())?;
    outln!("{settled} settled, {failed} failed, {still} still unknown, {left} left to a running gateway");
    Ok(still == 0)
}

/// Loads the config of `path` for the journal command: without its secrets (reading the
/// journal needs none; `reconcile` loads it again, strictly).
pub(crate) fn load(path: &Path) -> Result<Config, String> {
    Config::load_for_reading(path).map_err(|e| e.to_string())
}
