//! Microbenchmarks of the per-request work: route lookup on a 1,000-route table, 402
//! rendering (and the per-URL reuse of a rendered 402), payment header decode, local verification (decode + EIP-712 hash + recovery),
//! replay-guard check and verdict-cache hit.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Duration;

use alloy::primitives::{keccak256, B256};
use alloy::signers::local::PrivateKeySigner;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use x402_gateway::client;
use x402_gateway::clock::unix_now;
use x402_gateway::config::Config;
use x402_gateway::ledger::guard::ReplayGuard;
use x402_gateway::ledger::ReplayKey;
use x402_gateway::pricing::PriceTable;
use x402_gateway::protocol::{self, PaymentPayload, VerifyResponse};
use x402_gateway::scheme::Authorized;
use x402_gateway::verify::VerdictCache;

fn config(routes: usize) -> Config {
    let mut text = String::new();
    for i in 0..routes {
        text.push_str(&format!(
            "[[route]]\npath = \"/api/v{}/item{i}/*\"\nprice = \"$0.001\"\n",
            i % 7
        ));
    }
    x402_gateway::fuzzing::test_config(&text)
}

fn benches(c: &mut Criterion) {
    let table = PriceTable::new(config(1000).routes, &|_| true);
    c.bench_function("route_lookup_1000_routes_hit", |b| {
        b.iter(|| table.lookup(&Method::GET, black_box("/api/v5/item999/x?q=1")))
    });
    c.bench_function("route_lookup_1000_routes_miss", |b| {
        b.iter(|| table.lookup(&Method::GET, black_box("/static/app.js")))
    });

    let route = table.lookup(&Method::GET, "/api/v5/item999/x").unwrap();
    let challenge = route.challenge.as_ref().unwrap();
    c.bench_function("render_402_v1_and_v2", |b| {
        b.iter(|| {
            let url = black_box("http://127.0.0.1:8402/api/v5/item999/x");
            (
                challenge.payment_required(url, "Payment required"),
                challenge.v1_body(url, "X-PAYMENT header is required"),
            )
        })
    });
    c.bench_function("402_rendered_once_per_url_hit", |b| {
        b.iter(|| challenge.unpaid(black_box("http://127.0.0.1:8402/api/v5/item999/x")))
    });

    let (header, _) = challenge.unpaid("http://h/x");
    let required: protocol::v2::PaymentRequired =
        serde_json::from_slice(&protocol::decode_header(header.as_bytes()).unwrap()).unwrap();
    let signer: PrivateKeySigner =
        "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
            .parse()
            .unwrap();
    let payment = client::sign_v2(&signer, &required, 0, unix_now(), B256::repeat_byte(1)).unwrap();
    c.bench_function("decode_payment_header", |b| {
        b.iter(|| PaymentPayload::from_header(black_box(payment.as_bytes())).unwrap())
    });
    let option = &route.rule.options[0];
    let separator = challenge.options[0].domain_separator;
    c.bench_function("local_verify_decode_hash_recover", |b| {
        b.iter(|| {
            let p = PaymentPayload::from_header(black_box(payment.as_bytes())).unwrap();
            Authorized::decode(&p)
                .unwrap()
                .check(option, &separator, unix_now())
                .unwrap()
        })
    });

    let guard = ReplayGuard::new(usize::MAX);
    let mut n = 0u64;
    c.bench_function("replay_guard_acquire_fresh", |b| {
        b.iter(|| {
            n += 1;
            let key = ReplayKey {
                chain_id: 84532,
                asset: option.asset.address,
                from: signer.address(),
                nonce: B256::from(alloy::primitives::U256::from(n)),
            };
            guard.acquire(key, unix_now() + 300, unix_now()).unwrap()
        })
    });

    let cache = VerdictCache::new(10_000, Duration::from_secs(30));
    let digest = keccak256(payment.as_bytes());
    cache.insert(
        digest,
        VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: None,
        },
        unix_now() + 300,
        unix_now(),
    );
    c.bench_function("verdict_cache_hit", |b| {
        b.iter(|| cache.get(black_box(&digest)).unwrap())
    });
}

criterion_group!(hot_paths, benches);
criterion_main!(hot_paths);
