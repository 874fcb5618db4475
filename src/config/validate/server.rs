//! `[server]`, `[admin]` and `[auth]`: the listeners (addresses, TLS, h2c, timeouts,
//! trusted proxies, runtime files).

use super::*;

// === [server] ===

pub(super) fn server(s: &Section<'_>, dir: &Path, env: Env<'_>) -> Option<ServerConfig> {
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
pub(super) fn listener_tls(s: &Section<'_>, dir: &Path) -> Option<ListenerTls> {
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

// === [admin], [auth] ===

pub(super) fn admin(s: &Section<'_>) -> AdminConfig {
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

pub(super) fn auth(s: &Section<'_>) -> AuthConfig {
    let mut c = AuthConfig {
        listen: s.str("listen").map(str::to_owned),
        ..AuthConfig::default()
    };
    if let Some(t) = s.duration("timeout") {
        c.timeout = t;
    }
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
