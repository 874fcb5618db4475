//! # x402-gateway
//!
//! A reverse proxy on Pingora that puts an [x402](https://x402.org) paywall in front of any
//! unmodified HTTP API. Requests are priced by one TOML file (`gateway.toml`); unpaid requests
//! to priced routes get a `402 Payment Required` challenge in both protocol versions at once;
//! paid requests are checked locally (signature, amount, time window, replay), verified by a
//! facilitator, forwarded, settled and answered with a receipt header.
//!
//! # Layout
//! - [`clock`]: the one injectable clock.
//! - [`protocol`]: x402 wire types and codecs, v1 and v2.
//! - [`config`]: `gateway.toml` → validated [`config::Config`] (every problem reported at once).
//! - [`scheme`]: payment schemes (`exact` on EVM: EIP-3009 typed data, local checks, log proofs).
//! - [`pricing`]: route lookup (every reading of a path and method, fail closed) and prepared
//!   402 challenges.
//! - [`flow`]: one payment's life as a state machine, free of I/O.
//! - [`verify`]: the local fast path, the facilitator client and verdict cache.
//! - [`settle`]: reading `/settle` answers; receipts.
//! - [`journal`]: the durable payment journal (SQLite) and reading outcomes from the chain.
//! - [`facilitator`]: the embedded facilitator (settles on chain over JSON-RPC) and the
//!   standalone facilitator server.
//! - [`ledger`]: the shared payment state (claims, redeemable payments, exposure, owed queue).
//! - [`error`]: the one mapping from errors to HTTP answers ([`error::rescue`]).
//! - [`payments`]: every payment decision, driving each payment's flow; no Pingora types.
//! - [`proxy`]: the thin Pingora `ProxyHttp` adapter (its docs hold the phase table).
//! - [`auth`]: forward-auth mode, the same decisions for nginx, Traefik, Caddy or Envoy.
//! - [`admin`]: metrics and health probes; [`reload`]: hot reload of the price table.
//! - [`server`]: the assembly of all of the above into a Pingora server.
//! - [`limiter`], [`metrics`], [`telemetry`] (and `otlp`, cargo feature `otlp`), [`notify`],
//!   [`edge`], [`probe`]: infrastructure (rate limits, Prometheus, logs and spans, systemd,
//!   TLS, health-probe answers).
//! - [`client`]: signing payments (tests and command-line payers); [`sample_api`]: the demo's
//!   upstream.
//!
//! # Layers
//! Each module imports only modules of its own layer or below, and no two modules import each
//! other, even through others (`tests/layers.rs` checks both on every test run):
//!
//! | layer | modules |
//! |---|---|
//! | 0 foundation | clock, traceparent, probe |
//! | 1 wire | protocol |
//! | 2 configuration | config |
//! | 3 infrastructure | limiter, metrics, telemetry, otlp, notify, edge, conn |
//! | 4 rules | scheme, pricing, flow |
//! | 5 verification and settlement | verify, settle, journal, facilitator |
//! | 6 shared state | ledger, error |
//! | 7 decisions | payments |
//! | 8 front doors | proxy, auth, admin, reload |
//! | 9 composition | server, client, sample_api, fuzzing |

pub mod admin;
pub mod auth;
pub mod clock;
pub mod config;
pub mod conn;
pub mod edge;
pub mod error;
pub mod facilitator;
pub mod flow;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod ledger;
pub mod limiter;
pub mod metrics;
pub mod notify;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod payments;
pub mod pricing;
pub mod probe;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod sample_api;
pub mod scheme;
pub mod server;
pub mod settle;
pub mod telemetry;
pub mod traceparent;
pub mod verify;

pub use scheme::exact::client;
pub use server::{
    build_gateway, build_server, connect_facilitator, ensure_private_dir, fetch_supported, kinds,
    new_server, new_server_draining, price_table, reconciler, unsupported_options, StartupError,
};
