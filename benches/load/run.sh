#!/usr/bin/env bash
# The load benchmark, one command (not in CI: it takes a few minutes; CI runs `--build-only`).
#
#   benches/load/run.sh                     build, install wrk/nginx/node packages, run every
#                                           scenario, write docs/benchmarks.md
#   benches/load/run.sh --only gw_free,pingora --duration 5     a subset (keys: bench.py --help)
#   benches/load/run.sh --build-only        build everything the benchmark runs, run nothing
#   benches/load/run.sh --only e2e --duration 15     the end-to-end table on anvil (rows a-e
#                                           and the gateway's free route; keys e2e_a ... e2e_e)
#
# Loopback only, bounded in time (warm-up + --duration per scenario). Logs and raw results:
# .local/bench/. Needs 2+ CPUs: the system under test is pinned to CPU 0, the load to CPU 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/env.sh

build_only=""
if [ "${1:-}" = "--build-only" ]; then build_only=1; shift; fi

ensure_build_tools
echo "building the gateway, the bare Pingora proxy and the header signer (release)..." >&2
cargo build --release --locked --quiet --bin x402-gateway --example bare_pingora --example presign
echo "building the x402-axum peer (release, own lock file)..." >&2
CARGO_TARGET_DIR="$CARGO_TARGET_DIR/axum-peer" \
  cargo build --release --locked --quiet --manifest-path benches/load/peers/axum/Cargo.toml
# The end-to-end table's x402-rs facilitator (crates.io binary), cached outside the checkout.
X402_RS_ROOT="$X402_CACHE/x402-rs-0.12.5"
if [ ! -x "$X402_RS_ROOT/bin/x402-rs" ]; then
  echo "installing the x402-rs 0.12.5 facilitator into $X402_RS_ROOT (once; ~10 min)..." >&2
  # Its own temporary build directory (removed afterwards), not the gateway's target dir.
  env -u CARGO_TARGET_DIR cargo install x402-rs --version 0.12.5 --locked --quiet --root "$X402_RS_ROOT"
fi
for dir in benches/load/peers/express benches/load/peers/ts-facilitator; do
  if [ ! -f "$dir/node_modules/.package-lock.json" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "installing the packages of $dir..." >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
  node --check "$dir/server.mjs"
done
ensure_node_tools
for f in bench.py e2e.py; do
  python3 -c "import ast,sys; ast.parse(open(sys.argv[1]).read())" "benches/load/$f"
done
if [ -n "$build_only" ]; then
  echo "load benchmark built (not run)" >&2
  exit 0
fi
ensure_bench_tools
exec python3 benches/load/bench.py "$@"
