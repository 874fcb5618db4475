//! The command line: `run`, `check`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// x402-gateway: an x402 paywall reverse proxy for any HTTP API.
#[derive(Parser, Debug)]
#[command(name = "x402-gateway", version, about, long_about = None)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the gateway: serve the routes of the config file in front of its upstream.
    ///
    /// Reads the facilitator's /supported first and refuses to start if a route offers a
    /// payment it cannot handle. Stops gracefully on SIGTERM, at once on SIGINT.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Listen on this address instead of [server] listen (e.g. 127.0.0.1:8402).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Validate a config file and print its route table with prices in dollars and atomic
    /// units. Exits 0 when valid, 2 listing every problem with its TOML key path otherwise.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
}
