//! The admin listener (`[admin] listen`): `/metrics` (Prometheus text format), `/livez` and
//! `/readyz`, on an address of its own so that operators' scrapers and probes never pass
//! through the paywall and clients never see them.
//!
//! Owns: [`Health`] (what the running parts report: the facilitator's last good `/supported`,
//! draining) and [`AdminApp`] (the three endpoints). `/readyz` is ready when every check passes:
//! the configuration is loaded (it is, once this serves), the facilitator's `/supported` was
//! read recently, the upstream accepts a TCP connection, the payment journal was recovered and
//! is writable, and the process is not draining. Each check is one line of the answer.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::limiter::now_ms;
use crate::payments::Payments;
pub use crate::probe::{readiness, text, Check};
use crate::proxy::pool::Upstreams;

/// How long `/readyz` waits for the upstream to accept a connection.
const UPSTREAM_PROBE: Duration = Duration::from_secs(1);

/// What the running parts report for `/readyz`.
#[derive(Debug)]
pub struct Health {
    supported_at: AtomicU64,
    supported_max_age: Duration,
    draining: AtomicBool,
}

impl Health {
    /// `/supported` counts as fresh for `max_age` after it was last read.
    pub fn new(max_age: Duration) -> Self {
        Health {
            supported_at: AtomicU64::new(0),
            supported_max_age: max_age,
            draining: AtomicBool::new(false),
        }
    }

    /// The facilitator's `/supported` was read successfully now.
    pub fn supported_ok(&self) {
        self.supported_at.store(now_ms(), Ordering::Relaxed);
    }

    /// A graceful stop began: no longer ready.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a graceful stop began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// How long ago `/supported` was last read (`None`: never).
    fn supported_age(&self, now_ms: u64) -> Option<Duration> {
        match self.supported_at.load(Ordering::Relaxed) {
            0 => None,
            t => Some(Duration::from_millis(now_ms.saturating_sub(t))),
        }
    }
}

/// `/metrics`, `/livez` and `/readyz` of a gateway.
pub struct AdminApp {
    payments: Arc<Payments>,
    upstream: Arc<Upstreams>,
    health: Arc<Health>,
}

impl AdminApp {
    /// The endpoints of the gateway made of `payments` and `upstream`.
    pub fn new(payments: Arc<Payments>, upstream: Arc<Upstreams>, health: Arc<Health>) -> Self {
        AdminApp {
            payments,
            upstream,
            health,
        }
    }

    async fn upstream_accepts(&self) -> Option<String> {
        let addrs: Vec<SocketAddr> = self.upstream.addresses();
        if addrs.is_empty() {
            return Some(
                "no address (the name does not resolve, or no pool backend is healthy)".into(),
            );
        }
        let mut last = String::new();
        for a in addrs {
            match tokio::time::timeout(UPSTREAM_PROBE, tokio::net::TcpStream::connect(a)).await {
                Ok(Ok(_)) => return None,
                Ok(Err(e)) => last = format!("{a}: {e}"),
                Err(_) => last = format!("{a}: no answer within {UPSTREAM_PROBE:?}"),
            }
        }
        Some(last)
    }

    /// Every readiness check, in a fixed order.
    pub async fn checks(&self) -> Vec<Check> {
        let facilitator = match self.health.supported_age(now_ms()) {
            None => Some("/supported never read".to_owned()),
            Some(age) if age > self.health.supported_max_age => Some(format!(
                "/supported last read {}s ago (fresh: {}s)",
                age.as_secs(),
                self.health.supported_max_age.as_secs()
            )),
            Some(_) => None,
        };
        let journal = (!self.payments.is_ready())
            .then(|| "not recovered or not writable: priced routes answer 503".to_owned());
        let draining = self
            .health
            .is_draining()
            .then(|| "a graceful stop is under way".to_owned());
        vec![
            ("config".into(), None),
            ("facilitator".into(), facilitator),
            ("upstream".into(), self.upstream_accepts().await),
            ("journal".into(), journal),
            ("draining".into(), draining),
        ]
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let plain = "text/plain; charset=utf-8";
        if s.req_header().method != http::Method::GET && s.req_header().method != http::Method::HEAD
        {
            return text(StatusCode::METHOD_NOT_ALLOWED, plain, "GET only\n".into());
        }
        match s.req_header().uri.path() {
            "/metrics" => {
                let pending = self.payments.ledger().claims().0;
                text(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.payments.metrics().render(pending),
                )
            }
            "/livez" => text(StatusCode::OK, plain, "ok\n".into()),
            "/readyz" => {
                let (status, body) = readiness(&self.checks().await);
                text(status, plain, body)
            }
            _ => text(
                StatusCode::NOT_FOUND,
                plain,
                "not found: /metrics, /livez, /readyz\n".into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes() {
        let (s, body) = readiness(&[("config".into(), None), ("upstream".into(), None)]);
        assert_eq!(s, StatusCode::OK);
        assert_eq!(body, "ok   config\nok   upstream\n");
        let (s, body) = readiness(&[
            ("config".into(), None),
            ("upstream".into(), Some("refused".into())),
        ]);
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("fail upstream: refused"), "{body}");
    }

    #[test]
    fn supported_freshness_is_measured_from_the_last_read() {
        let h = Health::new(Duration::from_secs(60));
        assert_eq!(h.supported_age(now_ms()), None);
        let before = now_ms();
        h.supported_ok();
        let after = now_ms();
        // Measured from the read, which happened between `before` and `after`.
        let age = h.supported_age(after + 5_000).unwrap();
        assert!(age >= Duration::from_secs(5));
        assert!(age <= Duration::from_millis(5_000 + after - before));
        assert!(!h.is_draining());
        h.drain();
        assert!(h.is_draining());
    }
}
