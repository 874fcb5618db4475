//! The built-in sample API (`x402-gateway sample-api`): an ordinary JSON API that knows nothing
//! about payments, the upstream of the demo and of the deploy examples.
//!
//! Owns: its two endpoints, `GET /weather/{city}` (deterministic made-up weather) and
//! `GET /health`; anything else is `404`.

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::services::listening::Service;

use crate::clock::unix_now;
use crate::facilitator::server::{json, read_body};

/// The demo's upstream: an ordinary JSON API that knows nothing about payments.
/// `GET /weather/{city}`, `GET /health`; anything else 404.
pub struct SampleApi;

#[async_trait]
impl ServeHttp for SampleApi {
    async fn response(&self, s: &mut ServerSession) -> Response<Vec<u8>> {
        let path = s.req_header().uri.path().to_owned();
        let _ = read_body(s, 1 << 20).await;
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
