//! Putting the gateway together: the facilitator it talks to, the price table it offers, the
//! payment core, and the Pingora server with its listeners and background services.
//!
//! Owns: [`connect_facilitator`], [`build_gateway`] (refusing route options the facilitator
//! does not support), [`build_server`], and [`StartupError`]. The pieces it assembles live in
//! their own modules; the background services in `server/services.rs`, the server's runtime
//! files (pid file, upgrade socket) in `server/runtime.rs`.

mod runtime;
pub mod services;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora::server::Server;
use pingora::services::background::background_service;

use crate::admin;
use crate::auth;
use crate::config::Config;
use crate::conn;
use crate::edge;
use crate::facilitator;
use crate::journal;
use crate::ledger::local::LocalLedger;
use crate::metrics;
use crate::notify;
use crate::payments::{Parts, Payments};
pub use crate::pricing::{kinds, price_table, unsupported_options};
use crate::protocol::SupportedResponse;
use crate::proxy::pool::Upstreams;
use crate::proxy::Gateway;
use crate::reload;
use crate::verify;
pub use crate::verify::fetch_supported;
use crate::verify::{Facilitator, Verifier};
use runtime::write_pid_file;
pub use runtime::{ensure_private_dir, new_server, new_server_draining, StartupError};
use services::{
    DeferredSettlement, Drain, HandOver, Maintenance, SignerBalances, SupportedRefresh,
    UpstreamService,
};

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
        metrics.clone(),
    ));
    let journal = if config.journal.enabled {
        Some(journal::Journal::open_or_retry(&config.journal).map_err(StartupError::Journal)?)
    } else {
        None
    };
    // Owed settlements in flight at once: `concurrency` for a facilitator settling one by one;
    // for a batching one four batches per signer (being simulated, sent, mined, filling), so
    // that the rest wait in the queue, where `max_delay` sees them.
    let owed_limit = match &config.facilitator.embedded {
        Some(e) if bounded.batches() => e.batch.max.saturating_mul(e.signer_keys.len().max(1)) * 4,
        _ => config.deferred.concurrency,
    };
    let ledger = Arc::new(LocalLedger::new(
        config.limits.max_pending_payments,
        config.deferred.clone(),
        owed_limit,
        journal.clone(),
    ));
    let reconciler = Arc::new(reconciler(config, bounded)?);
    let payments = Arc::new(Payments::new(
        config,
        Parts {
            table,
            verifier,
            ledger,
            journal,
            reconciler,
            metrics,
            clock: crate::clock::system(),
        },
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
    let shared = Shared {
        upstreams: gateway.upstreams().clone(),
        payments: gateway.payments().clone(),
        in_flight: gateway.in_flight().clone(),
        closing: gateway.closing().clone(),
        // The gateway starts only after `/supported` was read.
        health: Arc::new(admin::Health::new(
            config.facilitator.supported_refresh * 2 + config.facilitator.timeout,
        )),
    };
    shared.health.supported_ok();
    let certs = match &s.tls {
        Some(t) => Some(Arc::new(
            edge::CertStore::load(t).map_err(StartupError::Tls)?,
        )),
        None => None,
    };
    add_gateway(&mut server, config, gateway, certs.as_ref())?;
    add_side_listeners(&mut server, config, &shared);
    let reloader = reload::Reloader::new(
        source,
        shared.payments.table().clone(),
        facilitator.clone(),
        shared.payments.metrics().clone(),
    )
    .with_certs(certs);
    add_background(&mut server, config, reloader, facilitator, shared);
    Ok(server)
}

/// What the listeners and background services share with the gateway.
struct Shared {
    upstreams: Arc<Upstreams>,
    payments: Arc<Payments>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    closing: Arc<std::sync::atomic::AtomicBool>,
    health: Arc<admin::Health>,
}

/// The paying listener: plain HTTP/1.1 (and h2c), or TLS with HTTP/2 by ALPN.
fn add_gateway(
    server: &mut Server,
    config: &Config,
    gateway: Gateway,
    certs: Option<&Arc<edge::CertStore>>,
) -> Result<(), StartupError> {
    let s = &config.server;
    let counters = gateway.payments().metrics().connections().clone();
    let mut proxy = pingora::proxy::http_proxy(&server.configuration, gateway);
    let mut options = pingora::apps::HttpServerOptions::default();
    options.h2c = s.h2c;
    proxy.server_options = Some(options);
    let limits = conn::Limits {
        max_connections: config.limits.max_connections,
        header_timeout: config.limits.header_timeout,
    };
    let mut service = pingora::services::listening::Service::new(
        "x402-gateway".to_owned(),
        conn::Guarded::new(proxy, limits, counters),
    );
    match certs {
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
    server.add_service(service);
    Ok(())
}

/// The admin and forward-auth listeners, when configured.
fn add_side_listeners(server: &mut Server, config: &Config, shared: &Shared) {
    if let Some(listen) = &config.admin.listen {
        let mut admin = pingora::services::listening::Service::new(
            "admin".to_owned(),
            admin::AdminApp::new(
                shared.payments.clone(),
                shared.upstreams.clone(),
                shared.health.clone(),
            ),
        );
        admin.add_tcp(listen);
        server.add_service(admin);
    }
    if let Some(listen) = &config.auth.listen {
        let app = auth::AuthApp::new(
            config,
            shared.payments.clone(),
            shared.in_flight.clone(),
            shared.closing.clone(),
        );
        let mut auth = pingora::services::listening::Service::new("forward-auth".to_owned(), app);
        auth.add_tcp(listen);
        server.add_service(auth);
    }
}

/// The background services: reload, facilitator upkeep, upstream health, payments upkeep,
/// deferred settlement, hand-over, readiness and drain.
fn add_background(
    server: &mut Server,
    config: &Config,
    reloader: reload::Reloader,
    facilitator: Arc<dyn Facilitator>,
    shared: Shared,
) {
    let s = &config.server;
    let Shared {
        upstreams,
        payments,
        in_flight,
        closing,
        health,
    } = shared;
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
            payments: payments.clone(),
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
}
