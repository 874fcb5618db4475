//! Prometheus metrics of the gateway (the `prometheus` crate, text format).
//!
//! Owns: [`Metrics`], every metric family registered once at start; the parts that record hold
//! an `Arc` of it and call its typed methods, so names and labels are written in one place.
//! Label sets stay bounded: `route` is a configured route's `path` (never a raw request path),
//! `method` a standard method or `OTHER`, `status` a status code, `reason` a named
//! [`ErrorReason`] or `other`, `network` and `asset` come from the price table.
//!
//! Recording is a label lookup (a hash of a few short strings under a read lock) and an atomic
//! add: about 100 ns, against tens of µs of proxying per request.

use std::time::Duration;

use alloy::primitives::{Address, U256};
use http::Method;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::ErrorReason;

/// The `route` label of requests that match no route (they pass through free).
pub const UNMATCHED: &str = "(unmatched)";

/// Latency buckets, in seconds: 1 ms to 30 s (a facilitator's `/settle` waits for a block).
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Every metric of one gateway process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    challenges: IntCounterVec,
    payments: IntCounterVec,
    revenue: IntCounterVec,
    facilitator: HistogramVec,
    upstream: HistogramVec,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    pending: IntGauge,
    signer_balance: GaugeVec,
    reloads: IntCounterVec,
    deferred_fallbacks: IntCounterVec,
    deferred_lag: prometheus::Histogram,
    deferred_owed: IntGauge,
    deferred_exposure: prometheus::Gauge,
    connections: std::sync::Arc<crate::conn::Counters>,
    conn_open: IntGauge,
    conn_refused: IntCounter,
    conn_head_timeouts: IntCounter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

type Made<T> = Result<T, prometheus::Error>;

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Made<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str]) -> Made<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()),
        labels,
    )?;
    r.register(Box::new(h.clone()))?;
    Ok(h)
}

/// The `method` label: the standard methods by name, anything else `OTHER`.
fn method_label(m: &Method) -> &str {
    match *m {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::HEAD
        | Method::OPTIONS
        | Method::PATCH
        | Method::CONNECT
        | Method::TRACE => m.as_str(),
        _ => "OTHER",
    }
}

/// The `reason` label: a named reason, `other` for a remote facilitator's own words.
fn reason_label(r: Option<&ErrorReason>) -> &str {
    match r {
        None => "",
        Some(ErrorReason::Other(_)) => "other",
        Some(r) => r.as_str(),
    }
}

impl Metrics {
    /// Registers every metric. `x402_build_info` is set here.
    ///
    /// # Errors
    /// Only if a fixed name or label were invalid (the unit tests build it).
    pub fn new() -> Result<Self, prometheus::Error> {
        let r = Registry::new();
        let requests = counter(
            &r,
            "x402_requests_total",
            "Requests answered, by route rule, method and status.",
            &["route", "method", "status"],
        )?;
        let challenges = counter(
            &r,
            "x402_challenges_total",
            "402 Payment Required answers, by route rule.",
            &["route"],
        )?;
        let payments = counter(
            &r,
            "x402_payments_total",
            "Payment attempts by outcome: settled, redeemed, settle_failed, settle_unknown, released, rejected.",
            &["route", "network", "outcome", "reason"],
        )?;
        let revenue = counter(
            &r,
            "x402_revenue_atomic_total",
            "Value settled on chain, in the asset's atomic units.",
            &["route", "network", "asset"],
        )?;
        let facilitator = histogram(
            &r,
            "x402_facilitator_request_duration_seconds",
            "Facilitator calls (verify, settle, supported) by outcome (ok, error, busy).",
            &["endpoint", "outcome"],
        )?;
        let upstream = histogram(
            &r,
            "x402_upstream_request_duration_seconds",
            "From sending a request upstream to its response header, by route rule.",
            &["route"],
        )?;
        let reloads = counter(
            &r,
            "x402_config_reloads_total",
            "Configuration reloads by result (applied, rejected).",
            &["result"],
        )?;
        for result in ["applied", "rejected"] {
            reloads.with_label_values(&[result]);
        }
        let cache_hits = IntCounter::new(
            "x402_verdict_cache_hits_total",
            "Facilitator verdicts answered from the cache.",
        )?;
        let cache_misses = IntCounter::new(
            "x402_verdict_cache_misses_total",
            "Facilitator verdicts not in the cache (asked of the facilitator).",
        )?;
        let pending = IntGauge::new(
            "x402_pending_payments",
            "Authorizations held by the replay guard (in flight or used and still valid).",
        )?;
        let build = IntGaugeVec::new(
            Opts::new("x402_build_info", "The gateway's version (always 1)."),
            &["version"],
        )?;
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let signer_balance = GaugeVec::new(
            Opts::new(
                "x402_signer_gas_balance_wei",
                "Native balance of each embedded-facilitator signer, in wei.",
            ),
            &["network", "signer"],
        )?;
        let deferred_fallbacks = counter(
            &r,
            "x402_deferred_fallbacks_total",
            "Payments of deferred routes settled before release instead, by route and cap (unpaid, above_threshold, max_per_payer, max_total, max_delay, expiring).",
            &["route", "reason"],
        )?;
        let deferred_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "x402_deferred_settlement_lag_seconds",
                "From a deferred payment's verification to its settlement seen on chain.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0,
            ]),
        )?;
        let deferred_owed = IntGauge::new(
            "x402_deferred_owed_payments",
            "Deferred payments released and not settled yet (queued, settling, retrying).",
        )?;
        let deferred_exposure = prometheus::Gauge::new(
            "x402_deferred_exposure_dollars",
            "Unsettled value of deferred payments, in US dollars.",
        )?;
        let conn_open = IntGauge::new(
            "x402_connections_open",
            "Connections open on the paying listener.",
        )?;
        let conn_refused = IntCounter::new(
            "x402_connections_refused_total",
            "Connections closed on arrival: [limits] max_connections were open.",
        )?;
        let conn_head_timeouts = IntCounter::new(
            "x402_request_head_timeouts_total",
            "Connections closed because a request head took longer than [limits] header_timeout.",
        )?;
        for m in [
            Box::new(deferred_lag.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(conn_open.clone()),
            Box::new(conn_refused.clone()),
            Box::new(conn_head_timeouts.clone()),
            Box::new(deferred_owed.clone()),
            Box::new(deferred_exposure.clone()),
            Box::new(cache_hits.clone()),
            Box::new(cache_misses.clone()),
            Box::new(pending.clone()),
            Box::new(build),
            Box::new(signer_balance.clone()),
        ] {
            r.register(m)?;
        }
        Ok(Metrics {
            registry: r,
            requests,
            challenges,
            payments,
            revenue,
            facilitator,
            upstream,
            cache_hits,
            cache_misses,
            pending,
            signer_balance,
            reloads,
            deferred_fallbacks,
            deferred_lag,
            deferred_owed,
            deferred_exposure,
            connections: std::sync::Arc::default(),
            conn_open,
            conn_refused,
            conn_head_timeouts,
        })
    }

    /// The paying listener's connection counters (kept by `conn::Guarded`).
    pub fn connections(&self) -> &std::sync::Arc<crate::conn::Counters> {
        &self.connections
    }

    /// A request answered with `status` (0: no answer was written).
    pub fn request(&self, route: &str, method: &Method, status: u16) {
        let code = http::StatusCode::from_u16(status);
        let status = code.as_ref().map_or("0", http::StatusCode::as_str);
        self.requests
            .with_label_values(&[route, method_label(method), status])
            .inc();
    }

    /// A 402 challenge was answered.
    pub fn challenge(&self, route: &str) {
        self.challenges.with_label_values(&[route]).inc();
    }

    /// A payment attempt ended with `outcome`.
    pub fn payment(&self, route: &str, network: &str, outcome: &str, reason: Option<&ErrorReason>) {
        self.payments
            .with_label_values(&[route, network, outcome, reason_label(reason)])
            .inc();
    }

    /// `amount` of `asset` was settled on chain for `route`.
    pub fn revenue(&self, route: &str, network: &str, asset: Address, amount: U256) {
        let asset = asset.to_checksum(None);
        self.revenue
            .with_label_values(&[route, network, &asset])
            .inc_by(u64::try_from(amount).unwrap_or(u64::MAX));
    }

    /// A deferred route's payment was settled before release because of `reason`.
    pub fn deferred_fallback(&self, route: &str, reason: &str) {
        self.deferred_fallbacks
            .with_label_values(&[route, reason])
            .inc();
    }

    /// A deferred payment settled `ms` after it was verified.
    pub fn deferred_lag(&self, ms: u64) {
        self.deferred_lag.observe(ms as f64 / 1000.0);
    }

    /// Owed deferred settlements and their unsettled value (micro-dollars) now.
    pub fn deferred_state(&self, owed: usize, micro: u128) {
        self.deferred_owed
            .set(i64::try_from(owed).unwrap_or(i64::MAX));
        self.deferred_exposure.set(micro as f64 / 1e6);
    }

    /// A facilitator call took `took`.
    pub fn facilitator_call(&self, endpoint: &str, outcome: &str, took: Duration) {
        self.facilitator
            .with_label_values(&[endpoint, outcome])
            .observe(took.as_secs_f64());
    }

    /// The upstream answered `route`'s request after `took`.
    pub fn upstream(&self, route: &str, took: Duration) {
        self.upstream
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// A verdict was (`hit`) or was not in the cache.
    pub fn verdict_cache(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// A configuration reload ended with `result` (`applied` or `rejected`).
    pub fn config_reload(&self, result: &str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// An embedded-facilitator signer's native balance.
    pub fn signer_balance(&self, network: &str, signer: Address, wei: U256) {
        self.signer_balance
            .with_label_values(&[network, &signer.to_checksum(None)])
            .set(wei.to_string().parse().unwrap_or(f64::MAX));
    }

    /// The Prometheus text exposition of every metric, with the replay guard's size now.
    pub fn render(&self, pending: usize) -> String {
        self.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
        let c = &self.connections;
        let open = c.open.load(std::sync::atomic::Ordering::Relaxed);
        self.conn_open.set(i64::try_from(open).unwrap_or(i64::MAX));
        // The counters live in `conn` (no metrics there): brought up to date here.
        for (counter, now) in [
            (&self.conn_refused, &c.refused),
            (&self.conn_head_timeouts, &c.head_timeouts),
        ] {
            let now = now.load(std::sync::atomic::Ordering::Relaxed);
            counter.inc_by(now.saturating_sub(counter.get()));
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn labels_are_bounded_and_values_add_up() {
        let m = Metrics::new().unwrap();
        m.request("/weather/*", &Method::GET, 402);
        m.request("/weather/*", &Method::GET, 402);
        m.request("/weather/*", &Method::from_bytes(b"BREW").unwrap(), 405);
        m.payment(
            "/weather/*",
            "eip155:84532",
            "settle_failed",
            Some(&ErrorReason::Other("https://rpc.example/KEY".into())),
        );
        m.revenue(
            "/weather/*",
            "eip155:84532",
            Address::repeat_byte(0x11),
            U256::from(1000u64),
        );
        m.revenue(
            "/weather/*",
            "eip155:84532",
            Address::repeat_byte(0x11),
            U256::from(500u64),
        );
        let text = m.render(7);
        assert_eq!(
            line(
                &text,
                r#"x402_requests_total{method="GET",route="/weather/*",status="402"}"#
            ),
            Some(r#"x402_requests_total{method="GET",route="/weather/*",status="402"} 2"#)
        );
        assert!(text.contains(r#"method="OTHER",route="/weather/*",status="405"} 1"#));
        assert!(text.contains(r#"outcome="settle_failed",reason="other",route="/weather/*"} 1"#));
        assert!(!text.contains("rpc.example"), "{text}");
        assert!(text.contains(r#"route="/weather/*"} 1500"#), "{text}");
        assert!(text.contains("x402_pending_payments 7"));
        assert!(text.contains(&format!(
            r#"x402_build_info{{version="{}"}} 1"#,
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn every_named_family_is_exposed() {
        let m = Metrics::new().unwrap();
        m.request("/a", &Method::GET, 200);
        m.challenge("/a");
        m.payment("/a", "base", "settled", None);
        m.revenue("/a", "base", Address::ZERO, U256::from(1u64));
        m.facilitator_call("settle", "ok", Duration::from_millis(3));
        m.upstream("/a", Duration::from_millis(2));
        m.verdict_cache(true);
        m.verdict_cache(false);
        m.signer_balance(
            "eip155:84532",
            Address::ZERO,
            U256::from(10_000u64) * U256::from(10u64).pow(U256::from(18u64)),
        );
        let text = m.render(0);
        for family in [
            "x402_requests_total",
            "x402_challenges_total",
            "x402_payments_total",
            "x402_revenue_atomic_total",
            "x402_facilitator_request_duration_seconds",
            "x402_upstream_request_duration_seconds",
            "x402_verdict_cache_hits_total",
            "x402_verdict_cache_misses_total",
            "x402_pending_payments",
            "x402_build_info",
            "x402_signer_gas_balance_wei",
            "x402_config_reloads_total",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing:\n{text}"
            );
        }
        assert!(text.contains(
            r#"x402_facilitator_request_duration_seconds_bucket{endpoint="settle",outcome="ok",le="0.005"} 1"#
        ));
        // 10,000 ETH, not saturated at i64::MAX.
        assert!(
            text.contains(
                r#"signer="0x0000000000000000000000000000000000000000"} 10000000000000000000000"#
            ),
            "{text}"
        );
    }
}
