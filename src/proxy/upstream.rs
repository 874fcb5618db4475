//! The upstream side: the prepared peer and what is removed from or added to forwarded
//! requests.
//!
//! Owns: [`UpstreamTarget`] (an `HttpPeer` built once, with timeouts) and
//! [`prepare_request`]: payment credentials are stripped (the upstream never sees a signature),
//! `X-Forwarded-For`/`X-Forwarded-Proto` are set.

use pingora::http::RequestHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

use crate::config::UpstreamConfig;
use crate::protocol::CREDENTIAL_HEADERS;

/// The upstream peer, prepared once.
pub struct UpstreamTarget {
    peer: HttpPeer,
}

impl UpstreamTarget {
    /// Builds the peer from the configuration.
    pub fn new(c: &UpstreamConfig) -> Self {
        let mut peer = HttpPeer::new(c.address.as_str(), c.tls, c.sni.clone());
        peer.options.connection_timeout = Some(c.connect_timeout);
        peer.options.total_connection_timeout = Some(c.connect_timeout);
        peer.options.read_timeout = Some(c.read_timeout);
        peer.options.write_timeout = Some(c.write_timeout);
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(60));
        UpstreamTarget { peer }
    }

    /// A peer for one request.
    pub fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }
}

/// Strips payment credentials and sets forwarding headers.
///
/// # Errors
/// Header construction errors.
pub fn prepare_request(req: &mut RequestHeader, client_ip: Option<String>) -> Result<()> {
    for h in &CREDENTIAL_HEADERS {
        req.remove_header(h);
    }
    if let Some(ip) = client_ip {
        let xff = match req
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip,
        };
        req.insert_header("x-forwarded-for", xff)?;
    }
    if !req.headers.contains_key("x-forwarded-proto") {
        req.insert_header("x-forwarded-proto", "http")?;
    }
    Ok(())
}
