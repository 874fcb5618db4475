//! The floor of the gateway's stack for the load benchmark (`benches/load/run.sh`): a Pingora
//! proxy with the gateway's server settings and no x402 logic. Every request is forwarded to
//! the upstream, except paths under `/early`, which get a static 402 written from
//! `request_filter` (Pingora's early-response floor, keeping the connection open). `/early-sized`
//! answers a static 402 of the gateway challenge's shape and size (the same headers, a
//! 631-byte `PAYMENT-REQUIRED`, a 423-byte body): the floor for writing the same bytes.
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
    sized_header: http::HeaderValue,
    sized_body: Bytes,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let path = session.req_header().uri.path();
        if !path.starts_with("/early") {
            return Ok(false);
        }
        let sized = path.starts_with("/early-sized");
        let body = if sized { &self.sized_body } else { &self.body };
        let mut h = ResponseHeader::build(402, Some(8))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body.len())?;
        if sized {
            h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
            h.insert_header(http::header::VARY, "Accept")?;
            h.insert_header(http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")?;
            h.insert_header(
                http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
                "PAYMENT-REQUIRED, PAYMENT-RESPONSE, X-PAYMENT-RESPONSE",
            )?;
            h.insert_header("payment-required", self.sized_header.clone())?;
        }
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(body.clone()), true)
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
    let port = listen.rsplit(':').next().unwrap_or("0");
    let dir = x402_gateway::config::runtime_dir(&|k| std::env::var(k).ok());
    let Ok(mut server) = x402_gateway::new_server(
        1,
        &dir.join(format!("bare-pingora-{port}.pid")),
        &dir.join(format!("bare-pingora-{port}.sock")),
    ) else {
        eprintln!("cannot set up the server");
        std::process::exit(1);
    };
    let bare = Bare {
        peer: HttpPeer::new(upstream.as_str(), false, String::new()),
        body: Bytes::from_static(br#"{"error":"payment required"}"#),
        sized_header: http::HeaderValue::from_str(&"e".repeat(631))
            .unwrap_or_else(|_| unreachable!("ASCII letters are a valid header value")),
        sized_body: Bytes::from(format!(r#"{{"error":"{}"}}"#, "x".repeat(423 - 12))),
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, bare);
    service.add_tcp(&listen);
    server.add_service(service);
    server.run_forever()
}
