//! The floor of the gateway's stack for the load benchmark (`benches/load/run.sh`): a Pingora
//! proxy with the gateway's server settings and no x402 logic. Every request is forwarded to
//! the upstream, except paths under `/early`, which get a static 402 written from
//! `request_filter` (Pingora's early-response floor, keeping the connection open).
//!
//! ```sh
//! cargo run --release --example bare_pingora -- 127.0.0.1:18300 127.0.0.1:18100
//! ```

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{ProxyHttp, Session};
use pingora::Result;

/// The gateway's allocator, so the comparison isolates the x402 work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: HttpPeer,
    body: Bytes,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        if !session.req_header().uri.path().starts_with("/early") {
            return Ok(false);
        }
        let mut h = ResponseHeader::build(402, Some(2))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, self.body.len())?;
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(self.body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _s: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let mut server = x402_gateway::new_server(1, &listen);
    let bare = Bare {
        peer: HttpPeer::new(upstream.as_str(), false, String::new()),
        body: Bytes::from_static(br#"{"error":"payment required"}"#),
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, bare);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever()
}
