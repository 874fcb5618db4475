//! The gateway's background services: `/supported` refresh, signer balances, upstream
//! resolution, payments maintenance, the deferred settlement worker, the upgrade hand-over and
//! the graceful drain.
//!
//! Owns: one `BackgroundService` per concern; each delegates to the module that owns the work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::admin;
use crate::config::Config;
use crate::metrics;
use crate::notify;
use crate::payments::Payments;
use crate::pricing::{kinds, unsupported_options};
use crate::telemetry;
use crate::verify::Facilitator;

/// Keeps `/supported` fresh and warns when a configured option stops being supported.
pub struct SupportedRefresh {
    /// The facilitator asked.
    pub facilitator: Arc<dyn Facilitator>,
    /// The configuration whose options must stay supported.
    pub config: Config,
    /// Told when `/supported` was read.
    pub health: Arc<admin::Health>,
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
    /// Told that another process serves from the same journal from now on.
    pub payments: Arc<Payments>,
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
        // Both processes serve for a moment: claims go through the journal from now on.
        self.payments.handing_over();
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
        let start = crate::clock::instant();
        // Requests in flight, and deferred settlements owed (released answers not settled).
        let in_flight =
            || self.in_flight.load(std::sync::atomic::Ordering::SeqCst) + self.payments.owed();
        // Idle means no request for DRAIN_QUIET: a request whose head was read just as the
        // stop began gets its context (and is counted) a moment later.
        let mut idle_since: Option<crate::clock::Instant> = None;
        loop {
            let timed_out = start.elapsed() >= self.timeout;
            if !timed_out {
                if in_flight() > 0 {
                    idle_since = None;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
                let since = *idle_since.get_or_insert_with(crate::clock::instant);
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
            if let Some(j) = self.payments.journal() {
                // Its open payments are anyone's to take over from now on.
                let _ = j.close().await;
            }
            super::runtime::remove_own_pid_file(&self.pid_file);
            telemetry::flush();
            std::process::exit(0);
        }
    }
}
