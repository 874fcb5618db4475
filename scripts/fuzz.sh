#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets, bodies in src/fuzzing.rs) under libFuzzer for
# SECONDS each, starting from its committed corpus. Stable Rust: no sanitizer (the gateway has
# no unsafe code; libFuzzer still finds panics, overflows in debug builds, and broken
# invariants the targets assert).
#   scripts/fuzz.sh [SECONDS] [--keep]
# --keep merges new interesting inputs into fuzz/corpus (for committing after a long run);
# otherwise they go to a temporary directory. Crashes are written to fuzz/artifacts/ and fail
# the run. Prints each target's exec count.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh
SECS="${1:-10}"
KEEP="${2:-}"
ensure_build_tools
ensure_cargo_fuzz
FUZZ_TARGET_DIR="${FUZZ_TARGET_DIR:-$CARGO_TARGET_DIR/../fuzz-target}"
TARGETS=(payment_header route_lookup config facilitator_response facilitator_request)
mode=(--dev)
[ "$SECS" -ge 120 ] && mode=(--release)
cargo fuzz build "${mode[@]}" --sanitizer none --target-dir "$FUZZ_TARGET_DIR" >&2
for t in "${TARGETS[@]}"; do
  out="$(mktemp -d)"
  log="$(mktemp)"
  if ! cargo fuzz run "${mode[@]}" --sanitizer none --target-dir "$FUZZ_TARGET_DIR" "$t" "$out" "fuzz/corpus/$t" \
      -- -max_total_time="$SECS" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  execs="$(grep -m1 'stat::number_of_executed_units' "$log" | awk '{print $2}')"
  new="$(find "$out" -type f | wc -l)"
  echo "fuzz: $t ok: ${execs:-?} executions in ${SECS}s, 0 crashes, $new new corpus inputs"
  if [ "$KEEP" = "--keep" ] && [ "$new" -gt 0 ]; then
    cp -n "$out"/* "fuzz/corpus/$t/" 2>/dev/null || true
    cargo fuzz cmin "${mode[@]}" --sanitizer none --target-dir "$FUZZ_TARGET_DIR" "$t" "fuzz/corpus/$t" >/dev/null 2>&1 || true
  fi
  rm -rf "$out" "$log"
done
