//! The server's runtime files and bootstrap: the private directory of the pid file and the
//! upgrade socket, the pid file itself, and a bootstrapped Pingora server.
//!
//! Owns: [`ensure_private_dir`], [`new_server`], [`new_server_draining`], and writing and
//! removing the pid file.

use std::path::Path;
use std::time::Duration;

use pingora::server::configuration::ServerConf;
use pingora::server::Server;

use crate::config;
use crate::edge;
use crate::facilitator;
use crate::journal;
use crate::verify::FacilitatorError;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// `/supported` could not be read.
    #[error("cannot read the facilitator's /supported")]
    Supported(#[source] FacilitatorError),
    /// Routes offer payments the facilitator does not handle.
    #[error("the facilitator does not support these route options:\n{}", .0.iter().map(|s| format!("  - {s}")).collect::<Vec<_>>().join("\n"))]
    Unsupported(Vec<String>),
    /// The HTTP client for the facilitator could not be built.
    #[error("cannot build the facilitator HTTP client: {0}")]
    Client(String),
    /// The embedded facilitator could not connect to its chains.
    #[error("embedded facilitator: {0}")]
    Embedded(#[source] facilitator::EmbeddedError),
    /// Pingora could not be set up.
    #[error("cannot set up the server: {0}")]
    Server(String),
    /// The directory of the pid file or upgrade socket is not private.
    #[error("{0}")]
    RuntimeDir(String),
    /// The payment journal cannot be opened.
    #[error("payment journal")]
    Journal(#[source] journal::JournalError),
    /// A chain RPC for reading outcomes is unusable.
    #[error("[chain] rpc: {0}")]
    Chain(String),
    /// The listener's certificate or key cannot be served.
    #[error("[server] TLS")]
    Tls(#[source] edge::TlsError),
}

/// Makes sure `dir` is a directory only this user can use: created `0700` when missing;
/// refused when another user owns it or when others can write to it (`private`: when group or
/// others can use it at all), so nobody else can plant a socket or pid file the gateway trusts.
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn ensure_private_dir(dir: &Path, private: bool) -> Result<(), StartupError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let fail = |m: String| StartupError::RuntimeDir(format!("{}: {m}", dir.display()));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create: {e}")))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| fail(e.to_string()))?;
    if !meta.is_dir() {
        return Err(fail("is not a directory".into()));
    }
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(fail(format!(
            "is owned by uid {}, not by this user ({uid})",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o777;
    let forbidden = if private { 0o077 } else { 0o022 };
    if mode & forbidden != 0 {
        return Err(fail(format!(
            "has mode {mode:o}; it must not be {} by others (chmod 700 it, or choose another directory)",
            if private { "usable" } else { "writable" }
        )));
    }
    Ok(())
}

/// A bootstrapped Pingora server whose pid file and upgrade socket live in private
/// directories (see [`ensure_private_dir`]).
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn new_server(
    threads: usize,
    pid_file: &Path,
    upgrade_sock: &Path,
) -> Result<Server, StartupError> {
    new_server_draining(
        threads,
        pid_file,
        upgrade_sock,
        Duration::from_secs(1),
        false,
    )
}

/// As [`new_server`], waiting up to `drain` after a graceful stop (SIGTERM) for in-flight
/// work before the runtimes are shut down (a [`Drain`] service ends the wait early once idle).
/// With `upgrade`, the listening sockets are taken from the running instance through
/// `upgrade_sock` (it sends them on SIGQUIT) instead of being bound.
///
/// # Errors
/// [`StartupError::RuntimeDir`].
pub fn new_server_draining(
    threads: usize,
    pid_file: &Path,
    upgrade_sock: &Path,
    drain: Duration,
    upgrade: bool,
) -> Result<Server, StartupError> {
    let default_dir = config::runtime_dir(&|k| std::env::var(k).ok());
    for path in [pid_file, upgrade_sock] {
        let dir = path.parent().unwrap_or(Path::new("/"));
        // The default directory must be ours alone; a configured one must not be writable by
        // others (a systemd RuntimeDirectory is 0755).
        ensure_private_dir(dir, dir == default_dir)?;
    }
    let conf = ServerConf {
        threads,
        pid_file: pid_file.display().to_string(),
        upgrade_sock: upgrade_sock.display().to_string(),
        grace_period_seconds: Some(drain.as_secs().max(1)),
        graceful_shutdown_timeout_seconds: Some(5),
        ..ServerConf::default()
    };
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
    server.bootstrap();
    Ok(server)
}

/// Writes this process's id to `path` (atomically: a new file renamed over the old one).
pub(super) fn write_pid_file(path: &Path) -> Result<(), StartupError> {
    let tmp = path.with_extension("pid.new");
    std::fs::write(&tmp, format!("{}\n", std::process::id()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| StartupError::RuntimeDir(format!("{}: {e}", path.display())))
}

/// Removes the pid file at exit, unless a process that took over has written its own.
pub(super) fn remove_own_pid_file(path: &Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|p| p.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!(
            "x402-private-{name}-{}-{}",
            std::process::id(),
            crate::clock::now_ms()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_runtime_dir_is_created_private_and_a_shared_one_is_refused() {
        let d = scratch("new").join("x402-gateway");
        ensure_private_dir(&d, true).unwrap();
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A directory others can write to (a predictable name in /tmp someone made first).
        let shared = scratch("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = ensure_private_dir(&shared, true).unwrap_err();
        assert!(e.to_string().contains("777"), "{e}");
        assert!(ensure_private_dir(&shared, false).is_err());
        // Readable by others is fine for a configured directory, not for the default one.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_private_dir(&shared, false).is_ok());
        assert!(ensure_private_dir(&shared, true).is_err());
        // A symlink is not a directory of ours.
        let link = scratch("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(ensure_private_dir(&link, true).is_err());
    }
}
