//! Upstream pools and named upstreams: `[[upstream.backend]]` spread round robin, a backend
//! that fails its health checks is skipped until it passes again, a pool with no healthy
//! backend charges nothing, a backend that refuses connections is failed over, consistent
//! hashing keeps a key on one backend, routes name their upstream (`upstream = "NAME"`), and
//! `${VAR}` headers are injected upstream and cannot be spoofed by the client. The pools' own
//! background services (discovery, health checks) run in the test; every wait is on an event.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use pingora::server::configuration::ServerConf;
use tokio::sync::watch;
use x402_gateway::config::Config;
use x402_gateway::proxy::pool::Upstreams;
use x402_gateway::verify::{Facilitator, FacilitatorClient};
use x402_gateway::{build_gateway, fetch_supported};

struct PoolGateway {
    addr: std::net::SocketAddr,
    facilitator: MockFacilitator,
    upstreams: Arc<Upstreams>,
    _stop: watch::Sender<bool>,
    _serve: watch::Sender<bool>,
}

impl PoolGateway {
    /// A gateway with `upstreams` (the `[upstream]` and `[upstreams.*]` tables) and `routes`;
    /// `${VAR}` read from `env`. Returns once every upstream has an address.
    async fn start(upstreams: &str, routes: &str, env: &[(&str, &str)]) -> PoolGateway {
        let facilitator = MockFacilitator::start().await;
        let text = format!(
            r#"[journal]
path = "{}"
{upstreams}
[facilitator]
url = "{}"
timeout = "2s"
settle_timeout = "2s"
resolve_timeout = "1s"
[payment]
pay_to = "{PAY_TO}"
network = "base-sepolia"
{routes}"#,
            scratch_file("journal.db").display(),
            facilitator.server.url()
        );
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let config = Config::from_toml(&text, "test", &|k| env.get(k).cloned())
            .unwrap_or_else(|e| panic!("{e}"));
        let client: Arc<dyn Facilitator> = Arc::new(
            FacilitatorClient::new(&facilitator.server.url(), &config.facilitator).unwrap(),
        );
        let supported = fetch_supported(client.as_ref(), 3).await.unwrap();
        let gateway = build_gateway(&config, client, &supported).unwrap();
        gateway.payments().recover().await.unwrap();
        let upstreams = gateway.upstreams().clone();
        let (stop, rx) = watch::channel(false);
        for (_, u) in upstreams.all() {
            let service = u.service();
            let rx = rx.clone();
            tokio::spawn(async move { service.start(rx).await });
        }
        for _ in 0..200 {
            if upstreams.all().all(|(_, u)| u.is_addressable()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(upstreams.all().all(|(_, u)| u.is_addressable()));
        let conf = Arc::new(ServerConf::default());
        let proxy = pingora::proxy::http_proxy(&conf, gateway);
        let (addr, serve) = serve_app(Arc::new(proxy)).await;
        PoolGateway {
            addr,
            facilitator,
            upstreams,
            _stop: stop,
            _serve: serve,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        http()
            .get(self.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
    }

    /// Pays for `path` and returns the paid answer's status.
    async fn pay(&self, path: &str) -> u16 {
        let r = self.get(path).await;
        assert_eq!(r.status(), 402);
        let required = decode_required(&r);
        let payment = x402_gateway::client::sign_v2(
            &payer(),
            &required,
            0,
            now(),
            x402_gateway::client::random_nonce(),
        )
        .unwrap();
        http()
            .get(self.url(path))
            .header("payment-signature", payment)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Waits (up to 10 s) until the default upstream has `n` healthy addresses.
    async fn until_healthy(&self, n: usize) {
        for _ in 0..1000 {
            if self.upstreams.default_upstream().addresses().len() == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the pool did not reach {n} healthy backends: {:?}",
            self.upstreams.default_upstream().addresses()
        );
    }
}

/// A backend whose `/health` answers 503 while `sick` is set; requests other than health
/// checks are counted by [`served`].
async fn backend(sick: Arc<AtomicBool>) -> MockServer {
    MockServer::start(move |req| {
        if req.target == "/health" && sick.load(Ordering::SeqCst) {
            return Response::json(503, "{}");
        }
        Response::json(200, "{\"ok\":true}")
    })
    .await
}

fn served(m: &MockServer) -> usize {
    m.requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.target != "/health")
        .count()
}

const ROUTES: &str = r#"
[[route]]
path = "/free/**"
price = "free"
[[route]]
path = "/paid/**"
price = "$0.001"
[[route]]
path = "/reports/**"
price = "$0.05"
settlement = "before_upstream"
"#;

fn pool(backends: &[&MockServer], extra: &str) -> String {
    let mut s = format!("[upstream]\nread_timeout = \"5s\"\n{extra}\n");
    for b in backends {
        s.push_str(&format!("[[upstream.backend]]\nurl = \"{}\"\n", b.url()));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_free_and_paid_requests_across_backends() {
    let well = Arc::new(AtomicBool::new(false));
    let (a, b, c) = (
        backend(well.clone()).await,
        backend(well.clone()).await,
        backend(well.clone()).await,
    );
    let gw = PoolGateway::start(&pool(&[&a, &b, &c], ""), ROUTES, &[]).await;
    for i in 0..9 {
        assert_eq!(gw.get(&format!("/free/{i}")).await.status(), 200);
    }
    assert_eq!((served(&a), served(&b), served(&c)), (3, 3, 3));
    for path in ["/paid/x", "/reports/y"] {
        assert_eq!(gw.pay(path).await, 200);
    }
    assert_eq!(served(&a) + served(&b) + served(&c), 11);
    assert_eq!(gw.facilitator.settle_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_failing_health_checks_gets_no_traffic_until_it_passes_again() {
    let (sick_a, sick_b) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (a, b) = (backend(sick_a.clone()).await, backend(sick_b.clone()).await);
    let checks =
        "[upstream.health_check]\npath = \"/health\"\ninterval = \"50ms\"\ntimeout = \"1s\"\n";
    let mut text = pool(&[&a, &b], "");
    text.push_str(checks);
    let gw = PoolGateway::start(&text, ROUTES, &[]).await;
    gw.until_healthy(2).await;

    sick_b.store(true, Ordering::SeqCst);
    gw.until_healthy(1).await;
    let before = served(&b);
    for i in 0..6 {
        assert_eq!(gw.get(&format!("/free/{i}")).await.status(), 200);
    }
    assert_eq!(gw.pay("/paid/while-b-is-down").await, 200);
    assert_eq!(served(&b), before, "an unhealthy backend got traffic");

    sick_b.store(false, Ordering::SeqCst);
    gw.until_healthy(2).await;
    for i in 0..4 {
        assert_eq!(gw.get(&format!("/free/back{i}")).await.status(), 200);
    }
    assert!(served(&b) > before, "the recovered backend got no traffic");

    // Every backend down: a clear 502, and nothing is charged in either settlement mode.
    sick_a.store(true, Ordering::SeqCst);
    sick_b.store(true, Ordering::SeqCst);
    gw.until_healthy(0).await;
    let settled = gw.facilitator.settle_calls();
    assert_eq!(gw.get("/free/x").await.status(), 502);
    assert_eq!(gw.pay("/paid/x").await, 502);
    assert_eq!(gw.pay("/reports/x").await, 502);
    assert_eq!(gw.facilitator.settle_calls(), settled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_refuses_connections_is_failed_over_without_double_charging() {
    let a = backend(Arc::new(AtomicBool::new(false))).await;
    // A port nothing listens on: connections are refused before anything is sent.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let text = format!(
        "{}[[upstream.backend]]\nurl = \"{dead}\"\n",
        pool(&[&a], "")
    );
    let gw = PoolGateway::start(&text, ROUTES, &[]).await;
    for i in 0..6 {
        assert_eq!(gw.get(&format!("/free/{i}")).await.status(), 200, "{i}");
    }
    for path in ["/paid/a", "/reports/b"] {
        assert_eq!(gw.pay(path).await, 200);
    }
    assert_eq!(served(&a), 8);
    assert_eq!(gw.facilitator.settle_calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_a_key_on_one_backend() {
    let well = Arc::new(AtomicBool::new(false));
    let backends = [
        backend(well.clone()).await,
        backend(well.clone()).await,
        backend(well).await,
    ];
    let text = pool(
        &backends.iter().collect::<Vec<_>>(),
        "selection = \"consistent\"\nhash_key = \"header:x-user\"",
    );
    let gw = PoolGateway::start(&text, ROUTES, &[]).await;
    for round in 0..3 {
        for user in 0..20 {
            let r = http()
                .get(gw.url(&format!("/free/{round}")))
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    }
    let mut homes: HashMap<String, BTreeSet<usize>> = HashMap::new();
    for (i, b) in backends.iter().enumerate() {
        for r in b.requests.lock().unwrap().iter() {
            homes
                .entry(r.header("x-user").unwrap().to_owned())
                .or_default()
                .insert(i);
        }
    }
    assert_eq!(homes.len(), 20);
    assert!(
        homes.values().all(|h| h.len() == 1),
        "a key moved: {homes:?}"
    );
    let used: BTreeSet<usize> = homes.values().flatten().copied().collect();
    assert!(used.len() >= 2, "every key on one backend: {homes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_name_their_upstream_and_injected_headers_cannot_be_spoofed() {
    let well = Arc::new(AtomicBool::new(false));
    let (main, reports) = (backend(well.clone()).await, backend(well).await);
    let text = format!(
        r#"[upstream]
url = "{}"
headers = {{ "X-Api-Key" = "${{UPSTREAM_API_KEY}}" }}
[upstreams.reports]
url = "{}"
headers = {{ "Authorization" = "Bearer ${{REPORTS_TOKEN}}" }}
"#,
        main.url(),
        reports.url()
    );
    let routes = ROUTES.replace(
        "settlement = \"before_upstream\"",
        "settlement = \"before_upstream\"\nupstream = \"reports\"",
    );
    let env = [
        ("UPSTREAM_API_KEY", "main-secret"),
        ("REPORTS_TOKEN", "reports-secret"),
    ];
    let gw = PoolGateway::start(&text, &routes, &env).await;
    assert_eq!(gw.pay("/reports/q3").await, 200);
    assert_eq!(gw.pay("/paid/x").await, 200);
    // A client that sends the injected headers itself is overridden.
    let r = http()
        .get(gw.url("/free/x"))
        .header("x-api-key", "client-forged")
        .header("authorization", "Bearer client-forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen_main = main.requests.lock().unwrap().clone();
    let seen_reports = reports.requests.lock().unwrap().clone();
    assert_eq!(seen_reports.len(), 1);
    assert_eq!(seen_reports[0].target, "/reports/q3");
    assert_eq!(
        seen_reports[0].header("authorization"),
        Some("Bearer reports-secret")
    );
    assert!(seen_reports[0].header("x-api-key").is_none());
    assert_eq!(seen_main.len(), 2);
    for r in &seen_main {
        let keys: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(keys, ["main-secret"], "{}", r.target);
    }
    // The forged Authorization of a request to the main upstream passes (it injects no such
    // header); the main upstream's key does.
    assert_eq!(
        seen_main[1].header("authorization"),
        Some("Bearer client-forged")
    );
}

// === Configuration ===

fn load(upstreams: &str, routes: &str) -> Result<Config, String> {
    let text = format!(
        "{upstreams}\n[facilitator]\nurl = \"http://127.0.0.1:9\"\n[payment]\npay_to = \"{PAY_TO}\"\nnetwork = \"base-sepolia\"\n{routes}"
    );
    Config::from_toml(&text, "test", &|k| {
        (k == "KEY").then(|| "the-secret-value".to_owned())
    })
    .map_err(|e| e.to_string())
}

#[test]
fn pools_and_named_upstreams_are_checked_at_load() {
    let c = load(
        "[upstream]\nselection = \"consistent\"\nhash_key = \"path\"\nheaders = { \"X-Api-Key\" = \"${KEY}\" }\n[[upstream.backend]]\nurl = \"http://10.0.0.1:3000\"\nweight = 2\n[[upstream.backend]]\nurl = \"https://api.internal\"\n[upstream.health_check]\npath = \"/healthz\"\n[upstreams.b]\nurl = \"http://127.0.0.1:4000\"",
        "[[route]]\npath = \"/x/**\"\nprice = \"free\"\nupstream = \"b\"",
    )
    .unwrap();
    assert_eq!(c.upstream.backends.len(), 2);
    assert_eq!(c.upstream.backends[0].weight, 2);
    assert_eq!(c.upstream.backends[1].port, 443);
    assert_eq!(c.upstream.health_check.as_ref().unwrap().path, "/healthz");
    assert_eq!(c.routes[0].upstream.as_deref(), Some("b"));
    assert_eq!(c.upstreams[0].0, "b");
    // The injected value is a secret: never in Debug output.
    assert!(!format!("{c:?}").contains("the-secret-value"));

    let e = load(
        "[upstream]\nurl = \"http://127.0.0.1:3000\"",
        "[[route]]\npath = \"/x/**\"\nprice = \"free\"\nupstream = \"nope\"",
    )
    .unwrap_err();
    assert!(
        e.contains("route[0].upstream: `nope` is not an upstream"),
        "{e}"
    );
    let e = load(
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\nselection = \"consistent\"\n[upstream.health_check]\npath = \"/h\"\n[upstreams.bad]\nhash_key = \"cookie\"\n[[upstreams.bad.backend]]\nurl = \"http://127.0.0.1:1/path\"\nweight = 0",
        "[[route]]\npath = \"/x/**\"\nprice = \"free\"",
    )
    .unwrap_err();
    for key in [
        "upstream.selection: only with [[upstream.backend]]",
        "upstream.health_check: only with [[upstream.backend]]",
        "upstreams.bad.hash_key: `cookie` is not",
        "upstreams.bad.backend[0].weight: must be at least 1",
        "upstreams.bad.backend[0].url: must be an origin only",
    ] {
        assert!(e.contains(key), "{key} not in {e}");
    }
    let e = load(
        "[upstream]\nurl = \"http://127.0.0.1:3000\"\nheaders = { Host = \"x\", \"X-Missing\" = \"${UNSET}\" }\n[[upstream.backend]]\nurl = \"http://127.0.0.1:3001\"",
        "[[route]]\npath = \"/x/**\"\nprice = \"free\"",
    )
    .unwrap_err();
    for key in [
        "upstream.url: give either url or [[upstream.backend]]",
        "upstream.headers.Host: is set by the gateway itself",
        "upstream.headers.X-Missing: environment variable UNSET is not set",
    ] {
        assert!(e.contains(key), "{key} not in {e}");
    }
}

// === Reload (the real binary) ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_a_route_to_a_running_upstream_and_refuses_a_new_one() {
    let well = Arc::new(AtomicBool::new(false));
    let (main, reports) = (backend(well.clone()).await, backend(well).await);
    let facilitator = MockFacilitator::start().await;
    let config = scratch_file("gateway.toml");
    let log = config.with_file_name("gateway.log");
    let (port, admin) = (free_port(), free_port());
    let write = |route_upstream: &str, extra_table: &str| {
        let routes = format!(
            "[[route]]\npath = \"/reports/**\"\nprice = \"free\"\n{route_upstream}\n[upstreams.reports]\nurl = \"{}\"\n{extra_table}",
            reports.url()
        );
        std::fs::write(
            &config,
            binary_config(
                port,
                admin,
                &main.url(),
                &facilitator.server.url(),
                "threads = 2",
                &routes,
            ),
        )
        .unwrap();
    };
    write("", "");
    let process = spawn_gateway(&config, &[], &log);
    let url = format!("http://127.0.0.1:{port}/reports/q");
    assert_eq!(get_when_up(&url).await.status(), 200);
    assert_eq!((served(&main), served(&reports)), (1, 0));

    write("upstream = \"reports\"", "");
    hup_and_wait(process.0.id(), admin, &log, "applied").await;
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    assert_eq!((served(&main), served(&reports)), (1, 1));

    // An upstream added since the start cannot take a route before a restart.
    write(
        "upstream = \"added\"",
        &format!("[upstreams.added]\nurl = \"{}\"\n", main.url()),
    );
    hup_and_wait(process.0.id(), admin, &log, "rejected").await;
    assert_eq!(http().get(&url).send().await.unwrap().status(), 200);
    assert_eq!((served(&main), served(&reports)), (1, 2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("route[0].upstream: `added` is not running"),
        "{text}"
    );
}

/// Sends SIGHUP and waits (up to 10 s) for the first reload counted as `result`.
async fn hup_and_wait(pid: u32, admin: u16, log: &std::path::Path, result: &str) {
    sighup(pid, log).await;
    wait_reloads(admin, result, 1, log).await;
}
