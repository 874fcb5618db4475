//! The edge: the real binary with a TLS listener (`[server] tls_cert`, `tls_key`) serving the
//! 402 and a paid request over HTTP/2 (ALPN) and HTTP/1.1, with `https://` resource URLs; its
//! certificate swapped by a reload (SIGHUP) without a restart; prior-knowledge HTTP/2 on a plain
//! listener (`[server] h2c`); and HTTP/2 to the upstream (`h2c`, and ALPN to an `https://`
//! upstream). Certificates come from an in-process CA (rcgen); the HTTP/2 upstream is a small
//! server on the `h2` crate that records what it was sent.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use x402_gateway::client;

/// A client that trusts only `ca_pem` and finds `gw.test` at `addr`.
fn tls_client(ca_pem: &str, addr: SocketAddr, http1: bool) -> reqwest::Client {
    x402_gateway::verify::facilitator::install_crypto_provider();
    let b = reqwest::Client::builder()
        .no_proxy()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .resolve("gw.test", addr)
        .timeout(Duration::from_secs(5));
    let b = if http1 { b.http1_only() } else { b };
    b.build().unwrap()
}

/// Asks for `url`, pays what the 402 asks, and returns the paid response; checks that both
/// answers came over `version` and that the challenge names `url` as the resource.
async fn pay_over(c: &reqwest::Client, url: &str, version: reqwest::Version) -> reqwest::Response {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.version(), version);
    let required = decode_required(&r);
    assert_eq!(required.resource.url, url);
    let payment = client::sign_v2(&payer(), &required, 0, now(), client::random_nonce()).unwrap();
    // Header names go lowercase on HTTP/2.
    let r = c
        .get(url)
        .header("payment-signature", payment)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.headers());
    assert_eq!(r.version(), version);
    assert_eq!(decode_receipt(&r, "payment-response").success, Some(true));
    r
}

const ROUTES: &str = "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n[[route]]\npath = \"/free/**\"\nprice = \"free\"\n";

struct Binary {
    port: u16,
    admin: u16,
    log: PathBuf,
    process: KillOnDrop,
}

impl Binary {
    fn start(upstream: &str, facilitator: &str, server_extra: &str) -> Binary {
        let config = scratch_file("gateway.toml");
        let log = config.with_file_name("gateway.log");
        let (port, admin) = (free_port(), free_port());
        let text = binary_config(
            port,
            admin,
            upstream,
            facilitator,
            &format!("threads = 2\n{server_extra}"),
            ROUTES,
        );
        std::fs::write(&config, text).unwrap();
        let process = spawn_gateway(&config, &[], &log);
        Binary {
            port,
            admin,

            log,
            process,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until the admin listener answers.
    async fn until_up(&self) {
        get_when_up(&format!("http://127.0.0.1:{}/livez", self.admin)).await;
        // The main listener is added by the same server: wait for it too.
        for _ in 0..200 {
            if std::net::TcpStream::connect(self.addr()).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the listener did not come up; log:\n{}", self.log());
    }

    async fn hup_and_wait(&self, result: &str, n: usize) {
        sighup(self.process.0.id(), &self.log).await;
        wait_reloads(self.admin, result, n, &self.log).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_h2_and_h1_paid_requests_and_swaps_its_certificate_on_reload() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let dir = scratch_file("x").parent().unwrap().to_path_buf();
    let first = pki(&dir, "first", &["gw.test"]);
    let served = (dir.join("served.crt"), dir.join("served.key"));
    std::fs::copy(&first.cert, &served.0).unwrap();
    std::fs::copy(&first.key, &served.1).unwrap();
    let gw = Binary::start(
        &upstream.url(),
        &facilitator.server.url(),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            served.0.display(),
            served.1.display()
        ),
    );
    gw.until_up().await;
    let url = format!("https://gw.test:{}/paid/report", gw.port);

    // ALPN picks HTTP/2; the challenge's resource is the https URL; paying works on h2.
    let h2 = tls_client(&first.ca_pem, gw.addr(), false);
    pay_over(&h2, &url, reqwest::Version::HTTP_2).await;
    let seen = upstream.last().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    // A client that offers only HTTP/1.1 gets it.
    let h1 = tls_client(&first.ca_pem, gw.addr(), true);
    pay_over(&h1, &url, reqwest::Version::HTTP_11).await;
    assert_eq!(facilitator.settle_calls(), 2);
    // Plain HTTP on the TLS port is not served.
    assert!(http()
        .get(format!("http://127.0.0.1:{}/free/x", gw.port))
        .timeout(Duration::from_secs(3))
        .send()
        .await
        .map_or(true, |r| r.status() != 200));

    // A renewed certificate (another CA here, so the clients can tell them apart) at the same
    // paths: served after SIGHUP, without a restart.
    let second = pki(&dir, "second", &["gw.test"]);
    let fresh = |ca: &str| tls_client(ca, gw.addr(), false);
    assert!(fresh(&second.ca_pem)
        .get(format!("https://gw.test:{}/free/x", gw.port))
        .send()
        .await
        .is_err());
    std::fs::copy(&second.cert, &served.0).unwrap();
    std::fs::copy(&second.key, &served.1).unwrap();
    gw.hup_and_wait("applied", 1).await;
    let pid = gw.process.0.id();
    let r = fresh(&second.ca_pem)
        .get(format!("https://gw.test:{}/free/x", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(fresh(&first.ca_pem)
        .get(format!("https://gw.test:{}/free/x", gw.port))
        .send()
        .await
        .is_err());
    pay_over(&fresh(&second.ca_pem), &url, reqwest::Version::HTTP_2).await;
    assert_eq!(gw.process.0.id(), pid);
    let log = gw.log();
    assert!(log.contains("serves the new certificate"), "{log}");
    assert!(!log.contains("section=\"[server]\""), "{log}");

    // A key that does not match its certificate: the reload is refused, the served
    // certificate stays.
    std::fs::copy(&first.key, &served.1).unwrap();
    gw.hup_and_wait("rejected", 1).await;
    assert!(
        gw.log().contains("does not belong to tls_cert"),
        "{}",
        gw.log()
    );
    let r = fresh(&second.ca_pem)
        .get(format!("https://gw.test:{}/free/x", gw.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_on_the_plain_listener_carries_a_paid_flow_and_http1_still_works() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let gw = Binary::start(&upstream.url(), &facilitator.server.url(), "h2c = true");
    gw.until_up().await;
    let url = format!("http://127.0.0.1:{}/paid/sidecar", gw.port);
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    pay_over(&h2c, &url, reqwest::Version::HTTP_2).await;
    assert_eq!(
        upstream.last().unwrap().header("x-forwarded-proto"),
        Some("http")
    );
    let r = http().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 402);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(facilitator.settle_calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_h2c_a_prior_knowledge_client_is_refused() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let gw = Binary::start(&upstream.url(), &facilitator.server.url(), "");
    gw.until_up().await;
    let h2c = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let r = h2c
        .get(format!("http://127.0.0.1:{}/free/x", gw.port))
        .send()
        .await;
    assert!(r.map_or(true, |r| r.status() != 200));
    assert_eq!(upstream.count(), 0);
}

// === HTTP/2 to the upstream ===

/// What the HTTP/2 upstream saw: (path, headers) of each request.
type Seen = Arc<Mutex<Vec<(String, http::HeaderMap)>>>;

/// An HTTP/2-only upstream: h2c with prior knowledge, or TLS with ALPN `h2` (`tls`). Answers
/// every request 200 with a JSON body.
async fn h2_upstream(tls: Option<tokio_rustls::TlsAcceptor>) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let (recorded, tls) = (recorded.clone(), tls.clone());
            tokio::spawn(async move {
                match tls {
                    None => serve_h2(sock, recorded).await,
                    Some(a) => {
                        if let Ok(s) = a.accept(sock).await {
                            assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                            serve_h2(s, recorded).await;
                        }
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn serve_h2<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(io: S, seen: Seen) {
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let path = req.uri().path().to_owned();
        seen.lock()
            .unwrap()
            .push((path.clone(), req.headers().clone()));
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let body = format!("{{\"h2\":true,\"path\":\"{path}\"}}");
        if let Ok(mut send) = respond.send_response(resp, false) {
            if path.contains("trailers") {
                // An API that says in trailers that the request was paid (or queued).
                let _ = send.send_data(Bytes::from(body), false);
                let mut trailers = http::HeaderMap::new();
                for (name, value) in FORGED_OUTCOME {
                    trailers.insert(name, http::HeaderValue::from_static(value));
                }
                trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
                let _ = send.send_trailers(trailers);
            } else {
                let _ = send.send_data(Bytes::from(body), true);
            }
        }
    }
}

const UPSTREAM_ROUTES: &str = "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n[[route]]\npath = \"/reports/**\"\nprice = \"$0.05\"\nsettlement = \"before_upstream\"\n";

/// The in-process gateway (with the whole tables `sections`) in front of an h2c upstream.
async fn behind_h2c_upstream(sections: &str) -> (TestGateway, Seen) {
    let (addr, seen) = h2_upstream(None).await;
    let gw = TestGateway::start_custom(
        mock_upstream().await,
        &format!("http://{addr}"),
        "h2c = true",
        UPSTREAM_ROUTES,
        "",
        sections,
    )
    .await;
    (gw, seen)
}

async fn paid_through(gw: &TestGateway, path: &str) -> serde_json::Value {
    let payment = pay_v2(gw, path).await;
    let r = gw.send(path, &payment).await;
    assert_eq!(r.status(), 200);
    assert_eq!(decode_receipt(&r, "payment-response").success, Some(true));
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upstream_gets_http2_and_both_settlement_modes_work() {
    let (gw, seen) = behind_h2c_upstream("").await;
    for path in ["/paid/a", "/reports/b"] {
        let body = paid_through(&gw, path).await;
        assert_eq!(body["h2"], true);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    // No payment credential reaches the upstream, whatever the protocol.
    assert!(seen
        .iter()
        .all(|(_, h)| !h.contains_key("payment-signature") && h.contains_key("x-forwarded-for")));
    assert_eq!(gw.facilitator.settle_calls(), 2);
}

/// GETs `path` of `gw` over prior-knowledge HTTP/2 (with `payment`); returns the status, the
/// body and the trailers.
async fn h2_get(
    gw: &TestGateway,
    path: &str,
    payment: Option<&str>,
) -> (u16, Vec<u8>, http::HeaderMap) {
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get(format!("http://{}{path}", gw.addr));
    if let Some(p) = payment {
        req = req.header("payment-signature", p);
    }
    let (answer, _) = client.send_request(req.body(()).unwrap(), true).unwrap();
    let (parts, mut body) = answer.await.unwrap().into_parts();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap().unwrap_or_default();
    (parts.status.as_u16(), bytes, trailers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstreams_payment_trailers_never_reach_a_payer() {
    let (gw, _) = behind_h2c_upstream("[server]\nh2c = true\n").await;
    // Trailers do come through: a free path gets the upstream's, all of them.
    let (status, _, trailers) = h2_get(&gw, "/free/trailers", None).await;
    assert_eq!(status, 200);
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(trailers["x-payment-status"], "queued");
    // Paid: the upstream's other trailers, none of those that say what became of a payment.
    let payment = pay_v2(&gw, "/paid/trailers").await;
    let (status, body, trailers) = h2_get(&gw, "/paid/trailers", Some(&payment)).await;
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"h2\":true"));
    assert_eq!(trailers["x-checksum"], "abc");
    for name in PAYMENT_OUTCOME_HEADERS {
        assert!(!trailers.contains_key(name), "{name}: {trailers:?}");
    }
    // Not settled: the gateway's answer, and no trailer of the upstream's at all.
    gw.facilitator
        .set_settle(SettleScript::Fail("insufficient_funds"));
    let payment = pay_v2(&gw, "/paid/trailers").await;
    let (status, body, trailers) = h2_get(&gw, "/paid/trailers", Some(&payment)).await;
    assert_eq!(status, 402);
    // Ours whole (the upstream's body ended with its trailers, not an end-of-stream chunk).
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("x402Version") && !body.contains("\"h2\""),
        "{body}"
    );
    assert!(trailers.is_empty(), "{trailers:?}");
    assert_eq!(gw.facilitator.settle_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_that_offers_h2_gets_http2() {
    let dir = scratch_file("x").parent().unwrap().to_path_buf();
    let p = pki(&dir, "up", &["localhost"]);
    x402_gateway::verify::facilitator::install_crypto_provider();
    let mut config = tokio_rustls::rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![p.leaf_der.clone().into()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(p.leaf_key_der.clone().into()),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let (addr, seen) = h2_upstream(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await;
    let gw = TestGateway::start_custom(
        mock_upstream().await,
        &format!("https://localhost:{}", addr.port()),
        &format!("tls_ca = \"{}\"", dir.join("up-ca.pem").display()),
        UPSTREAM_ROUTES,
        "",
        "",
    )
    .await;
    let body = paid_through(&gw, "/paid/tls").await;
    assert_eq!(body["h2"], true);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/paid/tls");
}

// === Configuration ===

fn load(server: &str, upstream: &str) -> Result<x402_gateway::config::Config, String> {
    let text = format!(
        "[server]\n{server}\n[upstream]\n{upstream}\n[facilitator]\nurl = \"http://127.0.0.1:9\"\n[payment]\npay_to = \"{PAY_TO}\"\nnetwork = \"base-sepolia\"\n{ROUTES}"
    );
    x402_gateway::config::Config::from_toml(&text, "test", &|_| None).map_err(|e| e.to_string())
}

#[test]
fn tls_and_h2c_keys_are_checked_at_load() {
    let dir = scratch_file("x").parent().unwrap().to_path_buf();
    let p = pki(&dir, "gw", &["gw.test"]);
    let both = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        p.cert.display(),
        p.key.display()
    );
    let c = load(&both, "url = \"http://127.0.0.1:3000\"").unwrap();
    assert_eq!(c.server.tls.unwrap().cert, p.cert);
    let e = load(
        &format!("tls_cert = \"{}\"", p.cert.display()),
        "url = \"http://127.0.0.1:3000\"",
    )
    .unwrap_err();
    assert!(e.contains("server.tls_key: missing"), "{e}");
    // A key file given as the certificate (and the reverse): both named, the key never shown.
    let swapped = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        p.key.display(),
        p.cert.display()
    );
    let e = load(&swapped, "url = \"http://127.0.0.1:3000\"").unwrap_err();
    assert!(
        e.contains("server.tls_cert") && e.contains("server.tls_key") && !e.contains("BEGIN"),
        "{e}"
    );
    let e = load(
        &format!("{both}\nh2c = true"),
        "url = \"http://127.0.0.1:3000\"",
    )
    .unwrap_err();
    assert!(e.contains("server.h2c: only for a plain listener"), "{e}");
    assert!(
        load("h2c = true", "url = \"http://127.0.0.1:3000\"")
            .unwrap()
            .server
            .h2c
    );
    let e = load("", "url = \"https://api.example\"\nh2c = true").unwrap_err();
    assert!(e.contains("upstream.h2c: only for an http:// url"), "{e}");
    assert!(
        load("", "url = \"http://127.0.0.1:3000\"\nh2c = true")
            .unwrap()
            .upstream
            .h2c
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_proto_and_host_make_the_resource_url_only_from_trusted_proxies() {
    let ask = |gw: &TestGateway| {
        http()
            .get(gw.url("/paid/x"))
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "api.example.com")
            .send()
    };
    let trusted = TestGateway::start_full(
        ROUTES,
        "",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
    .await;
    let r = ask(&trusted).await.unwrap();
    assert_eq!(
        decode_required(&r).resource.url,
        "https://api.example.com/paid/x"
    );
    let untrusted = TestGateway::start_full(ROUTES, "", "").await;
    let r = ask(&untrusted).await.unwrap();
    assert_eq!(decode_required(&r).resource.url, untrusted.url("/paid/x"));
}
