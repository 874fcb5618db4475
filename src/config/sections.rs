//! The `[upstream]` and `[facilitator]` tables as the runtime uses them (validated from the
//! file schema by `validate`): where requests go, and who verifies and settles payments.

use std::time::Duration;

use alloy::primitives::Address;
use http::HeaderName;

use super::{money, HostHeader, Rate, Secret};
use crate::protocol::Network;

/// `[upstream]`: where paid and free requests go.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// The URL as written.
    pub url: String,
    /// `host:port` as written (for logs and the default `Host`).
    pub address: String,
    /// The host: a name (resolved at run time, again every `resolve_interval`) or an IP.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Whether to use TLS.
    pub tls: bool,
    /// TLS server name: `tls_server_name`, or the host.
    pub sni: String,
    /// `tls_server_name` as written (a pool's backends default to their own hosts).
    pub tls_server_name: Option<String>,
    /// Private CA certificates (DER) that the upstream's certificate must chain to, instead of
    /// the system roots (`tls_ca`).
    pub tls_ca: Option<Vec<Vec<u8>>>,
    /// The `Host` header sent upstream.
    pub host_header: HostHeader,
    /// How often a host name is resolved again.
    pub resolve_interval: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest wait for the next read from the upstream.
    pub read_timeout: Duration,
    /// Longest wait for the next write to the upstream.
    pub write_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge to a cleartext upstream (`h2c`). An `https://`
    /// upstream is offered HTTP/2 by ALPN and gets it when it accepts.
    pub h2c: bool,
    /// `[[upstream.backend]]`: a pool instead of the single `url` (whose fields above then
    /// describe the first backend, for logs). Empty: the single `url`.
    pub backends: Vec<BackendConfig>,
    /// How a pool picks a backend (`selection`, `hash_key`).
    pub selection: Selection,
    /// `[upstream.health_check]` of a pool; `None`: every backend counts as healthy.
    pub health_check: Option<HealthCheckConfig>,
    /// Headers set on every request to this upstream (`headers`, `${VAR}` expanded at load),
    /// replacing any the client sent.
    pub headers: Vec<(HeaderName, Secret)>,
}

/// One `[[upstream.backend]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// The URL as written (an origin).
    pub url: String,
    /// Its host: a name (resolved again every `resolve_interval`) or an IP.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Whether it is `https://`.
    pub tls: bool,
    /// Its share of the traffic relative to the others (`weight`, default 1).
    pub weight: usize,
}

/// How a pool picks a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Default: in turn, by weight.
    RoundRobin,
    /// Consistent hashing (Ketama) of the key: the same key goes to the same backend while
    /// it is healthy.
    Consistent(HashKey),
}

/// What a consistent-hashing pool hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address (default).
    ClientIp,
    /// The request path.
    Path,
    /// A request header's value (`header:NAME`; absent: the empty key).
    Header(HeaderName),
}

/// `[upstream.health_check]`: an active check of every backend address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// The path asked for (`GET`); a status below 400 is healthy.
    pub path: String,
    /// How often each address is checked.
    pub interval: Duration,
    /// Longest wait for an answer.
    pub timeout: Duration,
    /// Checks passed in a row that make an unhealthy backend healthy.
    pub healthy_after: usize,
    /// Checks failed in a row that make a healthy backend unhealthy.
    pub unhealthy_after: usize,
}

/// `[facilitator]`: who verifies and settles payments.
#[derive(Clone, Debug)]
pub struct FacilitatorConfig {
    /// Base URL of a remote facilitator, without a trailing `/`; `None` with `embedded`.
    pub url: Option<String>,
    /// The in-process facilitator's chains and keys (`embedded = true`).
    pub embedded: Option<EmbeddedConfig>,
    /// Where `x402-gateway facilitator` listens.
    pub listen: String,
    /// Timeout of `/verify` and `/supported`.
    pub timeout: Duration,
    /// Timeout of `/settle` (an on-chain transaction: longer).
    pub settle_timeout: Duration,
    /// How long an unknown settlement outcome is read from the chain before the client gets
    /// `503` (retry with the same payment).
    pub resolve_timeout: Duration,
    /// Extra headers on every facilitator call, `${VAR}` already expanded.
    pub headers: Vec<(HeaderName, Secret)>,
    /// How often `/supported` is fetched again.
    pub supported_refresh: Duration,
    /// The standalone facilitator server's own rules (`x402-gateway facilitator`).
    pub server: FacilitatorServerConfig,
}

/// The embedded facilitator: settles on chain itself through JSON-RPC.
#[derive(Clone, Debug)]
pub struct EmbeddedConfig {
    /// JSON-RPC URL per network (secrets: API keys live in such URLs).
    pub rpc: Vec<(Network, Secret)>,
    /// Private keys that submit settlements (redacted in `Debug`).
    pub signer_keys: Vec<Secret>,
    /// Timeout of every JSON-RPC call.
    pub rpc_timeout: Duration,
    /// How settlements share transactions.
    pub batch: BatchConfig,
}

/// Batched settlement of the embedded facilitator (`batch_*`, `sync_batch_window` of
/// `[facilitator]`): many `transferWithAuthorization` calls in one `aggregate3` transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most payments in one transaction (`batch_max`, 1..=1000).
    pub max: usize,
    /// How long the deferred queue's oldest payment waits for others (`batch_window`).
    pub window: Duration,
    /// The same for the per-request `settle()` of `after_response` and `before_upstream`
    /// (`sync_batch_window`); zero: those settle one transaction each.
    pub sync_window: Duration,
    /// The contract with Multicall3's `aggregate3` (`batch_contract`).
    pub contract: Address,
}

impl BatchConfig {
    /// The canonical Multicall3 address, deployed on the chains we target.
    pub const MULTICALL3: Address =
        alloy::primitives::address!("cA11bde05977b3631167028862bE2a173976CA11");
    /// Default `batch_max`.
    pub const DEFAULT_MAX: usize = 100;
    /// Largest `batch_max`.
    pub const LARGEST_MAX: usize = 1000;
    /// Default `batch_window`.
    pub const DEFAULT_WINDOW: Duration = Duration::from_millis(200);
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max: Self::DEFAULT_MAX,
            window: Self::DEFAULT_WINDOW,
            sync_window: Duration::ZERO,
            contract: Self::MULTICALL3,
        }
    }
}

/// Who may use `x402-gateway facilitator`, and for what.
#[derive(Clone, Debug)]
pub struct FacilitatorServerConfig {
    /// Bearer token every request must carry (`server_token`); required unless the server
    /// listens on loopback only.
    pub token: Option<Secret>,
    /// Recipients it settles for (`server_pay_to`; default: every `pay_to` of this file).
    pub pay_to: Vec<Address>,
    /// The smallest value it settles (`server_min_value`), per asset.
    pub min_value: money::Price,
    /// Requests per client IP (`server_rate`); `None`: unlimited.
    pub rate: Option<Rate>,
    /// Largest request body in bytes (`server_max_body`).
    pub max_body: usize,
}
