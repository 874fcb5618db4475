//! Small HTTP servers on Pingora's `ServeHttp`: the standalone facilitator
//! (`x402-gateway facilitator`), which serves any [`Facilitator`] in the x402 facilitator API,
//! and the built-in sample API the demo puts behind the gateway.
//!
//! Owns: request routing and body limits of those two servers. The facilitator answers
//! `GET /supported`, `POST /verify` and `POST /settle` with the v1 and v2 request shapes
//! (the version is inside the body); verdicts are HTTP 200, outages 502.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::verify::{unix_now, Facilitator};

/// Largest request body accepted (a payment with a smart-wallet signature is a few KiB).
const MAX_BODY: usize = 256 * 1024;

fn json(status: StatusCode, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.into_bytes())
        .unwrap_or_default()
}

async fn read_body(s: &mut ServerSession) -> Option<String> {
    let mut body = Vec::new();
    loop {
        match s.read_request_body().await {
            Ok(Some(chunk)) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return None;
                }
            }
            Ok(None) => return String::from_utf8(body).ok(),
            Err(_) => return None,
        }
    }
}

/// The facilitator API over any [`Facilitator`].
pub struct FacilitatorApp {
    inner: Arc<dyn Facilitator>,
}

#[async_trait]
impl ServeHttp for FacilitatorApp {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let method = s.req_header().method.clone();
        let path = s.req_header().uri.path().trim_end_matches('/').to_owned();
        let bad = |msg: &str| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": msg}).to_string(),
            )
        };
        let outage = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, "facilitator request failed");
            json(
                StatusCode::BAD_GATEWAY,
                serde_json::json!({"error": e.to_string()}).to_string(),
            )
        };
        match (method.as_str(), path.as_str()) {
            ("GET", "/supported") => match self.inner.supported().await {
                Ok(r) => json(
                    StatusCode::OK,
                    serde_json::to_string(&r).unwrap_or_default(),
                ),
                Err(e) => outage(&e),
            },
            ("POST", "/verify") | ("POST", "/settle") => {
                let Some(body) = read_body(s).await else {
                    return bad("request body missing, not UTF-8, or too large");
                };
                if path == "/verify" {
                    match self.inner.verify(&body).await {
                        Ok(r) => json(
                            StatusCode::OK,
                            serde_json::to_string(&r).unwrap_or_default(),
                        ),
                        Err(e) => outage(&e),
                    }
                } else {
                    match self.inner.settle(&body).await {
                        Ok(r) => json(
                            StatusCode::OK,
                            serde_json::to_string(&r).unwrap_or_default(),
                        ),
                        Err(e) => outage(&e),
                    }
                }
            }
            _ => json(
                StatusCode::NOT_FOUND,
                r#"{"error":"not found: use GET /supported, POST /verify, POST /settle"}"#.into(),
            ),
        }
    }
}

/// Adds the facilitator API on `listen` to a server.
pub fn add_facilitator_service(server: &mut Server, inner: Arc<dyn Facilitator>, listen: &str) {
    let mut service = Service::new("x402 facilitator".to_owned(), FacilitatorApp { inner });
    service.add_tcp(listen);
    server.add_service(service);
}

/// The demo's upstream: an ordinary JSON API that knows nothing about payments.
/// `GET /weather/{city}`, `GET /health`; anything else 404.
pub struct SampleApi;

#[async_trait]
impl ServeHttp for SampleApi {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_owned();
        let _ = read_body(s).await;
        if path == "/health" {
            return json(StatusCode::OK, r#"{"status":"ok"}"#.into());
        }
        if let Some(city) = path
            .strip_prefix("/weather/")
            .filter(|c| !c.is_empty() && !c.contains('/'))
        {
            // Deterministic "weather" from the city name and the hour.
            let seed = city.bytes().fold(unix_now() / 3600, |h, b| {
                h.wrapping_mul(31).wrapping_add(u64::from(b))
            });
            let conditions = ["sunny", "cloudy", "rain", "windy", "snow"][(seed / 35 % 5) as usize];
            let body = serde_json::json!({
                "city": city,
                "temperature_c": (seed % 35) as i64 - 5,
                "conditions": conditions,
                "served_at": unix_now(),
            });
            return json(StatusCode::OK, body.to_string());
        }
        json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into())
    }
}

/// Adds the sample API on `listen` to a server.
pub fn add_sample_api_service(server: &mut Server, listen: &str) {
    let mut service = Service::new("sample API".to_owned(), SampleApi);
    service.add_tcp(listen);
    server.add_service(service);
}
