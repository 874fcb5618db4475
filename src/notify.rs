//! Readiness notifications to the service manager (systemd's `Type=notify`, the `sd_notify`
//! protocol): one datagram per state change to the unix socket named by `$NOTIFY_SOCKET`; a
//! name starting with `@` is in the abstract namespace. Without the variable nothing is sent.
//!
//! Owns: [`notify`] and the [`Ready`] service, which says `READY=1` once every listener of the
//! gateway accepts connections. `RELOADING=1` and `STOPPING=1` are sent by the reloader
//! ([`crate::reload`]) and the drain ([`crate::Drain`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Sends `state` (newline-separated `KEY=value` lines) to `$NOTIFY_SOCKET`. Returns whether it
/// was sent; a missing variable is not an error (not started by a service manager).
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    match send(&socket.to_string_lossy(), state) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
            false
        }
    }
}

fn send(socket: &str, state: &str) -> std::io::Result<()> {
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), socket)?;
    }
    Ok(())
}

/// Where to connect to reach a listener bound to `listen`: the loopback address of its family
/// when it is bound to every address. `None` for what is not an `ip:port`.
pub fn probe_address(listen: &str) -> Option<SocketAddr> {
    let mut a: SocketAddr = listen.parse().ok()?;
    if a.ip().is_unspecified() {
        a.set_ip(match a.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Some(a)
}

/// Says `READY=1` once each of `listen` accepts a TCP connection (Pingora binds its listeners
/// inside `run_forever`, with no hook after) and SIGHUP reloads: the gateway then serves, and
/// `systemctl reload` is safe.
pub struct Ready {
    /// The listeners' addresses (`[server] listen`, `[admin] listen`).
    pub listen: Vec<String>,
    /// Set by the reloader once it handles SIGHUP.
    pub reload_armed: Arc<AtomicBool>,
}

#[async_trait]
impl BackgroundService for Ready {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return;
        }
        for l in &self.listen {
            let Some(addr) = probe_address(l) else {
                continue;
            };
            loop {
                let attempt = tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect(addr),
                );
                tokio::select! {
                    _ = shutdown.changed() => return,
                    r = attempt => if let Ok(Ok(_)) = r { break },
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        while !self.reload_armed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        notify(&format!(
            "READY=1\nSTATUS=serving on {}",
            self.listen.join(", ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_probed_on_loopback() {
        assert_eq!(
            probe_address("0.0.0.0:8402"),
            Some("127.0.0.1:8402".parse().unwrap())
        );
        assert_eq!(
            probe_address("[::]:9402"),
            Some("[::1]:9402".parse().unwrap())
        );
        assert_eq!(
            probe_address("10.1.2.3:80"),
            Some("10.1.2.3:80".parse().unwrap())
        );
        assert_eq!(probe_address("localhost:80"), None);
    }

    #[test]
    fn states_reach_a_path_socket_and_an_abstract_one() {
        let dir = std::env::temp_dir().join(format!("x402-notify-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("x402-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = std::os::unix::net::UnixDatagram::bind_addr(&addr).unwrap();
        send(&format!("@{name}"), "STOPPING=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
        assert!(send(dir.join("missing").to_str().unwrap(), "READY=1").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
