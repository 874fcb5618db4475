//! Test harness: an in-process gateway on an ephemeral port, a mock upstream and a scripted
//! facilitator (both small HTTP/1.1 servers on `127.0.0.1:0` that record what they receive).
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::primitives::B256;
use alloy::signers::local::PrivateKeySigner;
use pingora::apps::ServerApp;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::server::configuration::ServerConf;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::watch;
use x402_gateway::config::Config;
use x402_gateway::journal::{self, JournalState};
use x402_gateway::protocol::{self, v1, v2};
use x402_gateway::verify::{Facilitator, FacilitatorClient};
use x402_gateway::{build_gateway, client, fetch_supported};

// === Mock HTTP server ===

#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub delay: Duration,
    /// Interim (1xx) answers written before this one.
    pub interim: Vec<u16>,
}

impl Response {
    pub fn json(status: u16, body: &str) -> Self {
        Response {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
            interim: Vec::new(),
        }
    }

    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }

    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

pub struct MockServer {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Faults to inject (chaos tests): refuse connections, stall answers.
    pub faults: Arc<ServerFaults>,
}

/// Faults of a [`MockServer`].
#[derive(Default)]
pub struct ServerFaults {
    /// New and kept-alive connections are dropped (as a killed server's would be).
    pub down: std::sync::atomic::AtomicBool,
    /// Answers wait this long first.
    pub stall_ms: std::sync::atomic::AtomicU64,
}

impl MockServer {
    pub async fn start(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> MockServer {
        Self::start_with_tls(handler, None).await
    }

    /// A mock server behind TLS (`acceptor`), or plain HTTP.
    pub async fn start_with_tls(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> MockServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let recorded = requests.clone();
        let faults = Arc::new(ServerFaults::default());
        let f = faults.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                if f.down.load(Ordering::SeqCst) {
                    drop(sock);
                    continue;
                }
                let (handler, recorded) = (handler.clone(), recorded.clone());
                let acceptor = acceptor.clone();
                let f = f.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve(sock, handler, recorded, f).await,
                        Some(a) => {
                            if let Ok(tls) = a.accept(sock).await {
                                serve(tls, handler, recorded, f).await;
                            }
                        }
                    }
                });
            }
        });
        MockServer {
            addr,
            requests,
            faults,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn count_path(&self, path: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.target == path)
            .count()
    }

    pub fn last(&self) -> Option<Request> {
        self.requests.lock().unwrap().last().cloned()
    }
}

/// Serves HTTP/1.1 requests on one connection until it closes.
async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: S,
    handler: Handler,
    recorded: Arc<Mutex<Vec<Request>>>,
    faults: Arc<ServerFaults>,
) {
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    while let Some(req) = read_request(&mut r, &mut w).await {
        if faults.down.load(Ordering::SeqCst) {
            return;
        }
        recorded.lock().unwrap().push(req.clone());
        let stall = faults.stall_ms.load(Ordering::SeqCst);
        if stall > 0 {
            tokio::time::sleep(Duration::from_millis(stall)).await;
        }
        let resp = handler(&req);
        if !resp.delay.is_zero() {
            tokio::time::sleep(resp.delay).await;
        }
        for code in &resp.interim {
            let line =
                format!("HTTP/1.1 {code} Interim\r\nlink: </style.css>; rel=preload\r\n\r\n");
            if w.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
        let mut out = format!(
            "HTTP/1.1 {} X\r\ncontent-length: {}\r\n",
            resp.status,
            resp.body.len()
        );
        for (k, v) in &resp.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&resp.body);
        if w.write_all(&bytes).await.is_err() || w.flush().await.is_err() {
            return;
        }
    }
}

/// Reads one request; answers `Expect: 100-continue` with `100 Continue` before the body, as a
/// real server does.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin, W: tokio::io::AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.trim_end().splitn(3, ' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).await.ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if find("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    let mut body = Vec::new();
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        r.read_exact(&mut body).await.ok()?;
    } else if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim(), 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

// === Mock upstream ===

/// The headers that say what became of a payment; only the gateway may set them.
pub const PAYMENT_OUTCOME_HEADERS: [&str; 3] =
    ["payment-response", "x-payment-response", "x-payment-status"];

/// How long the mock upstream holds an answer to a path containing `slow`.
pub const SLOW_UPSTREAM: Duration = Duration::from_secs(15);

/// A receipt no facilitator wrote: base64 of `{"success":true}`.
pub const FORGED_RECEIPT: &str = "eyJzdWNjZXNzIjp0cnVlfQ==";

/// Each of [`PAYMENT_OUTCOME_HEADERS`] as someone other than the gateway would forge it.
pub const FORGED_OUTCOME: [(&str, &str); 3] = [
    ("payment-response", FORGED_RECEIPT),
    ("x-payment-response", FORGED_RECEIPT),
    ("x-payment-status", "queued"),
];

/// An upstream API: `/status/NNN` answers NNN; everything else 200 with a JSON echo.
pub async fn mock_upstream() -> MockServer {
    mock_upstream_tls(None).await
}

/// The mock upstream API, behind TLS when `acceptor` is given.
pub async fn mock_upstream_tls(acceptor: Option<tokio_rustls::TlsAcceptor>) -> MockServer {
    MockServer::start_with_tls(
        |req| {
            let status = req
                .target
                .strip_prefix("/status/")
                .and_then(|s| s.split(['/', '?']).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let body =
                serde_json::json!({"upstream": true, "path": req.target, "method": req.method})
                    .to_string();
            let mut resp = Response::json(status, &body);
            if req.target.contains("overrides") {
                resp = resp.with_header("settlement-overrides", "{\"amount\":\"1\"}");
            }
            if req.target.contains("empty") {
                resp.body.clear();
            }
            if req.target.contains("slow") {
                // Long enough for a test to move a chain's funds meanwhile (a Node process
                // start and a mined transaction, on a loaded machine).
                resp = resp.delayed(SLOW_UPSTREAM);
            }
            if req.target.contains("cacheable") {
                resp = resp.with_header("cache-control", "public, max-age=60");
            }
            if req.target.contains("hints") {
                resp.interim.push(103);
            }
            if req.target.contains("forged-receipt") {
                // An API that says on its own that the request was paid (or queued).
                for (name, value) in FORGED_OUTCOME {
                    resp = resp.with_header(name, value);
                }
            }
            resp
        },
        acceptor,
    )
    .await
}

// === Scripted facilitator ===

#[derive(Clone, Debug)]
pub enum VerifyScript {
    Valid,
    Invalid { status: u16, reason: &'static str },
    Garbage(u16),
    Slow(Duration),
}

#[derive(Clone, Debug)]
pub enum SettleScript {
    Success,
    Fail(&'static str),
    MissingSuccess,
    Garbage,
    Slow(Duration),
    /// `success: false`, `settlement_pending`, with this transaction hash.
    Pending(&'static str),
}

pub struct MockFacilitator {
    pub server: MockServer,
    pub verify: Arc<Mutex<VerifyScript>>,
    pub settle: Arc<Mutex<SettleScript>>,
    pub settled: Arc<AtomicUsize>,
}

pub const TX_HASH: &str = "0x1111111111111111111111111111111111111111111111111111111111111111";

impl MockFacilitator {
    pub async fn start() -> MockFacilitator {
        let verify = Arc::new(Mutex::new(VerifyScript::Valid));
        let settle = Arc::new(Mutex::new(SettleScript::Success));
        let settled = Arc::new(AtomicUsize::new(0));
        let (v, s, n) = (verify.clone(), settle.clone(), settled.clone());
        let server = MockServer::start(move |req| match req.target.as_str() {
            "/supported" => Response::json(
                200,
                r#"{"kinds":[{"x402Version":2,"scheme":"exact","network":"eip155:84532"},{"x402Version":1,"scheme":"exact","network":"base-sepolia"},{"x402Version":2,"scheme":"exact","network":"eip155:8453"},{"x402Version":1,"scheme":"exact","network":"base"}],"extensions":[],"signers":{}}"#,
            ),
            "/verify" => {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                let payer = body["paymentPayload"]["payload"]["authorization"]["from"].clone();
                match v.lock().unwrap().clone() {
                    VerifyScript::Valid => Response::json(200, &serde_json::json!({"isValid": true, "payer": payer}).to_string()),
                    VerifyScript::Invalid { status, reason } => Response::json(
                        status,
                        &serde_json::json!({"isValid": false, "invalidReason": reason, "payer": payer}).to_string(),
                    ),
                    VerifyScript::Garbage(status) => Response::json(status, "<html>bad gateway</html>"),
                    VerifyScript::Slow(d) => Response::json(200, r#"{"isValid":true}"#).delayed(d),
                }
            }
            "/settle" => {
                let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
                let version = body["x402Version"].as_u64().unwrap();
                let network = if version == 1 { "base-sepolia" } else { "eip155:84532" };
                match s.lock().unwrap().clone() {
                    SettleScript::Success => {
                        n.fetch_add(1, Ordering::SeqCst);
                        Response::json(200, &serde_json::json!({"success": true, "transaction": TX_HASH, "network": network}).to_string())
                    }
                    SettleScript::Fail(reason) => Response::json(
                        200,
                        &serde_json::json!({"success": false, "errorReason": reason, "transaction": "", "network": network}).to_string(),
                    ),
                    SettleScript::MissingSuccess => Response::json(200, &serde_json::json!({"transaction": TX_HASH, "network": network}).to_string()),
                    SettleScript::Garbage => Response::json(502, "upstream connect error"),
                    SettleScript::Slow(d) => Response::json(200, r#"{"success":true,"transaction":"0x22","network":"eip155:84532"}"#).delayed(d),
                    SettleScript::Pending(tx) => Response::json(
                        200,
                        &serde_json::json!({"success": false, "errorReason": "settlement_pending", "transaction": tx, "network": network}).to_string(),
                    ),
                }
            }
            _ => Response::json(404, "{}"),
        })
        .await;
        MockFacilitator {
            server,
            verify,
            settle,
            settled,
        }
    }

    pub fn set_verify(&self, s: VerifyScript) {
        *self.verify.lock().unwrap() = s;
    }

    pub fn set_settle(&self, s: SettleScript) {
        *self.settle.lock().unwrap() = s;
    }

    pub fn verify_calls(&self) -> usize {
        self.server.count_path("/verify")
    }

    pub fn settle_calls(&self) -> usize {
        self.server.count_path("/settle")
    }

    /// The JSON body of the last request to `path` (e.g. `/verify`).
    pub fn last_body(&self, path: &str) -> serde_json::Value {
        let requests = self.server.requests.lock().unwrap();
        let r = requests
            .iter()
            .rev()
            .find(|r| r.target == path)
            .expect("no such request");
        serde_json::from_slice(&r.body).unwrap()
    }
}

// === The gateway ===

pub const PAY_TO: &str = "0x7D5c4A0E4B1a5E3F9a1e2B6C8d0F3A5B7C9e1d24";

/// Routes used by most tests.
pub const ROUTES: &str = r#"
[[route]]
path = "/health"
price = "free"

[[route]]
path = "/weather/*"
methods = ["GET"]
price = "$0.001"
description = "Current weather"
mime_type = "application/json"

[[route]]
path = "/reports/**"
price = "$0.05"
settlement = "before_upstream"

[[route]]
path = "/status/**"
price = "$0.001"

[[route]]
path = "/paid/**"
price = "$0.001"
"#;

pub struct TestGateway {
    pub addr: SocketAddr,
    pub upstream: MockServer,
    pub facilitator: MockFacilitator,
    pub payments: Arc<x402_gateway::payments::Payments>,
    pub config: Config,
    /// The config file text (for running the binary's commands on the same files).
    pub text: String,
    shutdown: watch::Sender<bool>,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

impl TestGateway {
    /// Stops the gateway as a process ends: its journal is closed (its payments are anyone's
    /// to take over from then on), and the listener stops.
    pub async fn stop(self) {
        if let Some(j) = self.payments.journal() {
            let _ = j.close().await;
        }
        drop(self);
    }

    /// Waits (on the journal's state, not a fixed time) until `n` payments are in `state`.
    pub async fn until_journal(&self, state: JournalState, n: usize) {
        let path = self.payments.journal().unwrap().path().to_owned();
        let deadline = x402_gateway::clock::instant() + Duration::from_secs(20);
        loop {
            self.payments.journal().unwrap().flush().await.unwrap();
            let conn = journal::open_reader(&path).unwrap();
            let got = journal::query(
                &conn,
                &journal::Filter {
                    states: vec![state],
                    ..journal::Filter::default()
                },
            )
            .unwrap()
            .len();
            if got >= n {
                assert_eq!(got, n, "more {state:?} payments than expected");
                return;
            }
            assert!(
                x402_gateway::clock::instant() < deadline,
                "{got} of {n} payments {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn start() -> TestGateway {
        Self::start_with(ROUTES, "").await
    }

    /// `routes` are `[[route]]` tables; `extra` is appended to `[facilitator]`.
    pub async fn start_with(routes: &str, facilitator_extra: &str) -> TestGateway {
        Self::start_full(routes, facilitator_extra, "").await
    }

    /// As [`TestGateway::start_with`]; `sections` are whole tables (`[server]`, `[limits]`,
    /// `[upstream]` keys other than `url` go in `upstream_extra` of [`TestGateway::start_custom`]).
    pub async fn start_full(routes: &str, facilitator_extra: &str, sections: &str) -> TestGateway {
        let upstream = mock_upstream().await;
        let url = upstream.url();
        Self::start_custom(upstream, &url, "", routes, facilitator_extra, sections).await
    }

    /// The most general start: the upstream server to record, the `[upstream] url` to put in
    /// the config (it may point elsewhere), extra `[upstream]` keys, routes, extra
    /// `[facilitator]` keys and whole extra tables.
    pub async fn start_custom(
        upstream: MockServer,
        upstream_url: &str,
        upstream_extra: &str,
        routes: &str,
        facilitator_extra: &str,
        sections: &str,
    ) -> TestGateway {
        Self::start_recovered(
            upstream,
            upstream_url,
            upstream_extra,
            routes,
            facilitator_extra,
            sections,
            false,
        )
        .await
    }

    /// As [`TestGateway::start_full`], for a process started with `run --upgrade` while this
    /// test process (the "old" gateway) keeps running on the same journal.
    pub async fn start_taking_over(
        routes: &str,
        facilitator_extra: &str,
        sections: &str,
    ) -> TestGateway {
        let upstream = mock_upstream().await;
        let url = upstream.url();
        Self::start_recovered(
            upstream,
            &url,
            "",
            routes,
            facilitator_extra,
            sections,
            true,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn start_recovered(
        upstream: MockServer,
        upstream_url: &str,
        upstream_extra: &str,
        routes: &str,
        facilitator_extra: &str,
        sections: &str,
        taking_over: bool,
    ) -> TestGateway {
        let facilitator = MockFacilitator::start().await;
        // Defaults a test may set itself in `facilitator_extra`.
        let default = |key: &str, value: &str| {
            if facilitator_extra.contains(key) {
                String::new()
            } else {
                format!("{key} = \"{value}\"")
            }
        };
        let (resolve, settle_timeout) = (
            default("resolve_timeout", "1s"),
            default("settle_timeout", "2s"),
        );
        let journal = if sections.contains("[journal]") {
            String::new()
        } else {
            format!(
                "[journal]\npath = \"{}\"\n",
                scratch_file("journal.db").display()
            )
        };
        let text = format!(
            r#"{sections}
{journal}
[upstream]
url = "{upstream_url}"
read_timeout = "5s"
{upstream_extra}
[facilitator]
url = "{}"
timeout = "2s"
{settle_timeout}
{resolve}
{facilitator_extra}
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
{routes}"#,
            facilitator.server.url()
        );
        let config = Config::from_toml(&text, "test", &|_| None).unwrap_or_else(|e| panic!("{e}"));
        // `X402_TEST_LOG=debug` shows the gateway's (and Pingora's) logs of a test.
        if let Ok(level) = std::env::var("X402_TEST_LOG") {
            x402_gateway::telemetry::init(&x402_gateway::config::LoggingConfig {
                format: x402_gateway::config::LogFormat::Text,
                level,
                access_log: true,
                otlp_endpoint: None,
                otlp_service_name: "x402-gateway".into(),
            });
        }
        let client: Arc<dyn Facilitator> = Arc::new(
            FacilitatorClient::new(&facilitator.server.url(), &config.facilitator).unwrap(),
        );
        let supported = fetch_supported(client.as_ref(), 3).await.unwrap();
        let gateway = build_gateway(&config, client, &supported).unwrap();
        let payments = gateway.payments().clone();
        if taking_over {
            payments
                .recover_for_handover(Some(std::process::id()), Duration::from_secs(120))
                .await
                .unwrap();
        } else {
            payments.recover().await.unwrap();
        }
        tokio::spawn(payments.clone().run_deferred());

        let conf = Arc::new(ServerConf::default());
        let mut proxy = pingora::proxy::http_proxy(&conf, gateway);
        // As the binary does: prior-knowledge HTTP/2 when `[server] h2c`.
        let mut options = pingora::apps::HttpServerOptions::default();
        options.h2c = config.server.h2c;
        proxy.server_options = Some(options);
        // Behind the listener's connection limits, as the binary does.
        let limits = x402_gateway::conn::Limits {
            max_connections: config.limits.max_connections,
            header_timeout: config.limits.header_timeout,
        };
        let counters = payments.metrics().connections().clone();
        let guarded = x402_gateway::conn::Guarded::new(proxy, limits, counters);
        let (addr, shutdown) = serve_app(Arc::new(guarded)).await;
        TestGateway {
            addr,
            upstream,
            facilitator,
            payments,
            config,
            text,
            shutdown,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// (verify calls, settle calls, upstream requests).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.facilitator.verify_calls(),
            self.facilitator.settle_calls(),
            self.upstream.count(),
        )
    }

    /// Replaces the running price table with `routes` (as a reload does).
    pub async fn set_routes(&self, routes: Vec<x402_gateway::config::RouteRule>) {
        let client =
            FacilitatorClient::new(&self.facilitator.server.url(), &self.config.facilitator)
                .unwrap();
        let supported = fetch_supported(&client, 3).await.unwrap();
        let kinds = x402_gateway::kinds(&supported);
        self.payments
            .table()
            .store(Arc::new(x402_gateway::price_table(routes, &kinds)));
    }

    /// GETs `path` with `payment` as `PAYMENT-SIGNATURE`, giving up after 5 s.
    pub async fn send(&self, path: &str, payment: &str) -> reqwest::Response {
        http()
            .get(self.url(path))
            .header("payment-signature", payment)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
    }
}

/// Serves a Pingora app on an ephemeral port until the sender is dropped or sent `true`.
pub async fn serve_app<A: ServerApp + Send + Sync + 'static>(
    app: Arc<A>,
) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, rx) = watch::channel(false);
    let mut stop = rx.clone();
    tokio::spawn(async move {
        loop {
            let (sock, peer) = tokio::select! {
                _ = stop.changed() => return,
                r = listener.accept() => match r { Ok(s) => s, Err(_) => return },
            };
            let (app, rx) = (app.clone(), rx.clone());
            tokio::spawn(async move {
                // As Pingora's own listener does: the peer address goes in the digest.
                use pingora::protocols::GetSocketDigest;
                use std::os::fd::AsRawFd;
                let digest = pingora::protocols::SocketDigest::from_raw_fd(sock.as_raw_fd());
                let _ = digest.peer_addr.set(Some(peer.into()));
                let mut l4 = L4Stream::from(sock);
                l4.set_socket_digest(digest);
                let mut stream: pingora::protocols::Stream = Box::new(l4);
                while let Some(s) = app.process_new(stream, &rx).await {
                    stream = s;
                }
            });
        }
    });
    (addr, shutdown)
}

/// A child process killed (and reaped) when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh path in a fresh temporary directory of this test process.
pub fn scratch_file(name: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "x402-test-{}-{}-{}",
        std::process::id(),
        x402_gateway::limiter::now_ms(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === Client side ===

/// Anvil dev account 1 (public key material, never used off a dev chain).
pub const PAYER_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

pub fn payer() -> PrivateKeySigner {
    PAYER_KEY.parse().unwrap()
}

pub fn http() -> reqwest::Client {
    x402_gateway::verify::facilitator::install_crypto_provider();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

pub fn now() -> u64 {
    x402_gateway::clock::unix_now()
}

pub fn decode_required(resp: &reqwest::Response) -> v2::PaymentRequired {
    let h = resp
        .headers()
        .get("payment-required")
        .expect("PAYMENT-REQUIRED header");
    serde_json::from_slice(&protocol::decode_header(h.as_bytes()).unwrap()).unwrap()
}

pub fn decode_receipt(resp: &reqwest::Response, name: &str) -> protocol::SettleResponse {
    let h = resp
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"));
    serde_json::from_slice(&protocol::decode_header(h.as_bytes()).unwrap()).unwrap()
}

/// Gets the 402 for `path` and signs a v2 payment for its first option.
pub async fn pay_v2(gw: &TestGateway, path: &str) -> String {
    let resp = http().get(gw.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 402);
    let required = decode_required(&resp);
    client::sign_v2(&payer(), &required, 0, now(), client::random_nonce()).unwrap()
}

/// Gets the 402 for `path` and signs a v1 payment for its first v1 option.
pub async fn pay_v1(gw: &TestGateway, path: &str) -> String {
    let resp = http().get(gw.url(path)).send().await.unwrap();
    assert_eq!(resp.status(), 402);
    let body: v1::PaymentRequirementsResponse = resp.json().await.unwrap();
    client::sign_v1(&payer(), &body.accepts[0], now(), client::random_nonce()).unwrap()
}

/// A v2 payment with one field of the signed requirement changed before signing.
pub async fn pay_v2_tampered(
    gw: &TestGateway,
    path: &str,
    tamper: impl FnOnce(&mut v2::PaymentRequired),
    at: u64,
    nonce: B256,
) -> String {
    let resp = http().get(gw.url(path)).send().await.unwrap();
    let mut required = decode_required(&resp);
    tamper(&mut required);
    client::sign_v2(&payer(), &required, 0, at, nonce).unwrap()
}

/// Reads the `error` of a 402's `PAYMENT-REQUIRED`.
pub fn challenge_error(resp: &reqwest::Response) -> String {
    decode_required(resp).error.unwrap_or_default()
}

/// Sends a raw HTTP/1.1 GET with the target exactly as given, returns the whole response.
pub async fn raw_get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> String {
    raw_request(addr, "GET", target, headers, b"").await
}

/// Sends a raw HTTP/1.1 request (method and target exactly as given, `connection: close`),
/// returns the whole response as text.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status code of a raw response.
pub fn raw_status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A local chain (anvil with Circle's USDC, `scripts/chain.sh`) on a fresh port, stopped when
/// dropped.
pub struct Chain {
    pub port: u16,
    pub rpc: String,
}

impl Chain {
    /// Starts it (the payer of `scripts/chain.sh` funded with `payer_usdc`).
    pub fn start(payer_usdc: &str) -> Chain {
        let port = free_port();
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chain.sh"))
            .args(["start", &port.to_string()])
            .env("PAYER_USDC", payer_usdc)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "chain did not start");
        Chain {
            port,
            rpc: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chain.sh"))
            .args(["stop", &self.port.to_string()])
            .status();
    }
}

// === Certificates ===

/// A CA and a leaf it signed for `names`, as PEM files in `dir` (`{tag}-ca.pem`,
/// `{tag}.crt`, `{tag}.key`).
pub struct Pki {
    pub ca_pem: String,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub leaf_der: Vec<u8>,
    pub leaf_key_der: Vec<u8>,
}

pub fn pki(dir: &std::path::Path, tag: &str, names: &[&str]) -> Pki {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
    let p = Pki {
        ca_pem: ca.pem(),
        cert: dir.join(format!("{tag}.crt")),
        key: dir.join(format!("{tag}.key")),
        leaf_der: leaf.der().to_vec(),
        leaf_key_der: leaf_key.serialize_der(),
    };
    std::fs::write(dir.join(format!("{tag}-ca.pem")), &p.ca_pem).unwrap();
    std::fs::write(&p.cert, leaf.pem()).unwrap();
    std::fs::write(&p.key, leaf_key.serialize_pem()).unwrap();
    p
}

// === The real binary ===

/// A `gateway.toml` for the binary: `listen` on `port`, the admin listener on `admin`, the
/// upstream and facilitator at these URLs, payments on Base Sepolia; `server_extra` goes into
/// `[server]`, `routes` at the end.
pub fn binary_config(
    port: u16,
    admin: u16,
    upstream: &str,
    facilitator: &str,
    server_extra: &str,
    routes: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:{port}"
{server_extra}
[admin]
listen = "127.0.0.1:{admin}"
[upstream]
url = "{upstream}"
[facilitator]
url = "{facilitator}"
timeout = "2s"
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
{routes}"#
    )
}

/// Starts `x402-gateway run --config CONFIG [extra…]` with its log (info, plain text) in `log`.
pub fn spawn_gateway(
    config: &std::path::Path,
    extra: &[&str],
    log: &std::path::Path,
) -> KillOnDrop {
    KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["run", "--config"])
            .arg(config)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Starts the binary against `upstream` and `facilitator`, with an admin listener, `threads = 1`
/// and `routes`; returns (gateway port, admin port, its log file, the process).
pub fn start_binary(
    upstream: &str,
    facilitator: &str,
    routes: &str,
) -> (u16, u16, std::path::PathBuf, KillOnDrop) {
    let (port, admin) = (free_port(), free_port());
    let config = scratch_file("gateway.toml");
    let text = binary_config(port, admin, upstream, facilitator, "threads = 1", routes);
    std::fs::write(&config, text).unwrap();
    let log = config.with_file_name("gateway.log");
    let process = spawn_gateway(&config, &[], &log);
    (port, admin, log, process)
}

/// How many reloads the admin listener on port `admin` counted as `result`.
pub async fn reload_count(admin: u16, result: &str) -> usize {
    let m = http()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("x402_config_reloads_total{{result=\"{result}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0)
}

/// Sends SIGHUP to process `pid` once its `log` says reloading is armed (before that, SIGHUP's
/// default action would end the process).
pub async fn sighup(pid: u32, log: &std::path::Path) {
    let deadline = x402_gateway::clock::instant() + Duration::from_secs(30);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains("config reload armed")
    {
        assert!(
            x402_gateway::clock::instant() < deadline,
            "reload never armed; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Waits (up to 10 s) until the admin listener on `admin` counted `n` reloads as `result`;
/// panics with the gateway's `log` otherwise.
pub async fn wait_reloads(admin: u16, result: &str, n: usize, log: &std::path::Path) {
    for _ in 0..500 {
        if reload_count(admin, result).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "no {result} reload #{n}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// GETs `url` once something listens there (up to 30 s: a start may recover a journal
/// against a chain first).
pub async fn get_when_up(url: &str) -> reqwest::Response {
    for _ in 0..600 {
        if let Ok(r) = http().get(url).send().await {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{url} did not answer within 30 s");
}

/// An error with its causes, for messages that say what failed on the wire.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// One request paid as the official clients pay: ask, sign what the 402 asks, retry; with
/// `repay`, a 402 to the paid request (the price changed) is paid once more. `Ok(true)` when it
/// was paid twice.
pub async fn pay_once(url: &str, repay: bool) -> Result<bool, String> {
    let r = http()
        .get(url)
        .send()
        .await
        .map_err(|e| format!("unpaid: {}", error_chain(&e)))?;
    if r.status() != 402 {
        return Err(format!("unpaid request answered {}", r.status()));
    }
    let mut required = decode_required(&r);
    for attempt in 0..2 {
        let payment =
            client::sign_v2(&payer(), &required, 0, now(), client::random_nonce()).unwrap();
        let r = http()
            .get(url)
            .header("payment-signature", payment)
            .send()
            .await
            .map_err(|e| format!("paid: {}", error_chain(&e)))?;
        match r.status().as_u16() {
            200 => return Ok(attempt == 1),
            402 if attempt == 0 && repay => required = decode_required(&r),
            s => return Err(format!("paid request answered {s}")),
        }
    }
    Err("a second 402 after paying the new price".into())
}

/// Clients paying in a loop until stopped, each on its own paths; counts what they got.
pub struct PayingClients {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicUsize>,
    repaid: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl PayingClients {
    /// `n` clients on `base`: client `i` pays for `{base}/paid/{i}` and, with `free`, also
    /// fetches `{base}/free/{i}` in each round.
    pub fn start(n: usize, base: &str, free: bool, repay: bool) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ok, repaid) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let tasks = (0..n)
            .map(|i| {
                let (stop, ok, repaid) = (stop.clone(), ok.clone(), repaid.clone());
                let (paid, free_url) = (format!("{base}/paid/{i}"), format!("{base}/free/{i}"));
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        match pay_once(&paid, repay).await {
                            Ok(twice) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                if twice {
                                    repaid.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                            Err(e) => errors.push(e),
                        }
                        if free {
                            match http().get(&free_url).send().await {
                                Ok(r) if r.status() == 200 => {}
                                Ok(r) => errors.push(format!("free answered {}", r.status())),
                                Err(e) => errors.push(format!("free: {}", error_chain(&e))),
                            }
                        }
                    }
                    errors
                })
            })
            .collect();
        PayingClients {
            stop,
            ok,
            repaid,
            tasks,
        }
    }

    /// Paid requests served so far.
    pub fn served(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// Waits until `n` paid requests were served.
    pub async fn until_served(&self, n: usize) {
        while self.served() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops every client after its current round; returns what they got.
    pub async fn stop(self) -> Stopped {
        self.stop.store(true, Ordering::SeqCst);
        let mut errors = Vec::new();
        for t in self.tasks {
            errors.extend(t.await.unwrap());
        }
        Stopped {
            served: self.ok.load(Ordering::SeqCst),
            repaid: self.repaid.load(Ordering::SeqCst),
            errors,
        }
    }
}

/// What paying clients got, in the end.
pub struct Stopped {
    /// Paid requests served.
    pub served: usize,
    /// Of those, paid twice (the price changed in between).
    pub repaid: usize,
    /// What failed.
    pub errors: Vec<String>,
}

/// A facilitator request body (`/verify`, `/settle`) for a payment signed now by `payer`:
/// `amount` atomic units of Base Sepolia USDC to `PAY_TO`, with `nonce`.
pub fn facilitator_request(payer: &PrivateKeySigner, amount: &str, nonce: B256) -> String {
    let requirements = v2::PaymentRequirements {
        scheme: "exact".into(),
        network: "eip155:84532".into(),
        amount: amount.into(),
        asset: "0x036CbD53842c5426634e7929541eC2318f3dCF7e".into(),
        pay_to: PAY_TO.into(),
        max_timeout_seconds: 300,
        extra: v2::Eip712Extra {
            name: "USDC".into(),
            version: "2".into(),
        },
    };
    let required = v2::PaymentRequired {
        x402_version: 2,
        error: None,
        resource: v2::ResourceInfo {
            url: "http://x/y".into(),
            description: String::new(),
            mime_type: String::new(),
        },
        accepts: vec![requirements.clone()],
    };
    let header = client::sign_v2(payer, &required, 0, now(), nonce).unwrap();
    let payload = String::from_utf8(protocol::decode_header(header.as_bytes()).unwrap()).unwrap();
    format!(
        r#"{{"x402Version":2,"paymentPayload":{payload},"paymentRequirements":{}}}"#,
        serde_json::to_string(&requirements).unwrap()
    )
}

/// The config of `x402-gateway facilitator` (embedded on the chain at `rpc`, paying `pay_to`),
/// with `extra` lines in its `[facilitator]`.
pub fn standalone_facilitator_config(rpc: &str, pay_to: &str, extra: &str) -> String {
    format!(
        r#"
[upstream]
url = "http://127.0.0.1:9"
[journal]
enabled = false
[facilitator]
embedded = true
rpc = {{ "eip155:84532" = "{rpc}" }}
signer_keys = ["${{FACILITATOR_KEY}}"]
{extra}
[payment]
pay_to = "{pay_to}"
network = "base-sepolia"
[[route]]
path = "/x"
price = "1000"
"#
    )
}

/// The `exact` payload a payment header carries (its EIP-3009 authorization and signature).
#[allow(dead_code)]
pub fn exact_payload(header: &[u8]) -> x402_gateway::scheme::exact::Payload {
    let p = x402_gateway::protocol::PaymentPayload::from_header(header).unwrap();
    match x402_gateway::scheme::Authorized::decode(&p).unwrap() {
        x402_gateway::scheme::Authorized::Exact(e) => e,
    }
}

/// Asserts the answer to a payment whose paid answer went out already: `409`
/// `payment_already_redeemed` (never a `402`, which makes clients pay again), no content.
#[allow(dead_code)]
pub async fn assert_already_redeemed(resp: reqwest::Response) {
    assert_eq!(resp.status(), 409, "a spent payment's retry");
    assert!(resp.headers().get("payment-required").is_none());
    let body = resp.text().await.unwrap();
    assert!(body.contains("payment_already_redeemed"), "{body}");
}
