# Shared settings for the scripts (sourced, not run).
# Build outputs live outside the checkout so repeat runs on one machine are fast; a fresh
# machine builds from scratch.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/x402-gateway/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Pingora needs cmake (zlib-ng); everything else is pure Rust or built by cc.
ensure_build_tools() {
  if ! command -v cmake >/dev/null 2>&1; then
    echo "installing cmake (needed to build pingora)..." >&2
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq >/dev/null && apt-get install -y -qq cmake >/dev/null
    else
      sudo apt-get update -qq >/dev/null && sudo apt-get install -y -qq cmake >/dev/null
    fi
  fi
}
