use super::*;
use crate::protocol::{decode_header, v1, v2};

fn table(routes: &str) -> PriceTable {
    crate::pricing::test_table(routes)
}

const ROUTES: &str = r#"
[[route]]
path = "/health"
price = "free"
[[route]]
path = "/weather/*"
methods = ["GET"]
price = "$0.001"
description = "Weather"
mime_type = "application/json"
[[route]]
path = "/admin/**"
price = "$5"
[[route]]
path = "/api/**"
price = "$0.01"
"#;

fn idx(t: &PriceTable, m: &Method, target: &str) -> Option<usize> {
    t.lookup(m, target).map(|r| r.rule.index)
}

/// The challenge of the `/weather/*` route.
fn weather_challenge(t: &PriceTable) -> &challenge::Challenge {
    t.lookup(&Method::GET, "/weather/paris")
        .unwrap()
        .challenge
        .as_ref()
        .unwrap()
}

/// The v2 challenge in a `PAYMENT-REQUIRED` value.
fn required(h: &http::HeaderValue) -> v2::PaymentRequired {
    serde_json::from_slice(&decode_header(h.as_bytes()).unwrap()).unwrap()
}

#[test]
fn lookup_matches_normalised_paths() {
    let t = table(ROUTES);
    assert_eq!(idx(&t, &Method::GET, "/health"), Some(0));
    assert_eq!(
        idx(&t, &Method::GET, "/weather/paris?units=metric"),
        Some(1)
    );
    assert_eq!(idx(&t, &Method::GET, "/WEATHER/Paris/"), Some(1));
    assert_eq!(idx(&t, &Method::GET, "/health/../weather/paris"), Some(1));
    assert_eq!(
        idx(&t, &Method::HEAD, "/weather/paris"),
        Some(1),
        "HEAD follows GET"
    );
    assert_eq!(
        idx(&t, &Method::POST, "/weather/paris"),
        None,
        "method filter"
    );
    assert_eq!(idx(&t, &Method::GET, "/elsewhere"), None);
}

#[test]
fn malformed_escape_matches_the_strictest_route() {
    let t = table(ROUTES);
    assert_eq!(idx(&t, &Method::GET, "/health%zz"), Some(2));
    assert_eq!(idx(&t, &Method::POST, "/anything/%"), Some(2));
}

#[test]
fn encoded_slash_is_charged_if_either_reading_is_priced() {
    let t = table(
        r#"
[[route]]
path = "/files/*"
price = "$0.01"
[[route]]
path = "/files/*/*"
price = "free"
"#,
    );
    // As a separator it is /files/a/b (free); as text it is /files/a%2fb (priced).
    assert_eq!(idx(&t, &Method::GET, "/files/a%2Fb"), Some(0));
}

#[test]
fn challenge_renders_valid_v1_and_v2() {
    let t = table(ROUTES);
    let c = weather_challenge(&t);
    let url = "http://gw.example/weather/paris?q=\"x\"";
    let (header, body) = c.unpaid(url);
    let pr = required(&header);
    assert_eq!(pr.x402_version, 2);
    assert_eq!(pr.resource.url, url);
    assert_eq!(pr.error.as_deref(), Some("Payment required"));
    assert_eq!(pr.accepts[0].amount, "1000");
    assert_eq!(
        pr.accepts[0].asset,
        "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
    );
    assert_eq!(pr.accepts[0].extra.name, "USDC");
    let b: v1::PaymentRequirementsResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(b.x402_version, 1);
    assert_eq!(b.accepts[0].network, "base-sepolia");
    assert_eq!(b.accepts[0].resource, url);
    assert_eq!(b.accepts[0].max_amount_required, "1000");
    assert_eq!(b.accepts[0].mime_type, "application/json");
    // Prepared requirement objects for the facilitator.
    let o = &c.options[0];
    let r2: v2::PaymentRequirements = serde_json::from_str(o.v2_requirements.get()).unwrap();
    assert_eq!(r2, pr.accepts[0]);
    let r1: v1::PaymentRequirements =
        serde_json::from_str(&o.v1_requirements.as_ref().unwrap().render(url, "")).unwrap();
    assert_eq!(r1, b.accepts[0]);
    let html = c.html("http://x/<script>");
    assert!(
        html.contains("$0.001") && html.contains("&lt;script&gt;") && !html.contains("<script>")
    );
}

#[test]
fn networks_legacy_clients_cannot_read_stay_out_of_the_v1_body() {
    let t = table(
        r#"
[[route]]
path = "/x"
  [[route.accept]]
  network = "eip155:31337"
  asset = { address = "0x5FbDB2315678afecb367f032d93F642f64180aa3", decimals = 6, name = "USDC", version = "2" }
  price = "$0.01"
  [[route.accept]]
  price = "$0.01"
"#,
    );
    let c = t
        .lookup(&Method::GET, "/x")
        .unwrap()
        .challenge
        .as_ref()
        .unwrap();
    let (header, body) = c.unpaid("http://h/x");
    let pr = required(&header);
    assert_eq!(pr.accepts.len(), 2);
    let b: v1::PaymentRequirementsResponse = serde_json::from_slice(&body).unwrap();
    assert_eq!(b.accepts.len(), 1);
    assert_eq!(b.accepts[0].network, "base-sepolia");
    assert!(c.options[0].v1_requirements.is_none());
}

#[test]
fn fixed_resource_is_prerendered() {
    let t = table(
        r#"
[[route]]
path = "/x"
price = "$0.01"
resource = "https://api.example.com/x"
"#,
    );
    let c = t
        .lookup(&Method::GET, "/x")
        .unwrap()
        .challenge
        .as_ref()
        .unwrap();
    let (header, _) = c.unpaid("http://ignored/x");
    let pr = required(&header);
    assert_eq!(pr.resource.url, "https://api.example.com/x");
}

#[test]
fn rendered_challenges_are_reused_per_url_only() {
    let t = table(ROUTES);
    let c = weather_challenge(&t);
    let (paris, paris_body) = c.unpaid("http://gw/weather/paris");
    let (again, again_body) = c.unpaid("http://gw/weather/paris");
    assert_eq!((&paris, &paris_body), (&again, &again_body));
    let (rome, rome_body) = c.unpaid("http://gw/weather/rome");
    assert_eq!(required(&paris).resource.url, "http://gw/weather/paris");
    assert_eq!(required(&rome).resource.url, "http://gw/weather/rome");
    assert!(std::str::from_utf8(&rome_body)
        .unwrap()
        .contains("/weather/rome"));
    assert_eq!(
        required(&c.unpaid("http://gw/weather/paris").0)
            .resource
            .url,
        "http://gw/weather/paris"
    );
}

#[test]
fn long_urls_are_rendered_but_never_kept() {
    let t = table(ROUTES);
    let c = weather_challenge(&t);
    let long = format!("http://gw/weather/paris?q={}", "a".repeat(4096));
    let (h, _) = c.unpaid(&long);
    let pr = required(&h);
    assert_eq!(pr.resource.url, long);
    c.rendered.run_pending_tasks();
    assert_eq!(c.rendered.entry_count(), 0);
    let _ = c.unpaid("http://gw/weather/paris");
    c.rendered.run_pending_tasks();
    assert_eq!(c.rendered.entry_count(), 1);
}
