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

fn check_text(name: &str, text: &str) -> std::process::Output {
    let dir = std::env::temp_dir().join(format!("x402-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    gateway()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap()
}

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8402"
[upstream]
url = "http://127.0.0.1:3000"
[facilitator]
url = "https://x402.org/facilitator"
[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
network = "base-sepolia"
[[route]]
path = "/a"
price = "$0.01"
"#;

#[test]
fn forward_auth_and_access_log_settings_are_checked_and_shown() {
    let out = check_text(
        "auth.toml",
        &format!("{MINIMAL}\n[auth]\nlisten = \"127.0.0.1:8404\"\noriginal_uri_header = \"X-Real-URI\"\n[logging]\naccess_log = false\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("forward-auth 127.0.0.1:8404: /nginx (original request in x-original-method and x-real-uri)"),
        "{stdout}"
    );
    assert!(stdout.contains("access log   off"), "{stdout}");

    let out = check_text(
        "auth-broken.toml",
        &format!("{MINIMAL}\n[auth]\nlisten = \"127.0.0.1:8402\"\noriginal_method_header = \"not a header\"\next_authz_prefix = \"authz/\"\ntypo = 1\n"),
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "auth.listen",
        "auth.original_method_header",
        "auth.ext_authz_prefix",
        "auth.typo",
    ] {
        assert!(stderr.contains(key), "{key} not reported:\n{stderr}");
    }
}

/// `check | head`: a reader that goes away is not a crash.
#[test]
fn a_closed_stdout_is_not_a_panic() {
    let mut child = gateway()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}
