//! `x402-gateway check`: the shipped config is valid; a broken one lists every problem at once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_x402-gateway"))
}

/// `check` of the shipped `gateway.toml`, with the demo stack's settlement signer in the
/// environment (anvil dev key #2, public).
fn check_shipped() -> Command {
    let mut c = gateway();
    c.args([
        "check",
        "--config",
        concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"),
    ])
    .env(
        "FACILITATOR_KEY",
        "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    );
    c
}

#[test]
fn shipped_config_checks_and_prints_the_route_table() {
    let out = check_shipped().output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("/weather/*"));
    assert!(stdout.contains("$0.001 = 1000 atomic USDC"), "{stdout}");
    assert!(
        stdout.contains("embedded: 1 signer key(s); eip155:84532"),
        "{stdout}"
    );
    assert!(
        stdout.contains("batching     batch_max 100 per transaction via 0xcA11bde05977b3631167028862bE2a173976CA11; batch_window 200ms (deferred); sync_batch_window off"),
        "{stdout}"
    );
    assert!(stdout.contains("free"));
    assert!(
        stdout.contains(concat!(
            "journal      ",
            env!("CARGO_MANIFEST_DIR"),
            "/x402-journal.db (sync full)"
        )),
        "{stdout}"
    );
    // Under systemd (StateDirectory=) or in the image, the journal goes to $STATE_DIRECTORY.
    let out = check_shipped()
        .env("STATE_DIRECTORY", "/var/lib/x402-gateway")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("journal      /var/lib/x402-gateway/x402-journal.db (sync full)"),
        "{stdout}"
    );
}

#[test]
fn the_shipped_config_names_its_missing_signer_key() {
    let out = gateway()
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/gateway.toml"),
        ])
        .env_remove("FACILITATOR_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("facilitator.signer_keys[0]") && stderr.contains("FACILITATOR_KEY"),
        "{stderr}"
    );
}

#[test]
fn placeholder_and_public_dev_recipients_are_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("x402-check-pay-to-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |pay_to: &str, network: &str| {
        let path = dir.join("gateway.toml");
        std::fs::write(
            &path,
            format!(
                "[upstream]\nurl = \"http://127.0.0.1:3000\"\n[facilitator]\nurl = \"https://x402.org/facilitator\"\n[payment]\npay_to = \"{pay_to}\"\nnetwork = \"{network}\"\n[[route]]\npath = \"/a\"\nprice = \"$0.01\"\n"
            ),
        )
        .unwrap();
        let out = gateway()
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = check("0x000000000000000000000000000000000000dEaD", "base-sepolia");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("payment.pay_to")
            && stderr.contains("0x000000000000000000000000000000000000dEaD")
            && stderr.contains("use your own address"),
        "{stderr}"
    );
    let (code, stderr) = check("0x1234567890123456789012345678901234567890", "base");
    assert_eq!(code, Some(2));
    assert!(stderr.contains("placeholder"), "{stderr}");
    // Anvil's account #0: fine on the test network, refused on Base mainnet.
    let dev = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
    assert_eq!(check(dev, "base-sepolia").0, Some(0));
    let (code, stderr) = check(dev, "eip155:8453");
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("route[0].pay_to")
            && stderr.contains("development account #0")
            && stderr.contains("private key is public"),
        "{stderr}"
    );
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
        .env(
            "FACILITATOR_KEY",
            "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
        )
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
pay_to = "0x7D5c4A0E4B1a5E3F9a1e2B6C8d0F3A5B7C9e1d24"
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
    let mut child = check_shipped()
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

/// `otlp_endpoint` needs a build with the `otlp` feature; without it, `check` says so.
#[test]
fn otlp_export_needs_its_feature() {
    let out = check_text(
        "otlp.toml",
        &format!("{MINIMAL}\n[logging]\notlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    if cfg!(feature = "otlp") {
        assert!(out.status.success(), "{stderr}");
    } else {
        assert_eq!(out.status.code(), Some(2));
        assert!(
            stderr.contains("logging.otlp_endpoint") && stderr.contains("--features otlp"),
            "{stderr}"
        );
    }
}
