//! Zero-downtime upgrade of the real binary under load: `run --upgrade` takes the listening
//! sockets (gateway and admin) from the running instance, which is sent SIGQUIT, hands them
//! over and drains. Paying clients keep going throughout; the test counts failed requests
//! (goal 0; see the assertion for the one race left) and proves every served payment was
//! settled once, by one of the two processes, and no failed one was charged.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_load_hands_over_without_failing_requests() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let (port, admin) = (free_port(), free_port());
    let config = scratch_file("gateway.toml");
    let dir = config.parent().unwrap().to_owned();
    let sock = dir.join("upgrade.sock");
    std::fs::write(
        &config,
        binary_config(
            port,
            admin,
            &upstream.url(),
            &facilitator.server.url(),
            "threads = 2\npid_file = \"gateway.pid\"\nupgrade_sock = \"upgrade.sock\"",
            "[[route]]\npath = \"/paid/**\"\nprice = \"$0.001\"\n",
        ),
    )
    .unwrap();
    let (old_log, new_log) = (dir.join("old.log"), dir.join("new.log"));
    let mut old = spawn_gateway(&config, &[], &old_log);
    let base = format!("http://127.0.0.1:{port}");
    get_when_up(&format!("{base}/free")).await;
    let clients = PayingClients::start(4, &base, true, false);
    clients.until_served(30).await;

    // The new process waits on the upgrade socket; then the old one is told to hand over.
    let _ = std::fs::remove_file(&sock);
    let new = spawn_gateway(&config, &["--upgrade"], &new_log);
    let mut waiting = false;
    // Up to 30 s: the new process recovers the journal before it asks for the sockets, while
    // the old one and the clients keep both cores busy.
    for _ in 0..1200 {
        if sock.exists() {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "{}", std::fs::read_to_string(&new_log).unwrap());
    let handed_over_at = clients.served();
    let quit = Command::new("kill")
        .args(["-QUIT", &old.0.id().to_string()])
        .status()
        .unwrap();
    assert!(quit.success());
    // The old process drains and exits by itself.
    let status = tokio::task::spawn_blocking(move || old.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "old process: {status:?}");
    clients.until_served(clients.served() + 30).await;
    let Stopped {
        served: total,
        errors,
        ..
    } = clients.stop().await;
    eprintln!(
        "upgrade under load: {total} paid requests ({handed_over_at} before SIGQUIT), {} failed",
        errors.len()
    );
    // Every payment settled was delivered, once: a failed request was never charged.
    assert_eq!(
        facilitator.settle_calls(),
        total,
        "one settlement per paid request"
    );
    // What can still fail: a connection the old process accepted in the instant before it
    // stopped, closed (by Pingora's shutdown) before its request was read. Never an error
    // answer, never more than one per client (each has one connection) per hand-over.
    assert!(
        errors.len() <= 4
            && errors
                .iter()
                .all(|e| e.contains("connection closed before message completed")),
        "failed requests: {errors:?}"
    );

    // Only the new process serves now, on the same addresses (the admin one too).
    let m = http()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("x402_payments_total{"), "{m}");
    let pid = std::fs::read_to_string(dir.join("gateway.pid")).unwrap();
    assert_eq!(pid.trim(), new.0.id().to_string());
    assert!(std::fs::read_to_string(&old_log)
        .unwrap()
        .contains("listener sockets sent"));
}
