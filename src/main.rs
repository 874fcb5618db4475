//! The `x402-gateway` binary: parse the command line, load the config, run.

/// mimalloc: the gateway allocates small, short-lived buffers on every request, where it beats
/// the system allocator (measured in docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `println!` that ignores a closed stdout (`x402-gateway check | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod cli;
mod journal_cmd;
mod pay_cmd;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use x402_gateway::config::{runtime_dir, Config, ConfigError};
use x402_gateway::facilitator::{redacted_url, server};
use x402_gateway::verify::Facilitator;
use x402_gateway::{
    build_gateway, build_server, connect_facilitator, fetch_supported, new_server, telemetry,
};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Check { config } => check(&config),
        cli::Command::Run {
            config,
            listen,
            upgrade,
        } => run(&config, listen, upgrade),
        cli::Command::Facilitator { config, listen } => facilitator(&config, listen),
        cli::Command::Journal(args) => {
            let c = match journal_cmd::load(&args.config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            match runtime().map(|rt| rt.block_on(journal_cmd::run(args, &c))) {
                Ok(Ok(true)) => ExitCode::SUCCESS,
                Ok(Ok(false)) => ExitCode::FAILURE,
                Ok(Err(e)) | Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        cli::Command::Pay(args) => match runtime().map(|rt| rt.block_on(pay_cmd::run(args))) {
            Ok(Ok(true)) => ExitCode::SUCCESS,
            Ok(Ok(false)) => ExitCode::FAILURE,
            Ok(Err(e)) | Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        cli::Command::SampleApi { listen } => {
            let port = listen.rsplit(':').next().unwrap_or("0");
            let dir = runtime_dir(&|k| std::env::var(k).ok());
            let server = new_server(
                1,
                &dir.join(format!("sample-api-{port}.pid")),
                &dir.join(format!("sample-api-{port}.sock")),
            );
            let mut server = match server {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            x402_gateway::sample_api::add_sample_api_service(&mut server, &listen);
            server.run_forever()
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("error: {e}");
        if let ConfigError::Read { source, .. } = &e {
            eprintln!("  caused by: {source}");
        }
        ExitCode::from(2)
    })
}

/// One line about an upstream for `check`: where it goes, TLS, HTTP/2, pool and health
/// check, and the names of injected headers (their values are secrets: never printed).
fn describe_upstream(u: &x402_gateway::config::UpstreamConfig) -> String {
    use x402_gateway::config::{HashKey, Selection};
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

fn check(path: &std::path::Path) -> ExitCode {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    outln!("{}: OK", path.display());
    let s = &c.server;
    outln!(
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
    outln!("  upstream     {}", describe_upstream(&c.upstream));
    for (name, u) in &c.upstreams {
        outln!("  upstream {name}: {}", describe_upstream(u));
    }
    match (&c.facilitator.url, &c.facilitator.embedded) {
        (Some(url), _) => outln!("  facilitator  {url}"),
        (None, Some(e)) => outln!(
            "  facilitator  embedded: {} signer key(s); {}; rpc timeout {:?}",
            e.signer_keys.len(),
            e.rpc
                .iter()
                .map(|(n, u)| format!("{n} via {}", redacted_url(u.expose())))
                .collect::<Vec<_>>()
                .join(", "),
            e.rpc_timeout
        ),
        (None, None) => {}
    }
    if let Some(e) = &c.facilitator.embedded {
        let b = &e.batch;
        outln!(
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
        outln!(
            "  facilitator server (x402-gateway facilitator): {} on {}; pays to {}; min value {:?}; rate {}",
            if f.token.is_some() { "bearer token" } else { "no token (loopback only)" },
            c.facilitator.listen,
            f.pay_to.iter().map(|a| a.to_checksum(None)).collect::<Vec<_>>().join(", "),
            f.min_value,
            f.rate.map_or("off".to_owned(), |r| r.to_string())
        );
    }
    outln!("  verification {}", c.verification.mode.as_str());
    outln!(
        "  methods      unlisted methods on priced paths: {}",
        s.unlisted_methods.as_str()
    );
    let l = &c.limits;
    outln!(
        "  limits       body {} B on priced routes; headers {} B; {} pending payments; challenges {}/client; failed payments {}/client; {} facilitator calls in flight",
        l.max_request_body,
        l.max_header_bytes,
        l.max_pending_payments,
        l.challenge_rate.map_or("off".to_owned(), |r| r.to_string()),
        l.failed_payment_rate.map_or("off".to_owned(), |r| r.to_string()),
        l.max_concurrent_facilitator_calls
    );
    outln!(
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
        "  admin        {}",
        c.admin.listen.as_deref().map_or_else(
            || "off".to_owned(),
            |l| format!("{l}: /metrics, /livez, /readyz")
        )
    );
    outln!(
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
        "  access log   {}",
        if c.logging.access_log {
            "one line per request (target x402_gateway::access)"
        } else {
            "off"
        }
    );
    if let Some(e) = &c.logging.otlp_endpoint {
        outln!(
            "  spans        OTLP/HTTP to {e} as {}",
            c.logging.otlp_service_name
        );
    }
    outln!(
        "  reload       on SIGHUP{}",
        if s.watch_config {
            " and when the file changes (watch_config)"
        } else {
            ""
        }
    );
    outln!(
        "  runtime      pid {}; upgrade socket {}",
        s.pid_file.display(),
        s.upgrade_sock.display()
    );
    let j = &c.journal;
    if j.enabled {
        outln!(
            "  journal      {} (sync {})",
            j.path.display(),
            j.sync.as_str()
        );
    } else {
        outln!("  journal      off (unknown outcomes kept in memory only)");
    }
    if c.routes
        .iter()
        .any(|r| r.settlement == x402_gateway::config::SettlementMode::Deferred)
    {
        let d = &c.deferred;
        let usd = |m: u128| {
            format!(
                "${}",
                x402_gateway::config::money::format_units(alloy::primitives::U256::from(m), 6)
            )
        };
        outln!(
            "  deferred     at most {} per payer and {} in all unsettled; settlement starts within {:?}{}",
            usd(d.max_per_payer),
            usd(d.max_total),
            d.max_delay,
            d.settle_first_above
                .map(|t| format!("; above {} settled first", usd(t)))
                .unwrap_or_default()
        );
    }
    outln!("  routes (first match wins; unmatched paths pass through free):");
    for r in &c.routes {
        let methods = r.methods_label();
        let to = r
            .upstream
            .as_ref()
            .map(|u| format!(" -> upstream {u}"))
            .unwrap_or_default();
        if r.is_free() {
            outln!("  [{}] {methods:<8} {:<24} free{to}", r.index, r.path);
            continue;
        }
        outln!(
            "  [{}] {methods:<8} {:<24} settle {}{}{to}",
            r.index,
            r.path,
            r.settlement.as_str(),
            match r.settle_first_above {
                Some(t) if r.settlement == x402_gateway::config::SettlementMode::Deferred =>
                    format!(
                        " (settled first above ${})",
                        x402_gateway::config::money::format_units(
                            alloy::primitives::U256::from(t),
                            6
                        )
                    ),
                _ => String::new(),
            }
        );
        for o in &r.options {
            outln!(
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
    ExitCode::SUCCESS
}

/// Connects the facilitator and reads its /supported, on a short-lived runtime (Pingora owns
/// the serving runtimes).
fn start_facilitator(
    c: &Config,
) -> Result<
    (
        Arc<dyn Facilitator>,
        x402_gateway::protocol::SupportedResponse,
    ),
    String,
> {
    runtime()?.block_on(async {
        let f = connect_facilitator(c).await.map_err(|e| error_chain(&e))?;
        let s = fetch_supported(f.as_ref(), 6).await.map_err(|e| {
            format!(
                "cannot read the facilitator's /supported: {}",
                error_chain(&e)
            )
        })?;
        Ok((f, s))
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

fn run(path: &std::path::Path, listen: Option<String>, upgrade: bool) -> ExitCode {
    let stamp = x402_gateway::reload::stamp(path);
    let mut c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let as_read = c.clone();
    if let Some(l) = listen {
        c.server.listen = l;
    }
    telemetry::init(&c.logging);
    let (client, supported) = match start_facilitator(&c) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let gateway = match build_gateway(&c, client.clone(), &supported) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    // Reconcile what the journal left open before serving.
    let payments = gateway.payments().clone();
    let recovery = async {
        if upgrade {
            // The running instance keeps settling and delivering its payments until it has
            // drained: they are reconciled after it exits.
            let old = std::fs::read_to_string(&c.server.pid_file)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            payments
                .recover_for_handover(
                    old,
                    c.server.drain_timeout + std::time::Duration::from_secs(10),
                )
                .await
        } else {
            payments.recover().await
        }
    };
    match runtime().map(|rt| rt.block_on(recovery)) {
        Ok(Ok(r)) => tracing::info!(
            settled = r.settled,
            failed = r.failed,
            unknown = r.unknown,
            abandoned = r.abandoned,
            guarded = r.guarded,
            deferred_owed = r.owed,
            deferred_settled = r.settled_owed,
            "journal recovered"
        ),
        Ok(Err(e)) => {
            // Serve free routes; priced ones answer 503 until the journal can be recovered
            // (the maintenance service tries every second).
            tracing::error!(error = %e, "cannot recover the payment journal yet: priced routes answer 503 until it is");
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let source = x402_gateway::reload::Source {
        path: path.to_owned(),
        as_read,
        supported,
        upgrade,
        stamp,
    };
    let server = match build_server(&c, source, gateway, client) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %c.server.listen, upstream = %c.upstream.url, routes = c.routes.len(), "x402-gateway running");
    server.run_forever()
}

fn facilitator(path: &std::path::Path, listen: Option<String>) -> ExitCode {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if c.facilitator.embedded.is_none() {
        eprintln!("error: [facilitator] must set embedded = true (with rpc and signer_keys) to serve a facilitator");
        return ExitCode::from(2);
    }
    telemetry::init(&c.logging);
    let listen = listen.unwrap_or_else(|| c.facilitator.listen.clone());
    let (f, supported) = match start_facilitator(&c) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listen.rsplit(':').next().unwrap_or("0");
    let dir = runtime_dir(&|k| std::env::var(k).ok());
    let mut server = match new_server(
        c.server.threads,
        &dir.join(format!("facilitator-{port}.pid")),
        &dir.join(format!("facilitator-{port}.sock")),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let open = listen
        .parse::<std::net::SocketAddr>()
        .map_or(true, |a| !a.ip().is_loopback());
    if open && c.facilitator.server.token.is_none() {
        eprintln!("error: [facilitator] server_token is required to listen on {listen} (beyond loopback): anyone who reaches it could make your signer keys pay gas");
        return ExitCode::from(2);
    }
    server::add_facilitator_service(
        &mut server,
        f,
        server::ServerPolicy::new(&c.facilitator.server),
        &listen,
    );
    tracing::info!(%listen, kinds = supported.kinds.len(), "x402 facilitator running");
    server.run_forever()
}
