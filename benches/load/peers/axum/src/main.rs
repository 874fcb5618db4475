//! x402-axum peer for the load benchmark.
//!
//! `GET /paid` is guarded by the x402-axum middleware (protocol v2, scheme `exact`, Base Sepolia
//! USDC, $0.001) which calls the facilitator's `/supported`, `/verify` and `/settle`; the handler
//! forwards to `GET {UPSTREAM_URL}/paid` through one shared keep-alive client.
//!
//! Environment: `LISTEN` (default `127.0.0.1:18501`), `UPSTREAM_URL` (default
//! `http://127.0.0.1:18100`), `FACILITATOR_URL` (default `http://127.0.0.1:18200`), `THREADS`
//! (tokio worker threads, default 1). Nothing is logged per request.

use std::sync::Arc;

use alloy_primitives::address;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use x402_axum::X402Middleware;
use x402_chain_eip155::{KnownNetworkEip155, V2Eip155Exact};
use x402_types::networks::USDC;

/// Shared state of the paid handler.
struct Upstream {
    client: reqwest::Client,
    url: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = env_or("LISTEN", "127.0.0.1:18501");
    let upstream_url = env_or("UPSTREAM_URL", "http://127.0.0.1:18100");
    let facilitator_url = env_or("FACILITATOR_URL", "http://127.0.0.1:18200");
    let threads: usize = env_or("THREADS", "1").parse()?;

    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?
        .block_on(serve(listen, upstream_url, facilitator_url))
}

async fn serve(
    listen: String,
    upstream_url: String,
    facilitator_url: String,
) -> Result<(), Box<dyn std::error::Error>> {
    // Facilitator client (x402-axum's own reqwest client): /verify, /settle, /supported.
    let x402 = X402Middleware::try_from(facilitator_url)?
        .with_base_url(url::Url::parse(&format!("http://{listen}/"))?);

    // $0.001 of Base Sepolia USDC = "1000" atomic units, paid to Hardhat account #3.
    let mut price = V2Eip155Exact::price_tag(
        address!("0x90F79bf6EB2c4f870365E785982E1f101E93b906"),
        USDC::base_sepolia().parse("0.001")?,
    );
    // The library writes `extra` as {"assetTransferMethod":"eip3009","name":"USDC","version":"2"};
    // advertise the plain EIP-712 domain hints that other x402 servers send, so that clients
    // which echo `accepted` through a {name, version} type still match exactly.
    price.requirements.extra = Some(serde_json::json!({"name": "USDC", "version": "2"}));

    let paywall = x402
        .with_price_tag(price)
        .with_description("x402 load benchmark resource".to_owned())
        .with_mime_type("application/json".to_owned());

    let state = Arc::new(Upstream {
        client: reqwest::Client::builder()
            .no_proxy()
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build()?,
        url: format!("{}/paid", upstream_url.trim_end_matches('/')),
    });

    let app = Router::new()
        .route("/paid", get(paid).layer(paywall))
        .with_state(state);

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("x402-axum-peer listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// Forwards to `GET {UPSTREAM_URL}/paid` and returns its status, content-type and body.
async fn paid(State(up): State<Arc<Upstream>>) -> Response {
    let resp = match up.client.get(&up.url).send().await {
        Ok(r) => r,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(_) => return StatusCode::BAD_GATEWAY.into_response(),
    };
    let mut out = (status, body).into_response();
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    } else {
        out.headers_mut().remove(header::CONTENT_TYPE);
    }
    out
}
