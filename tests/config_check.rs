//! `x402-gateway check`: the shipped config is valid; a broken one lists every problem at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
}

#[test]
fn shipped_config_checks_and_prints_the_route_table() {
    let out = gateway()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/weather/*"));
    assert!(stdout.contains("$0.001 = 1000 atomic USDC"), "{stdout}");
    assert!(stdout.contains("eip155:8453"));
    assert!(stdout.contains("free"));
}

#[test]
fn broken_config_exits_2_listing_every_problem() {
    let dir = std::env::temp_dir().join(format!("x402-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.toml");
    std::fs::write(
        &path,
        r#"
[server]
listen = "everywhere"
[upstream]
url = "http://127.0.0.1:3000/api"
[facilitator]
url = "https://x402.org/facilitator"
timeout = "ten seconds"
[payment]
pay_to = "0xnot-an-address"
network = "base-sepolia"
[[route]]
path = "/a"
price = "$0.0000001"
[[route]]
path = "b"
price = "free"
typo_key = 1
"#,
    )
    .unwrap();
    let out = gateway()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.listen",
        "upstream.url",
        "facilitator.timeout",
        "payment.pay_to",
        "route[0].pay_to",
        "route[1].path",
        "route[1].typo_key",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
}

#[test]
fn missing_file_is_a_clear_error() {
    let out = gateway()
        .args(["check", "--config", "/nonexistent/gateway.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read /nonexistent/gateway.toml"));
}

/// Pinned to one CPU (as `taskset`, a cpuset or a container's CPU quota would), the default
/// is one worker thread, not the host's count.
#[test]
fn default_threads_follow_the_cpus_this_process_may_use() {
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(env!("CARGO_BIN_EXE_x402-gateway"))
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"),
        ])
        .output()
        .expect("taskset (util-linux) runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("(threads: 1)"), "{stdout}");
    assert!(stdout.contains("admin        127.0.0.1:9402"), "{stdout}");
    assert!(stdout.contains("reload       on SIGHUP\n"), "{stdout}");
}
