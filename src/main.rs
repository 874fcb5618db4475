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
use x402_gateway::facilitator::server;
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

fn check(path: &std::path::Path) -> ExitCode {
    let c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    outln!("{}: OK", path.display());
    {
        use std::io::Write as _;
        let summary = x402_gateway::config::summary::summary(&c);
        let _ = std::io::stdout().lock().write_all(summary.as_bytes());
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
