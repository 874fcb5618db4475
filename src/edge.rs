//! The listening edge: the certificate the TLS listener serves, swapped live on reload.
//!
//! Owns: [`CertStore`], a rustls certificate resolver over an atomic pointer. The listener's
//! rustls configuration is built once by Pingora (with ALPN `h2`, `http/1.1`); every handshake
//! asks the resolver, so a reload that reads new `tls_cert`/`tls_key` files changes the
//! certificate of the next handshake without a restart, and connections already open keep the
//! one they were made with. Does not own: which listeners exist (`lib.rs`) or the config keys
//! (`config`).

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::ListenerTls;

/// Installs ring as the process-wide rustls crypto provider (rustls needs exactly one; ring is
/// the one compiled in). Call before building any `reqwest::Client` or TLS listener; later calls
/// do nothing.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM object of its kind.
    #[error("{0}")]
    File(String),
    /// The key is of an unsupported type, or does not belong to the certificate.
    #[error("tls_key {path}: {message}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong (never the key itself).
        message: String,
    },
}

/// The listener's certificate and key, replaced atomically by [`CertStore::reload`].
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertStore")
    }
}

impl CertStore {
    /// Reads the certificate chain and key of `tls`.
    ///
    /// # Errors
    /// [`TlsError`] when a file is unreadable, empty, or the key does not match.
    pub fn load(tls: &ListenerTls) -> Result<Self, TlsError> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(read_key(tls)?),
        })
    }

    /// Reads the files again and serves them from the next handshake on; returns whether the
    /// certificate changed. On error the current certificate stays.
    ///
    /// # Errors
    /// As [`CertStore::load`].
    pub fn reload(&self, tls: &ListenerTls) -> Result<bool, TlsError> {
        let new = read_key(tls)?;
        let changed = self.current.load().cert != new.cert;
        if changed {
            self.current.store(Arc::new(new));
        }
        Ok(changed)
    }

    /// The leaf certificate served now (DER).
    pub fn leaf(&self) -> Vec<u8> {
        self.current
            .load()
            .cert
            .first()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn read_key(tls: &ListenerTls) -> Result<CertifiedKey, TlsError> {
    let read = |p: &std::path::Path, what: &str| {
        std::fs::read(p).map_err(|e| TlsError::File(format!("{what} {}: {e}", p.display())))
    };
    let cert_pem = read(&tls.cert, "tls_cert")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File(format!("tls_cert {}: {e}", tls.cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError::File(format!(
            "tls_cert {} holds no PEM certificate",
            tls.cert.display()
        )));
    }
    let key_pem = read(&tls.key, "tls_key")?;
    let key_err = |message: String| TlsError::Key {
        path: tls.key.display().to_string(),
        message,
    };
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|_| key_err("holds no PEM private key".into()))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| key_err(format!("unsupported key: {e}")))?;
    let ck = CertifiedKey::new(certs, signer);
    ck.keys_match()
        .map_err(|e| key_err(format!("does not belong to tls_cert: {e}")))?;
    Ok(ck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &std::path::Path, name: &str) -> ListenerTls {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let tls = ListenerTls {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&tls.cert, cert.pem()).unwrap();
        std::fs::write(&tls.key, key.serialize_pem()).unwrap();
        tls
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_pair_keeps_the_old_one() {
        let dir = std::env::temp_dir().join(format!("x402-edge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = pair(&dir, "a.test");
        let b = pair(&dir, "b.test");
        let store = CertStore::load(&a).unwrap();
        let first = store.leaf();
        assert!(!store.reload(&a).unwrap(), "same files: no change");
        assert!(store.reload(&b).unwrap());
        assert_ne!(store.leaf(), first);
        // A key of another certificate is refused; the served one stays.
        let mixed = ListenerTls {
            cert: a.cert.clone(),
            key: b.key,
        };
        let e = store.reload(&mixed).unwrap_err().to_string();
        assert!(e.contains("does not belong"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        let e = CertStore::load(&ListenerTls {
            cert: dir.join("missing.crt"),
            key: a.key,
        })
        .unwrap_err();
        assert!(e.to_string().contains("missing.crt"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
