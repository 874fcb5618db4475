//! The upstream side: where requests go, and what is removed from or added to them.
//!
//! Owns: [`UpstreamTarget`] (the upstream's addresses, resolved at run time and again every
//! `resolve_interval`, as prepared `HttpPeer`s with timeouts and TLS settings), [`Resolver`]
//! (the background service that re-resolves), [`client_ip`] (who the client is, believing
//! `X-Forwarded-For` only from `[server] trusted_proxies`) and [`prepare_request`] (payment
//! credentials, method overrides, upgrade headers and spoofable forwarding headers out;
//! `X-Forwarded-*` and `Host` in).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;
use pingora::{Error, ErrorType, Result};

use crate::config::{Cidr, HostHeader, UpstreamConfig};
use crate::payments::METHOD_OVERRIDE_HEADERS;
use crate::protocol::CREDENTIAL_HEADERS;

/// Headers a client could use to claim another identity or origin; from a peer that is not a
/// trusted proxy they are removed (and `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Real-IP`
/// set by the gateway).
const CLIENT_IDENTITY_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
    HeaderName::from_static("x-cluster-client-ip"),
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The upstream: its peers (one per resolved address), rebuilt when the name resolves to new
/// addresses.
pub struct UpstreamTarget {
    config: UpstreamConfig,
    peers: ArcSwap<Vec<HttpPeer>>,
    next: AtomicUsize,
    ca: Option<Arc<[WrappedX509]>>,
    host: Option<HeaderValue>,
}

impl UpstreamTarget {
    /// The upstream of `c`. An IP address is used as is; a name is resolved now (blocking: this
    /// runs at start) and again by [`Resolver`]. A name that does not resolve is logged and
    /// retried; until it resolves, requests get `502`.
    pub fn new(c: &UpstreamConfig) -> Self {
        let ca = super::peer::prepared_ca(c);
        let host = match &c.host_header {
            HostHeader::Client => None,
            HostHeader::Literal(v) => HeaderValue::from_str(v).ok(),
            HostHeader::Upstream => super::peer::upstream_host(&c.host, c.port, c.tls),
        };
        let t = UpstreamTarget {
            config: c.clone(),
            peers: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            ca,
            host,
        };
        match resolve_now(&c.host, c.port) {
            Ok(addrs) => t.set_addresses(&addrs),
            Err(e) => {
                tracing::error!(host = %c.host, error = %e, "the upstream host does not resolve; retrying every {:?}", c.resolve_interval)
            }
        }
        t
    }

    fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let c = &self.config;
        super::peer::prepared_peer(c, addr, c.tls, c.sni.clone(), self.ca.as_ref())
    }

    /// Replaces the peers when the addresses changed.
    fn set_addresses(&self, addrs: &[SocketAddr]) {
        let current: Vec<SocketAddr> = self
            .peers
            .load()
            .iter()
            .filter_map(|p| p._address.as_inet().copied())
            .collect();
        if current == addrs {
            return;
        }
        if !current.is_empty() {
            tracing::info!(host = %self.config.host, ?addrs, "upstream addresses changed");
        }
        self.peers
            .store(Arc::new(addrs.iter().map(|a| self.peer(*a)).collect()));
    }

    /// Resolves the host again (a no-op for an IP address).
    pub async fn refresh(&self) {
        if self.config.host.parse::<IpAddr>().is_ok() {
            return;
        }
        match tokio::net::lookup_host((self.config.host.as_str(), self.config.port)).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                if !addrs.is_empty() {
                    self.set_addresses(&addrs);
                }
            }
            Err(e) => {
                tracing::warn!(host = %self.config.host, error = %e, "upstream host did not resolve; keeping the last addresses")
            }
        }
    }

    /// How many addresses the upstream has now.
    pub fn address_count(&self) -> usize {
        self.peers.load().len()
    }

    /// The upstream's addresses now (for health probes).
    pub fn addresses(&self) -> Vec<std::net::SocketAddr> {
        self.peers
            .load()
            .iter()
            .filter_map(|p| p._address.as_inet().copied())
            .collect()
    }

    /// Whether the upstream has an address to connect to.
    pub fn is_addressable(&self) -> bool {
        !self.peers.load().is_empty()
    }

    /// A peer for one request (addresses in turn).
    ///
    /// # Errors
    /// When the host has not resolved yet.
    pub fn peer_for_request(&self) -> Result<Box<HttpPeer>> {
        let peers = self.peers.load();
        if peers.is_empty() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "the upstream host has not resolved",
            ));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % peers.len();
        Ok(Box::new(peers[i].clone()))
    }

    /// The `Host` header to send, or `None` to keep the client's.
    pub fn host_header(&self) -> Option<&HeaderValue> {
        self.host.as_ref()
    }
}

fn resolve_now(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> =
        std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?.collect();
    addrs.sort();
    addrs.dedup();
    if addrs.is_empty() {
        return Err(std::io::Error::other("no addresses"));
    }
    Ok(addrs)
}

/// Re-resolves the upstream host every `resolve_interval` (quickly while it has no address).
pub struct Resolver(pub Arc<UpstreamTarget>);

#[async_trait]
impl BackgroundService for Resolver {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.0.config.host.parse::<IpAddr>().is_ok() {
            return;
        }
        loop {
            let every = if self.0.is_addressable() {
                self.0.config.resolve_interval
            } else {
                self.0.config.resolve_interval.min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(every) => {}
            }
            self.0.refresh().await;
        }
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the right-most
/// address of `X-Forwarded-For` that is not itself a trusted proxy.
pub fn client_ip(
    peer: Option<IpAddr>,
    xff: Option<&HeaderValue>,
    trusted: &[Cidr],
) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let Some(list) = xff.and_then(|v| v.to_str().ok()) else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if is_trusted(ip) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

/// The scheme and host the client asked for: `https` behind the TLS listener (`tls`), else
/// `http`, and the `Host` header (`:authority` over HTTP/2). From a trusted proxy
/// (`trusted_peer`), its `X-Forwarded-Proto` (`http` or `https`) and `X-Forwarded-Host` (the
/// first of each, when well formed) are believed instead; from anyone else they are ignored.
pub fn origin(req: &RequestHeader, tls: bool, trusted_peer: bool) -> (&'static str, Option<&str>) {
    let first = |name: &HeaderName| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let mut scheme = if tls { "https" } else { "http" };
    let mut host = req
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.authority().map(http::uri::Authority::as_str));
    if trusted_peer {
        match first(&X_FORWARDED_PROTO) {
            Some(p) if p.eq_ignore_ascii_case("https") => scheme = "https",
            Some(p) if p.eq_ignore_ascii_case("http") => scheme = "http",
            _ => {}
        }
        if let Some(h) = first(&X_FORWARDED_HOST).filter(|h| {
            !h.contains(['/', '@', '?', '#']) && h.parse::<http::uri::Authority>().is_ok()
        }) {
            host = Some(h);
        }
    }
    (scheme, host)
}

/// What [`prepare_request`] needs to know of the request.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    /// The peer's address.
    pub peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy.
    pub trusted_peer: bool,
    /// The scheme the client used (`http`, `https`).
    pub proto: &'static str,
    /// Whether a priced route covers the path (method overrides are then removed).
    pub priced_path: bool,
    /// Whether the route allows a websocket upgrade.
    pub websocket: bool,
    /// Whether [`hold_upgrade_body`] held the client's request body open.
    pub upgrade_held: bool,
    /// The `Host` to send, when not the client's.
    pub host: Option<&'a HeaderValue>,
}

/// Strips payment credentials, method overrides (on priced paths), upgrade headers (unless a
/// websocket route) and, from untrusted peers, forwarding headers; sets `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Real-IP` and `Host`.
///
/// # Errors
/// Header construction errors.
pub fn prepare_request(req: &mut RequestHeader, f: Forwarding<'_>) -> Result<()> {
    for h in &CREDENTIAL_HEADERS {
        req.remove_header(h);
    }
    if f.priced_path {
        for h in &METHOD_OVERRIDE_HEADERS {
            req.remove_header(h);
        }
        strip_query_overrides(req)?;
    }
    strip_upgrade(req, f.websocket)?;
    if f.upgrade_held {
        // The upstream sees the handshake as the client sent it: no body.
        req.insert_header(header::CONTENT_LENGTH, HeaderValue::from_static("0"))?;
    }
    if let Some(host) = f.host {
        req.insert_header(header::HOST, host.clone())?;
    }
    if f.trusted_peer {
        if let Some(ip) = f.peer {
            let xff = match req
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(prev) => format!("{prev}, {ip}"),
                None => ip.to_string(),
            };
            req.insert_header("x-forwarded-for", xff)?;
        }
        if !req.headers.contains_key("x-forwarded-proto") {
            req.insert_header("x-forwarded-proto", f.proto)?;
        }
        return Ok(());
    }
    // Anyone else (including a peer whose address is unknown) cannot vouch for anything.
    for h in &CLIENT_IDENTITY_HEADERS {
        req.remove_header(h);
    }
    // Replaced, not appended to (an insert replaces every value of the name).
    match f
        .peer
        .and_then(|ip| HeaderValue::from_str(&ip.to_string()).ok())
    {
        Some(ip) => {
            req.insert_header(X_FORWARDED_FOR, ip.clone())?;
            req.insert_header(X_REAL_IP, ip)?;
        }
        None => {
            req.remove_header(&X_FORWARDED_FOR);
            req.remove_header(&X_REAL_IP);
        }
    }
    req.insert_header(X_FORWARDED_PROTO, f.proto)?;
    Ok(())
}

/// Removes `_method` parameters (any case) from the query: on a priced path the method the
/// request was charged as is the one the upstream sees.
///
/// # Errors
/// A target that no longer parses (never: only whole parameters are removed).
fn strip_query_overrides(req: &mut RequestHeader) -> Result<()> {
    let Some(pq) = req.uri.path_and_query() else {
        return Ok(());
    };
    let Some((path, query)) = pq.as_str().split_once('?') else {
        return Ok(());
    };
    let is_override = |p: &&str| {
        p.split('=')
            .next()
            .is_some_and(|k| k.eq_ignore_ascii_case("_method"))
    };
    if !query.split('&').any(|p| is_override(&p)) {
        return Ok(());
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_override(p)).collect();
    let target = if kept.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", kept.join("&"))
    };
    let uri = http::Uri::builder()
        .path_and_query(target)
        .build()
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "rewriting the target", e))?;
    req.set_uri(uri);
    Ok(())
}

/// Notes what a response head means for the downstream connection: a refused websocket
/// handshake (any final status but `101`) leaves the held request body unended, so the
/// connection must close after it (the client's close ends the exchange).
pub fn note_response(
    session: &mut pingora::proxy::Session,
    r: &ResponseHeader,
    upgrade_held: bool,
) {
    if upgrade_held && r.status.as_u16() != 101 && !r.status.is_informational() {
        session.set_keepalive(None);
    }
}

/// The request-body length a held websocket handshake reads as (never reached: the body turns
/// into the tunnel's client half at the `101`).
const HELD_BODY: HeaderValue = HeaderValue::from_static("9223372036854775807");

/// Holds a websocket handshake's request body open until the upstream answers.
///
/// Pingora 0.9 queues the end of an empty request body before the upstream answers; when the
/// upstream's `101` is read first, that end is taken for the end of the tunnel's client half
/// and the tunnel is closed at once (cloudflare/pingora#946). A request framed as a long body
/// queues nothing: the client sends nothing before the `101` (RFC 6455 §4.1), and at the
/// `101` Pingora reads the rest of the connection as the tunnel. The upstream still gets
/// `content-length: 0` ([`prepare_request`]). Only for a `GET` with `Upgrade: websocket` and
/// no body framing of its own; returns whether the request was held.
///
/// # Errors
/// Header construction errors.
pub fn hold_upgrade_body(req: &mut RequestHeader) -> Result<bool> {
    if !asks_websocket(req)
        || req.method != http::Method::GET
        || req.version != http::Version::HTTP_11
        || req.headers.contains_key(header::CONTENT_LENGTH)
        || req.headers.contains_key(header::TRANSFER_ENCODING)
    {
        return Ok(false);
    }
    req.insert_header(header::CONTENT_LENGTH, HELD_BODY)?;
    Ok(true)
}

fn asks_websocket(req: &RequestHeader) -> bool {
    req.headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"))
}

/// Removes `Upgrade`, `HTTP2-Settings` and their `Connection` tokens, so no request turns into
/// a tunnel (an h2c upgrade would carry further requests that are never priced). A websocket
/// route keeps an `Upgrade: websocket` (and only that).
fn strip_upgrade(req: &mut RequestHeader, websocket: bool) -> Result<()> {
    if websocket && asks_websocket(req) {
        req.remove_header(&HeaderName::from_static("http2-settings"));
        return Ok(());
    }
    if !req.headers.contains_key(header::UPGRADE) && !req.headers.contains_key("http2-settings") {
        return Ok(());
    }
    req.remove_header(&header::UPGRADE);
    req.remove_header(&HeaderName::from_static("http2-settings"));
    let kept: Vec<String> = req
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_owned)
        .collect();
    req.remove_header(&header::CONNECTION);
    if !kept.is_empty() {
        req.insert_header(header::CONNECTION, kept.join(", "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(s: &[&str]) -> Vec<Cidr> {
        s.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let xff = HeaderValue::from_static("1.2.3.4, 10.0.0.7");
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(client_ip(Some(peer), Some(&xff), &[]), Some(peer));
        let t = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(Some(peer), Some(&xff), &t),
            Some("1.2.3.4".parse().unwrap())
        );
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(Some(stranger), Some(&xff), &t), Some(stranger));
    }

    #[test]
    fn untrusted_forwarding_headers_are_replaced() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        req.insert_header("x-forwarded-for", "6.6.6.6").unwrap();
        req.insert_header("x-real-ip", "6.6.6.6").unwrap();
        req.insert_header("forwarded", "for=6.6.6.6").unwrap();
        req.insert_header("x-http-method-override", "GET").unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        req.insert_header("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA")
            .unwrap();
        req.insert_header("connection", "Upgrade, HTTP2-Settings, keep-alive")
            .unwrap();
        let f = Forwarding {
            peer: Some("192.0.2.5".parse().unwrap()),
            trusted_peer: false,
            proto: "http",
            priced_path: true,
            websocket: false,
            upgrade_held: false,
            host: None,
        };
        prepare_request(&mut req, f).unwrap();
        let get = |n: &str| req.headers.get(n).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(get("x-forwarded-for").as_deref(), Some("192.0.2.5"));
        assert_eq!(get("x-real-ip").as_deref(), Some("192.0.2.5"));
        assert_eq!(get("forwarded"), None);
        assert_eq!(get("x-http-method-override"), None);
        assert_eq!(get("upgrade"), None);
        assert_eq!(get("http2-settings"), None);
        assert_eq!(get("connection").as_deref(), Some("keep-alive"));
    }

    #[test]
    fn websocket_routes_keep_only_a_websocket_upgrade() {
        let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header("connection", "Upgrade").unwrap();
        let f = Forwarding {
            peer: None,
            trusted_peer: false,
            proto: "http",
            priced_path: false,
            websocket: true,
            upgrade_held: false,
            host: None,
        };
        prepare_request(&mut req, f).unwrap();
        assert!(req.headers.contains_key("upgrade"));
        let mut req = RequestHeader::build("GET", b"/ws", None).unwrap();
        req.insert_header("upgrade", "h2c").unwrap();
        prepare_request(&mut req, f).unwrap();
        assert!(!req.headers.contains_key("upgrade"));
    }

    #[test]
    fn the_origin_is_the_listeners_unless_a_trusted_proxy_says_otherwise() {
        let mut req = RequestHeader::build("GET", b"/paid/x", None).unwrap();
        req.insert_header("host", "api.example:8402").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        req.insert_header("x-forwarded-host", "public.example")
            .unwrap();
        assert_eq!(
            origin(&req, false, false),
            ("http", Some("api.example:8402"))
        );
        assert_eq!(
            origin(&req, true, false),
            ("https", Some("api.example:8402"))
        );
        assert_eq!(origin(&req, false, true), ("https", Some("public.example")));
        // A proxy's `http` is believed too (TLS ended before it); junk is not.
        req.insert_header("x-forwarded-proto", "http, https")
            .unwrap();
        req.insert_header("x-forwarded-host", "evil.example/path")
            .unwrap();
        assert_eq!(origin(&req, true, true), ("http", Some("api.example:8402")));
        req.insert_header("x-forwarded-proto", "gopher").unwrap();
        assert_eq!(origin(&req, true, true).0, "https");
        // HTTP/2 carries the host as `:authority` (in the URI), not `Host`.
        let mut req = RequestHeader::build("GET", b"/paid/x", None).unwrap();
        req.set_uri(http::Uri::from_static("https://h2.example/paid/x"));
        assert_eq!(origin(&req, true, false), ("https", Some("h2.example")));
    }
}
