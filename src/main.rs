//! The `x402-gateway` binary: parse the command line, load the config, run.

mod cli;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use x402_gateway::config::{Config, ConfigError};
use x402_gateway::verify::{Facilitator, FacilitatorClient};
use x402_gateway::{build_gateway, build_server, fetch_supported, telemetry};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Check { config } => check(&config),
        cli::Command::Run { config, listen } => run(&config, listen),
    }
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
    println!("{}: OK", path.display());
    println!("  listen       {}", c.server.listen);
    println!("  upstream     {}", c.upstream.url);
    println!("  facilitator  {}", c.facilitator.url);
    println!("  routes (first match wins; unmatched paths pass through free):");
    for r in &c.routes {
        let methods = r.methods.as_ref().map_or("*".to_owned(), |m| {
            m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
        });
        if r.is_free() {
            println!("  [{}] {methods:<8} {:<24} free", r.index, r.path);
            continue;
        }
        println!(
            "  [{}] {methods:<8} {:<24} settle {}",
            r.index,
            r.path,
            r.settlement.as_str()
        );
        for o in &r.options {
            println!(
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

fn run(path: &std::path::Path, listen: Option<String>) -> ExitCode {
    let mut c = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(l) = listen {
        c.server.listen = l;
    }
    telemetry::init(&c.logging);
    let client: Arc<dyn Facilitator> = match FacilitatorClient::new(&c.facilitator) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("error: cannot build the facilitator client: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A short-lived runtime for start-up IO; Pingora owns the serving runtimes.
    let supported = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(fetch_supported(client.as_ref(), 6))
                .map_err(|e| e.to_string())
        }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot read {}/supported: {e}", c.facilitator.url);
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
    let server = match build_server(&c, gateway, client) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(listen = %c.server.listen, upstream = %c.upstream.url, routes = c.routes.len(), "x402-gateway running");
    server.run_forever()
}
