#!/usr/bin/env bash
# The one command that runs every test: builds the gateway, runs unit, property, integration and
# interop tests, replays the fuzz corpora and fuzzes each parser briefly, checks deploy/ and the
# shipped configurations, and compiles the benchmarks. Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

ensure_build_tools
# Every crate of the lock file first: later steps (deploy-check) read the registry offline.
fetch_crates
ensure_node_tools
ensure_python_tools
ensure_rust_client
ensure_proxy_tools
cargo build --release --locked
# deploy/: every file checked (Dockerfile, compose, Kubernetes, systemd), every shipped
# gateway.toml through `check`, and the image's runtime emulated without Docker.
scripts/deploy-check.sh
# Every test, the ones that need a real chain, Node.js, Python, nginx or Caddy included (cargo
# feature `e2e`; a bare `cargo test` runs the others).
cargo test --locked --all-targets --features e2e
# The optional OTLP span export (cargo feature `otlp`), against a collector stand-in.
cargo test --locked --features otlp --test otlp
# Every parser under libFuzzer for a bounded 10 s each (the corpora were replayed by cargo test).
scripts/fuzz.sh 10
cargo bench --locked --no-run
# The load benchmark does not run here (minutes of load), but everything it runs is built.
benches/load/run.sh --build-only
