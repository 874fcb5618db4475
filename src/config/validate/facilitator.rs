//! `[facilitator]`: a remote facilitator, the embedded one (`embedded`, `rpc`, `signer_keys`,
//! its batching keys) and the standalone facilitator server's policy.

use super::*;
use crate::config::secret::is_unset;

// === [facilitator] ===

pub(super) fn facilitator(s: &Section<'_>, env: Env<'_>) -> Option<FacilitatorConfig> {
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
        match crate::config::secret::expand_env(value, env) {
            Ok(v) if http::HeaderValue::from_str(&v).is_ok() || is_unset(&v) => {
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
        for key in [
            "rpc",
            "signer_keys",
            "rpc_timeout",
            "batch_max",
            "batch_window",
            "sync_batch_window",
            "batch_contract",
        ] {
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
pub(super) fn facilitator_server(s: &Section<'_>, env: Env<'_>) -> FacilitatorServerConfig {
    let token = s.str("server_token").and_then(|t| {
        if !t.contains("${") {
            s.issue(
                "server_token",
                "write the token as ${VAR}: secrets come from the environment, never from the file",
            );
            return None;
        }
        match crate::config::secret::expand_env(t, env) {
            Ok(v) if (v.len() >= 16 && http::HeaderValue::from_str(&v).is_ok()) || is_unset(&v) => {
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
pub(super) fn check_facilitator_server(s: &Section<'_>, f: &FacilitatorConfig) {
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

/// `rpc` and `signer_keys` of an embedded facilitator.
pub(super) fn embedded(s: &Section<'_>, env: Env<'_>) -> Option<EmbeddedConfig> {
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
                match crate::config::secret::expand_env(k, env) {
                    Ok(v) if is_private_key(&v) || is_unset(&v) => signer_keys.push(Secret::new(v)),
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
    let batch = batch(s);
    (!rpc.is_empty() && !signer_keys.is_empty()).then_some(EmbeddedConfig {
        rpc,
        signer_keys,
        rpc_timeout,
        batch,
    })
}

/// Longest `batch_window`: the deferred queue holds payments no longer than this.
const LONGEST_BATCH_WINDOW: Duration = Duration::from_secs(60);
/// Longest `sync_batch_window`: a paying request waits for it.
const LONGEST_SYNC_BATCH_WINDOW: Duration = Duration::from_secs(1);

/// `batch_max`, `batch_window`, `sync_batch_window`, `batch_contract` of an embedded
/// facilitator.
pub(super) fn batch(s: &Section<'_>) -> BatchConfig {
    let d = BatchConfig::default();
    let max = match s.uint("batch_max") {
        None => d.max,
        Some(n) if (1..=BatchConfig::LARGEST_MAX as u64).contains(&n) => n as usize,
        Some(n) => {
            s.issue(
                "batch_max",
                format!(
                    "{n} is out of range: 1 (one transaction per payment) to {}",
                    BatchConfig::LARGEST_MAX
                ),
            );
            d.max
        }
    };
    let window = match s.duration("batch_window") {
        Some(w) if w > LONGEST_BATCH_WINDOW => {
            s.issue(
                "batch_window",
                format!("{w:?} is longer than {LONGEST_BATCH_WINDOW:?}: deferred payments would wait that long before settling"),
            );
            d.window
        }
        Some(w) => w,
        None => d.window,
    };
    let sync_window = match s.duration_or_zero("sync_batch_window") {
        Some(w) if w > LONGEST_SYNC_BATCH_WINDOW => {
            s.issue(
                "sync_batch_window",
                format!("{w:?} is longer than {LONGEST_SYNC_BATCH_WINDOW:?}: every paying request waits for it (try \"20ms\", or \"0ms\" for off)"),
            );
            d.sync_window
        }
        Some(w) => w,
        None => d.sync_window,
    };
    let contract = match s.str("batch_contract") {
        None => d.contract,
        Some(a) => protocol::parse_address(a).unwrap_or_else(|| {
            s.issue(
                "batch_contract",
                format!("`{a}` is not an address (0x + 40 hex digits)"),
            );
            d.contract
        }),
    };
    BatchConfig {
        max,
        window,
        sync_window,
        contract,
    }
}

pub(super) fn is_private_key(v: &str) -> bool {
    let hex = v.strip_prefix("0x").unwrap_or(v);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}
