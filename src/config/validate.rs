//! `gateway.toml` → [`Config`]: the meaning of every key, its default, and every check.
//!
//! Owns: defaults, cross-key rules (route options inherit `[payment]`), price conversion and
//! route pattern compilation. Reports every problem found, each with its TOML key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::Address;
use http::{HeaderName, Method};

use super::file::{Issues, Section};
use super::limits::{self, Cidr, LimitsConfig};
use super::money::{self, Price};
use super::{
    assets, AdminConfig, Asset, AuthConfig, BackendConfig, ChainConfig, Config, ConfigIssue,
    EmbeddedConfig, FacilitatorConfig, FacilitatorServerConfig, HashKey, HealthCheckConfig,
    HostHeader, JournalConfig, JournalSync, ListenerTls, LogFormat, LoggingConfig, PaymentOption,
    RoutePattern, RouteRule, Secret, Segment, Selection, ServerConfig, SettlementMode,
    UnlistedMethods, UpstreamConfig, VerificationConfig, VerificationMode,
};
use crate::protocol::{self, evm, Network};

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

// === [server] ===

fn server(s: &Section<'_>, dir: &Path, env: Env<'_>) -> Option<ServerConfig> {
    let listen = s.str("listen").unwrap_or("0.0.0.0:8402").to_owned();
    if listen.parse::<SocketAddr>().is_err() {
        s.issue(
            "listen",
            format!("`{listen}` is not an address like \"0.0.0.0:8402\""),
        );
    }
    let public_url = s.str("public_url").and_then(|u| match parse_http_url(u) {
        Ok(p) if p.query_or_fragment => {
            s.issue("public_url", "must not have a query or fragment");
            None
        }
        Ok(p) => Some(format!(
            "{}://{}{}",
            p.scheme,
            p.authority,
            p.path.trim_end_matches('/')
        )),
        Err(e) => {
            s.issue("public_url", e);
            None
        }
    });
    let default_threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = match s.uint("threads") {
        Some(0) => {
            s.issue("threads", "must be at least 1");
            1
        }
        Some(n) => n as usize,
        None => default_threads,
    };
    let cors_allow_origin = match s.str("cors_allow_origin") {
        Some("") => None,
        Some(o) => Some(o.to_owned()),
        None => Some("*".to_owned()),
    };
    if let Some(o) = &cors_allow_origin {
        if http::HeaderValue::from_str(o).is_err() {
            s.issue("cors_allow_origin", "is not a valid header value");
        }
    }
    let client_timeout = s
        .duration("client_timeout")
        .unwrap_or(Duration::from_secs(60));
    let unlisted_methods = match s.str("unlisted_methods") {
        None | Some("reject") => UnlistedMethods::Reject,
        Some("charge") => UnlistedMethods::Charge,
        Some("pass") => UnlistedMethods::Pass,
        Some(other) => {
            s.issue(
                "unlisted_methods",
                format!("`{other}` is not \"reject\", \"charge\" or \"pass\""),
            );
            UnlistedMethods::Reject
        }
    };
    let trusted_proxies = s
        .str_array("trusted_proxies")
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, c)| match Cidr::parse(c) {
            Ok(c) => Some(c),
            Err(e) => {
                s.issue(&format!("trusted_proxies[{i}]"), e);
                None
            }
        })
        .collect();
    let port = listen.rsplit(':').next().unwrap_or("0").to_owned();
    let private = runtime_dir(env);
    let pid_file = s.str("pid_file").map_or_else(
        || private.join(format!("x402-gateway-{port}.pid")),
        |p| dir.join(p),
    );
    let upgrade_sock = s.str("upgrade_sock").map_or_else(
        || private.join(format!("x402-gateway-{port}.sock")),
        |p| dir.join(p),
    );
    let drain_timeout = s
        .duration("drain_timeout")
        .unwrap_or(Duration::from_secs(35));
    let watch_config = s.bool("watch_config").unwrap_or(false);
    let tls = listener_tls(s, dir);
    let h2c = s.bool("h2c").unwrap_or(false);
    if h2c && s.has("tls_cert") {
        s.issue(
            "h2c",
            "only for a plain listener: with tls_cert, HTTP/2 is negotiated by ALPN",
        );
    }
    s.finish();
    Some(ServerConfig {
        tls,
        h2c,
        watch_config,
        listen,
        public_url,
        threads,
        cors_allow_origin,
        client_timeout,
        unlisted_methods,
        trusted_proxies,
        pid_file,
        upgrade_sock,
        drain_timeout,
    })
}

/// `tls_cert` and `tls_key`: both or neither, each a readable PEM file of its kind.
fn listener_tls(s: &Section<'_>, dir: &Path) -> Option<ListenerTls> {
    use rustls_pki_types::pem::PemObject;
    let (cert, key) = match (s.str("tls_cert"), s.str("tls_key")) {
        (None, None) => return None,
        (Some(c), Some(k)) => (dir.join(c), dir.join(k)),
        (Some(_), None) => {
            s.issue("tls_key", "missing: the private key of tls_cert (PEM)");
            return None;
        }
        (None, Some(_)) => {
            s.issue(
                "tls_cert",
                "missing: the certificate chain of tls_key (PEM)",
            );
            return None;
        }
    };
    let mut ok = true;
    match std::fs::read(&cert) {
        Ok(text) => {
            let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&text)
                .collect::<Result<Vec<_>, _>>();
            if !certs.is_ok_and(|c| !c.is_empty()) {
                s.issue(
                    "tls_cert",
                    format!("{} holds no PEM certificate", cert.display()),
                );
                ok = false;
            }
        }
        Err(e) => {
            s.issue("tls_cert", format!("cannot read {}: {e}", cert.display()));
            ok = false;
        }
    }
    match std::fs::read(&key) {
        Ok(text) => {
            if rustls_pki_types::PrivateKeyDer::from_pem_slice(&text).is_err() {
                // The key's bytes are never echoed.
                s.issue(
                    "tls_key",
                    format!("{} holds no PEM private key", key.display()),
                );
                ok = false;
            }
        }
        Err(e) => {
            s.issue("tls_key", format!("cannot read {}: {e}", key.display()));
            ok = false;
        }
    }
    ok.then_some(ListenerTls { cert, key })
}

/// The private directory for the pid file and the upgrade socket: `$XDG_RUNTIME_DIR/x402-gateway`
/// (per user, 0700 by definition), else `<temp>/x402-gateway-<uid>`. It is created 0700 at
/// start and refused if anyone else owns it or can write to it.
pub fn runtime_dir(env: Env<'_>) -> PathBuf {
    if let Some(d) = env("XDG_RUNTIME_DIR").filter(|d| d.starts_with('/')) {
        return PathBuf::from(d).join("x402-gateway");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("x402-gateway-{uid}"))
}

// === [upstream] ===

fn upstream(s: &Section<'_>, dir: &Path, env: Env<'_>) -> Option<UpstreamConfig> {
    let connect_timeout = s
        .duration("connect_timeout")
        .unwrap_or(Duration::from_secs(5));
    let read_timeout = s
        .duration("read_timeout")
        .unwrap_or(Duration::from_secs(60));
    let write_timeout = s
        .duration("write_timeout")
        .unwrap_or(Duration::from_secs(60));
    let resolve_interval = s
        .duration("resolve_interval")
        .unwrap_or(Duration::from_secs(30));
    let tls_server_name = s.str("tls_server_name").map(str::to_owned);
    if tls_server_name.as_deref().is_some_and(|n| {
        n.is_empty() || rustls_pki_types::ServerName::try_from(n.to_owned()).is_err()
    }) {
        s.issue("tls_server_name", "is not a DNS name or IP address");
    }
    let tls_ca = s.str("tls_ca").and_then(|p| match read_ca(&dir.join(p)) {
        Ok(certs) => Some(certs),
        Err(e) => {
            s.issue("tls_ca", e);
            None
        }
    });
    let host_header = match s.str("host_header") {
        None | Some("upstream") => HostHeader::Upstream,
        Some("client") => HostHeader::Client,
        Some(v) if !v.is_empty() && http::HeaderValue::from_str(v).is_ok() => {
            HostHeader::Literal(v.to_owned())
        }
        Some(_) => {
            s.issue(
                "host_header",
                "must be \"upstream\", \"client\" or a host name",
            );
            HostHeader::Upstream
        }
    };
    let h2c = s.bool("h2c").unwrap_or(false);
    let selection = selection(s);
    let headers = upstream_headers(s, env);
    let backend_sections = s.tables("backend");
    let health_check = s
        .has("health_check")
        .then(|| health_check(&s.table("health_check")));
    let backends: Vec<BackendConfig> = backend_sections.iter().filter_map(backend).collect();
    let url = s.str("url");
    s.finish();
    let pool = !backend_sections.is_empty();
    if !pool {
        if s.has("selection") || s.has("hash_key") {
            s.issue("selection", "only with [[upstream.backend]] (a pool)");
        }
        if health_check.is_some() {
            s.issue("health_check", "only with [[upstream.backend]] (a pool)");
        }
    }
    // (url as written, host, port, tls) of the single URL, or of the pool's first backend.
    let (url, host, port, tls) = if pool {
        if url.is_some() {
            s.issue(
                "url",
                "give either url or [[upstream.backend]] tables, not both",
            );
        }
        if backends.len() != backend_sections.len() {
            return None;
        }
        let first = backends.first()?;
        (
            first.url.clone(),
            first.host.clone(),
            first.port,
            backends.iter().any(|b| b.tls),
        )
    } else {
        let Some(url) = url else {
            s.issue(
                "url",
                "missing: the upstream API to protect, e.g. \"http://127.0.0.1:3000\" (or [[upstream.backend]] tables)",
            );
            return None;
        };
        let p = origin_url(s, "url", url)?;
        let tls = p.scheme == "https";
        let port = p.port.unwrap_or(if tls { 443 } else { 80 });
        (url.to_owned(), p.host, port, tls)
    };
    if !tls {
        for key in ["tls_ca", "tls_server_name"] {
            if s.has(key) {
                s.issue(key, "only used with an https:// url");
            }
        }
    } else if h2c && !pool {
        s.issue(
            "h2c",
            "only for an http:// url: an https:// upstream is offered HTTP/2 by ALPN",
        );
    }
    let authority = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let address = format!("{authority}:{port}");
    Some(UpstreamConfig {
        url,
        address,
        sni: tls_server_name.clone().unwrap_or_else(|| host.clone()),
        tls_server_name,
        host,
        port,
        tls,
        tls_ca,
        host_header,
        resolve_interval,
        connect_timeout,
        read_timeout,
        write_timeout,
        h2c,
        backends,
        selection,
        health_check,
        headers,
    })
}

/// An origin-only `http(s)://host[:port]` at `key`.
fn origin_url(s: &Section<'_>, key: &str, url: &str) -> Option<HttpUrl> {
    let p = match parse_http_url(url) {
        Ok(p) => p,
        Err(e) => {
            s.issue(key, e);
            return None;
        }
    };
    if !(p.path.is_empty() || p.path == "/") || p.query_or_fragment {
        s.issue(
            key,
            "must be an origin only (scheme, host, port): paths are forwarded as requested",
        );
        return None;
    }
    Some(p)
}

/// One `[[upstream.backend]]`: `url` and `weight`.
fn backend(s: &Section<'_>) -> Option<BackendConfig> {
    let weight = match s.uint("weight") {
        Some(0) => {
            s.issue("weight", "must be at least 1");
            1
        }
        Some(w) => w.min(1000) as usize,
        None => 1,
    };
    let url = s.str("url");
    s.finish();
    let Some(url) = url else {
        s.issue(
            "url",
            "missing: the backend's origin, e.g. \"http://10.0.0.5:3000\"",
        );
        return None;
    };
    let p = origin_url(s, "url", url)?;
    let tls = p.scheme == "https";
    Some(BackendConfig {
        url: url.to_owned(),
        port: p.port.unwrap_or(if tls { 443 } else { 80 }),
        host: p.host,
        tls,
        weight,
    })
}

/// `selection` and `hash_key` of a pool.
fn selection(s: &Section<'_>) -> Selection {
    let key = s.str("hash_key").map(|k| match k {
        "client_ip" => HashKey::ClientIp,
        "path" => HashKey::Path,
        k => match k
            .strip_prefix("header:")
            .map(|h| HeaderName::from_bytes(h.trim().as_bytes()))
        {
            Some(Ok(h)) => HashKey::Header(h),
            _ => {
                s.issue(
                    "hash_key",
                    format!("`{k}` is not \"client_ip\", \"path\" or \"header:NAME\""),
                );
                HashKey::ClientIp
            }
        },
    });
    match s.str("selection") {
        None | Some("round_robin") => {
            if key.is_some() {
                s.issue("hash_key", "only with selection = \"consistent\"");
            }
            Selection::RoundRobin
        }
        Some("consistent") => Selection::Consistent(key.unwrap_or(HashKey::ClientIp)),
        Some(other) => {
            s.issue(
                "selection",
                format!("`{other}` is not \"round_robin\" or \"consistent\""),
            );
            Selection::RoundRobin
        }
    }
}

/// `[upstream.health_check]`.
fn health_check(s: &Section<'_>) -> HealthCheckConfig {
    let path = s.str("path").unwrap_or("/").to_owned();
    if !path.starts_with('/') || path.contains(char::is_whitespace) || path.contains('#') {
        s.issue(
            "path",
            format!("`{path}` is not a request path like \"/health\""),
        );
    }
    let interval = s.duration("interval").unwrap_or(Duration::from_secs(5));
    let timeout = s.duration("timeout").unwrap_or(Duration::from_secs(2));
    let count = |key: &'static str| match s.uint(key) {
        Some(0) => {
            s.issue(key, "must be at least 1");
            1
        }
        Some(n) => n.min(100) as usize,
        None => 1,
    };
    let healthy_after = count("healthy_after");
    let unhealthy_after = count("unhealthy_after");
    s.finish();
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_after,
        unhealthy_after,
    }
}

/// Headers an upstream gets on every request (`headers = { "X-Api-Key" = "${KEY}" }`):
/// `${VAR}` expanded now; values are secrets (never printed). Names the gateway manages
/// itself (framing, `Host`, forwarding, payment headers) are refused.
fn upstream_headers(s: &Section<'_>, env: Env<'_>) -> Vec<(HeaderName, Secret)> {
    const MANAGED: [&str; 14] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-real-ip",
        "payment-signature",
        "x-payment",
        "proxy-connection",
    ];
    let mut out = Vec::new();
    for (name, value) in s.str_map("headers").unwrap_or_default() {
        let key = format!("headers.{name}");
        let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else {
            s.issue(&key, "is not a valid header name");
            continue;
        };
        if MANAGED.contains(&hname.as_str()) {
            s.issue(&key, "is set by the gateway itself and cannot be injected");
            continue;
        }
        // Errors name the key, never the expanded value.
        match super::secret::expand_env(value, env) {
            Ok(v) if http::HeaderValue::from_str(&v).is_ok() => out.push((hname, Secret::new(v))),
            Ok(_) => s.issue(&key, "the expanded value is not a valid header value"),
            Err(e) => s.issue(&key, e),
        }
    }
    out
}

/// `[upstreams.NAME]`: named upstreams with the keys of `[upstream]`.
fn named_upstreams(s: &Section<'_>, dir: &Path, env: Env<'_>) -> Vec<(String, UpstreamConfig)> {
    let mut out = Vec::new();
    for (name, section) in s.named_tables() {
        let ok_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok_name || name == "default" {
            s.issue(
                name,
                "upstream names are letters, digits, `_` and `-` (and not \"default\")",
            );
            continue;
        }
        if let Some(u) = upstream(&section, dir, env) {
            out.push((name.to_owned(), u));
        }
    }
    out
}

/// Reads PEM certificates (a private CA) and checks each is a parsable X.509 certificate.
fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&text) {
        let cert = cert.map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
        if x509_parser::parse_x509_certificate(&cert).is_err() {
            return Err(format!(
                "{}: a certificate is not valid X.509",
                path.display()
            ));
        }
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(out)
}

// === [facilitator] ===

fn facilitator(s: &Section<'_>, env: Env<'_>) -> Option<FacilitatorConfig> {
    let timeout = s.duration("timeout").unwrap_or(Duration::from_secs(10));
    let settle_timeout = s
        .duration("settle_timeout")
        .unwrap_or(Duration::from_secs(30));
    let resolve_timeout = s
        .duration("resolve_timeout")
        .unwrap_or(Duration::from_secs(15));
    let supported_refresh = s
        .duration("supported_refresh")
        .unwrap_or(Duration::from_secs(300));
    let listen = s.str("listen").unwrap_or("127.0.0.1:8403").to_owned();
    if listen.parse::<SocketAddr>().is_err() {
        s.issue(
            "listen",
            format!("`{listen}` is not an address like \"127.0.0.1:8403\""),
        );
    }
    let mut headers = Vec::new();
    for (name, value) in s.str_map("headers").unwrap_or_default() {
        let key = format!("headers.{name}");
        let Ok(hname) = HeaderName::from_bytes(name.as_bytes()) else {
            s.issue(&key, "is not a valid header name");
            continue;
        };
        match super::secret::expand_env(value, env) {
            Ok(v) if http::HeaderValue::from_str(&v).is_ok() => {
                headers.push((hname, Secret::new(v)))
            }
            Ok(_) => s.issue(&key, "the expanded value is not a valid header value"),
            Err(e) => s.issue(&key, e),
        }
    }
    let embedded_on = s.bool("embedded").unwrap_or(false);
    let url = s.str("url");
    let embedded = embedded_on.then(|| embedded(s, env));
    let server = facilitator_server(s, env);
    if !embedded_on {
        for key in ["rpc", "signer_keys", "rpc_timeout"] {
            if s.has(key) {
                s.issue(key, "only used with embedded = true");
            }
        }
    }
    s.finish();
    let url = match (url, embedded_on) {
        (Some(_), true) => {
            s.issue(
                "url",
                "set either url (a remote facilitator) or embedded = true, not both",
            );
            return None;
        }
        (None, true) => None,
        (None, false) => {
            s.issue("url", "missing: the facilitator base URL, e.g. \"https://x402.org/facilitator\", or embedded = true");
            return None;
        }
        (Some(url), false) => match parse_http_url(url) {
            Ok(p) if !p.query_or_fragment => Some(url.trim_end_matches('/').to_owned()),
            Ok(_) => {
                s.issue("url", "must not have a query or fragment");
                return None;
            }
            Err(e) => {
                s.issue("url", e);
                return None;
            }
        },
    };
    Some(FacilitatorConfig {
        url,
        embedded: match embedded {
            Some(e) => Some(e?),
            None => None,
        },
        listen,
        timeout,
        settle_timeout,
        resolve_timeout,
        headers,
        supported_refresh,
        server,
    })
}

/// The standalone facilitator server's keys (`server_*`).
fn facilitator_server(s: &Section<'_>, env: Env<'_>) -> FacilitatorServerConfig {
    let token = s.str("server_token").and_then(|t| {
        if !t.contains("${") {
            s.issue(
                "server_token",
                "write the token as ${VAR}: secrets come from the environment, never from the file",
            );
            return None;
        }
        match super::secret::expand_env(t, env) {
            Ok(v) if v.len() >= 16 && http::HeaderValue::from_str(&v).is_ok() => {
                Some(Secret::new(v))
            }
            Ok(_) => {
                s.issue(
                    "server_token",
                    "the token must be at least 16 characters of header-safe text",
                );
                None
            }
            Err(e) => {
                s.issue("server_token", e);
                None
            }
        }
    });
    let pay_to = s
        .str_array("server_pay_to")
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let addr = protocol::parse_address(a);
            if addr.is_none() {
                s.issue(
                    &format!("server_pay_to[{i}]"),
                    format!("`{a}` is not an address (0x + 40 hex digits)"),
                );
            }
            addr
        })
        .collect();
    let min_value = match s.str_or_int("server_min_value") {
        None => Price::Dollars("0.001".into()),
        Some(p) => match money::parse_price(&p) {
            Ok(Price::Free) => {
                s.issue("server_min_value", "must be a price, not \"free\"");
                Price::Atomic(alloy::primitives::U256::from(1))
            }
            Ok(p) => p,
            Err(e) => {
                s.issue("server_min_value", e);
                Price::Atomic(alloy::primitives::U256::from(1))
            }
        },
    };
    let rate = rate(s, "server_rate", "20/s");
    let max_body = s
        .str_or_int("server_max_body")
        .map_or(Ok(64 * 1024), |v| limits::parse_size(&v))
        .unwrap_or_else(|e| {
            s.issue("server_max_body", e);
            64 * 1024
        });
    FacilitatorServerConfig {
        token,
        pay_to,
        min_value,
        rate,
        max_body: usize::try_from(max_body).unwrap_or(usize::MAX),
    }
}

/// The standalone facilitator must not be open to the network without a token.
fn check_facilitator_server(s: &Section<'_>, f: &FacilitatorConfig) {
    if f.embedded.is_none() || f.server.token.is_some() {
        return;
    }
    let loopback = f
        .listen
        .parse::<SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if !loopback {
        s.issue(
            "server_token",
            format!(
                "required when the facilitator listens beyond loopback ({}): anyone who reaches it could make your signer keys pay gas",
                f.listen
            ),
        );
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

// === [journal], [chain], [admin] ===

fn admin(s: &Section<'_>) -> AdminConfig {
    let listen = s.str("listen").map(str::to_owned);
    if let Some(l) = &listen {
        if l.parse::<SocketAddr>().is_err() {
            s.issue(
                "listen",
                format!("`{l}` is not an address like \"127.0.0.1:9402\""),
            );
        }
    }
    s.finish();
    AdminConfig { listen }
}

fn auth(s: &Section<'_>) -> AuthConfig {
    let mut c = AuthConfig {
        listen: s.str("listen").map(str::to_owned),
        ..AuthConfig::default()
    };
    if let Some(l) = &c.listen {
        if l.parse::<SocketAddr>().is_err() {
            s.issue(
                "listen",
                format!("`{l}` is not an address like \"127.0.0.1:8404\""),
            );
        }
    }
    for (key, slot) in [
        ("original_uri_header", &mut c.original_uri_header),
        ("original_method_header", &mut c.original_method_header),
    ] {
        if let Some(name) = s.str(key) {
            match http::HeaderName::from_bytes(name.as_bytes()) {
                Ok(h) => *slot = h,
                Err(_) => s.issue(key, format!("`{name}` is not a header name")),
            }
        }
    }
    if let Some(p) = s.str("ext_authz_prefix") {
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.contains(['?', '#']) {
            s.issue(
                "ext_authz_prefix",
                format!(
                    "`{p}` is not a path prefix like \"/ext_authz\" (leading /, no trailing /)"
                ),
            );
        } else {
            p.clone_into(&mut c.ext_authz_prefix);
        }
    }
    s.finish();
    c
}

/// The journal's default directory: systemd's `$STATE_DIRECTORY` (`StateDirectory=`; the first
/// of several), which the container image sets too; else the config file's directory.
fn state_dir(dir: &Path, env: Env<'_>) -> PathBuf {
    env("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| dir.to_owned())
}

fn journal(s: &Section<'_>, dir: &Path, env: Env<'_>) -> JournalConfig {
    let enabled = s.bool("enabled").unwrap_or(true);
    // An explicit relative path is taken from the config file's directory.
    let path = match s.str("path") {
        Some(p) => dir.join(p),
        None => state_dir(dir, env).join("x402-journal.db"),
    };
    let sync = match s.str("sync") {
        None | Some("full") => JournalSync::Full,
        Some("normal") => JournalSync::Normal,
        Some(other) => {
            s.issue("sync", format!("`{other}` is not \"full\" or \"normal\""));
            JournalSync::Full
        }
    };
    let retention = s
        .str("retention")
        .map(|r| match humantime::parse_duration(r) {
            Ok(d) if !d.is_zero() => d,
            _ => {
                s.issue("retention", format!("`{r}` is not a duration like \"90d\""));
                Duration::from_secs(90 * 86_400)
            }
        })
        .unwrap_or(Duration::from_secs(90 * 86_400));
    s.finish();
    JournalConfig {
        enabled,
        path,
        sync,
        retention,
    }
}

/// Per-network JSON-RPC URLs (`rpc = { "eip155:84532" = "${RPC_URL}" }`), secrets.
fn rpc_map(s: &Section<'_>, env: Env<'_>) -> Option<Vec<(Network, Secret)>> {
    let entries = s.str_map("rpc")?;
    let mut rpc = Vec::new();
    for (net, url) in entries {
        let key = format!("rpc.{net}");
        let Some(network) = Network::parse(net) else {
            s.issue(&key, format!("`{net}` is not an EVM network"));
            continue;
        };
        // The expanded URL may hold an API key: errors name the key, never the URL.
        match super::secret::expand_env(url, env) {
            Ok(u) => match parse_http_url(&u) {
                Ok(_) => rpc.push((network, Secret::new(u))),
                Err(_) => s.issue(&key, "is not an http(s) URL"),
            },
            Err(e) => s.issue(&key, e),
        }
    }
    Some(rpc)
}

fn chain(s: &Section<'_>, env: Env<'_>) -> ChainConfig {
    let rpc = rpc_map(s, env).unwrap_or_default();
    s.finish();
    ChainConfig { rpc }
}

// === [limits] ===

fn limits(s: &Section<'_>) -> LimitsConfig {
    let d = LimitsConfig::default();
    let size = |key: &'static str, default: u64| {
        s.str_or_int(key)
            .map_or(Ok(default), |v| limits::parse_size(&v))
            .unwrap_or_else(|e| {
                s.issue(key, e);
                default
            })
    };
    let max_request_body = size("max_request_body", d.max_request_body);
    let max_header_bytes = size("max_header_bytes", d.max_header_bytes as u64);
    if max_header_bytes < 4096 {
        s.issue(
            "max_header_bytes",
            "must be at least 4KiB (a payment header alone is about 1.5 KiB)",
        );
    }
    let positive = |key: &'static str, default: usize| match s.uint(key) {
        Some(0) => {
            s.issue(key, "must be at least 1");
            default
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => default,
    };
    let l = LimitsConfig {
        max_request_body,
        max_header_bytes: usize::try_from(max_header_bytes).unwrap_or(usize::MAX),
        max_pending_payments: positive("max_pending_payments", d.max_pending_payments),
        challenge_rate: rate(s, "challenge_rate", "100/s"),
        failed_payment_rate: rate(s, "failed_payment_rate", "60/m"),
        max_concurrent_facilitator_calls: positive(
            "max_concurrent_facilitator_calls",
            d.max_concurrent_facilitator_calls,
        ),
    };
    s.finish();
    l
}

/// `rpc` and `signer_keys` of an embedded facilitator.
fn embedded(s: &Section<'_>, env: Env<'_>) -> Option<EmbeddedConfig> {
    let rpc = rpc_map(s, env).unwrap_or_else(|| {
        s.issue("rpc", "missing: a JSON-RPC URL per network, e.g. { \"eip155:84532\" = \"http://127.0.0.1:8545\" }");
        Vec::new()
    });
    let mut signer_keys = Vec::new();
    match s.str_array("signer_keys") {
        None => s.issue(
            "signer_keys",
            "missing: [\"${FACILITATOR_KEY}\"], private keys from the environment",
        ),
        Some(keys) if keys.is_empty() => s.issue("signer_keys", "needs at least one key"),
        Some(keys) => {
            for (i, k) in keys.iter().enumerate() {
                let key = format!("signer_keys[{i}]");
                if !k.contains("${") {
                    s.issue(
                        &key,
                        "write keys as ${VAR}: keys come from the environment, never from the file",
                    );
                    continue;
                }
                match super::secret::expand_env(k, env) {
                    Ok(v) if is_private_key(&v) => signer_keys.push(Secret::new(v)),
                    Ok(_) => s.issue(
                        &key,
                        "the variable does not hold a private key (0x + 64 hex digits)",
                    ),
                    Err(e) => s.issue(&key, e),
                }
            }
        }
    }
    let rpc_timeout = s.duration("rpc_timeout").unwrap_or(Duration::from_secs(5));
    (!rpc.is_empty() && !signer_keys.is_empty()).then_some(EmbeddedConfig {
        rpc,
        signer_keys,
        rpc_timeout,
    })
}

fn is_private_key(v: &str) -> bool {
    let hex = v.strip_prefix("0x").unwrap_or(v);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

// === [verification], [logging] ===

fn verification(s: &Section<'_>) -> VerificationConfig {
    let mode = match s.str("mode") {
        None | Some("facilitator") => VerificationMode::Facilitator,
        Some("local") => VerificationMode::Local,
        Some(other) => {
            s.issue(
                "mode",
                format!("`{other}` is not \"facilitator\" or \"local\""),
            );
            VerificationMode::Facilitator
        }
    };
    let v = VerificationConfig {
        mode,
        cache_ttl: s.duration("cache_ttl").unwrap_or(Duration::from_secs(30)),
        cache_capacity: s.uint("cache_capacity").unwrap_or(10_000),
    };
    s.finish();
    v
}

fn logging(s: &Section<'_>) -> LoggingConfig {
    let format = match s.str("format") {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            s.issue("format", format!("`{other}` is not \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    let level = s.str("level").unwrap_or("info").to_owned();
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        s.issue(
            "level",
            format!("`{level}` is not a log filter like \"info\""),
        );
    }
    let access_log = s.bool("access_log").unwrap_or(true);
    s.finish();
    LoggingConfig {
        format,
        level,
        access_log,
    }
}

// === [payment] and routes ===

/// An asset as written, before a network gives it meaning.
#[derive(Clone)]
enum AssetSpec {
    Symbol(String),
    Address(Address),
    Custom(Asset),
}

/// Option fields at one level (`[payment]`, a route, or a `[[route.accept]]`).
#[derive(Clone, Default)]
struct Level {
    network: Option<Network>,
    asset: Option<AssetSpec>,
    pay_to: Option<Address>,
    max_timeout_seconds: Option<u64>,
    price: Option<Price>,
}

impl Level {
    /// Reads the option keys of a section; invalid values are reported and left unset.
    fn read(s: &Section<'_>) -> Level {
        let network = s.str("network").and_then(|n| {
            let net = Network::parse(n);
            if net.is_none() {
                s.issue(
                    "network",
                    format!("`{n}` is not an EVM network: use a v1 name like \"base-sepolia\" or a CAIP-2 id like \"eip155:84532\""),
                );
            }
            net
        });
        let pay_to = s.str("pay_to").and_then(|a| {
            let addr = protocol::parse_address(a);
            if addr.is_none() {
                s.issue(
                    "pay_to",
                    format!("`{a}` is not an address (0x + 40 hex digits)"),
                );
            } else if let Some(why) = addr.as_ref().and_then(placeholder::placeholder) {
                // Kept, so that the routes relying on it report nothing more.
                s.issue("pay_to", format!("`{a}`: {why}"));
            }
            addr
        });
        let max_timeout_seconds = s.uint("max_timeout_seconds").and_then(|t| {
            if (1..=86_400).contains(&t) {
                Some(t)
            } else {
                s.issue("max_timeout_seconds", "must be between 1 and 86400");
                None
            }
        });
        let price = s
            .str_or_int("price")
            .and_then(|p| match money::parse_price(&p) {
                Ok(p) => Some(p),
                Err(e) => {
                    s.issue("price", e);
                    None
                }
            });
        Level {
            network,
            asset: read_asset(s),
            pay_to,
            max_timeout_seconds,
            price,
        }
    }

    /// `self` with unset fields taken from `parent`.
    fn over(&self, parent: &Level) -> Level {
        Level {
            network: self.network.clone().or_else(|| parent.network.clone()),
            asset: self.asset.clone().or_else(|| parent.asset.clone()),
            pay_to: self.pay_to.or(parent.pay_to),
            max_timeout_seconds: self.max_timeout_seconds.or(parent.max_timeout_seconds),
            price: self.price.clone().or_else(|| parent.price.clone()),
        }
    }
}

fn read_asset(s: &Section<'_>) -> Option<AssetSpec> {
    match s.raw("asset")? {
        toml::Value::String(a) if a.starts_with("0x") => match protocol::parse_address(a) {
            Some(addr) => Some(AssetSpec::Address(addr)),
            None => {
                s.issue("asset", format!("`{a}` is not a token address"));
                None
            }
        },
        toml::Value::String(sym) => Some(AssetSpec::Symbol(sym.clone())),
        toml::Value::Table(t) => {
            let a = s.sub("asset", t);
            let address = a.str("address").and_then(|x| {
                let addr = protocol::parse_address(x);
                if addr.is_none() {
                    a.issue("address", format!("`{x}` is not a token address"));
                }
                addr
            });
            let decimals = a.uint("decimals").and_then(|d| {
                if d <= 36 {
                    Some(d as u8)
                } else {
                    a.issue("decimals", "must be at most 36");
                    None
                }
            });
            let name = a.str("name");
            let version = a.str("version");
            let symbol = a.str("symbol");
            for (key, present) in [
                ("address", a.has("address")),
                ("decimals", a.has("decimals")),
                ("name", a.has("name")),
                ("version", a.has("version")),
            ] {
                if !present {
                    a.issue(key, "missing: a custom asset needs address, decimals, and its EIP-712 name and version");
                }
            }
            a.finish();
            let (address, decimals, name, version) = (address?, decimals?, name?, version?);
            let symbol = symbol.unwrap_or(name).to_owned();
            Some(AssetSpec::Custom(Asset {
                usd_stable: name.to_ascii_uppercase().contains("USD")
                    || symbol.to_ascii_uppercase().contains("USD"),
                symbol,
                address,
                decimals,
                name: name.to_owned(),
                version: version.to_owned(),
            }))
        }
        other => {
            s.issue(
                "asset",
                format!(
                    "expected a symbol, an address or a table, found {}",
                    other.type_str()
                ),
            );
            None
        }
    }
}

struct Defaults {
    level: Level,
    settlement: SettlementMode,
}

impl Defaults {
    fn read(s: &Section<'_>) -> Defaults {
        let mut level = Level::read(s);
        if level.price.is_some() {
            s.issue("price", "prices belong to routes, not to [payment]");
            level.price = None;
        }
        let settlement = settlement(s).unwrap_or(SettlementMode::AfterResponse);
        s.finish();
        Defaults { level, settlement }
    }
}

fn settlement(s: &Section<'_>) -> Option<SettlementMode> {
    match s.str("settlement")? {
        "after_response" => Some(SettlementMode::AfterResponse),
        "before_upstream" => Some(SettlementMode::BeforeUpstream),
        other => {
            s.issue(
                "settlement",
                format!("`{other}` is not \"after_response\" or \"before_upstream\""),
            );
            None
        }
    }
}

fn route(index: usize, s: &Section<'_>, defaults: &Defaults) -> Option<RouteRule> {
    let path = s.str("path");
    if path.is_none() && !s.has("path") {
        s.issue(
            "path",
            "missing: the request path this price applies to, e.g. \"/weather/*\"",
        );
    }
    let pattern = path.and_then(|p| match parse_pattern(p) {
        Ok(pat) => Some(pat),
        Err(e) => {
            s.issue("path", e);
            None
        }
    });
    let methods = s.str_array("methods").map(|ms| {
        ms.iter()
            .filter_map(|m| {
                let up = m.to_ascii_uppercase();
                match Method::from_bytes(up.as_bytes()) {
                    Ok(method) if !up.is_empty() => Some(method),
                    _ => {
                        s.issue("methods", format!("`{m}` is not an HTTP method"));
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let description = s.str("description").unwrap_or("").to_owned();
    let mime_type = s.str("mime_type").unwrap_or("").to_owned();
    let resource = s.str("resource").and_then(|u| match parse_http_url(u) {
        Ok(_) => Some(u.to_owned()),
        Err(e) => {
            s.issue("resource", e);
            None
        }
    });
    let settlement = settlement(s).unwrap_or(defaults.settlement);
    let websocket = s.bool("websocket").unwrap_or(false);
    let upstream = match s.str("upstream") {
        None | Some("default") => None,
        Some(name) => Some(name.to_owned()),
    };
    let own = Level::read(s);
    let accepts = s.tables("accept");
    let route_level = own.over(&defaults.level);
    let options = if accepts.is_empty() {
        match &own.price {
            None => {
                if !s.has("accept") {
                    s.issue("price", "missing: a price like \"$0.001\", or \"free\"");
                }
                Vec::new()
            }
            Some(Price::Free) => Vec::new(),
            Some(_) => option(s, &route_level).into_iter().collect(),
        }
    } else {
        if matches!(own.price, Some(Price::Free)) {
            s.issue(
                "price",
                "a free route cannot also list [[route.accept]] options",
            );
        }
        accepts
            .iter()
            .filter_map(|a| {
                let level = Level::read(a).over(&route_level);
                let opt = if matches!(level.price, Some(Price::Free)) {
                    a.issue("price", "an accepted payment option cannot be free");
                    None
                } else if level.price.is_none() {
                    a.issue("price", "missing: set it here or on the route");
                    None
                } else {
                    option(a, &level)
                };
                a.finish();
                opt
            })
            .collect()
    };
    s.finish();
    Some(RouteRule {
        index,
        path: path?.to_owned(),
        pattern: pattern?,
        methods,
        description,
        mime_type,
        resource,
        settlement,
        options,
        websocket,
        upstream,
    })
}

/// Resolves one payment option; reports what is missing at `s`.
fn option(s: &Section<'_>, level: &Level) -> Option<PaymentOption> {
    let network = level.network.clone().or_else(|| {
        s.issue(
            "network",
            "missing: set it here, on the route, or in [payment]",
        );
        None
    });
    let pay_to = level.pay_to.or_else(|| {
        s.issue(
            "pay_to",
            "missing: the address that receives payments; set it here or in [payment]",
        );
        None
    });
    let spec = level
        .asset
        .clone()
        .unwrap_or(AssetSpec::Symbol("USDC".into()));
    let network = network?;
    if let Some(i) = pay_to.and_then(|a| placeholder::public_dev_account(&a, &network)) {
        s.issue(
            "pay_to",
            format!("{} is anvil/hardhat development account #{i}, whose private key is public: on {network} anyone could take the payments; use your own address", pay_to.map(|a| a.to_checksum(None)).unwrap_or_default()),
        );
        return None;
    }
    let chain = network.chain_id();
    let asset = match spec {
        AssetSpec::Symbol(sym) => assets::by_symbol(chain, &sym).or_else(|| {
            let known = assets::symbols_on(chain);
            s.issue(
                "asset",
                if known.is_empty() {
                    format!("no built-in assets on {network}: give asset = {{ address, decimals, name, version }}")
                } else {
                    format!("`{sym}` is not a built-in asset on {network} (known: {})", known.join(", "))
                },
            );
            None
        }),
        AssetSpec::Address(addr) => assets::by_address(chain, addr).or_else(|| {
            s.issue(
                "asset",
                format!("{addr} is not a built-in asset on {network}: give asset = {{ address, decimals, name, version }}"),
            );
            None
        }),
        AssetSpec::Custom(a) => Some(a),
    }?;
    let price = level.price.as_ref()?;
    let amount = match money::resolve(price, &asset) {
        Ok(a) => a,
        Err(e) => {
            s.issue("price", e);
            return None;
        }
    };
    Some(PaymentOption {
        domain_separator: evm::domain_separator(&asset.name, &asset.version, chain, asset.address),
        network,
        asset,
        amount,
        pay_to: pay_to?,
        max_timeout_seconds: level
            .max_timeout_seconds
            .unwrap_or(DEFAULT_MAX_TIMEOUT_SECONDS),
    })
}

/// Compiles a route `path`.
pub fn parse_pattern(p: &str) -> Result<RoutePattern, String> {
    if !p.starts_with('/') {
        return Err(format!("`{p}` must start with `/`"));
    }
    if let Some(c) = p
        .chars()
        .find(|c| matches!(c, '?' | '#' | '%' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "`{p}` contains `{}`: write the decoded path without query or escapes",
            c.escape_default()
        ));
    }
    let trimmed = p.trim_end_matches('/');
    let mut segments = Vec::new();
    let mut rest = false;
    let parts: Vec<&str> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed[1..].split('/').collect()
    };
    for (i, seg) in parts.iter().enumerate() {
        match *seg {
            "" => return Err(format!("`{p}` has an empty segment (`//`)")),
            "." | ".." => return Err(format!("`{p}` has a `{seg}` segment")),
            "**" if i + 1 == parts.len() => rest = true,
            "**" => return Err(format!("`{p}`: `**` is only allowed as the last segment")),
            "*" => segments.push(Segment::Star),
            s if s.contains('*') => {
                return Err(format!(
                    "`{p}`: `*` must be a whole segment (`/a/*/b`), not part of `{s}`"
                ))
            }
            s => segments.push(Segment::Literal(s.to_lowercase())),
        }
    }
    Ok(RoutePattern { segments, rest })
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
