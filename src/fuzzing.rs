//! Fuzz targets: every parser that reads bytes from outside, with the invariants it must keep.
//! `fuzz/` runs them under libFuzzer (`cargo fuzz`); `tests/fuzz_corpus.rs` replays their
//! committed corpora in the test command, so every corpus entry is also a regression test.
//!
//! Owns: one function per target. Each must never panic on any input, and asserts what its
//! parser promises. Not part of the gateway's API.

use std::sync::OnceLock;

use http::Method;

use crate::config::Config;
use crate::pricing::{Lookup, PriceTable};
use crate::protocol::PaymentPayload;
use crate::scheme::Authorized;

/// `PAYMENT-SIGNATURE` / `X-PAYMENT` decoding (v1 and v2): a payload that decodes re-encodes
/// to canonical JSON that decodes to the same payment.
pub fn payment_header(data: &[u8]) {
    let Ok(p) = PaymentPayload::from_header(data) else {
        return;
    };
    let Ok(decoded) = Authorized::decode(&p) else {
        return;
    };
    let json = p.to_canonical_json(&decoded.canonical_json());
    let again = PaymentPayload::from_json(json.as_bytes())
        .unwrap_or_else(|e| panic!("canonical JSON does not decode: {e}: {json}"));
    assert_eq!(again.version, p.version);
    assert_eq!(Authorized::decode(&again).ok(), Some(decoded));
    assert_eq!(again.network, p.network);
}

pub use crate::config::test_config;
pub use crate::pricing::test_table;

/// The price table of the route-lookup target.
pub fn fuzz_table() -> &'static PriceTable {
    static TABLE: OnceLock<PriceTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        test_table(
            r#"
[[route]]
path = "/health"
price = "free"
[[route]]
path = "/weather/*"
methods = ["GET"]
price = "$0.001"
[[route]]
path = "/premium/**"
price = "$0.01"
[[route]]
path = "/a/*/b/**"
price = "$0.002"
[[route]]
path = "/public/**"
price = "free"
"#,
        )
    })
}

fn charged(t: &PriceTable, methods: &[Method], target: &str) -> bool {
    matches!(t.classify(methods, target), Lookup::Route(r) if r.is_priced())
}

/// Path normalisation and route matching on an arbitrary request target: a query or fragment
/// never changes the price, and neither does ASCII case (matching is case-insensitive).
pub fn route_lookup(data: &[u8]) {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    let t = fuzz_table();
    let get = [Method::GET];
    let base = charged(t, &get, target);
    let _ = t.classify(&[Method::POST, Method::GET, Method::DELETE], target);
    let _ = t.covers_priced(target);
    if !target.contains(['?', '#']) {
        assert_eq!(
            base,
            charged(t, &get, &format!("{target}?x=1")),
            "{target:?}"
        );
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path.is_ascii() && !path.contains('%') {
        let upper = target.to_ascii_uppercase();
        assert_eq!(base, charged(t, &get, &upper), "{target:?} vs {upper:?}");
    }
}

/// `gateway.toml` parsing and validation: any text gives a config or a list of problems, and a
/// valid config compiles into a price table whose challenges render.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(c) = Config::from_toml(text, "fuzz", &|k| {
        (k == "KEY").then(|| format!("0x{}", "11".repeat(32)))
    }) else {
        return;
    };
    let table = PriceTable::new(c.routes, &|_| true);
    for r in table.routes() {
        if let Some(ch) = &r.challenge {
            let _ = ch.unpaid("http://fuzz.example/x");
        }
    }
}

/// The facilitator client's readers: an HTTP answer's framing, then `/verify` and `/settle`
/// bodies. A `/settle` answer is a success only with `success: true` and a transaction.
pub fn facilitator_response(data: &[u8]) {
    crate::verify::http1::fuzz_parse(data);
    let _ = crate::verify::facilitator::read_verify("fuzz", 200, data);
    if let Ok(r) = crate::verify::facilitator::read_settle("fuzz", 200, data) {
        if r.is_success() {
            assert_eq!(r.success, Some(true));
            assert!(r.transaction.as_deref().is_some_and(|t| !t.is_empty()));
        }
    }
}

/// The facilitator server's request handling before any chain call: the policy check and the
/// request reader with every local check.
pub fn facilitator_request(data: &[u8]) {
    static POLICY: OnceLock<crate::facilitator::server::ServerPolicy> = OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        crate::facilitator::server::ServerPolicy::new(&crate::config::FacilitatorServerConfig {
            token: None,
            pay_to: vec![alloy::primitives::Address::repeat_byte(0x20)],
            min_value: crate::config::money::Price::Dollars("0.001".into()),
            rate: None,
            max_body: 64 * 1024,
        })
    });
    let _ = policy.admit(data);
    if let Ok(p) = crate::facilitator::check::parse_request(data, 1_800_000_000) {
        assert_eq!(p.exact.authorization.to, p.pay_to);
        assert_eq!(p.exact.authorization.value, p.amount);
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The targets by name, as `fuzz/fuzz_targets` and the corpus replay name them.
pub const TARGETS: [(&str, Target); 5] = [
    ("payment_header", payment_header),
    ("route_lookup", route_lookup),
    ("config", config),
    ("facilitator_response", facilitator_response),
    ("facilitator_request", facilitator_request),
];
