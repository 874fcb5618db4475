//! `[journal]`, `[chain]`, `[limits]`, `[verification]` and `[logging]`: how payments are
//! recorded, read back, bounded, verified and logged.

use super::*;

/// The journal's default directory: systemd's `$STATE_DIRECTORY` (`StateDirectory=`; the first
/// of several), which the container image sets too; else the config file's directory.
pub(super) fn state_dir(dir: &Path, env: Env<'_>) -> PathBuf {
    env("STATE_DIRECTORY")
        .and_then(|d| d.split(':').next().map(PathBuf::from))
        .filter(|d| d.is_absolute())
        .unwrap_or_else(|| dir.to_owned())
}

pub(super) fn journal(s: &Section<'_>, dir: &Path, env: Env<'_>) -> JournalConfig {
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
pub(super) fn rpc_map(s: &Section<'_>, env: Env<'_>) -> Option<Vec<(Network, Secret)>> {
    let entries = s.str_map("rpc")?;
    let mut rpc = Vec::new();
    for (net, url) in entries {
        let key = format!("rpc.{net}");
        let Some(network) = Network::parse(net) else {
            s.issue(&key, format!("`{net}` is not an EVM network"));
            continue;
        };
        // The expanded URL may hold an API key: errors name the key, never the URL.
        match crate::config::secret::expand_env(url, env) {
            Ok(u) if crate::config::secret::is_unset(&u) => rpc.push((network, Secret::new(u))),
            Ok(u) => match parse_http_url(&u) {
                Ok(_) => rpc.push((network, Secret::new(u))),
                Err(_) => s.issue(&key, "is not an http(s) URL"),
            },
            Err(e) => s.issue(&key, e),
        }
    }
    Some(rpc)
}

pub(super) fn chain(s: &Section<'_>, env: Env<'_>) -> ChainConfig {
    let rpc = rpc_map(s, env).unwrap_or_default();
    s.finish();
    ChainConfig { rpc }
}

// === [limits] ===

pub(super) fn limits(s: &Section<'_>) -> LimitsConfig {
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
        max_connections: positive("max_connections", d.max_connections),
        header_timeout: match s.duration("header_timeout") {
            Some(t) if t.is_zero() => {
                s.issue("header_timeout", "must be longer than zero");
                d.header_timeout
            }
            Some(t) => t,
            None => d.header_timeout,
        },
    };
    s.finish();
    l
}

// === [verification], [logging] ===

pub(super) fn verification(s: &Section<'_>) -> VerificationConfig {
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

pub(super) fn logging(s: &Section<'_>) -> LoggingConfig {
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
    let otlp_endpoint = s.str("otlp_endpoint").map(str::to_owned);
    if let Some(e) = &otlp_endpoint {
        if !cfg!(feature = "otlp") {
            s.issue(
                "otlp_endpoint",
                "this build has no OTLP export: build with `cargo build --features otlp`",
            );
        } else if let Err(why) = parse_http_url(e) {
            s.issue("otlp_endpoint", why);
        }
    }
    let otlp_service_name = s
        .str("otlp_service_name")
        .unwrap_or("x402-gateway")
        .to_owned();
    s.finish();
    LoggingConfig {
        format,
        level,
        access_log,
        otlp_endpoint,
        otlp_service_name,
    }
}
