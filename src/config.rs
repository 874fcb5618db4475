//! The validated runtime configuration, loaded from `gateway.toml`.
//!
//! Owns: the runtime types every other module reads ([`Config`], [`RouteRule`],
//! [`PaymentOption`]), loading a file, and the list of problems found in it ([`ConfigError`]).
//! The file schema and its reader live in `config/file.rs`; the meaning of each key and every
//! check in `config/validate.rs`, which reports *all* problems at once with their TOML key paths.
//! Does not own: route lookup (`pricing`), or anything that does IO beyond reading the file.

pub mod assets;
mod file;
pub mod limits;
pub mod money;
pub mod secret;
mod sections;
pub mod summary;
mod validate;

pub use limits::{Cidr, LimitsConfig, Rate};
pub use validate::{parse_pattern, runtime_dir};

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use alloy::primitives::{Address, U256};
use http::Method;

pub use assets::Asset;
pub use secret::Secret;
pub use sections::{
    BackendConfig, BatchConfig, EmbeddedConfig, FacilitatorConfig, FacilitatorServerConfig,
    HashKey, HealthCheckConfig, Selection, UpstreamConfig,
};

use crate::protocol::Network;

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// TOML key path, e.g. `route[2].price`.
    pub key: String,
    /// What is wrong, and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The path given.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{path} is not valid TOML: {message}")]
    Syntax {
        /// The path given.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file is TOML but has problems; every one is listed.
    #[error("{path} has {} problem(s):\n{}", issues.len(), issues.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        /// The path given.
        path: String,
        /// Every problem found.
        issues: Vec<ConfigIssue>,
    },
}

/// When the facilitator's `/settle` is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettlementMode {
    /// Default: forward, and settle when the upstream's response headers arrive with a status
    /// below 400, before any byte reaches the client. Upstream errors are not charged.
    AfterResponse,
    /// Settle before forwarding: for expensive or streaming upstreams. The client is charged
    /// even if the upstream then fails.
    BeforeUpstream,
    /// Release the upstream's answer (status below 400) at once, with a `queued` receipt, and
    /// settle in the background from the journal, within the caps of `[payment.deferred]`
    /// (a request over a cap is settled as `after_response`).
    Deferred,
}

impl SettlementMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SettlementMode::AfterResponse => "after_response",
            SettlementMode::BeforeUpstream => "before_upstream",
            SettlementMode::Deferred => "deferred",
        }
    }
}

/// Who gives the verdict on a payment before it is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerificationMode {
    /// Default: the local checks, then the facilitator's `/verify` (verdicts cached).
    Facilitator,
    /// The local checks alone (recipient, amount, time window, EIP-712 signature recovered to
    /// `from`, replay guard); the facilitator is only asked to `/settle`, which always happens
    /// before any byte of the response is released, so a payment that cannot settle releases
    /// nothing. Signatures the gateway cannot check itself (smart wallets) still go to
    /// `/verify`.
    Local,
}

impl VerificationMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VerificationMode::Facilitator => "facilitator",
            VerificationMode::Local => "local",
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[upstream]`: the default upstream.
    pub upstream: UpstreamConfig,
    /// `[upstreams.NAME]`: upstreams that routes name (`upstream = "NAME"`), in name order.
    pub upstreams: Vec<(String, UpstreamConfig)>,
    /// `[facilitator]`.
    pub facilitator: FacilitatorConfig,
    /// `[verification]`.
    pub verification: VerificationConfig,
    /// `[logging]`.
    pub logging: LoggingConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[journal]`.
    pub journal: JournalConfig,
    /// `[chain]`: RPC endpoints for reading settlement outcomes.
    pub chain: ChainConfig,
    /// `[admin]`: the metrics and health listener.
    pub admin: AdminConfig,
    /// `[auth]`: the forward-auth listener for an existing proxy.
    pub auth: AuthConfig,
    /// `[payment.deferred]`: the caps of deferred settlement.
    pub deferred: DeferredConfig,
    /// `[[route]]`, in file order (first match wins).
    pub routes: Vec<RouteRule>,
}

/// `[payment.deferred]`: how much unsettled value deferred settlement may carry. Amounts are in
/// micro-dollars (1 = $0.000001); deferred routes accept USD stablecoins only.
#[derive(Clone, Debug)]
pub struct DeferredConfig {
    /// Unsettled value per payer (`max_per_payer`, default $1.00).
    pub max_per_payer: u128,
    /// Unsettled value in all (`max_total`, default $100).
    pub max_total: u128,
    /// The longest a payment waits before its settlement starts (`max_delay`, default 5 s).
    pub max_delay: Duration,
    /// Payments above this are settled first (`settle_first_above`; a route's own wins).
    pub settle_first_above: Option<u128>,
    /// Settlements in flight at once through a facilitator that does not batch (`concurrency`,
    /// default 32).
    pub concurrency: usize,
}

impl Default for DeferredConfig {
    fn default() -> Self {
        DeferredConfig {
            max_per_payer: 1_000_000,
            max_total: 100_000_000,
            max_delay: Duration::from_secs(5),
            settle_first_above: None,
            concurrency: 32,
        }
    }
}

/// `[admin]`: a separate listener for operators (`/metrics`, `/livez`, `/readyz`).
#[derive(Clone, Debug, Default)]
pub struct AdminConfig {
    /// Its address (`listen`); none: no admin listener.
    pub listen: Option<String>,
}

/// `[auth]`: x402 as the auth service of an existing proxy (nginx `auth_request`, Traefik
/// `forwardAuth`, Caddy `forward_auth`, Envoy `ext_authz`).
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// Its address (`listen`); none: no forward-auth listener.
    pub listen: Option<String>,
    /// The header carrying the original request target in nginx's sub-request
    /// (`original_uri_header`, default `X-Original-URI`).
    pub original_uri_header: http::HeaderName,
    /// The header carrying the original method in nginx's sub-request
    /// (`original_method_header`, default `X-Original-Method`).
    pub original_method_header: http::HeaderName,
    /// The path prefix Envoy's `ext_authz` HTTP service puts before the original path
    /// (`ext_authz_prefix`, default `/ext_authz`).
    pub ext_authz_prefix: String,
    /// How long a decision may take before the proxy is assumed to have given up (`timeout`,
    /// default 25 s): a payment settled later is kept redeemable and answered `503`.
    pub timeout: std::time::Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            listen: None,
            original_uri_header: http::HeaderName::from_static("x-original-uri"),
            original_method_header: http::HeaderName::from_static("x-original-method"),
            ext_authz_prefix: "/ext_authz".to_owned(),
            timeout: std::time::Duration::from_secs(25),
        }
    }
}

/// `[journal]`: the durable payment journal.
#[derive(Clone, Debug)]
pub struct JournalConfig {
    /// Whether payments are journaled (`enabled`, default true).
    pub enabled: bool,
    /// The SQLite file (relative paths are taken from the config file's directory; the default,
    /// `x402-journal.db`, lives in `$STATE_DIRECTORY` when that is set, else there too).
    pub path: PathBuf,
    /// Durability of each commit.
    pub sync: JournalSync,
    /// How long delivered and failed payments are kept.
    pub retention: Duration,
}

/// SQLite `synchronous` of the journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalSync {
    /// Every commit is fsynced: survives power loss.
    Full,
    /// Commits survive a crash of the gateway, not of the machine.
    Normal,
}

impl JournalSync {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JournalSync::Full => "full",
            JournalSync::Normal => "normal",
        }
    }
}

/// `[chain]`: JSON-RPC endpoints the gateway reads settlement outcomes from (optional with a
/// remote facilitator; the embedded facilitator's `rpc` is used when absent).
#[derive(Clone, Debug, Default)]
pub struct ChainConfig {
    /// JSON-RPC URL per network (secrets).
    pub rpc: Vec<(Network, Secret)>,
}

/// What happens to a request whose method no route lists, on a path a priced route covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnlistedMethods {
    /// Default: `405 Method Not Allowed` with `Allow`; nothing reaches the upstream.
    Reject,
    /// Charge it as the first priced route covering the path.
    Charge,
    /// Let it through free (the behaviour before this key existed).
    Pass,
}

impl UnlistedMethods {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UnlistedMethods::Reject => "reject",
            UnlistedMethods::Charge => "charge",
            UnlistedMethods::Pass => "pass",
        }
    }
}

/// The `Host` header sent upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostHeader {
    /// Default: the upstream URL's `host[:port]` (what nginx's `proxy_pass` sends).
    Upstream,
    /// The client's `Host`, unchanged.
    Client,
    /// This literal value.
    Literal(String),
}

/// `[server]`: the listening side.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on, e.g. `0.0.0.0:8402`.
    pub listen: String,
    /// Origin (and optional path prefix) used in resource URLs, without a trailing `/`.
    /// `None`: the request's `Host` header and scheme.
    pub public_url: Option<String>,
    /// Worker threads.
    pub threads: usize,
    /// `Access-Control-Allow-Origin` added to priced responses when the upstream sets none;
    /// `None` disables the gateway's CORS headers.
    pub cors_allow_origin: Option<String>,
    /// Seconds a client may take to send its request headers and body.
    pub client_timeout: Duration,
    /// What a method no route lists gets on a priced path.
    pub unlisted_methods: UnlistedMethods,
    /// Peers whose `X-Forwarded-For` (and other forwarding headers) are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// Pingora's pid file, in a private directory.
    pub pid_file: PathBuf,
    /// The socket on which a new process takes over the listening sockets, in a private
    /// directory.
    pub upgrade_sock: PathBuf,
    /// How long a stop (SIGTERM) waits for in-flight requests and settlements.
    pub drain_timeout: Duration,
    /// Reload the configuration when its file changes (`watch_config`).
    pub watch_config: bool,
    /// TLS on the listener (`tls_cert`, `tls_key`); `None`: plain HTTP.
    pub tls: Option<ListenerTls>,
    /// Prior-knowledge HTTP/2 over cleartext on a plain listener (`h2c`), for sidecars.
    pub h2c: bool,
}

/// The certificate and key the listener serves (PEM files, read again on every reload).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    /// The certificate chain, leaf first (`tls_cert`).
    pub cert: PathBuf,
    /// The private key (`tls_key`).
    pub key: PathBuf,
}

/// `[verification]`: the local fast path and the verdict cache.
#[derive(Clone, Debug)]
pub struct VerificationConfig {
    /// Whether `/verify` is asked before serving.
    pub mode: VerificationMode,
    /// How long a facilitator verdict is reused for the same payload (capped at `validBefore`).
    pub cache_ttl: Duration,
    /// Most verdicts kept.
    pub cache_capacity: u64,
}

/// `[logging]`.
#[derive(Clone, Debug)]
pub struct LoggingConfig {
    /// Text or JSON lines.
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset.
    pub level: String,
    /// One line per request (`access_log`, default true), target `x402_gateway::access`.
    pub access_log: bool,
    /// Where spans go (OTLP/HTTP, `otlp_endpoint`; builds with the `otlp` feature only).
    pub otlp_endpoint: Option<String>,
    /// The spans' `service.name` (`otlp_service_name`, default `x402-gateway`).
    pub otlp_service_name: String,
}

/// A route pattern, compiled from `path`: literal segments, `*` for one segment, and an
/// optional `/**` suffix for any remainder. Literals are stored lowercase: matching is
/// case-insensitive, so a case-insensitive upstream cannot be reached unpaid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePattern {
    /// Segments before any `/**`.
    pub segments: Vec<Segment>,
    /// Whether the pattern ends in `/**`.
    pub rest: bool,
}

/// One segment of a [`RoutePattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Exactly this text (lowercase).
    Literal(String),
    /// Any one non-empty segment.
    Star,
}

/// One `[[route]]`.
#[derive(Clone, Debug)]
pub struct RouteRule {
    /// Position in the file, from 0.
    pub index: usize,
    /// `path` as written.
    pub path: String,
    /// Compiled `path`.
    pub pattern: RoutePattern,
    /// Methods it applies to; `None` means every method.
    pub methods: Option<Vec<Method>>,
    /// Human description for challenges.
    pub description: String,
    /// MIME type of the resource for challenges.
    pub mime_type: String,
    /// Fixed resource URL; `None`: computed per request.
    pub resource: Option<String>,
    /// When to settle.
    pub settlement: SettlementMode,
    /// Deferred payments above this many micro-dollars are settled first
    /// (`settle_first_above`, else `[payment.deferred]`'s).
    pub settle_first_above: Option<u128>,
    /// Payment options in order of preference; empty means free.
    pub options: Vec<PaymentOption>,
    /// Whether `Upgrade: websocket` (and so `101 Switching Protocols`) is allowed.
    pub websocket: bool,
    /// The `[upstreams.NAME]` its requests go to (`upstream`); `None`: the default upstream.
    pub upstream: Option<String>,
}

impl RouteRule {
    /// Whether the route is free.
    pub fn is_free(&self) -> bool {
        self.options.is_empty()
    }

    /// Whether the route applies to `method`.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Its methods for people: `GET,POST`, or `*` for all.
    pub fn methods_label(&self) -> String {
        self.methods.as_ref().map_or("*".to_owned(), |m| {
            m.iter().map(Method::as_str).collect::<Vec<_>>().join(",")
        })
    }
}

/// One way to pay for a route: the `exact` scheme on an EVM network.
#[derive(Clone, Debug)]
pub struct PaymentOption {
    /// The network.
    pub network: Network,
    /// The token.
    pub asset: Asset,
    /// The price, atomic units.
    pub amount: U256,
    /// The recipient.
    pub pay_to: Address,
    /// `maxTimeoutSeconds` of the requirement.
    pub max_timeout_seconds: u64,
}

impl PaymentOption {
    /// The price for humans: `$0.001` for USD stablecoins, `0.5 TKN` otherwise.
    pub fn display_price(&self) -> String {
        let units = money::format_units(self.amount, self.asset.decimals);
        if self.asset.usd_stable {
            format!("${units}")
        } else {
            format!("{units} {}", self.asset.symbol)
        }
    }
}

impl Config {
    /// Reads and validates a configuration file, with `${VAR}` taken from the process
    /// environment.
    ///
    /// # Errors
    /// [`ConfigError`], listing every problem found.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml_in(&text, &path.display().to_string(), dir, &|k| {
            std::env::var(k).ok()
        })
    }

    /// Loads `path` to read what it names (the journal, the routes) without its secrets: an
    /// unset `${VAR}` is no problem here (`journal list` needs no signer key). The result must
    /// never be run: the secrets it lacks hold stand-ins no key, URL or header accepts.
    ///
    /// # Errors
    /// [`ConfigError`] for anything else wrong with the file.
    pub fn load_for_reading(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let env = secret::lenient(|k| std::env::var(k).ok());
        Self::from_toml_in(&text, &path.display().to_string(), dir, &env)
    }

    /// Validates configuration text. `origin` names it in errors; `env` resolves `${VAR}`;
    /// relative file names in it are taken from the current directory.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] or [`ConfigError::Invalid`] with every problem found.
    pub fn from_toml(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::from_toml_in(text, origin, Path::new("."), env)
    }

    /// As [`Config::from_toml`], with relative file names (`tls_ca`, `pid_file`, …) taken
    /// from `dir` (the config file's directory).
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] or [`ConfigError::Invalid`] with every problem found.
    pub fn from_toml_in(
        text: &str,
        origin: &str,
        dir: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: origin.to_owned(),
                    message: e.to_string(),
                })?;
        validate::validate(&table, dir, env).map_err(|issues| ConfigError::Invalid {
            path: origin.to_owned(),
            issues,
        })
    }
}

#[doc(hidden)]
/// A minimal configuration (upstream, facilitator, `[payment]` on Base Sepolia) with these
/// `[[route]]` tables: for tests, property tests, fuzz targets and benchmarks.
///
/// # Panics
/// When the routes are invalid.
pub fn test_config(routes: &str) -> Config {
    let text = format!(
        r#"
[upstream]
url = "http://127.0.0.1:3000"
[facilitator]
url = "http://127.0.0.1:9000"
[payment]
pay_to = "0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24"
network = "base-sepolia"
{routes}"#
    );
    Config::from_toml(&text, "test", &|_| None).unwrap_or_else(|e| panic!("{e}"))
}
