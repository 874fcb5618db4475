//! The command line: `run`, `check`, `facilitator`, `pay`, `journal`, `sample-api`.

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
    /// Reads the facilitator's /supported first (or connects the embedded facilitator to its
    /// chains) and refuses to start if a route offers a payment it cannot handle. Reloads the
    /// configuration on SIGHUP. Stops gracefully on SIGTERM, at once on SIGINT; SIGQUIT hands
    /// the listening sockets to a process started with --upgrade.
    Run {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Listen on this address instead of [server] listen (e.g. 127.0.0.1:8402).
        #[arg(long)]
        listen: Option<String>,
        /// Take the listening sockets from the running instance instead of binding them: start
        /// this, then send the running instance SIGQUIT (it hands them over through
        /// [server] upgrade_sock and drains).
        #[arg(long)]
        upgrade: bool,
    },
    /// Validate a config file and print its route table with prices in dollars and atomic
    /// units. Exits 0 when valid, 2 listing every problem with its TOML key path otherwise.
    Check {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
    },
    /// Serve the embedded facilitator over HTTP (GET /supported, POST /verify, POST /settle;
    /// x402 v1 and v2 request shapes) so that other x402 servers can use it.
    ///
    /// Uses [facilitator] of the config file, which must set embedded = true, rpc and
    /// signer_keys; listens on [facilitator] listen (default 127.0.0.1:8403).
    Facilitator {
        /// The configuration file.
        #[arg(long, short, default_value = "gateway.toml")]
        config: PathBuf,
        /// Listen on this address instead of [facilitator] listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// A curl for x402: request URL; on a 402 sign an EIP-3009 USDC authorization for the first
    /// payable option, retry, and print the response, the decoded receipt and the transaction.
    ///
    /// The response body goes to stdout, everything else to stderr. Exits 0 when the final
    /// answer is 2xx.
    Pay(crate::pay_cmd::PayArgs),
    /// Read the payment journal (while the gateway runs), reconcile open payments against the
    /// chain, report revenue: `list`, `show KEY`, `reconcile`, `report`.
    Journal(crate::journal_cmd::JournalArgs),
    /// Serve a small sample JSON API (GET /weather/{city}, GET /health) that knows nothing of
    /// payments: the upstream of the demo.
    SampleApi {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
    },
}
