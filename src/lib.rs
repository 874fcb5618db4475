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
//! - [`error`]: the one mapping from errors to HTTP answers ([`error::rescue`]).
//! - [`facilitator`]: the embedded facilitator (settles on chain over JSON-RPC) and the
//!   standalone facilitator server.
//! - [`client`]: signing payments (tests and command-line payers).
//! - [`telemetry`]: logging setup.
//!
//! Dependency direction: `protocol` ← `config` ← `pricing` ← `verify` ← `settle` ← `payments`
//! ← `proxy`; this file and `main.rs` compose them.

pub mod client;
pub mod config;
pub mod error;
pub mod facilitator;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod limiter;
pub mod payments;
pub mod pricing;
pub mod protocol;
pub mod proxy;
pub mod settle;
pub mod telemetry;
pub mod verify;

use std::collections::HashSet;
use std::path::Path;
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
use proxy::upstream::{Resolver, UpstreamTarget};
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
    let v1_ok = |o: &PaymentOption| {
        o.network
            .v1_name()
            .is_some_and(|n| kinds.contains(&kind(1, n)))
    };
    let table = Arc::new(ArcSwap::from_pointee(PriceTable::new(
        config.routes.clone(),
        &v1_ok,
    )));
    let bounded: Arc<dyn Facilitator> = Arc::new(verify::facilitator::Bounded::new(
        facilitator,
        config.limits.max_concurrent_facilitator_calls,
        config.facilitator.timeout,
    ));
    let verifier = Arc::new(Verifier::new(
        bounded.clone(),
        &config.verification,
        config.limits.max_pending_payments,
    ));
    let journal = if config.journal.enabled {
        Some(journal::Journal::open_or_retry(&config.journal).map_err(StartupError::Journal)?)
    } else {
        None
    };
    let reconciler = Arc::new(reconciler(config, bounded)?);
    let payments = Arc::new(Payments::new(config, table, verifier, journal, reconciler));
    let upstream = Arc::new(UpstreamTarget::new(&config.upstream));
    Ok(Gateway::new(config, payments, upstream))
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
    new_server_draining(threads, pid_file, upgrade_sock, Duration::from_secs(1))
}

/// As [`new_server`], waiting up to `drain` after a graceful stop (SIGTERM) for in-flight
/// work before the runtimes are shut down (a [`Drain`] service ends the wait early once idle).
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn new_server_draining(
    threads: usize,
    pid_file: &Path,
    upgrade_sock: &Path,
    drain: Duration,
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
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    Ok(server)
}

/// The Pingora server: the gateway on `listen`, plus the `/supported` refresher and the
/// upstream resolver.
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn build_server(
    config: &Config,
    gateway: Gateway,
    facilitator: Arc<dyn Facilitator>,
) -> Result<Server, StartupError> {
    let s = &config.server;
    let mut server = new_server_draining(s.threads, &s.pid_file, &s.upgrade_sock, s.drain_timeout)?;
    let upstream = gateway.upstream().clone();
    let payments = gateway.payments().clone();
    let in_flight = gateway.in_flight().clone();
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "x402-gateway",
    );
    service.add_tcp(&s.listen);
    server.add_service(service);
    server.add_service(background_service(
        "supported refresh",
        SupportedRefresh {
            facilitator,
            config: config.clone(),
        },
    ));
    server.add_service(background_service("upstream resolver", Resolver(upstream)));
    server.add_service(background_service(
        "payments maintenance",
        Maintenance(payments.clone()),
    ));
    server.add_service(background_service(
        "drain",
        Drain {
            in_flight,
            payments,
            timeout: s.drain_timeout,
        },
    ));
    Ok(server)
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
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let _ = shutdown.changed().await;
        let start = tokio::time::Instant::now();
        loop {
            let n = self.in_flight.load(std::sync::atomic::Ordering::SeqCst);
            if n == 0 || start.elapsed() >= self.timeout {
                if n > 0 {
                    tracing::warn!(in_flight = n, "drain timeout: stopping with requests in flight (the journal lets recovery finish their payments)");
                }
                if let Some(j) = self.payments.journal() {
                    let _ = j.flush().await;
                }
                tracing::info!(after = ?start.elapsed(), "drained; exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
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
