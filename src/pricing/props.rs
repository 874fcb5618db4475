//! Property tests of the fail-closed lookup: for generated request targets, every reading a
//! common router gives the path (each router modelled independently below) that falls under a
//! priced route is charged by the gateway.

use proptest::prelude::*;

use super::*;

fn table() -> PriceTable {
    crate::pricing::test_table(
        r#"
[[route]]
path = "/health"
price = "free"
[[route]]
path = "/public/**"
price = "free"
[[route]]
path = "/premium/**"
price = "$0.01"
[[route]]
path = "/api/v1/*/data"
price = "$0.001"
[[route]]
path = "/admin"
price = "$5"
[[route]]
path = "/kiss"
price = "$0.002"
"#,
    )
}

// === Router models: target → the path the router routes on (None: it refuses the request) ===

/// Percent-decoding as routers do it; `keep` are bytes left encoded. Malformed: refused.
fn pct_decode(s: &str, keep: &[u8]) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = u8::from_str_radix(std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?, 16).ok()?;
            if keep.contains(&v) {
                out.extend_from_slice(&b[i..i + 3]);
            } else {
                out.push(v);
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Dot segments resolved, empty segments dropped.
fn clean(path: &str) -> String {
    let mut segs: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    format!("/{}", segs.join("/"))
}

fn path_of(target: &str) -> &str {
    target.split(['?', '#']).next().unwrap_or("")
}

/// nginx / Go: decode (an encoded slash stays text), clean, case-sensitive.
fn nginx(t: &str) -> Option<String> {
    Some(clean(&pct_decode(path_of(t), b"/")?))
}

/// Express (default: case-insensitive, decodes, JS lower-casing).
fn express(t: &str) -> Option<String> {
    Some(clean(&pct_decode(path_of(t), &[])?).to_lowercase())
}

/// Tomcat / Jetty / Spring: `;parameters` stripped from each raw segment, then decoded and
/// cleaned; case-sensitive.
fn tomcat(t: &str) -> Option<String> {
    let stripped: Vec<&str> = path_of(t)
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    Some(clean(&pct_decode(&stripped.join("/"), b"/")?))
}

/// Spring with decoding first (`%3B` becomes a parameter too).
fn spring_decoded(t: &str) -> Option<String> {
    let d = pct_decode(path_of(t), &[])?;
    let stripped: Vec<&str> = d
        .split('/')
        .map(|s| s.split(';').next().unwrap_or(""))
        .collect();
    Some(clean(&stripped.join("/")))
}

/// ASP.NET Core / IIS: decode, `\` is `/`, case-insensitive by invariant upper-casing (one
/// character to one).
fn aspnet(t: &str) -> Option<String> {
    let d = pct_decode(path_of(t), &[])?.replace('\\', "/");
    let upper: String = clean(&d)
        .chars()
        .map(|c| c.to_uppercase().next().unwrap_or(c))
        .collect();
    Some(upper.to_ascii_lowercase())
}

/// A case-insensitive router that lower-cases one character to one.
fn simple_fold(t: &str) -> Option<String> {
    let d = pct_decode(path_of(t), &[])?;
    Some(
        clean(&d)
            .chars()
            .map(|c| c.to_lowercase().next().unwrap_or(c))
            .collect(),
    )
}

/// A router model: the path it routes a target on, or `None` when it refuses the target.
type Router = fn(&str) -> Option<String>;

const ROUTERS: [(&str, Router); 6] = [
    ("nginx", nginx),
    ("express", express),
    ("tomcat", tomcat),
    ("spring", spring_decoded),
    ("aspnet", aspnet),
    ("simple-fold", simple_fold),
];

// === Generation ===

/// Pieces of paths, biased towards priced names, their look-alikes and the tricks routers undo.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("premium".to_owned()),
        Just("PREMIUM".to_owned()),
        Just("Premium".to_owned()),
        Just("pre%6dium".to_owned()),
        Just("premium;jsessionid=1".to_owned()),
        Just("premium;".to_owned()),
        Just("premium%3bx=1".to_owned()),
        Just("admin".to_owned()),
        Just("ADMIN".to_owned()),
        Just("adm%C4%B1n".to_owned()),     // admın: dotless i
        Just("%E2%84%AAiss".to_owned()),   // Kiss with a Kelvin sign
        Just("ki%C5%BF%C5%BF".to_owned()), // kiſſ: long s
        Just("kiss".to_owned()),
        Just("api".to_owned()),
        Just("v1".to_owned()),
        Just("V1".to_owned()),
        Just("data".to_owned()),
        Just("x".to_owned()),
        Just("health".to_owned()),
        Just("public".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("..;".to_owned()),
        Just("..;x=1".to_owned()),
        Just("%2e%2e".to_owned()),
        Just(String::new()),
        Just("%2F".to_owned()),
        Just("a%2Fb".to_owned()),
        Just("\\".to_owned()),
        "[a-z]{1,3}".prop_map(|s| s),
    ]
}

fn target() -> impl Strategy<Value = String> {
    (
        proptest::collection::vec(segment(), 1..7),
        any::<bool>(),
        prop_oneof![Just(""), Just("?q=1"), Just("#f"), Just("?_x=/premium")],
    )
        .prop_map(|(segs, trailing, tail)| {
            let mut t = String::new();
            for s in segs {
                t.push('/');
                t.push_str(&s);
            }
            if trailing {
                t.push('/');
            }
            t.push_str(tail);
            t
        })
}

proptest! {
    // 2000 cases in the test command; `PROPTEST_CASES=200000` for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_router_reading_of_a_priced_path_goes_unpaid(t in target()) {
        let table = table();
        let charged = matches!(
            table.classify(&[Method::GET], &t),
            Lookup::Route(r) if r.is_priced()
        );
        for (name, router) in ROUTERS {
            let Some(routed) = router(&t) else { continue };
            let priced = table
                .matcher
                .lookup(&routed, &|i| table.routes[i].is_priced())
                .is_some();
            prop_assert!(
                !priced || charged,
                "{name} serves {t:?} as {routed:?}, a priced route, but the gateway does not charge it"
            );
        }
    }
}

#[test]
fn the_models_do_reach_priced_routes_through_each_trick() {
    // Guards the property test against vacuous models: each trick is seen by a router.
    let t = table();
    let priced = |p: &str| t.matcher.lookup(p, &|i| t.routes[i].is_priced()).is_some();
    assert!(priced(&tomcat("/premium;x=1/a").unwrap()));
    assert!(priced(&tomcat("/health/..;/premium/a").unwrap()));
    assert!(priced(&spring_decoded("/premium%3bx/a").unwrap()));
    assert!(priced(&express("/PREMIUM/a").unwrap()));
    assert!(priced(&aspnet("/adm%C4%B1n").unwrap()));
    assert!(priced(&simple_fold("/%E2%84%AAiss").unwrap()));
    assert!(priced(&aspnet("/ki%C5%BF%C5%BF").unwrap()));
    assert!(priced(&aspnet("\\premium\\a").unwrap()));
    assert!(priced(&nginx("/api/v1/x/data").unwrap()));
}
