//! The facilitator client over HTTPS (production facilitators are HTTPS): a local TLS
//! facilitator with a certificate from a throwaway CA, trusted through `SSL_CERT_FILE` (its own
//! test binary, because it sets that variable for the process).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use x402_gateway::config::Config;
use x402_gateway::verify::{Facilitator, FacilitatorClient};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a `localhost` certificate it signed.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=x402 test CA",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "leaf.key",
        "-out",
        "leaf.csr",
        "-subj",
        "/CN=localhost",
    ]);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "2",
            "-extfile",
            "leaf.ext",
        ],
    );
}

/// What the test facilitator counts: connections, requests, and connections it closed.
struct Counts {
    conns: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

/// Serves fixed facilitator answers over TLS; counts connections and requests.
async fn tls_facilitator(dir: &Path) -> (u16, Counts) {
    x402_gateway::verify::facilitator::install_crypto_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("leaf.pem"))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("leaf.key")).unwrap();
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts = Counts {
        conns: Arc::new(AtomicUsize::new(0)),
        requests: Arc::new(AtomicUsize::new(0)),
        closed: Arc::new(AtomicUsize::new(0)),
    };
    let (c, r, closed) = (
        counts.conns.clone(),
        counts.requests.clone(),
        counts.closed.clone(),
    );
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (acceptor, r, closed) = (acceptor.clone(), r.clone(), closed.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                loop {
                    // One request: head, then Content-Length bytes.
                    let (head_end, len) = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            break (end + 4, len);
                        }
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                    let close = buf[head_end..head_end + len].starts_with(b"\"close\"");
                    buf.drain(..head_end + len);
                    r.fetch_add(1, Ordering::SeqCst);
                    let body = if head.starts_with("POST /facilitator/verify ") {
                        r#"{"isValid":true,"payer":"0x70997970C51812dc3A010C7d01b50e0d17dc79C8"}"#
                    } else if head.starts_with("POST /facilitator/settle ") {
                        r#"{"success":true,"transaction":"0x1111111111111111111111111111111111111111111111111111111111111111","network":"eip155:84532"}"#
                    } else {
                        r#"{"error":"not found"}"#
                    };
                    // Chunked, as CDNs in front of hosted facilitators often answer.
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                        body.len()
                    );
                    if tls.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                    if close {
                        // An idle close as servers do it: close_notify, then FIN.
                        let _ = tls.shutdown().await;
                        closed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (port, counts)
}

#[test]
#[allow(clippy::disallowed_methods)] // set before any other thread exists (this binary's only test)
fn verify_and_settle_over_https_on_one_kept_alive_connection() {
    let dir = std::env::temp_dir().join(format!("x402-gateway-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    // The platform verifier reads the trust store from here.
    std::env::set_var("SSL_CERT_FILE", dir.join("ca.pem"));
    std::env::remove_var("SSL_CERT_DIR");
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(over_https(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

async fn over_https(dir: &Path) {
    let (
        port,
        Counts {
            conns,
            requests,
            closed,
        },
    ) = tls_facilitator(dir).await;

    let url = format!("https://localhost:{port}/facilitator");
    let text = format!(
        "[upstream]\nurl = \"http://127.0.0.1:1\"\n[facilitator]\nurl = \"{url}\"\n[payment]\npay_to = \"0x7D5c4A0E4B1a5E3F9a1e2B6C8d0F3A5B7C9e1d24\"\nnetwork = \"base-sepolia\"\n[[route]]\npath = \"/x\"\nprice = \"$0.001\"\n"
    );
    let config = Config::from_toml(&text, "test", &|_| None).unwrap();
    let client = FacilitatorClient::new(&url, &config.facilitator).unwrap();
    for _ in 0..3 {
        let v = client.verify("{}").await.unwrap();
        assert!(v.is_valid);
        let s = client.settle("{}").await.unwrap();
        assert!(s.is_success());
        assert_eq!(s.transaction.as_deref().map(str::len), Some(66));
    }
    assert_eq!(requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one TLS connection, kept alive"
    );

    // The server closes the connection after answering: the next call (a settle, which is
    // never re-sent) must not go out on the closed connection.
    assert!(client.verify("\"close\"").await.unwrap().is_valid);
    // Once the server has sent close_notify and FIN (loopback delivers them at once).
    while closed.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(client.settle("{}").await.unwrap().is_success());
    assert_eq!(
        conns.load(Ordering::SeqCst),
        2,
        "a new connection after the close"
    );
    assert_eq!(requests.load(Ordering::SeqCst), 8);

    // A certificate that does not name the host is refused before anything is sent.
    let other = format!("https://127.0.0.1:{port}/facilitator");
    let client = FacilitatorClient::new(&other, &config.facilitator).unwrap();
    assert!(client.settle("{}").await.is_err());
    assert_eq!(requests.load(Ordering::SeqCst), 8);
}
