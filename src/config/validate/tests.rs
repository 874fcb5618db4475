use super::*;
use crate::config::ConfigError;
use alloy::primitives::U256;

fn env(name: &str) -> Option<String> {
    (name == "FACILITATOR_TOKEN").then(|| "s3cret".to_owned())
}

/// The environment of the shipped gateway.toml's demo stack and its commented alternatives.
fn shipped_env(name: &str) -> Option<String> {
    match name {
        // Anvil dev key #2, as scripts/demo.sh uses it.
        "FACILITATOR_KEY" => {
            Some("0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a".to_owned())
        }
        "CDP_API_TOKEN" => Some("token".to_owned()),
        _ => None,
    }
}

fn load_shipped(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    match Config::from_toml(text, "gateway.toml", &shipped_env) {
        Ok(c) => Ok(c),
        Err(ConfigError::Invalid { issues, .. }) => Err(issues),
        Err(e) => panic!("unexpected: {e}"),
    }
}

fn load(text: &str) -> Result<Config, Vec<ConfigIssue>> {
    match Config::from_toml(text, "test.toml", &env) {
        Ok(c) => Ok(c),
        Err(ConfigError::Invalid { issues, .. }) => Err(issues),
        Err(e) => panic!("unexpected: {e}"),
    }
}

const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:3000"
[facilitator]
url = "http://127.0.0.1:9000/"
[payment]
pay_to = "0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24"
network = "base-sepolia"
[[route]]
path = "/weather/*"
price = "$0.001"
"#;

#[test]
fn shipped_gateway_toml_is_valid() {
    let text = include_str!("../../../gateway.toml");
    let c = load_shipped(text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.routes.len(), 4);
    assert_eq!(c.routes[0].options[0].amount, U256::from(1000));
    assert_eq!(c.routes[1].settlement, SettlementMode::BeforeUpstream);
    assert_eq!(c.routes[2].options.len(), 1);
    assert!(c.routes[3].is_free());
    // As shipped it runs the local demo stack: embedded facilitator on the anvil chain.
    let e = c.facilitator.embedded.as_ref().unwrap();
    assert_eq!(e.rpc[0].0.caip2(), "eip155:84532");
    assert_eq!(c.upstream.address, "127.0.0.1:3000");
    assert_eq!(c.admin.listen.as_deref(), Some("127.0.0.1:9402"));
    // Every commented alternative is valid too once uncommented: the x402.org facilitator for
    // Base Sepolia, and Base mainnet through a hosted facilitator with its auth header.
    let uncomment = |from: &str, to: &str| -> String {
        let start = text.find(from).unwrap();
        let end = start + text[start..].find(to).unwrap();
        text[start..end]
            .lines()
            .filter(|l| {
                l.starts_with("# ")
                    && !l.starts_with("#  ")
                    && !l[2..].starts_with(|c: char| c.is_ascii_digit())
            })
            .map(|l| l.trim_start_matches("# "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let without_facilitator = |t: &str| {
        let start = text.find("[facilitator]\nembedded").unwrap();
        let end = text.find("[payment]").unwrap();
        format!("{}{t}\n{}", &text[..start], &text[end..])
    };
    let testnet = uncomment("# 2. Base Sepolia", "# 3. Base mainnet");
    assert!(testnet.contains("x402.org/facilitator"), "{testnet}");
    let c = load_shipped(&without_facilitator(&testnet)).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        c.facilitator.url.as_deref(),
        Some("https://x402.org/facilitator")
    );
    let mainnet = uncomment("# 3. Base mainnet", "#    ... or the embedded");
    let text =
        without_facilitator(&mainnet).replace("network = \"base-sepolia\"", "network = \"base\"");
    // The shipped pay_to is a public dev account: refused on mainnet, with the key named.
    let issues = load_shipped(&text).unwrap_err();
    assert!(
        issues
            .iter()
            .all(|i| i.key.ends_with("pay_to") && i.message.contains("development account #3")),
        "{issues:?}"
    );
    let text = text.replace(
        "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
        "0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24",
    );
    let c = load_shipped(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.routes[0].options[0].network.caip2(), "eip155:8453");
    assert!(c
        .facilitator
        .headers
        .iter()
        .any(|(k, _)| k.as_str() == "authorization"));
}

#[test]
fn defaults_are_filled_in() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.server.listen, "0.0.0.0:8402");
    assert_eq!(c.facilitator.url.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(c.facilitator.timeout, Duration::from_secs(10));
    assert_eq!(c.upstream.address, "127.0.0.1:3000");
    assert!(!c.upstream.tls);
    let r = &c.routes[0];
    assert_eq!(r.settlement, SettlementMode::AfterResponse);
    assert!(r.methods.is_none());
    let o = &r.options[0];
    assert_eq!(o.max_timeout_seconds, 300);
    assert_eq!(o.asset.symbol, "USDC");
}

#[test]
fn broken_file_reports_every_problem_at_once() {
    let text = r#"
[server]
listen = "nowhere"
threads = "two"
[upstream]
url = "ftp://example.com"
[facilitator]
timeout = "soon"
headers = { Authorization = "Bearer ${MISSING_TOKEN}" }
[payment]
pay_to = "0x1234"
network = "solana"
settlement = "eventually"
colour = "blue"
[[route]]
path = "weather"
price = "$0.0000001"
[[route]]
path = "/a/**/b"
price = 0.5
methods = ["GET", ""]
[[route]]
path = "/ok"
price = "1 DAI"
network = "base"
pay_to = "0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24"
"#;
    let issues = load(text).unwrap_err();
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for want in [
        "server.listen",
        "server.threads",
        "upstream.url",
        "facilitator.timeout",
        "facilitator.headers.Authorization",
        "facilitator.url",
        "payment.pay_to",
        "payment.network",
        "payment.settlement",
        "payment.colour",
        "route[0].path",
        "route[0].network",
        "route[1].path",
        "route[1].price",
        "route[1].methods",
        "route[2].price",
    ] {
        assert!(keys.contains(&want), "missing {want} in {keys:?}");
    }
    let msg = |k: &str| issues.iter().find(|i| i.key == k).unwrap().message.clone();
    assert!(msg("facilitator.headers.Authorization").contains("MISSING_TOKEN"));
    assert!(msg("route[2].price").contains("DAI"));
    assert!(msg("payment.colour").contains("unknown key"));
}

#[test]
fn inexact_price_is_a_config_error() {
    let text = MINIMAL.replace("$0.001", "$0.0000001");
    let issues = load(&text).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "route[0].price");
    assert!(issues[0].message.contains("cannot be paid exactly"));
}

#[test]
fn custom_asset_and_env_headers() {
    let text = MINIMAL.replace(
        "network = \"base-sepolia\"",
        "network = \"eip155:31337\"\nasset = { address = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\", decimals = 6, name = \"USDC\", version = \"2\" }",
    ) + "\n";
    let text = text.replace(
        "url = \"http://127.0.0.1:9000/\"",
        "url = \"http://127.0.0.1:9000/\"\nheaders = { Authorization = \"Bearer ${FACILITATOR_TOKEN}\" }",
    );
    let c = load(&text).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.routes[0].options[0].asset.decimals, 6);
    assert_eq!(c.routes[0].options[0].amount, U256::from(1000));
    assert_eq!(c.facilitator.headers[0].1.expose(), "Bearer s3cret");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "secrets leak into Debug"
    );
}

#[test]
fn unknown_asset_symbol_lists_known_ones() {
    let text = MINIMAL.replace(
        "network = \"base-sepolia\"",
        "network = \"base-sepolia\"\nasset = \"DAI\"",
    );
    let issues = load(&text).unwrap_err();
    assert!(issues[0].message.contains("known: USDC"), "{issues:?}");
}

#[test]
fn route_patterns_compile() {
    let p = parse_pattern("/Weather/*/").unwrap();
    assert_eq!(
        p.segments,
        vec![Segment::Literal("weather".into()), Segment::Star]
    );
    assert!(!p.rest);
    let p = parse_pattern("/**").unwrap();
    assert!(p.segments.is_empty() && p.rest);
    assert_eq!(
        parse_pattern("/").unwrap(),
        RoutePattern {
            segments: vec![],
            rest: false
        }
    );
    for bad in [
        "weather", "/a//b", "/a/**/b", "/a*", "/a/../b", "/a%20b", "/a?x=1", "/a b",
    ] {
        assert!(parse_pattern(bad).is_err(), "{bad}");
    }
}

#[test]
fn no_routes_is_reported() {
    let text = MINIMAL.split("[[route]]").next().unwrap();
    let issues = load(text).unwrap_err();
    assert_eq!(issues[0].key, "route");
}

#[test]
fn syntax_errors_are_reported_with_position() {
    let err = Config::from_toml("[server\nlisten=", "x.toml", &env).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }));
    assert!(err.to_string().contains("line"), "{err}");
}

#[test]
fn embedded_facilitator_config() {
    const KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
    let embedded = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/\"",
        "embedded = true\nrpc = { \"eip155:84532\" = \"http://127.0.0.1:8545\" }\nsigner_keys = [\"${FACILITATOR_KEY}\"]",
    );
    let env_key = |name: &str| (name == "FACILITATOR_KEY").then(|| KEY.to_owned());
    let c = match Config::from_toml(&embedded, "t", &env_key) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let e = c.facilitator.embedded.as_ref().unwrap();
    assert_eq!(e.rpc[0].0.chain_id(), 84532);
    assert_eq!(e.signer_keys[0].expose(), KEY);
    assert!(c.facilitator.url.is_none());
    assert!(
        !format!("{c:?}").contains("5de4111a"),
        "a signer key leaks into Debug"
    );

    // Keys written into the file, a missing variable, and url + embedded are all reported.
    let literal = embedded.replace("${FACILITATOR_KEY}", KEY);
    let issues = load(&literal).unwrap_err();
    assert!(issues
        .iter()
        .any(|i| i.key == "facilitator.signer_keys[0]" && i.message.contains("environment")));
    let issues = load(&embedded).unwrap_err();
    assert!(issues
        .iter()
        .any(|i| i.key == "facilitator.signer_keys[0]" && i.message.contains("FACILITATOR_KEY")));
    let both = embedded.replace("embedded = true", "embedded = true\nurl = \"http://x\"");
    assert!(load(&both)
        .unwrap_err()
        .iter()
        .any(|i| i.key == "facilitator.url"));
    let remote_with_rpc = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/\"",
        "url = \"http://x\"\nrpc = {}",
    );
    assert!(load(&remote_with_rpc)
        .unwrap_err()
        .iter()
        .any(|i| i.key == "facilitator.rpc"));
}

#[test]
fn embedded_batching_keys() {
    const KEY: &str = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a";
    let env_key = |name: &str| (name == "FACILITATOR_KEY").then(|| KEY.to_owned());
    let with = |extra: &str| {
        MINIMAL.replace(
            "url = \"http://127.0.0.1:9000/\"",
            &format!("embedded = true\nrpc = {{ \"eip155:84532\" = \"http://127.0.0.1:8545\" }}\nsigner_keys = [\"${{FACILITATOR_KEY}}\"]\n{extra}"),
        )
    };
    let issues_of = |text: &str| match Config::from_toml(text, "t", &env_key) {
        Ok(_) => Vec::new(),
        Err(ConfigError::Invalid { issues, .. }) => issues,
        Err(e) => panic!("{e}"),
    };
    // Defaults: 100 per transaction, 200 ms for the deferred queue, off for per-request
    // settlements, the canonical Multicall3 address.
    let c = Config::from_toml(&with(""), "t", &env_key).unwrap();
    let b = &c.facilitator.embedded.as_ref().unwrap().batch;
    assert_eq!(*b, BatchConfig::default());
    assert_eq!(b.max, 100);
    assert_eq!(b.window, Duration::from_millis(200));
    assert_eq!(b.sync_window, Duration::ZERO);
    assert_eq!(
        b.contract.to_checksum(None),
        "0xcA11bde05977b3631167028862bE2a173976CA11"
    );
    let set = with(
        "batch_max = 50\nbatch_window = \"1s\"\nsync_batch_window = \"20ms\"\nbatch_contract = \"0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24\"",
    );
    let c = Config::from_toml(&set, "t", &env_key).unwrap();
    let b = &c.facilitator.embedded.as_ref().unwrap().batch;
    assert_eq!(b.max, 50);
    assert_eq!(b.window, Duration::from_secs(1));
    assert_eq!(b.sync_window, Duration::from_millis(20));
    assert_eq!(
        b.contract,
        "0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24"
            .parse::<Address>()
            .unwrap()
    );
    let off = with("sync_batch_window = \"0ms\"\nbatch_max = 1");
    assert!(issues_of(&off).is_empty(), "{:?}", issues_of(&off));

    // Every bad key is reported at once, each with its own message.
    let bad = with(
        "batch_max = 0\nbatch_window = \"0ms\"\nsync_batch_window = \"5s\"\nbatch_contract = \"0x12\"",
    );
    let issues = issues_of(&bad);
    let keys: Vec<&str> = issues.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "facilitator.batch_max",
        "facilitator.batch_window",
        "facilitator.sync_batch_window",
        "facilitator.batch_contract",
    ] {
        assert!(keys.contains(&key), "{key} not reported: {issues:?}");
    }
    assert!(issues
        .iter()
        .any(|i| i.key == "facilitator.batch_max" && i.message.contains("1000")));
    let too_many = issues_of(&with(
        "batch_max = 1001\nbatch_window = \"2m\"\nsync_batch_window = \"soon\"",
    ));
    assert_eq!(too_many.len(), 3, "{too_many:?}");
    assert!(too_many
        .iter()
        .any(|i| i.key == "facilitator.sync_batch_window" && i.message.contains("not a duration")));
    let negative = issues_of(&with("batch_max = -3"));
    assert_eq!(negative.len(), 1, "{negative:?}");

    // Only the embedded facilitator batches: with a remote one the keys are refused.
    let remote = MINIMAL.replace(
        "url = \"http://127.0.0.1:9000/\"",
        "url = \"http://x\"\nbatch_max = 10\nsync_batch_window = \"20ms\"",
    );
    let issues = load(&remote).unwrap_err();
    for key in ["facilitator.batch_max", "facilitator.sync_batch_window"] {
        assert!(
            issues
                .iter()
                .any(|i| i.key == key && i.message.contains("embedded")),
            "{key}: {issues:?}"
        );
    }
    // Unknown keys stay refused.
    assert!(!issues_of(&with("batch_size = 10")).is_empty());
}

#[test]
fn verification_mode() {
    assert_eq!(
        load(MINIMAL).unwrap().verification.mode,
        VerificationMode::Facilitator
    );
    let local = format!("{MINIMAL}\n[verification]\nmode = \"local\"\n");
    assert_eq!(
        load(&local).unwrap().verification.mode,
        VerificationMode::Local
    );
    let issues = load(&local.replace("\"local\"", "\"trust-me\"")).unwrap_err();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert_eq!(issues[0].key, "verification.mode");
    assert!(issues[0].message.contains("\"facilitator\" or \"local\""));
}

#[test]
fn drain_timeout_must_cover_settle_and_resolve() {
    let text = MINIMAL.replace(
        "[facilitator]\nurl = \"http://127.0.0.1:9000/\"",
        "[server]\ndrain_timeout = \"20s\"\n[facilitator]\nurl = \"http://127.0.0.1:9000/\"\nsettle_timeout = \"30s\"",
    );
    let issues = load(&text).unwrap_err();
    assert!(
        issues
            .iter()
            .any(|i| i.key == "server.drain_timeout" && i.message.contains("settle_timeout")),
        "{issues:?}"
    );
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.server.drain_timeout, Duration::from_secs(35));
    assert_eq!(c.facilitator.resolve_timeout, Duration::from_secs(15));
    assert!(c.journal.enabled);
    assert!(c.journal.path.ends_with("x402-journal.db"));
}

#[test]
fn journal_and_chain_keys() {
    let text = format!(
        "{MINIMAL}\n[journal]\npath = \"/var/lib/x402/j.db\"\nsync = \"normal\"\nretention = \"7d\"\n[chain]\nrpc = {{ \"eip155:84532\" = \"https://rpc.example/${{FACILITATOR_TOKEN}}\" }}\n"
    );
    let c = load(&text).unwrap();
    assert_eq!(c.journal.sync, crate::config::JournalSync::Normal);
    assert_eq!(c.journal.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.chain.rpc.len(), 1);
    assert!(
        !format!("{:?}", c.chain).contains("s3cret"),
        "RPC URLs are secrets"
    );
    let bad = format!("{MINIMAL}\n[journal]\nsync = \"sometimes\"\n");
    assert!(load(&bad)
        .unwrap_err()
        .iter()
        .any(|i| i.key == "journal.sync"));
}

#[test]
fn admin_listener_is_off_by_default_and_needs_its_own_address() {
    assert_eq!(load(MINIMAL).unwrap().admin.listen, None);
    let ok = format!("{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:9402\"\n");
    assert_eq!(
        load(&ok).unwrap().admin.listen.as_deref(),
        Some("127.0.0.1:9402")
    );
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:8402\"\n{MINIMAL}\n[admin]\nlisten = \"127.0.0.1:8402\"\n"
    );
    let issues = load(&text).unwrap_err();
    assert!(issues.iter().any(|i| i.key == "admin.listen"), "{issues:?}");
    let text = format!("{MINIMAL}\n[admin]\nlisten = \"localhost\"\nport = 1\n");
    let issues = load(&text).unwrap_err();
    let keys: Vec<_> = issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["admin.listen", "admin.port"], "{issues:?}");
}

#[test]
fn the_journal_defaults_to_the_state_directory_when_systemd_or_the_image_sets_one() {
    let from = |env: &dyn Fn(&str) -> Option<String>, text: &str| {
        Config::from_toml_in(text, "gateway.toml", Path::new("/etc/x402-gateway"), env)
            .unwrap_or_else(|e| panic!("{e}"))
            .journal
            .path
    };
    let none = |_: &str| None;
    assert_eq!(
        from(&none, MINIMAL),
        Path::new("/etc/x402-gateway/x402-journal.db")
    );
    // systemd passes every StateDirectory= joined by ':'; the first one is the gateway's.
    let state = |k: &str| {
        (k == "STATE_DIRECTORY").then(|| "/var/lib/x402-gateway:/var/lib/other".to_owned())
    };
    assert_eq!(
        from(&state, MINIMAL),
        Path::new("/var/lib/x402-gateway/x402-journal.db")
    );
    // A relative STATE_DIRECTORY is not systemd's: ignored.
    let relative = |k: &str| (k == "STATE_DIRECTORY").then(|| "state".to_owned());
    assert_eq!(
        from(&relative, MINIMAL),
        Path::new("/etc/x402-gateway/x402-journal.db")
    );
    // An explicit path wins, relative to the config file's directory.
    let explicit = format!("{MINIMAL}\n[journal]\npath = \"j.db\"\n");
    assert_eq!(from(&state, &explicit), Path::new("/etc/x402-gateway/j.db"));
}

#[test]
fn placeholder_recipients_are_refused_with_the_key_named() {
    let with_pay_to =
        |addr: &str| MINIMAL.replace("0x7d5c4a0e4b1a5e3f9a1e2b6c8d0f3a5b7c9e1d24", addr);
    for (addr, words) in [
        ("0x0000000000000000000000000000000000000000", "zero address"),
        ("0x000000000000000000000000000000000000dEaD", "burn"),
        ("0x1234567890abcdef1234567890abcdef12345678", "placeholder"),
        (
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
            "x402 documentation",
        ),
    ] {
        let issues = load(&with_pay_to(addr)).unwrap_err();
        assert!(
            issues.iter().any(|i| i.key == "payment.pay_to"
                && i.message.contains(addr)
                && i.message.contains(words)),
            "{addr}: {issues:?}"
        );
    }
    // A public dev account: fine on Base Sepolia (the local demo chain), refused on Base.
    let dev = with_pay_to("0x90F79bf6EB2c4f870365E785982E1f101E93b906");
    assert!(load(&dev).is_ok());
    let issues =
        load(&dev.replace("network = \"base-sepolia\"", "network = \"base\"")).unwrap_err();
    assert!(
        issues.iter().any(|i| i.key == "route[0].pay_to"
            && i.message.contains("development account #3")
            && i.message.contains("eip155:8453")),
        "{issues:?}"
    );
    // Also when only one accepted option of a route is on a mainnet.
    let mixed = format!("{dev}\n[[route]]\npath = \"/p\"\n  [[route.accept]]\n  price = \"$0.01\"\n  [[route.accept]]\n  network = \"eip155:1\"\n  price = \"$0.01\"\n");
    let issues = load(&mixed).unwrap_err();
    assert!(
        issues.iter().any(|i| i.key == "route[1].accept[1].pay_to"),
        "{issues:?}"
    );
}
