//! Talking to a facilitator: the [`Facilitator`] trait (so tests and the embedded facilitator
//! can stand in) and [`FacilitatorClient`], its HTTP implementation: `/verify` and `/settle`
//! over the lean keep-alive client of [`super::http1`], `/supported` over `reqwest`.
//!
//! Owns: request timeouts, auth headers, and reading answers strictly. A `/verify` answer of
//! any status (200, 400, 500) that carries `isValid` is a *verdict*; a `/settle` answer that
//! carries `success` is a settlement result. Anything else is a [`FacilitatorError`]: an outage,
//! never a verdict.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::{HeaderMap, HeaderValue};

use super::http1::{Endpoint, Http1Client};
use crate::config::FacilitatorConfig;
use crate::metrics::Metrics;
use crate::protocol::{SettleResponse, SupportedResponse, VerifyResponse};

/// Why a facilitator gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum FacilitatorError {
    /// Connection refused, reset, DNS failure, an answer that is not HTTP.
    #[error("facilitator unreachable at {url}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
        /// True when no connection was made (the request was certainly not processed).
        connect: bool,
    },
    /// No answer within the timeout.
    #[error("facilitator did not answer {url} within {timeout:?}")]
    Timeout {
        /// The endpoint.
        url: String,
        /// The timeout that passed.
        timeout: Duration,
    },
    /// An answer that is not the expected JSON.
    #[error(
        "facilitator answered {url} with HTTP {status} and no valid {expected} body: {snippet}"
    )]
    Malformed {
        /// The endpoint.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was expected.
        expected: &'static str,
        /// The start of the body, for the log.
        snippet: String,
    },
    /// The embedded facilitator's chain RPC failed (URLs already redacted).
    #[error("chain RPC failed: {0}")]
    Chain(String),
    /// The embedded facilitator's chain RPC failed before anything was sent.
    #[error("chain RPC failed before sending: {0}")]
    ChainNotSent(String),
    /// Too many facilitator calls are in flight (`[limits] max_concurrent_facilitator_calls`);
    /// this one was not made.
    #[error("too many facilitator calls in flight")]
    Busy,
}

impl FacilitatorError {
    /// True when the request may have been processed (so a settlement might have happened).
    pub fn may_have_happened(&self) -> bool {
        !matches!(
            self,
            FacilitatorError::Unreachable { connect: true, .. }
                | FacilitatorError::ChainNotSent(_)
                | FacilitatorError::Busy
                // Rate limited: refused before anything was done.
                | FacilitatorError::Malformed { status: 429, .. }
        )
    }
}

/// A facilitator with a bound on calls in flight: a call that finds no free place within
/// `wait` is not made ([`FacilitatorError::Busy`]).
pub struct Bounded {
    inner: Arc<dyn Facilitator>,
    permits: tokio::sync::Semaphore,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Bounded {
    /// At most `max` calls of `inner` at once; a call waits at most `wait` for a place. Each
    /// call's duration and outcome go to `metrics`.
    pub fn new(
        inner: Arc<dyn Facilitator>,
        max: usize,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Bounded {
            inner,
            permits: tokio::sync::Semaphore::new(max),
            wait,
            metrics,
        }
    }

    /// Runs `call` with a place (at most `max` at once), timing it.
    async fn timed<T>(
        &self,
        endpoint: &str,
        call: impl std::future::Future<Output = Result<T, FacilitatorError>>,
    ) -> Result<T, FacilitatorError> {
        let start = crate::clock::instant();
        let Ok(Ok(_permit)) = tokio::time::timeout(self.wait, self.permits.acquire()).await else {
            self.metrics
                .facilitator_call(endpoint, "busy", start.elapsed());
            return Err(FacilitatorError::Busy);
        };
        let r = call.await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .facilitator_call(endpoint, outcome, start.elapsed());
        r
    }
}

#[async_trait]
impl Facilitator for Bounded {
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError> {
        self.timed("verify", self.inner.verify(body)).await
    }

    async fn settle(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        self.timed("settle", self.inner.settle(body)).await
    }

    /// Not bounded here: the deferred queue bounds its own settlements (`[payment.deferred]
    /// concurrency`, or its batch budget), so they never take the places of paying requests.
    async fn settle_deferred(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        let start = crate::clock::instant();
        let r = self.inner.settle_deferred(body).await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .facilitator_call("settle", outcome, start.elapsed());
        r
    }

    fn batches(&self) -> bool {
        self.inner.batches()
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let start = crate::clock::instant();
        let r = self.inner.supported().await;
        let outcome = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .facilitator_call("supported", outcome, start.elapsed());
        r
    }
}

/// A facilitator: verifies and settles payments. Bodies are the x402 facilitator request
/// JSON, `{"x402Version":N,"paymentPayload":…,"paymentRequirements":…}`.
#[async_trait]
pub trait Facilitator: Send + Sync {
    /// `POST /verify`.
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError>;
    /// `POST /settle`.
    async fn settle(&self, body: &str) -> Result<SettleResponse, FacilitatorError>;
    /// `GET /supported`.
    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError>;
    /// The native balance of each key that pays gas for settlements (an embedded facilitator;
    /// none for a remote one).
    async fn signer_balances(&self) -> Vec<SignerBalance> {
        Vec::new()
    }
    /// Settles a deferred payment (its response went out already; nobody waits for this
    /// answer): an implementation may hold it briefly to share one transaction with others (the
    /// embedded facilitator's batches). By default, the same as [`Facilitator::settle`].
    async fn settle_deferred(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        self.settle(body).await
    }
    /// Whether [`Facilitator::settle_deferred`] shares transactions (many settlements in one):
    /// the deferred queue then hands it many payments at once instead of a few at a time.
    fn batches(&self) -> bool {
        false
    }
}

/// A settlement signer's gas balance on one network.
#[derive(Clone, Debug)]
pub struct SignerBalance {
    /// CAIP-2 network id.
    pub network: String,
    /// The signer.
    pub signer: alloy::primitives::Address,
    /// Its balance in wei, or why it could not be read (a redacted RPC error).
    pub wei: Result<alloy::primitives::U256, String>,
}

/// HTTP facilitator client.
pub struct FacilitatorClient {
    http: reqwest::Client,
    hot: Http1Client,
    verify: Endpoint,
    settle: Endpoint,
    verify_url: String,
    settle_url: String,
    supported_url: String,
    timeout: Duration,
    settle_timeout: Duration,
}

impl FacilitatorClient {
    /// A client for the facilitator at `url` with the timeouts and headers of `config`. Connections are pooled and kept alive.
    ///
    /// # Errors
    /// When the URL is not `http(s)://` or the HTTP clients cannot be built (TLS setup).
    pub fn new(url: &str, config: &FacilitatorConfig) -> Result<Self, String> {
        install_crypto_provider();
        let connect_timeout = config.timeout.min(Duration::from_secs(5));
        let hot = Http1Client::new(url, connect_timeout)?;
        let raw_headers: Vec<(String, String)> = config
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.expose().to_owned()))
            .collect();
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            if let Ok(mut v) = HeaderValue::from_str(value.expose()) {
                v.set_sensitive(true);
                headers.insert(name.clone(), v);
            }
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let (verify, settle) = (
            hot.endpoint("/verify", &raw_headers, true),
            hot.endpoint("/settle", &raw_headers, false),
        );
        Ok(FacilitatorClient {
            http,
            hot,
            verify,
            settle,
            verify_url: format!("{url}/verify"),
            settle_url: format!("{url}/settle"),
            supported_url: format!("{url}/supported"),
            timeout: config.timeout,
            settle_timeout: config.settle_timeout,
        })
    }

    async fn call(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), FacilitatorError> {
        let send = async {
            let resp = req.send().await?;
            let status = resp.status().as_u16();
            Ok::<_, reqwest::Error>((status, resp.bytes().await?))
        };
        bounded(url, timeout, send, |e: &reqwest::Error| {
            (e.is_timeout(), e.is_connect())
        })
        .await
    }

    async fn post(
        &self,
        endpoint: &Endpoint,
        url: &str,
        body: &str,
        timeout: Duration,
    ) -> Result<(u16, bytes::Bytes), FacilitatorError> {
        bounded(url, timeout, self.hot.post(endpoint, body), |e| {
            (false, e.is_connect())
        })
        .await
    }
}

/// Runs one facilitator call within `timeout`; `classify` says whether a transport error is a
/// timeout and whether it happened before connecting.
async fn bounded<T, E: std::error::Error + Send + Sync + 'static>(
    url: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, E>>,
    classify: impl FnOnce(&E) -> (bool, bool),
) -> Result<T, FacilitatorError> {
    let timed_out = || FacilitatorError::Timeout {
        url: url.to_owned(),
        timeout,
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(timed_out()),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => match classify(&e) {
            (true, _) => Err(timed_out()),
            (false, connect) => Err(FacilitatorError::Unreachable {
                url: url.to_owned(),
                connect,
                source: Box::new(e),
            }),
        },
    }
}

fn malformed(url: &str, status: u16, expected: &'static str, body: &[u8]) -> FacilitatorError {
    FacilitatorError::Malformed {
        url: url.to_owned(),
        status,
        expected,
        snippet: String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

/// Reads a `/verify` answer: any status whose JSON has a boolean `isValid` is a verdict.
pub fn read_verify(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<VerifyResponse, FacilitatorError> {
    serde_json::from_slice::<VerifyResponse>(body)
        .map_err(|_| malformed(url, status, "verify", body))
}

/// Reads a `/settle` answer: any status whose JSON has a `success` key is a settlement result
/// (a missing or `null` `success` is read as failure by [`SettleResponse::is_success`]).
pub fn read_settle(
    url: &str,
    status: u16,
    body: &[u8],
) -> Result<SettleResponse, FacilitatorError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| malformed(url, status, "settle", body))?;
    if v.get("success").is_none() {
        return Err(malformed(url, status, "settle", body));
    }
    serde_json::from_value(v).map_err(|_| malformed(url, status, "settle", body))
}

#[async_trait]
impl Facilitator for FacilitatorClient {
    async fn verify(&self, body: &str) -> Result<VerifyResponse, FacilitatorError> {
        let (status, bytes) = self
            .post(&self.verify, &self.verify_url, body, self.timeout)
            .await?;
        read_verify(&self.verify_url, status, &bytes)
    }

    async fn settle(&self, body: &str) -> Result<SettleResponse, FacilitatorError> {
        let (status, bytes) = self
            .post(&self.settle, &self.settle_url, body, self.settle_timeout)
            .await?;
        read_settle(&self.settle_url, status, &bytes)
    }

    async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
        let url = &self.supported_url;
        let (status, bytes) = self.call(self.http.get(url), url, self.timeout).await?;
        if !(200..300).contains(&status) {
            return Err(malformed(url, status, "supported", &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|_| malformed(url, status, "supported", &bytes))
    }
}

pub use crate::edge::install_crypto_provider;

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every settlement with the name of the method that was called.
    struct Batching;

    fn named(method: &str) -> SettleResponse {
        SettleResponse {
            success: Some(false),
            error_reason: Some(method.into()),
            error_message: None,
            payer: None,
            transaction: None,
            network: None,
        }
    }

    #[async_trait]
    impl Facilitator for Batching {
        async fn verify(&self, _: &str) -> Result<VerifyResponse, FacilitatorError> {
            Err(FacilitatorError::Busy)
        }
        async fn settle(&self, _: &str) -> Result<SettleResponse, FacilitatorError> {
            Ok(named("settle"))
        }
        async fn settle_deferred(&self, _: &str) -> Result<SettleResponse, FacilitatorError> {
            Ok(named("settle_deferred"))
        }
        async fn supported(&self) -> Result<SupportedResponse, FacilitatorError> {
            Err(FacilitatorError::Busy)
        }
        fn batches(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn the_bound_passes_deferred_settlements_and_batching_through() {
        let b = Bounded::new(
            Arc::new(Batching),
            4,
            Duration::from_secs(1),
            Arc::new(Metrics::new().unwrap()),
        );
        assert!(b.batches());
        let deferred = b.settle_deferred("{}").await.unwrap();
        assert_eq!(deferred.error_reason.as_deref(), Some("settle_deferred"));
        let now = b.settle("{}").await.unwrap();
        assert_eq!(now.error_reason.as_deref(), Some("settle"));
        // Deferred settlements never take the places of paying requests.
        let full = Bounded::new(
            Arc::new(Batching),
            0,
            Duration::from_millis(5),
            Arc::new(Metrics::new().unwrap()),
        );
        assert!(full.settle_deferred("{}").await.is_ok());
        assert!(matches!(
            full.settle("{}").await,
            Err(FacilitatorError::Busy)
        ));
    }

    #[test]
    fn a_rate_limited_answer_did_nothing() {
        let e = |status| FacilitatorError::Malformed {
            url: "u".into(),
            status,
            expected: "settle",
            snippet: String::new(),
        };
        assert!(!e(429).may_have_happened());
        assert!(e(502).may_have_happened());
    }

    #[test]
    fn verdicts_come_with_any_status() {
        for status in [200, 400, 500] {
            let v = read_verify(
                "u",
                status,
                br#"{"isValid":false,"invalidReason":"invalid_exact_evm_signature","payer":null}"#,
            )
            .unwrap();
            assert!(!v.is_valid);
            assert_eq!(
                v.invalid_reason.as_deref(),
                Some("invalid_exact_evm_signature")
            );
        }
        assert!(
            read_verify("u", 200, br#"{"isValid":true}"#)
                .unwrap()
                .is_valid
        );
    }

    #[test]
    fn garbled_answers_are_outages() {
        for body in [
            &b"<html>bad gateway</html>"[..],
            b"{}",
            br#"{"isValid":"yes"}"#,
            b"",
        ] {
            assert!(matches!(
                read_verify("u", 502, body),
                Err(FacilitatorError::Malformed { .. })
            ));
        }
        for body in [&b"{}"[..], b"oops", br#"{"transaction":"0x1"}"#] {
            assert!(read_settle("u", 200, body).is_err());
        }
    }

    #[test]
    fn settle_results_are_read_fail_closed() {
        let r = read_settle("u", 200, br#"{"success":false,"errorReason":"insufficient_funds","transaction":"","network":"eip155:84532"}"#).unwrap();
        assert!(!r.is_success());
        let r = read_settle("u", 500, br#"{"success":null}"#).unwrap();
        assert!(!r.is_success());
        let r = read_settle(
            "u",
            200,
            br#"{"success":true,"transaction":"0xab","network":"eip155:84532"}"#,
        )
        .unwrap();
        assert!(r.is_success());
    }
}
