//! The summary `x402-gateway check` prints of a valid configuration: what the gateway will do
//! with it, in one screen (the listener, upstreams, facilitator, limits, operations and every
//! route with its prices).

use std::fmt::Write as _;

use super::{Config, UpstreamConfig};

/// `writeln!` into a `String` (which cannot fail).
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

/// What `x402-gateway check` prints of a valid configuration: the listener, upstreams,
/// facilitator, limits, operations, and the route table with each option's price.
pub fn summary(c: &Config) -> String {
    let mut out = String::new();

    let s = &c.server;
    outln!(
        out,
        "  listen       {} (threads: {}){}",
        s.listen,
        s.threads,
        match (&s.tls, s.h2c) {
            (Some(t), _) => format!(
                "; TLS {} (HTTP/2 by ALPN; certificate read again on reload)",
                t.cert.display()
            ),
            (None, true) => "; plain HTTP/1.1 and h2c".to_owned(),
            (None, false) => "; plain HTTP/1.1".to_owned(),
        }
    );
    outln!(out, "  upstream     {}", describe_upstream(&c.upstream));
    for (name, u) in &c.upstreams {
        outln!(out, "  upstream {name}: {}", describe_upstream(u));
    }
    match (&c.facilitator.url, &c.facilitator.embedded) {
        (Some(url), _) => outln!(out, "  facilitator  {url}"),
        (None, Some(e)) => outln!(
            out,
            "  facilitator  embedded: {} signer key(s); {}; rpc timeout {:?}",
            e.signer_keys.len(),
            e.rpc
                .iter()
                .map(|(n, u)| format!("{n} via {}", super::secret::redacted_url(u.expose())))
                .collect::<Vec<_>>()
                .join(", "),
            e.rpc_timeout
        ),
        (None, None) => {}
    }
    if let Some(e) = &c.facilitator.embedded {
        let b = &e.batch;
        outln!(out,
            "  batching     batch_max {} per transaction via {}; batch_window {:?} (deferred); sync_batch_window {}",
            b.max,
            b.contract.to_checksum(None),
            b.window,
            if b.sync_window.is_zero() {
                "off (one transaction per request)".to_owned()
            } else {
                format!("{:?} (after_response, before_upstream)", b.sync_window)
            }
        );
    }
    if c.facilitator.embedded.is_some() {
        let f = &c.facilitator.server;
        outln!(out,
            "  facilitator server (x402-gateway facilitator): {} on {}; pays to {}; min value {:?}; rate {}",
            if f.token.is_some() { "bearer token" } else { "no token (loopback only)" },
            c.facilitator.listen,
            f.pay_to.iter().map(|a| a.to_checksum(None)).collect::<Vec<_>>().join(", "),
            f.min_value,
            f.rate.map_or("off".to_owned(), |r| r.to_string())
        );
    }
    outln!(out, "  verification {}", c.verification.mode.as_str());
    outln!(
        out,
        "  methods      unlisted methods on priced paths: {}",
        s.unlisted_methods.as_str()
    );
    let l = &c.limits;
    outln!(out,
        "  limits       body {} B on priced routes; headers {} B within {:?}; {} connections; {} pending payments; challenges {}/client; failed payments {}/client; {} facilitator calls in flight",
        l.max_request_body,
        l.max_header_bytes,
        l.header_timeout,
        l.max_connections,
        l.max_pending_payments,
        l.challenge_rate.map_or("off".to_owned(), |r| r.to_string()),
        l.failed_payment_rate.map_or("off".to_owned(), |r| r.to_string()),
        l.max_concurrent_facilitator_calls
    );
    outln!(
        out,
        "  proxies      {}",
        if s.trusted_proxies.is_empty() {
            "none trusted: X-Forwarded-For is replaced".to_owned()
        } else {
            s.trusted_proxies
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    );
    outln!(
        out,
        "  admin        {}",
        c.admin.listen.as_deref().map_or_else(
            || "off".to_owned(),
            |l| format!("{l}: /metrics, /livez, /readyz")
        )
    );
    outln!(out,
        "  forward-auth {}",
        c.auth.listen.as_deref().map_or_else(
            || "off".to_owned(),
            |l| format!(
                "{l}: /nginx (original request in {} and {}), /forward (X-Forwarded-*), {}/… (ext_authz); decisions within {:?}",
                c.auth.original_method_header,
                c.auth.original_uri_header,
                c.auth.ext_authz_prefix,
                c.auth.timeout
            )
        )
    );
    outln!(
        out,
        "  access log   {}",
        if c.logging.access_log {
            "one line per request (target x402_gateway::access)"
        } else {
            "off"
        }
    );
    if let Some(e) = &c.logging.otlp_endpoint {
        outln!(
            out,
            "  spans        OTLP/HTTP to {e} as {}",
            c.logging.otlp_service_name
        );
    }
    outln!(
        out,
        "  reload       on SIGHUP{}",
        if s.watch_config {
            " and when the file changes (watch_config)"
        } else {
            ""
        }
    );
    outln!(
        out,
        "  runtime      pid {}; upgrade socket {}",
        s.pid_file.display(),
        s.upgrade_sock.display()
    );
    let j = &c.journal;
    if j.enabled {
        outln!(
            out,
            "  journal      {} (sync {})",
            j.path.display(),
            j.sync.as_str()
        );
    } else {
        outln!(
            out,
            "  journal      off (unknown outcomes kept in memory only)"
        );
    }
    if c.routes
        .iter()
        .any(|r| r.settlement == super::SettlementMode::Deferred)
    {
        let d = &c.deferred;
        let usd = |m: u128| {
            format!(
                "${}",
                super::money::format_units(alloy::primitives::U256::from(m), 6)
            )
        };
        outln!(out,
            "  deferred     at most {} per payer and {} in all unsettled; settlement starts within {:?}{}",
            usd(d.max_per_payer),
            usd(d.max_total),
            d.max_delay,
            d.settle_first_above
                .map(|t| format!("; above {} settled first", usd(t)))
                .unwrap_or_default()
        );
    }
    outln!(
        out,
        "  routes (first match wins; unmatched paths pass through free):"
    );
    for r in &c.routes {
        let methods = r.methods_label();
        let to = r
            .upstream
            .as_ref()
            .map(|u| format!(" -> upstream {u}"))
            .unwrap_or_default();
        if r.is_free() {
            outln!(out, "  [{}] {methods:<8} {:<24} free{to}", r.index, r.path);
            continue;
        }
        outln!(
            out,
            "  [{}] {methods:<8} {:<24} settle {}{}{to}",
            r.index,
            r.path,
            r.settlement.as_str(),
            match r.settle_first_above {
                Some(t) if r.settlement == super::SettlementMode::Deferred => format!(
                    " (settled first above ${})",
                    super::money::format_units(alloy::primitives::U256::from(t), 6)
                ),
                _ => String::new(),
            }
        );
        for o in &r.options {
            outln!(
                out,
                "        {} = {} atomic {} ({}) on {}{} -> {}",
                o.display_price(),
                o.amount,
                o.asset.symbol,
                o.asset.address,
                o.network.caip2(),
                o.network
                    .v1_name()
                    .map(|n| format!(" ({n})"))
                    .unwrap_or_default(),
                o.pay_to
            );
        }
    }
    out
}

/// One line about an upstream for `check`: where it goes, TLS, HTTP/2, pool and health
/// check, and the names of injected headers (their values are secrets: never printed).
fn describe_upstream(u: &UpstreamConfig) -> String {
    use super::{HashKey, Selection};
    let mut out = if u.backends.is_empty() {
        u.url.clone()
    } else {
        let list: Vec<String> = u
            .backends
            .iter()
            .map(|b| {
                if b.weight == 1 {
                    b.url.clone()
                } else {
                    format!("{} (weight {})", b.url, b.weight)
                }
            })
            .collect();
        let selection = match &u.selection {
            Selection::RoundRobin => "round robin".to_owned(),
            Selection::Consistent(HashKey::ClientIp) => "consistent hash of the client IP".into(),
            Selection::Consistent(HashKey::Path) => "consistent hash of the path".into(),
            Selection::Consistent(HashKey::Header(h)) => format!("consistent hash of {h}"),
        };
        format!("pool of {}, {selection}: {}", list.len(), list.join(", "))
    };
    if let Some(h) = &u.health_check {
        out.push_str(&format!(
            "; health check GET {} every {:?} (timeout {:?}; unhealthy after {}, healthy after {})",
            h.path, h.interval, h.timeout, h.unhealthy_after, h.healthy_after
        ));
    }
    if u.tls_ca.is_some() {
        out.push_str(" (private CA)");
    }
    if let Some(n) = &u.tls_server_name {
        out.push_str(&format!(" (TLS name {n})"));
    }
    if u.tls {
        out.push_str(" (HTTP/2 when offered)");
    } else if u.h2c {
        out.push_str(" (h2c)");
    }
    if !u.headers.is_empty() {
        let names: Vec<String> = u.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        out.push_str(&format!("; adds {}", names.join(", ")));
    }
    out
}
