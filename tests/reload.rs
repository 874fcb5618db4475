//! Hot reload of the real binary: a price change by SIGHUP under load fails no request; a file
//! that does not validate changes nothing; `watch_config` picks up an edit by itself. Each step
//! waits for `x402_config_reloads_total` on the admin listener, never for a fixed time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use std::path::PathBuf;

use common::*;

struct Running {
    port: u16,
    admin: u16,
    upstream: String,
    facilitator: String,
    watch: bool,
    config: PathBuf,
    log: PathBuf,
    process: KillOnDrop,
}

/// Writes the file: listening on `port`, this upstream and price.
fn write_config(
    path: &std::path::Path,
    port: u16,
    admin: u16,
    upstream: &str,
    facilitator: &str,
    watch: bool,
    price: &str,
) {
    let server = format!("threads = 2\nwatch_config = {watch}");
    let routes = format!("[[route]]\npath = \"/paid/**\"\nprice = \"{price}\"\n");
    std::fs::write(
        path,
        binary_config(port, admin, upstream, facilitator, &server, &routes),
    )
    .unwrap();
}

impl Running {
    fn start(upstream: &str, facilitator: &str, watch: bool) -> Running {
        let config = scratch_file("gateway.toml");
        let log = config.with_file_name("gateway.log");
        let (port, admin) = (free_port(), free_port());
        write_config(&config, port, admin, upstream, facilitator, watch, "$0.001");
        let process = spawn_gateway(&config, &[], &log);
        Running {
            port,
            admin,
            upstream: upstream.to_owned(),
            facilitator: facilitator.to_owned(),
            watch,
            config,
            log,
            process,
        }
    }

    /// Rewrites the file: listening on `port`, this upstream and price.
    fn write(&self, port: u16, upstream: &str, price: &str) {
        write_config(
            &self.config,
            port,
            self.admin,
            upstream,
            &self.facilitator,
            self.watch,
            price,
        );
    }

    fn url(&self, p: &str) -> String {
        format!("http://127.0.0.1:{}{p}", self.port)
    }

    async fn hup(&self) {
        sighup(self.process.0.id(), &self.log).await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (up to 10 s) until `result` was counted `n` times.
    async fn wait_reloads(&self, result: &str, n: usize) {
        wait_reloads(self.admin, result, n, &self.log).await;
    }

    /// The amount the route asks for now.
    async fn asked(&self) -> String {
        let r = get_when_up(&self.url("/paid/x")).await;
        assert_eq!(r.status(), 402);
        decode_required(&r).accepts[0].amount.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_under_load_fails_no_request_and_a_bad_file_changes_nothing() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let gw = Running::start(&upstream.url(), &facilitator.server.url(), false);
    assert_eq!(gw.asked().await, "1000");

    let clients = PayingClients::start(4, &gw.url(""), false, true);
    clients.until_served(40).await;
    gw.write(gw.port, &gw.upstream, "$0.002");
    gw.hup().await;
    gw.wait_reloads("applied", 1).await;
    clients.until_served(clients.served() + 40).await;
    let got = clients.stop().await;
    assert!(got.errors.is_empty(), "failed requests: {:?}", got.errors);
    assert_eq!(gw.asked().await, "2000");
    assert_eq!(
        facilitator.settle_calls(),
        got.served,
        "one settlement per served request"
    );
    let text = gw.log();
    assert!(
        text.contains("configuration reloaded: route")
            && text.contains("~ * /paid/**: $0.001 on eip155:84532")
            && text.contains("-> * /paid/**: $0.002 on eip155:84532"),
        "{text}"
    );
    eprintln!(
        "reload under load: {} paid requests served, {} paid again after the price change, 0 failed",
        got.served, got.repaid
    );

    // A file that does not validate: every problem logged, the running table kept.
    gw.write(gw.port, "ftp://x", "$-1");
    gw.hup().await;
    gw.wait_reloads("rejected", 1).await;
    assert_eq!(gw.asked().await, "2000");
    let text = gw.log();
    assert!(
        text.contains("configuration reload rejected")
            && text.contains("upstream.url")
            && text.contains("route[0].price"),
        "{text}"
    );
    // Listen addresses apply at the next start: reported, kept.
    gw.write(free_port(), &gw.upstream, "$0.002");
    gw.hup().await;
    gw.wait_reloads("applied", 2).await;
    assert!(gw.log().contains("section=\"[server]\""), "{}", gw.log());
    assert_eq!(gw.asked().await, "2000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_reloads_an_edited_file_by_itself() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let gw = Running::start(&upstream.url(), &facilitator.server.url(), true);
    assert_eq!(gw.asked().await, "1000");
    gw.write(gw.port, &gw.upstream, "$0.0125");
    gw.wait_reloads("applied", 1).await;
    assert_eq!(gw.asked().await, "12500");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_config_never_applies_a_half_written_file() {
    let upstream = mock_upstream().await;
    let facilitator = MockFacilitator::start().await;
    let gw = Running::start(&upstream.url(), &facilitator.server.url(), true);
    assert_eq!(gw.asked().await, "1000");
    // A writer that is not atomic (no rename): the file up to its free route first, the
    // priced route a moment later. The prefix is a valid file in which nothing is priced.
    gw.write(gw.port, &gw.upstream, "$0.0125");
    let text = std::fs::read_to_string(&gw.config).unwrap();
    let cut = text.find("[[route]]").unwrap();
    let free = "[[route]]\npath = \"/health\"\nprice = \"free\"\n\n";
    let prefix = format!("{}{free}", &text[..cut]);
    let full = format!("{prefix}{}", &text[cut..]);
    std::fs::write(&gw.config, &prefix).unwrap();
    // Probe the priced route while the file is half-written (longer than one poll).
    let until = x402_gateway::clock::instant() + std::time::Duration::from_millis(1200);
    while x402_gateway::clock::instant() < until {
        let r = http().get(gw.url("/paid/x")).send().await.unwrap();
        assert_eq!(
            r.status(),
            402,
            "a priced route went free while the file was being written"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    std::fs::write(&gw.config, &full).unwrap();
    gw.wait_reloads("applied", 1).await;
    assert_eq!(gw.asked().await, "12500");
    assert!(
        !gw.log().contains("- * /paid/**"),
        "the route was removed once: {}",
        gw.log()
    );
}
