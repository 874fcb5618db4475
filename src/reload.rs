//! Hot reload of `gateway.toml` (SIGHUP, or `[server] watch_config = true`).
//!
//! Owns: [`Reloader`] (read, validate as `check` does, refuse options the facilitator does not
//! support, swap the price table atomically) and the report of what changed. Requests in flight
//! keep the table they were admitted with (each holds an `Arc` of it); the next request sees the
//! new one. A file that does not validate changes nothing: every problem is logged and the
//! running table stays.
//!
//! What a reload applies: the `[[route]]` tables and the `[payment]` defaults they inherit (the
//! price table), and the TLS listener's certificate: `[server] tls_cert` and `tls_key` are read
//! again on every reload (new paths, or new files at the same paths, as a certificate renewal
//! leaves them) and served from the next handshake on. Every other section is read at start
//! only; a change there is reported as needing a restart and the running value is kept
//! (turning TLS on or off is such a change). A route's `upstream` applies too, among the
//! upstreams that run: a route naming an `[upstreams.NAME]` added since the start is refused
//! (the upstream sections, pools and injected headers apply at the next start).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Config, RouteRule};
use crate::edge::{CertStore, TlsError};
use crate::metrics::Metrics;
use crate::pricing::PriceTable;
use crate::protocol::SupportedResponse;
use crate::verify::Facilitator;

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read or does not validate (every problem listed).
    #[error("{0}")]
    Config(String),
    /// Routes offer payments the facilitator does not handle.
    #[error("the facilitator does not support these route options: {}", .0.join("; "))]
    Unsupported(Vec<String>),
    /// The new certificate or key cannot be served.
    #[error("[server] TLS: {0}")]
    Tls(#[source] TlsError),
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Routes added, removed or changed, one line each (`+`, `-`, `~`).
    pub routes: Vec<String>,
    /// Sections that changed in the file but apply only at the next start.
    pub restart_needed: Vec<&'static str>,
    /// Whether the listener serves a new certificate from now on.
    pub certificate_changed: bool,
}

/// One line per route: what a client is asked to pay, and how.
fn route_summary(r: &RouteRule) -> String {
    let price = if r.is_free() {
        "free".to_owned()
    } else {
        r.options
            .iter()
            .map(|o| {
                format!(
                    "{} on {} to {}",
                    o.display_price(),
                    o.network.caip2(),
                    o.pay_to
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut s = format!("{} {}: {price}", r.methods_label(), r.path);
    if !r.is_free() {
        s.push_str(&format!(", settle {}", r.settlement.as_str()));
    }
    if r.websocket {
        s.push_str(", websocket");
    }
    if let Some(u) = &r.upstream {
        s.push_str(&format!(", upstream {u}"));
    }
    s
}

/// The route changes from `old` to `new`, keyed by path and methods, in file order.
pub fn diff_routes(old: &[RouteRule], new: &[RouteRule]) -> Vec<String> {
    // (key, summary) of each route, in file order.
    let read = |routes: &[RouteRule]| -> Vec<(String, String)> {
        routes
            .iter()
            .map(|r| {
                (
                    format!("{} {}", r.methods_label(), r.path),
                    route_summary(r),
                )
            })
            .collect()
    };
    let (old, new) = (read(old), read(new));
    let before: BTreeMap<&str, &str> = old.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let after: BTreeMap<&str, &str> = new.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for (k, summary) in &new {
        match before.get(k.as_str()) {
            None => out.push(format!("+ {summary}")),
            Some(b) if b != summary => out.push(format!("~ {b} -> {summary}")),
            Some(_) => {}
        }
    }
    for (k, summary) in &old {
        if !after.contains_key(k.as_str()) {
            out.push(format!("- {summary}"));
        }
    }
    // The routes in both files, in each file's order.
    let kept = |routes: &[(String, String)], other: &BTreeMap<&str, &str>| -> Vec<String> {
        routes
            .iter()
            .filter(|(k, _)| other.contains_key(k.as_str()))
            .map(|(k, _)| k.clone())
            .collect()
    };
    if kept(&old, &after) != kept(&new, &before) {
        out.push("order of routes changed (first match wins)".to_owned());
    }
    out
}

/// How a section of a configuration reads, for comparison.
type Section = dyn Fn(&Config) -> String;

/// The sections that changed but apply only at start.
fn restart_needed(old: &Config, new: &Config) -> Vec<&'static str> {
    let sections: [(&'static str, &Section); 12] = [
        // The certificate's paths apply live (only TLS on or off needs a restart).
        ("[server]", &|c| {
            let mut s = c.server.clone();
            s.tls = s.tls.map(|_| crate::config::ListenerTls {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            });
            format!("{s:?}")
        }),
        ("[upstream]", &|c| upstream_fingerprint(&c.upstream)),
        ("[upstreams]", &|c| {
            c.upstreams
                .iter()
                .map(|(n, u)| format!("{n}={}", upstream_fingerprint(u)))
                .collect::<Vec<_>>()
                .join(";")
        }),
        ("[facilitator]", &|c| format!("{:?}", c.facilitator)),
        ("[verification]", &|c| format!("{:?}", c.verification)),
        ("[logging]", &|c| format!("{:?}", c.logging)),
        ("[limits]", &|c| format!("{:?}", c.limits)),
        ("[journal]", &|c| format!("{:?}", c.journal)),
        ("[chain]", &|c| format!("{:?}", c.chain)),
        ("[admin]", &|c| format!("{:?}", c.admin)),
        ("[auth]", &|c| format!("{:?}", c.auth)),
        ("[payment.deferred]", &|c| format!("{:?}", c.deferred)),
    ];
    sections
        .into_iter()
        .filter(|(_, read)| read(old) != read(new))
        .map(|(name, _)| name)
        .collect()
}

/// An upstream for comparison: its settings and its injected header values (which `Debug`
/// redacts, so a changed key would otherwise go unnoticed). Never logged.
fn upstream_fingerprint(u: &crate::config::UpstreamConfig) -> String {
    let headers: Vec<(&str, &str)> = u
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.expose()))
        .collect();
    format!("{u:?}{headers:?}")
}

/// Where the running configuration came from.
#[derive(Debug)]
pub struct Source {
    /// The file.
    pub path: PathBuf,
    /// The configuration as read from it at start (before command-line overrides such as
    /// `--listen`, so that they are not taken for edits).
    pub as_read: Config,
    /// The facilitator's `/supported` at start.
    pub supported: SupportedResponse,
    /// Started with `run --upgrade`: the listening sockets come from the running instance.
    pub upgrade: bool,
    /// The file's [`stamp`] taken before it was read: the watcher compares against this, so
    /// an edit made while the gateway was starting is still seen.
    pub stamp: Option<(SystemTime, u64)>,
}

/// Re-reads the configuration file and swaps the price table.
pub struct Reloader {
    path: PathBuf,
    /// The configuration in effect (its routes are the table's).
    current: tokio::sync::Mutex<Config>,
    table: Arc<ArcSwap<PriceTable>>,
    facilitator: Arc<dyn Facilitator>,
    /// The last `/supported` read, used when the facilitator does not answer during a reload.
    supported: std::sync::Mutex<SupportedResponse>,
    metrics: Arc<Metrics>,
    /// The TLS listener's certificate, when it has one.
    certs: Option<Arc<CertStore>>,
    /// The named upstreams that run (routes may name only these until a restart).
    running_upstreams: Vec<String>,
    /// The file's stamp when it was read at start.
    stamp: Option<(SystemTime, u64)>,
}

impl Reloader {
    /// Reloads the file of `source` into `table`.
    pub fn new(
        source: Source,
        table: Arc<ArcSwap<PriceTable>>,
        facilitator: Arc<dyn Facilitator>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let running_upstreams = source
            .as_read
            .upstreams
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        Reloader {
            path: source.path,
            current: tokio::sync::Mutex::new(source.as_read),
            table,
            facilitator,
            supported: std::sync::Mutex::new(source.supported),
            metrics,
            certs: None,
            running_upstreams,
            stamp: source.stamp,
        }
    }

    /// Also reloads the TLS listener's certificate into `certs`.
    pub fn with_certs(mut self, certs: Option<Arc<CertStore>>) -> Self {
        self.certs = certs;
        self
    }

    /// Reads, validates and applies the file once; logs and counts the result.
    ///
    /// # Errors
    /// [`ReloadError`]: nothing changed.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let r = self.try_reload().await;
        match &r {
            Ok(report) => {
                self.metrics.config_reload("applied");
                if report.routes.is_empty() {
                    tracing::info!(config = %self.path.display(), "configuration reloaded: no route changed");
                }
                for change in &report.routes {
                    tracing::info!(config = %self.path.display(), change, "configuration reloaded: route");
                }
                if report.certificate_changed {
                    tracing::info!(config = %self.path.display(), "configuration reloaded: the listener serves the new certificate from the next handshake on");
                }
                for section in &report.restart_needed {
                    tracing::warn!(config = %self.path.display(), section, "changed in the file, applies at the next start (the running value is kept)");
                }
            }
            Err(e) => {
                self.metrics.config_reload("rejected");
                tracing::error!(config = %self.path.display(), error = %e, "configuration reload rejected: the running configuration is kept");
            }
        }
        r
    }

    async fn try_reload(&self) -> Result<ReloadReport, ReloadError> {
        let new = Config::load(&self.path).map_err(|e| ReloadError::Config(e.to_string()))?;
        let supported = match tokio::time::timeout(
            new.facilitator.timeout.min(Duration::from_secs(10)),
            self.facilitator.supported(),
        )
        .await
        {
            Ok(Ok(s)) => {
                if let Ok(mut last) = self.supported.lock() {
                    *last = s.clone();
                }
                s
            }
            _ => {
                tracing::warn!("facilitator /supported did not answer during the reload: checking against the last answer");
                self.supported.lock().map(|s| s.clone()).unwrap_or_default()
            }
        };
        let kinds = crate::pricing::kinds(&supported);
        let missing = crate::pricing::unsupported_options(&new, &kinds);
        if !missing.is_empty() {
            return Err(ReloadError::Unsupported(missing));
        }
        // Routes may move between upstreams that run; a new upstream starts with the process.
        let not_running: Vec<String> = new
            .routes
            .iter()
            .filter_map(|r| {
                let name = r.upstream.as_ref()?;
                (!self.running_upstreams.contains(name))
                    .then(|| format!("route[{}].upstream: `{name}` is not running (new upstreams apply at the next start)", r.index))
            })
            .collect();
        if !not_running.is_empty() {
            return Err(ReloadError::Config(not_running.join("; ")));
        }
        let mut current = self.current.lock().await;
        // Read before anything is applied: a certificate that cannot be served changes nothing.
        let certificate_changed = match (&self.certs, &new.server.tls) {
            (Some(store), Some(tls)) => store.reload(tls).map_err(ReloadError::Tls)?,
            _ => false,
        };
        let report = ReloadReport {
            routes: diff_routes(&current.routes, &new.routes),
            restart_needed: restart_needed(&current, &new),
            certificate_changed,
        };
        self.table.store(Arc::new(crate::pricing::price_table(
            new.routes.clone(),
            &kinds,
        )));
        current.routes = new.routes;
        Ok(report)
    }
}

/// What identifies a version of the file: its modification time and length.
pub fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// How long a changed file must stay unchanged before the watch applies it.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Reloads on SIGHUP, and (`watch`) when the file changes (checked every `every`) and then
/// stays unchanged for [`SETTLE`].
pub struct ConfigWatcher {
    /// The reloader.
    pub reloader: Arc<Reloader>,
    /// Whether to watch the file.
    pub watch: bool,
    /// How often the file is looked at.
    pub every: Duration,
    /// Set once SIGHUP is handled (before that a SIGHUP would end the process): the readiness
    /// notification waits for it.
    pub armed: Arc<std::sync::atomic::AtomicBool>,
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reload by signal is off");
                None
            }
        };
        self.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        let path = self.reloader.path.clone();
        tracing::info!(signal = hup.is_some(), watch = self.watch, path = %path.display(), "config reload armed");
        // As read at start: an edit made since then is a change to apply.
        let mut seen = self.reloader.stamp;
        // A change seen by the watch, and since when the file has looked like that: applied
        // once it has not changed for `SETTLE`, so that a file being written (a prefix of it
        // is often valid TOML, with fewer routes) is never applied half-written.
        let mut changed: Option<(Option<(SystemTime, u64)>, crate::clock::Instant)> = None;
        loop {
            let by_signal = tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => None } } => true,
                () = tokio::time::sleep(self.every), if self.watch => false,
            };
            let now = stamp(&path);
            if !by_signal {
                if now == seen {
                    changed = None;
                    continue;
                }
                match changed {
                    Some((s, since)) if s == now && since.elapsed() >= SETTLE => {}
                    Some((s, _)) if s == now => continue,
                    _ => {
                        tracing::info!(path = %path.display(), settle = ?SETTLE, "configuration file changed: applied once it stops changing");
                        changed = Some((now, crate::clock::instant()));
                        continue;
                    }
                }
            }
            changed = None;
            seen = now;
            crate::notify::notify("RELOADING=1");
            let _ = self.reloader.reload().await;
            crate::notify::notify("READY=1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::test_config;

    const BASE: &str = r#"
[[route]]
path = "/health"
price = "free"
[[route]]
path = "/weather/*"
methods = ["GET"]
price = "$0.001"
[[route]]
path = "/premium/**"
price = "$0.01"
"#;

    #[test]
    fn route_changes_are_listed_one_per_line() {
        let old = test_config(BASE);
        let new = test_config(&BASE.replace("$0.001", "$0.002").replace(
            "path = \"/premium/**\"\nprice = \"$0.01\"",
            "path = \"/gold/**\"\nprice = \"$1\"",
        ));
        let changes = diff_routes(&old.routes, &new.routes);
        assert_eq!(changes.len(), 3, "{changes:?}");
        assert!(
            changes[0].starts_with("~ GET /weather/*: $0.001 on eip155:84532"),
            "{changes:?}"
        );
        assert!(
            changes[0].contains("-> GET /weather/*: $0.002 on eip155:84532"),
            "{changes:?}"
        );
        assert!(
            changes[1].starts_with("+ * /gold/**: $1 on eip155:84532"),
            "{changes:?}"
        );
        assert!(
            changes[2].starts_with("- * /premium/**: $0.01"),
            "{changes:?}"
        );
        assert!(diff_routes(&old.routes, &old.routes).is_empty());
    }

    #[test]
    fn a_new_order_is_a_change() {
        let old = test_config(BASE);
        let swapped = BASE.replacen("[[route]]\npath = \"/health\"\nprice = \"free\"\n", "", 1)
            + "[[route]]\npath = \"/health\"\nprice = \"free\"\n";
        let new = test_config(&swapped);
        assert_eq!(
            diff_routes(&old.routes, &new.routes),
            ["order of routes changed (first match wins)"]
        );
    }

    #[test]
    fn sections_that_apply_at_start_are_reported() {
        let old = test_config(BASE);
        let mut new = test_config(BASE);
        assert!(restart_needed(&old, &new).is_empty());
        new.server.listen = "127.0.0.1:1".into();
        new.admin.listen = Some("127.0.0.1:2".into());
        assert_eq!(restart_needed(&old, &new), ["[server]", "[admin]"]);
    }

    #[test]
    fn a_route_moving_upstream_is_a_change_and_upstream_sections_need_a_restart() {
        let old = test_config(BASE);
        let new = test_config(&BASE.replace(
            "path = \"/premium/**\"",
            "path = \"/premium/**\"\nupstream = \"default\"",
        ));
        assert!(diff_routes(&old.routes, &new.routes).is_empty());
        let mut moved = test_config(BASE);
        moved.routes[2].upstream = Some("reports".into());
        let changes = diff_routes(&old.routes, &moved.routes);
        assert!(
            changes.len() == 1 && changes[0].ends_with(", upstream reports"),
            "{changes:?}"
        );
        // An injected header's value is redacted in Debug, yet its change is seen.
        let mut a = test_config(BASE);
        let mut b = test_config(BASE);
        let name = http::HeaderName::from_static("x-api-key");
        a.upstream.headers = vec![(name.clone(), crate::config::Secret::new("one".into()))];
        b.upstream.headers = vec![(name, crate::config::Secret::new("two".into()))];
        assert_eq!(restart_needed(&a, &b), ["[upstream]"]);
        b.upstreams.push(("reports".into(), b.upstream.clone()));
        assert_eq!(restart_needed(&a, &b), ["[upstream]", "[upstreams]"]);
    }
}
