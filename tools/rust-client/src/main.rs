//! The crates.io `x402-reqwest` client paying one URL; prints {status, body, receipt} as JSON.
//!
//!     PAYER_KEY=0x... x402-reqwest-client URL v2|v1

use std::sync::Arc;

use alloy_signer_local::PrivateKeySigner;
use base64::Engine as _;
use x402_chain_eip155::{V1Eip155ExactClient, V2Eip155ExactClient};
use x402_reqwest::{ReqwestWithPayments, ReqwestWithPaymentsBuild, X402Client};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let url = args.next().expect("usage: x402-reqwest-client URL v2|v1");
    let mode = args.next().unwrap_or_else(|| "v2".into());
    let signer = Arc::new(std::env::var("PAYER_KEY").expect("PAYER_KEY").parse::<PrivateKeySigner>().expect("a private key"));
    let x402 = if mode == "v1" {
        X402Client::new().register(V1Eip155ExactClient::new(signer))
    } else {
        X402Client::new().register(V2Eip155ExactClient::new(signer))
    };
    let client = reqwest::Client::new().with_payments(x402).build();
    let out = match client.get(&url).send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let header = resp.headers().get("payment-response").or_else(|| resp.headers().get("x-payment-response")).cloned();
            let body = resp.text().await.unwrap_or_default();
            let receipt = header
                .and_then(|h| base64::engine::general_purpose::STANDARD.decode(h.as_bytes()).ok())
                .and_then(|j| serde_json::from_slice::<serde_json::Value>(&j).ok());
            serde_json::json!({"status": status, "body": body, "receipt": receipt})
        }
        Err(e) => serde_json::json!({"status": 0, "error": e.to_string()}),
    };
    println!("{out}");
}
