//! What the deployment files rely on, with the real binary: `Type=notify`: `READY=1` arrives
//! on `$NOTIFY_SOCKET` once the listeners accept, `RELOADING=1`/`READY=1` around a SIGHUP
//! reload, `STOPPING=1` on SIGTERM. (The shipped `gateway.toml` on a real chain:
//! `tests/shipped_config.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Receives one notification (up to 60 s).
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("no notification within 60 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_socket_hears_ready_once_serving_then_reloading_and_stopping() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let (port, admin) = (free_port(), free_port());
    let config = scratch_file("gateway.toml");
    std::fs::write(
        &config,
        binary_config(
            port,
            admin,
            &upstream.url(),
            &facilitator.server.url(),
            "threads = 1",
            "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n",
        ),
    )
    .unwrap();
    let sock_path = config.parent().unwrap().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let log = config.with_extension("log");
    let mut gw = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
            .args(["run", "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let ready = recv(&sock);
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(ready.contains(&format!("127.0.0.1:{port}")), "{ready}");
    // Sent only once both listeners accept: no polling needed from here on.
    for p in [port, admin] {
        std::net::TcpStream::connect(("127.0.0.1", p))
            .unwrap_or_else(|e| panic!("port {p} not accepting after READY=1: {e}"));
    }
    let resp = http()
        .get(format!("http://127.0.0.1:{port}/paid/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 402);

    let pid = gw.0.id().to_string();
    let kill = |sig: &str| {
        assert!(Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success());
    };
    kill("-HUP");
    assert_eq!(recv(&sock), "RELOADING=1");
    assert_eq!(recv(&sock), "READY=1");
    kill("-TERM");
    let stopping = recv(&sock);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    let status = gw.0.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}
