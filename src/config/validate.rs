//! `gateway.toml` → [`Config`]: the meaning of every key, its default, and every check.
//!
//! Owns: defaults, cross-key rules (route options inherit `[payment]`), price conversion and
//! route pattern compilation. Reports every problem found, each with its TOML key path.
//!
//! One file per group of sections: [`server`] (`[server]`, `[admin]`, `[auth]`), [`upstream`],
//! [`facilitator`], [`operations`] (`[journal]`, `[chain]`, `[limits]`, `[verification]`,
//! `[logging]`) and [`payment`] (`[payment]`, `[[route]]`); this file composes them and checks
//! the rules that span sections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use http::{HeaderName, Method};

use super::file::{Issues, Section};
use super::limits::{self, Cidr, LimitsConfig};
use super::money::{self, Price};
use super::{
    assets, AdminConfig, Asset, AuthConfig, BackendConfig, BatchConfig, ChainConfig, Config,
    ConfigIssue, DeferredConfig, EmbeddedConfig, FacilitatorConfig, FacilitatorServerConfig,
    HashKey, HealthCheckConfig, HostHeader, JournalConfig, JournalSync, ListenerTls, LogFormat,
    LoggingConfig, PaymentOption, RoutePattern, RouteRule, Secret, Segment, Selection,
    ServerConfig, SettlementMode, UnlistedMethods, UpstreamConfig, VerificationConfig,
    VerificationMode,
};
use crate::protocol::{self, Network};

mod facilitator;
mod operations;
mod payment;
mod server;
mod upstream;

use facilitator::*;
use operations::*;
use payment::*;
use server::*;
use upstream::*;

pub use payment::parse_pattern;
pub use server::runtime_dir;

/// Default `maxTimeoutSeconds` (the v2 reference servers' default).
const DEFAULT_MAX_TIMEOUT_SECONDS: u64 = 300;

type Env<'e> = &'e dyn Fn(&str) -> Option<String>;

pub(super) fn validate(
    root: &toml::Table,
    dir: &Path,
    env: Env<'_>,
) -> Result<Config, Vec<ConfigIssue>> {
    let issues = Issues::default();
    let r = Section::root(root, &issues);
    let server = server(&r.table("server"), dir, env);
    let upstream = upstream(&r.table("upstream"), dir, env);
    let upstreams = named_upstreams(&r.table("upstreams"), dir, env);
    let facilitator_section = r.table("facilitator");
    let facilitator = facilitator(&facilitator_section, env);
    let verification = verification(&r.table("verification"));
    let logging = logging(&r.table("logging"));
    let limits = limits(&r.table("limits"));
    let journal = journal(&r.table("journal"), dir, env);
    let chain = chain(&r.table("chain"), env);
    let admin = admin(&r.table("admin"));
    let auth = auth(&r.table("auth"));
    let defaults = Defaults::read(&r.table("payment"));
    let route_sections = r.tables("route");
    if route_sections.is_empty() && !r.has("route") {
        r.issue(
            "route",
            "no [[route]] tables: every request would pass through free",
        );
    }
    let routes: Vec<RouteRule> = route_sections
        .iter()
        .enumerate()
        .filter_map(|(i, s)| route(i, s, &defaults))
        .collect();
    let facilitator = facilitator.map(|mut f| {
        if f.server.pay_to.is_empty() {
            // Default: every recipient of this file.
            let mut all: Vec<Address> = defaults.level.pay_to.into_iter().collect();
            all.extend(
                routes
                    .iter()
                    .flat_map(|r| r.options.iter().map(|o| o.pay_to)),
            );
            all.sort();
            all.dedup();
            f.server.pay_to = all;
        }
        f
    });
    if let Some(f) = &facilitator {
        check_facilitator_server(&facilitator_section, f);
    }
    if let (Some(s), Some(a)) = (&server, &admin.listen) {
        if *a == s.listen {
            issues.push(
                "admin.listen",
                format!("`{a}` is also [server] listen: the admin listener needs its own address"),
            );
        }
    }
    if let Some(a) = &auth.listen {
        let taken = [
            ("[server] listen", server.as_ref().map(|s| &s.listen)),
            ("[admin] listen", admin.listen.as_ref()),
        ];
        for (name, other) in taken {
            if other == Some(a) {
                issues.push(
                    "auth.listen",
                    format!(
                        "`{a}` is also {name}: the forward-auth listener needs its own address"
                    ),
                );
            }
        }
    }
    if let (Some(s), Some(f)) = (&server, &facilitator) {
        for (name, t) in [
            ("facilitator.settle_timeout", f.settle_timeout),
            ("facilitator.resolve_timeout", f.resolve_timeout),
        ] {
            if s.drain_timeout < t {
                issues.push(
                    "server.drain_timeout",
                    format!(
                        "{:?} is shorter than {name} ({t:?}): a stop would cut settlements in flight",
                        s.drain_timeout
                    ),
                );
            }
        }
    }
    for route in &routes {
        if route.settlement == SettlementMode::Deferred {
            for (i, o) in route.options.iter().enumerate() {
                if !o.asset.usd_stable {
                    issues.push(
                        format!("route[{}].settlement", route.index),
                        format!(
                            "\"deferred\" caps unsettled value in dollars, but option {i} pays in {}, not a USD stablecoin",
                            o.asset.symbol
                        ),
                    );
                }
            }
        }
        if let Some(name) = &route.upstream {
            if !upstreams.iter().any(|(n, _)| n == name) {
                let known: Vec<&str> = upstreams.iter().map(|(n, _)| n.as_str()).collect();
                issues.push(
                    format!("route[{}].upstream", route.index),
                    format!(
                        "`{name}` is not an upstream: define [upstreams.{name}] (known: {})",
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }
    r.finish();
    match (server, upstream, facilitator) {
        (Some(server), Some(upstream), Some(facilitator)) if issues.is_empty() => Ok(Config {
            server,
            upstream,
            facilitator,
            verification,
            logging,
            limits,
            journal,
            chain,
            admin,
            auth,
            deferred: defaults.deferred,
            routes,
            upstreams,
        }),
        _ => {
            if issues.is_empty() {
                issues.push(
                    "(root)",
                    "internal: incomplete configuration without a reported problem",
                );
            }
            Err(issues.into_vec())
        }
    }
}

/// A rate key; `default` applies when it is absent.
fn rate(s: &Section<'_>, key: &'static str, default: &str) -> Option<limits::Rate> {
    let text = s.str(key).unwrap_or(default);
    limits::parse_rate(text).unwrap_or_else(|e| {
        s.issue(key, e);
        None
    })
}

struct HttpUrl {
    scheme: String,
    authority: String,
    host: String,
    port: Option<u16>,
    path: String,
    query_or_fragment: bool,
}

/// A small, strict `http(s)://host[:port][/path]` parser for config values.
fn parse_http_url(u: &str) -> Result<HttpUrl, String> {
    let (scheme, rest) = u
        .split_once("://")
        .ok_or_else(|| format!("`{u}` is not a URL like \"http://127.0.0.1:3000\""))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{u}`: only http and https are supported"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') || authority.contains(char::is_whitespace) {
        return Err(format!("`{u}` has no valid host"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{u}` has an unclosed IPv6 bracket"))?;
        (h.to_owned(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{u}` has no host"));
    }
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => Some(n),
            _ => return Err(format!("`{u}` has an invalid port")),
        },
        None => None,
    };
    let qf = tail.find(['?', '#']);
    Ok(HttpUrl {
        scheme,
        authority: authority.to_owned(),
        host,
        port,
        path: tail[..qf.unwrap_or(tail.len())].to_owned(),
        query_or_fragment: qf.is_some(),
    })
}

mod placeholder;
#[cfg(test)]
mod tests;
