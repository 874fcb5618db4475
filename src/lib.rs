//! # x402-gateway
//!
//! A reverse proxy on Pingora that puts an [x402](https://x402.org) paywall in front of any
//! unmodified HTTP API. Requests are priced by one TOML file (`gateway.toml`); unpaid requests
//! to priced routes get a `402 Payment Required` challenge in both protocol versions at once
//! (the v2 `PAYMENT-REQUIRED` header and a v1 JSON body); paid requests are checked locally
//! (signature, amount, time window, replay), verified by a facilitator, forwarded, settled and
//! answered with a receipt header.
//!
//! # Layout
//! - [`config`]: `gateway.toml` → validated [`config::Config`] (every problem reported at once).
//! - [`protocol`]: x402 wire types and codecs, v1 and v2; EIP-3009/EIP-712 hashing.
//! - [`pricing`]: route lookup (every reading of a path and method, fail closed) and prepared
//!   402 challenges.
//! - [`verify`]: local fast path, replay guard, verdict cache, facilitator client.
//! - [`settle`]: settlement and the payment state machine.
//! - [`limiter`]: per-client token buckets (challenges, failed payments).
//! - [`journal`]: the durable payment journal (SQLite) and reading outcomes from the chain.
//! - [`payments`]: every payment decision, with no Pingora types.
//! - [`proxy`]: the thin Pingora `ProxyHttp` adapter (its docs hold the phase table).
//! - [`auth`]: forward-auth mode, the same decisions as the auth service of nginx, Traefik,
//!   Caddy or Envoy.
//! - [`edge`]: the TLS listener's certificate, swapped live on reload.
//! - [`error`]: the one mapping from errors to HTTP answers ([`error::rescue`]).
//! - [`facilitator`]: the embedded facilitator (settles on chain over JSON-RPC) and the
//!   standalone facilitator server.
//! - [`client`]: signing payments (tests and command-line payers).
//! - [`sample_api`]: the demo's upstream, an API that knows nothing of payments.
//! - [`telemetry`]: logging setup, request ids, trace context, the access log.
//! - `otlp` (cargo feature `otlp`): span export over OTLP/HTTP.
//! - [`notify`]: readiness notifications to systemd (`Type=notify`).
//!
//! Dependency direction: `protocol` ← `config` ← `pricing` ← `verify` ← `settle` ← `payments`
//! ← `proxy`; this file and `main.rs` compose them.

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod edge;
pub mod error;
pub mod facilitator;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod limiter;
pub mod metrics;
pub mod notify;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod payments;
pub mod pricing;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod sample_api;
pub mod settle;
pub mod telemetry;
pub mod verify;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use config::{Config, PaymentOption};
use payments::Payments;
use pricing::PriceTable;
use protocol::{SupportedKind, SupportedResponse};
use proxy::pool::Upstreams;
use proxy::Gateway;
use verify::{Facilitator, FacilitatorError, Verifier};

/// The facilitator a configuration names: the embedded one (connecting to its chains) or an
/// HTTP client for a remote one.
///
/// # Errors
/// [`StartupError::Client`] or [`StartupError::Embedded`].
pub async fn connect_facilitator(config: &Config) -> Result<Arc<dyn Facilitator>, StartupError> {
    let f = &config.facilitator;
    match (&f.embedded, &f.url) {
        (Some(e), _) => Ok(Arc::new(
            facilitator::EmbeddedFacilitator::connect(e, f.settle_timeout)
                .await
                .map_err(StartupError::Embedded)?,
        )),
        (None, Some(url)) => Ok(Arc::new(
            verify::FacilitatorClient::new(url, f).map_err(StartupError::Client)?,
        )),
        (None, None) => Err(StartupError::Server("no facilitator configured".into())),
    }
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `/supported` could not be read.
    #[error("cannot read the facilitator's /supported")]
    Supported(#[source] FacilitatorError),
    /// Routes offer payments the facilitator does not handle.
    #[error("the facilitator does not support these route options:\n{}", .0.iter().map(|s| format!("  - {s}")).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<String>),
    /// The HTTP client for the facilitator could not be built.
    #[error("cannot build the facilitator HTTP client: {0}")]
    Client(String),
    /// The embedded facilitator could not connect to its chains.
    #[error("embedded facilitator: {0}")]
    Embedded(#[source] facilitator::EmbeddedError),
    /// Pingora could not be set up.
    #[error("cannot set up the server: {0}")]
    Server(String),
    /// The directory of the pid file or upgrade socket is not private.
    #[error("{0}")]
    RuntimeDir(String),
    /// The payment journal cannot be opened.
    #[error("payment journal")]
    Journal(#[source] journal::JournalError),
    /// A chain RPC for reading outcomes is unusable.
    #[error("[chain] rpc: {0}")]
    Chain(String),
    /// The listener's certificate or key cannot be served.
    #[error("[server] TLS")]
    Tls(#[source] edge::TlsError),
}

fn kind(version: u8, network: &str) -> SupportedKind {
    SupportedKind {
        x402_version: version,
        scheme: "exact".to_owned(),
        network: network.to_owned(),
    }
}

/// The facilitator's kinds as a set.
pub fn kinds(s: &SupportedResponse) -> HashSet<SupportedKind> {
    s.kinds.iter().cloned().collect()
}

/// Route options whose v2 kind `(2, exact, network)` the facilitator does not list, described
/// for the operator. v1 kinds are optional: an option without one is offered to v2 clients only.
pub fn unsupported_options(config: &Config, supported: &HashSet<SupportedKind>) -> Vec<String> {
    let mut out = Vec::new();
    for r in &config.routes {
        for (i, o) in r.options.iter().enumerate() {
            if !supported.contains(&kind(2, o.network.caip2())) {
                out.push(format!(
                    "route[{}] {} option {i}: (x402Version 2, exact, {})",
                    r.index,
                    r.path,
                    o.network.caip2()
                ));
            }
        }
    }
    out
}

/// Fetches `/supported`, retrying `attempts` times with a growing pause (the facilitator may
/// be starting up, or rate-limiting).
///
/// # Errors
/// The last failure.
pub async fn fetch_supported(
    f: &dyn Facilitator,
    attempts: u32,
) -> Result<SupportedResponse, FacilitatorError> {
    let mut delay = Duration::from_millis(250);
    let mut n = 0;
    loop {
        match f.supported().await {
            Ok(s) => return Ok(s),
            Err(e) if n + 1 >= attempts => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "facilitator /supported failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(4));
                n += 1;
            }
        }
    }
}

/// The price table of `routes`, offering v1 payments where the facilitator's `kinds` list the
/// network's v1 name.
pub fn price_table(routes: Vec<config::RouteRule>, kinds: &HashSet<SupportedKind>) -> PriceTable {
    let v1_ok = |o: &PaymentOption| {
        o.network
            .v1_name()
            .is_some_and(|n| kinds.contains(&kind(1, n)))
    };
    PriceTable::new(routes, &v1_ok)
}

/// Builds the price table and the gateway for a configuration, refusing options the
/// facilitator does not support.
///
/// # Errors
/// [`StartupError::Unsupported`].
pub fn build_gateway(
    config: &Config,
    facilitator: Arc<dyn Facilitator>,
    supported: &SupportedResponse,
) -> Result<Gateway, StartupError> {
    let kinds = kinds(supported);
    let missing = unsupported_options(config, &kinds);
    if !missing.is_empty() {
        return Err(StartupError::Unsupported(missing));
    }
    let table = Arc::new(ArcSwap::from_pointee(price_table(
        config.routes.clone(),
        &kinds,
    )));
    let metrics = Arc::new(
        metrics::Metrics::new().map_err(|e| StartupError::Server(format!("metrics: {e}")))?,
    );
    let bounded: Arc<dyn Facilitator> = Arc::new(verify::facilitator::Bounded::new(
        facilitator,
        config.limits.max_concurrent_facilitator_calls,
        config.facilitator.timeout,
        metrics.clone(),
    ));
    let verifier = Arc::new(Verifier::new(
        bounded.clone(),
        &config.verification,
        config.limits.max_pending_payments,
        metrics.clone(),
    ));
    let journal = if config.journal.enabled {
        Some(journal::Journal::open_or_retry(&config.journal).map_err(StartupError::Journal)?)
    } else {
        None
    };
    let reconciler = Arc::new(reconciler(config, bounded)?);
    let payments = Arc::new(Payments::new(
        config, table, verifier, journal, reconciler, metrics,
    ));
    let upstreams = Arc::new(Upstreams::new(&config.upstream, &config.upstreams));
    Ok(Gateway::new(config, payments, upstreams))
}

/// The reader of settlement outcomes: `[chain] rpc`, or the embedded facilitator's `rpc`;
/// `facilitator` for networks with neither.
///
/// # Errors
/// [`StartupError::Chain`].
pub fn reconciler(
    config: &Config,
    facilitator: Arc<dyn Facilitator>,
) -> Result<journal::reconcile::Reconciler, StartupError> {
    let mut rpc = config.chain.rpc.clone();
    if let Some(e) = &config.facilitator.embedded {
        for (n, u) in &e.rpc {
            if !rpc.iter().any(|(m, _)| m == n) {
                rpc.push((n.clone(), u.clone()));
            }
        }
    }
    let timeout = config
        .facilitator
        .embedded
        .as_ref()
        .map_or(config.facilitator.timeout, |e| e.rpc_timeout);
    journal::reconcile::Reconciler::new(&rpc, Some(facilitator), timeout)
        .map_err(StartupError::Chain)
}

/// Keeps `/supported` fresh and warns when a configured option stops being supported.
pub struct SupportedRefresh {
    facilitator: Arc<dyn Facilitator>,
    config: Config,
    health: Arc<admin::Health>,
}

#[async_trait]
impl BackgroundService for SupportedRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let every = self.config.facilitator.supported_refresh;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            match self.facilitator.supported().await {
                Ok(s) => {
                    self.health.supported_ok();
                    let missing = unsupported_options(&self.config, &kinds(&s));
                    if !missing.is_empty() {
                        tracing::warn!(?missing, "facilitator no longer lists options this gateway offers; their payments will fail verification");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "refreshing facilitator /supported failed"),
            }
        }
    }
}

/// Reads the embedded facilitator's signer balances into `x402_signer_gas_balance_wei` (at
/// start, then every 30 s); warns about a signer that cannot pay gas.
pub struct SignerBalances {
    /// The facilitator whose signers are read.
    pub facilitator: Arc<dyn Facilitator>,
    /// Where the balances go.
    pub metrics: Arc<metrics::Metrics>,
}

#[async_trait]
impl BackgroundService for SignerBalances {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            for b in self.facilitator.signer_balances().await {
                match b.wei {
                    Ok(wei) => {
                        if wei.is_zero() {
                            tracing::warn!(network = b.network, signer = %b.signer, "settlement signer has no gas: its settlements will fail");
                        }
                        self.metrics.signer_balance(&b.network, b.signer, wei);
                    }
                    Err(e) => {
                        tracing::warn!(network = b.network, signer = %b.signer, error = e, "cannot read a settlement signer's balance");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }
}

/// Makes sure `dir` is a directory only this user can use: created `0700` when missing;
/// refused when another user owns it or when others can write to it (`private`: when group or
/// others can use it at all), so nobody else can plant a socket or pid file the gateway trusts.
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn ensure_private_dir(dir: &Path, private: bool) -> Result<(), StartupError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |m: String| StartupError::RuntimeDir(format!("{}: {m}", dir.display()));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create: {e}")))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("is not a directory".into()));
    }
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(fail(format!(
            "is owned by uid {}, not by this user ({uid})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    let forbidden = if private { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(fail(format!(
            "has mode {mode:o}; it must not be {} by others (chmod 700 it, or choose another directory)",
            if private { "usable" } else { "writable" }
        )));
    }
    Ok(())
}

/// A bootstrapped Pingora server whose pid file and upgrade socket live in private
/// directories (see [`ensure_private_dir`]).
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn new_server(
    threads: usize,
    pid_file: &Path,
    upgrade_sock: &Path,
) -> Result<Server, StartupError> {
    new_server_draining(
        threads,
        pid_file,
        upgrade_sock,
        Duration::from_secs(1),
        false,
    )
}

/// As [`new_server`], waiting up to `drain` after a graceful stop (SIGTERM) for in-flight
/// work before the runtimes are shut down (a [`Drain`] service ends the wait early once idle).
/// With `upgrade`, the listening sockets are taken from the running instance through
/// `upgrade_sock` (it sends them on SIGQUIT) instead of being bound.
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn new_server_draining(
    threads: usize,
    pid_file: &Path,
    upgrade_sock: &Path,
    drain: Duration,
    upgrade: bool,
) -> Result<Server, StartupError> {
    let default_dir = config::runtime_dir(&|k| std::env::var(k).ok());
    for path in [pid_file, upgrade_sock] {
        let dir = path.parent().unwrap_or(Path::new("/"));
        // The default directory must be ours alone; a configured one must not be writable by
        // others (a systemd RuntimeDirectory is 0755).
        ensure_private_dir(dir, dir == default_dir)?;
    }
    let conf = ServerConf {
        threads,
        pid_file: pid_file.display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        grace_period_seconds: Some(drain.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    Ok(server)
}

/// The Pingora server: the gateway on `listen`, the admin listener, and the background
/// services (`/supported` refresher, upstream resolver, payments maintenance, drain, reload of
/// the configuration `source` on SIGHUP or change, signer balances).
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn build_server(
    config: &Config,
    source: reload::Source,
    gateway: Gateway,
    facilitator: Arc<dyn Facilitator>,
) -> Result<Server, StartupError> {
    let s = &config.server;
    let mut server = new_server_draining(
        s.threads,
        &s.pid_file,
        &s.upgrade_sock,
        s.drain_timeout,
        source.upgrade,
    )?;
    // Pingora writes it only when daemonized; an upgrade procedure needs it in the foreground
    // too (`kill -QUIT $(cat pid_file)`). Written once the sockets are ours.
    write_pid_file(&s.pid_file)?;
    let upstreams = gateway.upstreams().clone();
    let payments = gateway.payments().clone();
    let in_flight = gateway.in_flight().clone();
    let closing = gateway.closing().clone();
    let certs = match &s.tls {
        Some(t) => Some(Arc::new(
            edge::CertStore::load(t).map_err(StartupError::Tls)?,
        )),
        None => None,
    };
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "x402-gateway",
    );
    match &certs {
        Some(store) => {
            // Certificates come from the resolver (swapped on reload), not from the paths.
            let mut tls = pingora::listeners::tls::TlsSettings::intermediate("", "")
                .map_err(|e| StartupError::Server(format!("TLS listener: {e}")))?;
            tls.set_cert_resolver(store.clone());
            tls.enable_h2();
            service.add_tls_with_settings(&s.listen, None, tls);
        }
        None => service.add_tcp(&s.listen),
    }
    if let Some(proxy) = service.app_logic_mut() {
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = s.h2c;
        proxy.server_options = Some(options);
    }
    server.add_service(service);
    // The gateway starts only after `/supported` was read.
    let f = &config.facilitator;
    let health = Arc::new(admin::Health::new(f.supported_refresh * 2 + f.timeout));
    health.supported_ok();
    if let Some(listen) = &config.admin.listen {
        let mut admin = pingora::services::listening::Service::new(
            "admin".to_owned(),
            admin::AdminApp::new(payments.clone(), upstreams.clone(), health.clone()),
        );
        admin.add_tcp(listen);
        server.add_service(admin);
    }
    if let Some(listen) = &config.auth.listen {
        let app = auth::AuthApp::new(config, payments.clone(), in_flight.clone(), closing.clone());
        let mut auth = pingora::services::listening::Service::new("forward-auth".to_owned(), app);
        auth.add_tcp(listen);
        server.add_service(auth);
    }
    let reloader = reload::Reloader::new(
        source,
        payments.table().clone(),
        facilitator.clone(),
        payments.metrics().clone(),
    )
    .with_certs(certs);
    let reload_armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    server.add_service(background_service(
        "config reload",
        reload::ConfigWatcher {
            reloader: Arc::new(reloader),
            watch: s.watch_config,
            every: Duration::from_secs(1),
            armed: reload_armed.clone(),
        },
    ));
    if config.facilitator.embedded.is_some() {
        server.add_service(background_service(
            "signer balances",
            SignerBalances {
                facilitator: facilitator.clone(),
                metrics: payments.metrics().clone(),
            },
        ));
    }
    server.add_service(background_service(
        "supported refresh",
        SupportedRefresh {
            facilitator,
            config: config.clone(),
            health: health.clone(),
        },
    ));
    for (name, u) in upstreams.all() {
        server.add_service(background_service(
            &format!("upstream {name}"),
            UpstreamService(u.service()),
        ));
    }
    server.add_service(background_service(
        "payments maintenance",
        Maintenance(payments.clone()),
    ));
    server.add_service(background_service(
        "deferred settlement",
        DeferredSettlement(payments.clone()),
    ));
    server.add_service(background_service(
        "hand-over",
        HandOver {
            closing,
            health: health.clone(),
        },
    ));
    server.add_service(background_service(
        "readiness notification",
        notify::Ready {
            listen: std::iter::once(s.listen.clone())
                .chain(config.admin.listen.clone())
                .collect(),
            reload_armed,
        },
    ));
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            payments,
            timeout: s.drain_timeout,
            health,
            pid_file: s.pid_file.clone(),
        },
    ));
    Ok(server)
}

/// Writes this process's id to `path` (atomically: a new file renamed over the old one).
fn write_pid_file(path: &Path) -> Result<(), StartupError> {
    let tmp = path.with_extension("pid.new");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| StartupError::RuntimeDir(format!("{}: {e}", path.display())))
}

/// Removes the pid file at exit, unless a process that took over has written its own.
fn remove_own_pid_file(path: &Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|p| p.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Keeps an upstream's addresses current (and runs a pool's health checks).
pub struct UpstreamService(pub Box<dyn BackgroundService + Send + Sync>);

#[async_trait]
impl BackgroundService for UpstreamService {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.start(shutdown).await;
    }
}

/// Background work of the payments: unknown outcomes read again with backoff, chain heads,
/// journal probes and retention.
pub struct Maintenance(pub Arc<Payments>);

#[async_trait]
impl BackgroundService for Maintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut round: u64 = 0;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            self.0.maintain(round % 3600 == 0).await;
            round += 1;
        }
    }
}

/// Settles deferred payments in the background (it keeps running through a drain, which
/// waits for the owed settlements).
pub struct DeferredSettlement(pub Arc<Payments>);

#[async_trait]
impl BackgroundService for DeferredSettlement {
    async fn start(&self, _shutdown: ShutdownWatch) {
        self.0.clone().run_deferred().await;
    }
}

/// On SIGQUIT (a process started with `run --upgrade` takes the listening sockets; both serve
/// for Pingora's 5-second close timeout, then this one drains): answers from then on close
/// their connections, so keep-alive clients reconnect, to the new process, between requests.
pub struct HandOver {
    /// Read by the gateway on every answer.
    pub closing: Arc<std::sync::atomic::AtomicBool>,
    /// Told that this process is on its way out (`/readyz` fails).
    pub health: Arc<admin::Health>,
}

#[async_trait]
impl BackgroundService for HandOver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut quit) = signal(SignalKind::quit()) else {
            return;
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = quit.recv() => tracing::info!("handing over to a new process: answers close their connections from now on"),
        }
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.health.drain();
    }
}

/// How long no request may be in flight before a draining process exits.
const DRAIN_QUIET: Duration = Duration::from_millis(250);

/// The graceful stop: after SIGTERM, Pingora stops accepting and waits up to `drain_timeout`;
/// this ends the wait as soon as no request (and so no settlement) is in flight, after the
/// journal is flushed.
pub struct Drain {
    /// Requests in flight.
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The payments (their journal is flushed before exit).
    pub payments: Arc<Payments>,
    /// The longest wait.
    pub timeout: Duration,
    /// Told when the stop begins (`/readyz` fails from then on).
    pub health: Arc<admin::Health>,
    /// Removed at exit if it still names this process.
    pub pid_file: PathBuf,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        self.health.drain();
        notify::notify("STOPPING=1\nSTATUS=draining");
        let start = tokio::time::Instant::now();
        // Requests in flight, and deferred settlements owed (released answers not settled).
        let in_flight = || {
            self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
                + self.payments.deferred().owed()
        };
        // Idle means no request for DRAIN_QUIET: a request whose head was read just as the
        // stop began gets its context (and is counted) a moment later.
        let mut idle_since: Option<tokio::time::Instant> = None;
        loop {
            let timed_out = start.elapsed() >= self.timeout;
            if !timed_out {
                if in_flight() > 0 {
                    idle_since = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < DRAIN_QUIET {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
            if let Some(j) = self.payments.journal() {
                let _ = j.flush().await;
            }
            let n = in_flight();
            if n > 0 && !timed_out {
                idle_since = None;
                continue;
            }
            if n > 0 {
                tracing::warn!(in_flight = n, "drain timeout: stopping with requests in flight (the journal lets recovery finish their payments)");
            }
            tracing::info!(after = ?start.elapsed(), "drained; exiting");
            remove_own_pid_file(&self.pid_file);
            telemetry::flush();
            std::process::exit(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "x402-private-{name}-{}-{}",
            std::process::id(),
            limiter::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_runtime_dir_is_created_private_and_a_shared_one_is_refused() {
        let d = scratch("new").join("x402-gateway");
        ensure_private_dir(&d, true).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A directory others can write to (a predictable name in /tmp someone made first).
        let shared = scratch("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&shared, true).unwrap_err();
        assert!(e.to_string().contains("777"), "{e}");
        assert!(ensure_private_dir(&shared, false).is_err());
        // Readable by others is fine for a configured directory, not for the default one.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&shared, false).is_ok());
        assert!(ensure_private_dir(&shared, true).is_err());
        // A symlink is not a directory of ours.
        let link = scratch("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link, true).is_err());
    }
}
