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
//! - [`pricing`]: route lookup (fail-closed path normalisation) and prepared 402 challenges.
//! - [`verify`]: local fast path, replay guard, verdict cache, facilitator client.
//! - [`settle`]: settlement and the payment state machine.
//! - [`proxy`]: the thin Pingora `ProxyHttp` adapter (its docs hold the phase table).
//! - [`error`]: the one mapping from errors to HTTP answers.
//! - [`facilitator`]: the embedded facilitator (settles on chain over JSON-RPC) and the
//!   standalone facilitator server.
//! - [`client`]: signing payments (tests and command-line payers).
//! - [`telemetry`]: logging setup.
//!
//! Dependency direction: `protocol` ← `config` ← `pricing` ← `verify` ← `settle` ← `proxy`;
//! this file and `main.rs` compose them.

pub mod client;
pub mod config;
pub mod error;
pub mod facilitator;
pub mod pricing;
pub mod protocol;
pub mod proxy;
pub mod settle;
pub mod telemetry;
pub mod verify;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use config::{Config, PaymentOption};
use pricing::PriceTable;
use protocol::{SupportedKind, SupportedResponse};
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
    let verifier = Arc::new(Verifier::new(facilitator, &config.verification));
    Ok(Gateway::new(config, table, verifier))
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

/// A bootstrapped Pingora server with per-instance pid and upgrade-socket files (named after
/// the listening port, so several instances can share a machine).
pub fn new_server(threads: usize, listen: &str) -> Server {
    let port = listen.rsplit(':').next().unwrap_or("0");
    let conf = ServerConf {
        threads,
        pid_file: std::env::temp_dir()
            .join(format!("x402-gateway-{port}.pid"))
            .display()
            .to_string(),
        upgrade_sock: std::env::temp_dir()
            .join(format!("x402-gateway-{port}.sock"))
            .display()
            .to_string(),
        grace_period_seconds: Some(1),
        graceful_shutdown_timeout_seconds: Some(10),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    server
}

/// The Pingora server: the gateway on `listen`, plus the `/supported` refresher.
pub fn build_server(
    config: &Config,
    gateway: Gateway,
    facilitator: Arc<dyn Facilitator>,
) -> Server {
    let mut server = new_server(config.server.threads, &config.server.listen);
    let mut service = pingora::proxy::http_proxy_service_with_name(
        &server.configuration,
        gateway,
        "x402-gateway",
    );
    service.add_tcp(&config.server.listen);
    server.add_service(service);
    server.add_service(background_service(
        "supported refresh",
        SupportedRefresh {
            facilitator,
            config: config.clone(),
        },
    ));
    server
}
