//! `[upstream]` and `[upstreams.NAME]`: where requests go (URLs, TLS, pools, health checks,
//! injected headers).

use super::*;

// === [upstream] ===

pub(super) fn upstream(s: &Section<'_>, dir: &Path, env: Env<'_>) -> Option<UpstreamConfig> {
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
pub(super) fn origin_url(s: &Section<'_>, key: &str, url: &str) -> Option<HttpUrl> {
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
pub(super) fn backend(s: &Section<'_>) -> Option<BackendConfig> {
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
pub(super) fn selection(s: &Section<'_>) -> Selection {
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
pub(super) fn health_check(s: &Section<'_>) -> HealthCheckConfig {
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
pub(super) fn upstream_headers(s: &Section<'_>, env: Env<'_>) -> Vec<(HeaderName, Secret)> {
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
        match crate::config::secret::expand_env(value, env) {
            Ok(v)
                if http::HeaderValue::from_str(&v).is_ok()
                    || crate::config::secret::is_unset(&v) =>
            {
                out.push((hname, Secret::new(v)))
            }
            Ok(_) => s.issue(&key, "the expanded value is not a valid header value"),
            Err(e) => s.issue(&key, e),
        }
    }
    out
}

/// `[upstreams.NAME]`: named upstreams with the keys of `[upstream]`.
pub(super) fn named_upstreams(
    s: &Section<'_>,
    dir: &Path,
    env: Env<'_>,
) -> Vec<(String, UpstreamConfig)> {
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
pub(super) fn read_ca(path: &Path) -> Result<Vec<Vec<u8>>, String> {
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
