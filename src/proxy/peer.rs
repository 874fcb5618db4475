//! Upstream peers as Pingora wants them: the `Host` an upstream is sent with, and a peer with
//! the upstream's timeouts, TLS (and private CA) and HTTP version, prepared once. Shared by
//! single-URL upstreams (`upstream.rs`) and pools (`pool.rs`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::WrappedX509;

use crate::config::UpstreamConfig;

/// Requests one HTTP/2 connection to a backend carries at once.
const H2_STREAMS: usize = 100;

/// The `Host` an upstream (or a backend) is sent with `host_header = "upstream"`.
pub(super) fn upstream_host(host: &str, port: u16, tls: bool) -> Option<HeaderValue> {
    let default_port = if tls { 443 } else { 80 };
    let authority = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let v = if port == default_port {
        authority
    } else {
        format!("{authority}:{port}")
    };
    HeaderValue::from_str(&v).ok()
}

/// A peer with the upstream's timeouts, TLS and HTTP version settings.
pub(super) fn prepared_peer(
    c: &UpstreamConfig,
    addr: SocketAddr,
    tls: bool,
    sni: String,
    ca: Option<&Arc<[WrappedX509]>>,
) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, tls, sni);
    peer.options.connection_timeout = Some(c.connect_timeout);
    peer.options.total_connection_timeout = Some(c.connect_timeout);
    peer.options.read_timeout = Some(c.read_timeout);
    peer.options.write_timeout = Some(c.write_timeout);
    peer.options.idle_timeout = Some(Duration::from_secs(60));
    peer.options.ca = ca.cloned();
    if tls {
        // HTTP/2 when the upstream offers it (ALPN), HTTP/1.1 otherwise.
        peer.options.set_http_version(2, 1);
        peer.options.max_h2_streams = H2_STREAMS;
    } else if c.h2c {
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = H2_STREAMS;
    }
    peer
}

/// The private CA of `c`, prepared once.
pub(super) fn prepared_ca(c: &UpstreamConfig) -> Option<Arc<[WrappedX509]>> {
    c.tls_ca.as_ref().map(|certs| {
        certs
            .iter()
            .map(|der| WrappedX509::new(der.clone(), pingora::utils::tls::parse_x509))
            .collect::<Vec<_>>()
            .into()
    })
}
