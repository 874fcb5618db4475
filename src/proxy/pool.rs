//! Upstream pools: several backends behind one upstream (`[[upstream.backend]]`), chosen in turn
//! or by consistent hashing, with active health checks; and the set of upstreams a request may
//! go to (the default `[upstream]` and the named `[upstreams.NAME]`).
//!
//! Owns: [`Pool`] (a pingora-load-balancing `LoadBalancer` whose discovery resolves each
//! backend's host name again every `resolve_interval`, and whose health check asks each
//! address for `[upstream.health_check] path`), [`Upstream`] (a single URL or a pool, with the
//! headers injected into every request to it) and [`Upstreams`] (the upstreams by name).
//! Unhealthy backends are skipped; a pool with no healthy backend is not addressable, so a paid
//! request is answered `502` before anything is charged (`proxy.rs`). Does not own: the
//! request-side header policy (`upstream.rs`).

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::lb::health_check::HealthCheck;
use pingora::lb::selection::{Consistent, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

mod discovery;

use super::peer::{prepared_ca, prepared_peer, upstream_host};
use super::upstream::{Resolver, UpstreamTarget};
use crate::config::{HashKey, HealthCheckConfig, HostHeader, Selection, UpstreamConfig};
use discovery::PoolDiscovery;

/// How many backends a selection looks at before giving up (all of them, in practice).
const MAX_SELECT: usize = 256;

/// Which configured backend an address came from.
#[derive(Clone, Copy, Debug)]
struct BackendIndex(usize);

// === Health check ===

/// `GET path` on each backend address; healthy on a status below 400 within `timeout`.
struct PoolHealthCheck {
    name: String,
    config: HealthCheckConfig,
    peers: Arc<Peers>,
    connector: Connector,
}

impl PoolHealthCheck {
    async fn probe(&self, target: &Backend) -> Result<()> {
        let (mut peer, i) = self.peers.peer_for(target)?;
        peer.options.connection_timeout = Some(self.config.timeout);
        peer.options.total_connection_timeout = Some(self.config.timeout);
        peer.options.read_timeout = Some(self.config.timeout);
        peer.options.write_timeout = Some(self.config.timeout);
        let (mut session, _) = self.connector.get_http_session(&*peer).await?;
        let mut req = RequestHeader::build("GET", self.config.path.as_bytes(), None)?;
        // The upstream's `Host`; with `host_header = "client"`, the backend's own.
        if let Some(host) =
            self.peers
                .host(i)
                .or(self.peers.probe_hosts.get(i).and_then(Option::as_ref))
        {
            req.insert_header(header::HOST, host.clone())?;
        }
        for (name, value) in &self.peers.headers {
            req.insert_header(name.clone(), value.clone())?;
        }
        session.write_request_header(Box::new(req)).await?;
        session.finish_request_body().await?;
        session.set_read_timeout(Some(self.config.timeout));
        session.read_response_header().await?;
        let status = session.response_header().map_or(0, |r| r.status.as_u16());
        while session.read_response_body().await?.is_some() {}
        if !(200..400).contains(&status) {
            return Error::e_explain(
                ErrorType::CustomCode("health check status", status),
                "health check",
            );
        }
        Ok(())
    }
}

#[async_trait]
impl HealthCheck for PoolHealthCheck {
    async fn check(&self, target: &Backend) -> Result<()> {
        match tokio::time::timeout(self.config.timeout, self.probe(target)).await {
            Ok(r) => r,
            Err(_) => Error::e_explain(ErrorType::ReadTimedout, "health check timed out"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        if healthy {
            tracing::info!(upstream = %self.name, backend = %target.addr, "backend healthy again: receives traffic");
        } else {
            tracing::warn!(upstream = %self.name, backend = %target.addr, "backend failed its health check: no traffic until it passes");
        }
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.config.healthy_after
        } else {
            self.config.unhealthy_after
        }
    }
}

// === Peers ===

/// A prepared peer per configured backend (its address replaced per request), its `Host`, and
/// the injected headers.
struct Peers {
    templates: Vec<HttpPeer>,
    hosts: Vec<Option<HeaderValue>>,
    /// Each backend's own `host[:port]` (health checks send it when requests keep the
    /// client's `Host`).
    probe_hosts: Vec<Option<HeaderValue>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Peers {
    fn peer_for(&self, backend: &Backend) -> Result<(Box<HttpPeer>, usize)> {
        let i = backend
            .ext
            .get::<BackendIndex>()
            .map_or(0, |b| b.0)
            .min(self.templates.len().saturating_sub(1));
        let Some(template) = self.templates.get(i) else {
            return Err(Error::explain(ErrorType::ConnectNoRoute, "empty pool"));
        };
        let mut peer = template.clone();
        peer._address = backend.addr.clone();
        Ok((Box::new(peer), i))
    }

    fn host(&self, i: usize) -> Option<&HeaderValue> {
        self.hosts.get(i).and_then(Option::as_ref)
    }
}

// === Pool ===

enum Balancer {
    RoundRobin(Arc<LoadBalancer<RoundRobin>>),
    Consistent(Arc<LoadBalancer<Consistent>>),
}

/// Several backends behind one upstream.
pub struct Pool {
    name: String,
    balancer: Balancer,
    peers: Arc<Peers>,
    hash_key: Option<HashKey>,
}

/// What a request offers to a hashing pool.
#[derive(Clone, Copy, Debug)]
pub struct HashInput<'a> {
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The request.
    pub req: &'a RequestHeader,
}

impl Pool {
    /// The pool of `c` (named `name` in logs). Its backends are resolved by the background
    /// service ([`Pool::service`]); until its first run the pool has no address.
    pub fn new(name: &str, c: &UpstreamConfig) -> Self {
        let ca = prepared_ca(c);
        let placeholder = SocketAddr::from(([0, 0, 0, 0], 0));
        let templates = c
            .backends
            .iter()
            .map(|b| {
                let sni = c.tls_server_name.clone().unwrap_or_else(|| b.host.clone());
                prepared_peer(c, placeholder, b.tls, sni, ca.as_ref())
            })
            .collect();
        let hosts = c
            .backends
            .iter()
            .map(|b| match &c.host_header {
                HostHeader::Client => None,
                HostHeader::Literal(v) => HeaderValue::from_str(v).ok(),
                HostHeader::Upstream => upstream_host(&b.host, b.port, b.tls),
            })
            .collect();
        let probe_hosts = c
            .backends
            .iter()
            .map(|b| upstream_host(&b.host, b.port, b.tls))
            .collect();
        let peers = Arc::new(Peers {
            templates,
            hosts,
            probe_hosts,
            headers: injected(c),
        });
        let discovery = Box::new(PoolDiscovery {
            name: name.to_owned(),
            backends: c.backends.clone(),
            last: Mutex::new(Vec::new()),
        });
        let mut backends = Backends::new(discovery);
        if let Some(h) = &c.health_check {
            backends.set_health_check(Box::new(PoolHealthCheck {
                name: name.to_owned(),
                config: h.clone(),
                peers: peers.clone(),
                connector: Connector::new(None),
            }));
        }
        let (balancer, hash_key) = match &c.selection {
            Selection::RoundRobin => (
                Balancer::RoundRobin(Arc::new(configured(
                    LoadBalancer::from_backends(backends),
                    c,
                ))),
                None,
            ),
            Selection::Consistent(key) => (
                Balancer::Consistent(Arc::new(configured(
                    LoadBalancer::from_backends(backends),
                    c,
                ))),
                Some(key.clone()),
            ),
        };
        Pool {
            name: name.to_owned(),
            balancer,
            peers,
            hash_key,
        }
    }

    /// The background service that resolves the backends and runs the health checks.
    pub fn service(&self) -> PoolService {
        PoolService {
            balancer: match &self.balancer {
                Balancer::RoundRobin(lb) => Balancer::RoundRobin(lb.clone()),
                Balancer::Consistent(lb) => Balancer::Consistent(lb.clone()),
            },
        }
    }

    fn key(&self, input: HashInput<'_>) -> Vec<u8> {
        match &self.hash_key {
            None => Vec::new(),
            Some(HashKey::ClientIp) => input
                .client_ip
                .map(|ip| ip.to_string().into_bytes())
                .unwrap_or_default(),
            Some(HashKey::Path) => input.req.uri.path().as_bytes().to_vec(),
            Some(HashKey::Header(name)) => input
                .req
                .headers
                .get(name)
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    fn select(&self, key: &[u8], skip: &[SocketAddr]) -> Option<Backend> {
        let accept = |b: &Backend, healthy: bool| {
            healthy && !b.addr.as_inet().is_some_and(|a| skip.contains(a))
        };
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT, accept),
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT, accept),
        }
    }

    fn backends(&self) -> Arc<BTreeSet<Backend>> {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().get_backend(),
            Balancer::Consistent(lb) => lb.backends().get_backend(),
        }
    }

    fn ready(&self, b: &Backend) -> bool {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends().ready(b),
            Balancer::Consistent(lb) => lb.backends().ready(b),
        }
    }

    /// The addresses of healthy backends now.
    pub fn healthy_addresses(&self) -> Vec<SocketAddr> {
        self.backends()
            .iter()
            .filter(|b| self.ready(b))
            .filter_map(|b| b.addr.as_inet().copied())
            .collect()
    }

    /// The pool's name in logs.
    pub fn name(&self) -> &str {
        &self.name
    }
}

fn configured<S>(mut lb: LoadBalancer<S>, c: &UpstreamConfig) -> LoadBalancer<S>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    lb.update_frequency = Some(c.resolve_interval);
    lb.health_check_frequency = c.health_check.as_ref().map(|h| h.interval);
    lb.parallel_health_check = true;
    lb
}

/// Resolves a pool's backends every `resolve_interval` and runs its health checks every
/// `[upstream.health_check] interval`.
pub struct PoolService {
    balancer: Balancer,
}

#[async_trait]
impl BackgroundService for PoolService {
    async fn start(&self, shutdown: ShutdownWatch) {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.run(shutdown, None).await,
            Balancer::Consistent(lb) => lb.run(shutdown, None).await,
        }
    }
}

/// The headers `c` injects into every request, as header values marked sensitive.
fn injected(c: &UpstreamConfig) -> Vec<(HeaderName, HeaderValue)> {
    c.headers
        .iter()
        .filter_map(|(n, v)| {
            let mut v = HeaderValue::from_str(v.expose()).ok()?;
            v.set_sensitive(true);
            Some((n.clone(), v))
        })
        .collect()
}

// === Upstream, Upstreams ===

enum Target {
    Single(Arc<UpstreamTarget>),
    Pool(Arc<Pool>),
}

/// One upstream: a URL (its addresses in turn) or a pool, with its injected headers.
pub struct Upstream {
    target: Target,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// The peer chosen for one attempt of a request.
pub struct Chosen {
    /// Where to connect.
    pub peer: Box<HttpPeer>,
    /// The `Host` to send, or `None` to keep the client's.
    pub host: Option<HeaderValue>,
}

impl Upstream {
    /// The upstream of `c`: a pool when it lists backends.
    pub fn new(name: &str, c: &UpstreamConfig) -> Self {
        let target = if c.backends.is_empty() {
            Target::Single(Arc::new(UpstreamTarget::new(c)))
        } else {
            Target::Pool(Arc::new(Pool::new(name, c)))
        };
        Upstream {
            target,
            headers: injected(c),
        }
    }

    /// Whether a request can be sent now (a resolved address; in a pool, a healthy backend).
    pub fn is_addressable(&self) -> bool {
        match &self.target {
            Target::Single(t) => t.is_addressable(),
            Target::Pool(p) => p.backends().iter().any(|b| p.ready(b)),
        }
    }

    /// How many connection attempts a request may make (one per address or backend).
    pub fn attempts(&self) -> usize {
        match &self.target {
            Target::Single(t) => t.address_count(),
            Target::Pool(p) => p.backends().len(),
        }
    }

    /// The addresses a readiness probe tries.
    pub fn addresses(&self) -> Vec<SocketAddr> {
        match &self.target {
            Target::Single(t) => t.addresses(),
            Target::Pool(p) => p.healthy_addresses(),
        }
    }

    /// A peer for one attempt, skipping addresses that failed to connect (`failed`).
    ///
    /// # Errors
    /// No address, or no healthy backend.
    pub fn choose(&self, input: HashInput<'_>, failed: &[SocketAddr]) -> Result<Chosen> {
        match &self.target {
            Target::Single(t) => Ok(Chosen {
                peer: t.peer_for_request()?,
                host: t.host_header().cloned(),
            }),
            Target::Pool(p) => {
                let key = p.key(input);
                let backend = p.select(&key, failed).ok_or_else(|| {
                    Error::explain(
                        ErrorType::ConnectNoRoute,
                        "no healthy backend in the upstream pool",
                    )
                })?;
                let (peer, i) = p.peers.peer_for(&backend)?;
                Ok(Chosen {
                    peer,
                    host: p.peers.host(i).cloned(),
                })
            }
        }
    }

    /// The headers set on every request to this upstream (replacing any the client sent).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The background service that keeps its addresses (and health) current.
    pub fn service(&self) -> Box<dyn BackgroundService + Send + Sync> {
        match &self.target {
            Target::Single(t) => Box::new(Resolver(t.clone())),
            Target::Pool(p) => Box::new(p.service()),
        }
    }
}

/// Every upstream: the default (`[upstream]`) and the named ones (`[upstreams.NAME]`).
pub struct Upstreams {
    default: Upstream,
    named: HashMap<String, Upstream>,
}

impl Upstreams {
    /// The upstreams of a configuration.
    pub fn new(default: &UpstreamConfig, named: &[(String, UpstreamConfig)]) -> Self {
        Upstreams {
            default: Upstream::new("default", default),
            named: named
                .iter()
                .map(|(n, c)| (n.clone(), Upstream::new(n, c)))
                .collect(),
        }
    }

    /// The default upstream.
    pub fn default_upstream(&self) -> &Upstream {
        &self.default
    }

    /// The upstream called `name` (the default for `None`, or for a name not running: a
    /// reload refuses routes that name one).
    pub fn get(&self, name: Option<&str>) -> &Upstream {
        name.and_then(|n| self.named.get(n))
            .unwrap_or(&self.default)
    }

    /// Whether an upstream called `name` runs.
    pub fn has(&self, name: &str) -> bool {
        self.named.contains_key(name)
    }

    /// Every upstream with its name (`default` first).
    pub fn all(&self) -> impl Iterator<Item = (&str, &Upstream)> {
        std::iter::once(("default", &self.default))
            .chain(self.named.iter().map(|(n, u)| (n.as_str(), u)))
    }

    /// The default upstream's addresses (readiness probes).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        self.default.addresses()
    }
}
