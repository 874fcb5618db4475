//! `https://` upstreams: Pingora built with rustls, verification against a private CA
//! (`tls_ca`), a name mismatch refused before anything is charged, `tls_server_name` for an
//! upstream whose certificate names another host. The CA and certificates are made in-process.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::*;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

struct Pki {
    ca_pem: String,
    dir: std::path::PathBuf,
}

/// A CA, and an acceptor serving a certificate it signed for `names`.
fn pki(names: &[&str]) -> (Pki, TlsAcceptor) {
    // A directory of its own (tests run concurrently, each with its own CA).
    let dir = scratch_file("pki").parent().unwrap().to_path_buf();
    let p = common::pki(&dir, "upstream", names);
    x402_gateway::verify::facilitator::install_crypto_provider();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(p.leaf_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(p.leaf_key_der)),
        )
        .unwrap();
    std::fs::write(dir.join("ca.pem"), &p.ca_pem).unwrap();
    (
        Pki {
            ca_pem: p.ca_pem,
            dir,
        },
        TlsAcceptor::from(Arc::new(config)),
    )
}

const ROUTES: &str = r#"
[[route]]
path = "/health"
price = "free"
[[route]]
path = "/paid/**"
price = "$0.001"
[[route]]
path = "/reports/**"
price = "$0.05"
settlement = "before_upstream"
"#;

async fn tls_gateway(names: &[&str], upstream_extra: &str) -> (TestGateway, Pki) {
    let (pki, acceptor) = pki(names);
    let upstream = mock_upstream_tls(Some(acceptor)).await;
    let url = format!("https://localhost:{}", upstream.addr.port());
    let extra = format!(
        "tls_ca = \"{}\"\n{upstream_extra}",
        pki.dir.join("ca.pem").display()
    );
    let gw = TestGateway::start_custom(upstream, &url, &extra, ROUTES, "", "").await;
    (gw, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_a_private_ca_serves_free_and_paid_routes() {
    let (gw, pki) = tls_gateway(&["localhost"], "").await;
    assert!(pki.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let resp = http().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["upstream"],
        true
    );
    for path in ["/paid/x", "/reports/q3"] {
        let payment = pay_v2(&gw, path).await;
        let resp = gw.send(path, &payment).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(
            decode_receipt(&resp, "payment-response").success,
            Some(true)
        );
    }
    assert_eq!(gw.upstream.count(), 3);
    // Pooled TLS connections are reused: three requests, no error.
    assert_eq!(gw.facilitator.settle_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused_and_nothing_is_charged() {
    let (gw, _pki) = tls_gateway(&["other.example"], "").await;
    let resp = http().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    // Settled before the upstream? Not before the upstream's certificate checked out.
    let payment = pay_v2(&gw, "/reports/q3").await;
    let resp = gw.send("/reports/q3", &payment).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(gw.facilitator.settle_calls(), 0);
    assert_eq!(gw.upstream.count(), 0);
    // The authorization was given back: the same payment works once the upstream does.
    let payment2 = pay_v2(&gw, "/paid/y").await;
    let resp = gw.send("/paid/y", &payment2).await;
    assert_eq!(resp.status(), 502);
    assert_eq!(gw.facilitator.settle_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_verifies_a_certificate_for_another_host() {
    let (gw, _pki) = tls_gateway(&["api.internal"], "tls_server_name = \"api.internal\"").await;
    let resp = http().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    // The Host header still names the URL's host (the default `host_header = "upstream"`).
    assert!(gw
        .upstream
        .last()
        .unwrap()
        .header("host")
        .unwrap()
        .starts_with("localhost:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_private_ca_the_system_roots_refuse_it() {
    let (pki, acceptor) = pki(&["localhost"]);
    let _ = pki;
    let upstream = mock_upstream_tls(Some(acceptor)).await;
    let url = format!("https://localhost:{}", upstream.addr.port());
    let gw = TestGateway::start_custom(upstream, &url, "", ROUTES, "", "").await;
    let resp = http().get(gw.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}
