#!/usr/bin/env bash
# Checks every file of deploy/ with a tool that runs here (run by scripts/test.sh):
#   1. hadolint on deploy/Dockerfile; its dependency layer (manifest + lock + stub targets) loads
#   2. yamllint, and kubernetes-validate --strict (bundled schemas) on deploy/kubernetes/*.yaml
#   3. `docker compose config` (the Compose v2 binary; needs no daemon) on deploy/docker-compose.yml
#   4. scripts/deploy_check.py: the files agree (user, state directory, ports, probes, grace
#      periods, secrets) and every configuration they ship is extracted...
#   5. ...and passes `x402-gateway check` with the environment it gets there
#   6. systemd-analyze verify and security --offline on deploy/x402-gateway.service
#   7. the image's runtime without Docker: the release binary as the image's numeric user in a
#      network namespace of its own (like the Pod or the compose stack), with the image's config
#      read-only under etc/ and $STATE_DIRECTORY from the Dockerfile, next to the sample API and a
#      local chain: /readyz answers on a non-loopback address (as the kubelet's probes come),
#      a priced route answers 402, a payment settles; and without $STATE_DIRECTORY (the journal
#      next to the read-only config, the reported defect) priced routes answer 503; and the
#      repository's gateway.toml, unedited, serves a 402 on the same stack.
# The image itself is never built here (no Docker daemon).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/env.sh
source scripts/env.sh

BIN="${BIN:-$CARGO_TARGET_DIR/release/x402-gateway}"
VENV=.local/deploy-venv
# Public anvil dev keys: #2 settles (the demo's FACILITATOR_KEY), #1 pays (funded by devchain.mjs).
FACILITATOR_KEY=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a
PAYER=0x70997970C51812dc3A010C7d01b50e0d17dc79C8
PAYER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d

step() { printf '== %s\n' "$*"; }
die() { echo "deploy-check: $*" >&2; exit 1; }

# The image's runtime, inside `unshare --net` (root): $1 = the emulated image root.
smoke_inside() {
  local root=$1 uid gid state
  read -r uid gid < <(sed -n 's/^USER \([0-9]*\):\([0-9]*\)$/\1 \2/p' deploy/Dockerfile)
  state=$(sed -n 's/^ENV STATE_DIRECTORY=//p' deploy/Dockerfile)
  [ -n "$uid" ] && [ -n "$state" ] || die "no numeric USER or STATE_DIRECTORY in deploy/Dockerfile"
  ip link set lo up
  pids=()
  trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true' EXIT
  tools/node/node_modules/.bin/anvil --host 127.0.0.1 --port 8545 --chain-id 84532 --silent \
    > "$root/anvil.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    curl -s -m 1 -X POST -H 'content-type: application/json' \
      --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' \
      http://127.0.0.1:8545 2>/dev/null | grep -q result && break
    sleep 0.1
  done
  node tools/node/devchain.mjs setup --rpc http://127.0.0.1:8545 --fund "$PAYER=10" > /dev/null 2>&1 \
    || die "the local chain did not come up ($root/anvil.log)"
  # As the image runs: that user, no capabilities, a bare environment.
  as_image() {
    exec setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all -- \
      env -i PATH=/usr/bin:/bin HOME=/nonexistent TMPDIR="$root/tmp" "$@"
  }
  local x402="$root/usr/local/bin/x402-gateway" config="$root/etc/x402-gateway/gateway.toml"
  as_image "$x402" sample-api --listen 127.0.0.1:3000 > "$root/api.log" 2>&1 &
  pids+=($!)
  as_image STATE_DIRECTORY="$root$state" FACILITATOR_KEY="$FACILITATOR_KEY" \
    "$x402" run --config "$config" > "$root/gateway.log" 2>&1 &
  local gw=$!
  pids+=("$gw")
  # 127.0.0.2: any address but 127.0.0.1, as the kubelet probes the Pod's IP. A listener bound
  # to 127.0.0.1 does not answer there.
  local ready=""
  for _ in $(seq 300); do
    ready=$(curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.2:9402/readyz || true)
    [ "$ready" = 200 ] && break
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = 200 ] || { cat "$root/gateway.log" >&2; die "/readyz on 127.0.0.2:9402 answered '${ready:-nothing}', not 200"; }
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:8402/weather/paris)
  [ "$code" = 402 ] || { cat "$root/gateway.log" >&2; die "a priced route answered $code, not 402"; }
  X402_PAYER_KEY=$PAYER_KEY "$BIN" pay --max '$0.01' http://127.0.0.2:8402/weather/paris \
    > "$root/paid.json" 2> "$root/pay.log" || { cat "$root/pay.log" "$root/gateway.log" >&2; die "the payment failed"; }
  [ -f "$root$state/x402-journal.db" ] || die "no journal in $state"
  [ ! -e "$root/etc/x402-gateway/x402-journal.db" ] || die "a journal next to the config"
  echo "   /readyz 200 on 127.0.0.2:9402; GET /weather/paris: 402, then paid: $(head -c 60 "$root/paid.json")"
  kill -TERM "$gw"
  local rc=0
  wait "$gw" || rc=$?
  [ "$rc" = 0 ] || { tail -5 "$root/gateway.log" >&2; die "the gateway did not drain and exit 0 on SIGTERM (exit $rc)"; }
  # The reported defect, to show this test catches it: no $STATE_DIRECTORY.
  as_image FACILITATOR_KEY="$FACILITATOR_KEY" "$x402" run --config "$config" > "$root/defect.log" 2>&1 &
  gw=$!
  pids+=("$gw")
  code=""
  for _ in $(seq 300); do
    code=$(curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.2:8402/weather/paris || true)
    [ "$code" != 000 ] && break
    sleep 0.1
  done
  [ "$code" = 503 ] || die "without STATE_DIRECTORY a priced route answered '$code', expected 503"
  echo "   without \$STATE_DIRECTORY (journal next to the read-only config): 503, as reported"
  kill -TERM "$gw"
  wait "$gw" || true
  # The repository's gateway.toml, as it is, on the same stack (its admin stays on loopback).
  mkdir -p "$root/local-state"
  STATE_DIRECTORY="$root/local-state" FACILITATOR_KEY="$FACILITATOR_KEY" TMPDIR="$root/tmp" \
    "$BIN" run --config gateway.toml > "$root/local.log" 2>&1 &
  gw=$!
  pids+=("$gw")
  ready=""
  for _ in $(seq 300); do
    ready=$(curl -s -m 1 -o /dev/null -w '%{http_code}' http://127.0.0.1:9402/readyz || true)
    [ "$ready" = 200 ] && break
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.1
  done
  code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8402/weather/paris)
  [ "$ready" = 200 ] && [ "$code" = 402 ] \
    || { cat "$root/local.log" >&2; die "gateway.toml as shipped: /readyz '$ready', /weather/paris '$code'"; }
  echo "   gateway.toml as shipped on the same stack: /readyz 200, /weather/paris 402"
}

if [ "${1:-}" = --smoke-inside ]; then
  smoke_inside "$2"
  exit 0
fi


# The Dockerfile's dependency layer sees only the manifest, the lock file and stub targets: they
# must load as they are (lock file in sync, every [[bench]] stubbed). Checked offline, against the
# registry cache filled from the lock file first (a fresh machine has only what its release build
# fetched, not the dev-dependencies).
layer_check() {
  fetch_crates
  mkdir -p "$out/layer/src" "$out/layer/benches"
  cp Cargo.toml Cargo.lock "$out/layer/"
  echo 'fn main() {}' > "$out/layer/src/main.rs"
  touch "$out/layer/src/lib.rs"
  for b in $(sed -n 's/.*for b in \([a-z_ ]*\); do.*/\1/p' deploy/Dockerfile); do
    echo 'fn main() {}' > "$out/layer/benches/$b.rs"
  done
  (cd "$out/layer" && cargo metadata --locked --offline --format-version 1 > /dev/null) \
    || die "the Dockerfile's dependency layer does not load (stubs vs Cargo.toml)"
}

if [ "${1:-}" = --layer-only ]; then
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  step "the Dockerfile's dependency layer loads offline"
  layer_check
  exit 0
fi

started=$(date +%s.%N)
ensure_deploy_tools
[ -x "$BIN" ] || { ensure_build_tools; cargo build --release --locked; }
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

step "hadolint deploy/Dockerfile"
"$VENV/bin/hadolint" --failure-threshold info deploy/Dockerfile
layer_check

step "yamllint + kubernetes-validate --strict deploy/kubernetes"
"$VENV/bin/yamllint" -s -c deploy/yamllint.yml deploy/kubernetes deploy/docker-compose.yml
"$VENV/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml

step "docker compose config deploy/docker-compose.yml"
compose=$("$VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
"$compose" -f deploy/docker-compose.yml config -q
"$compose" -f deploy/docker-compose.yml config --format json > "$out/compose.json"

step "deploy/ files agree with each other"
"$VENV/bin/python" scripts/deploy_check.py "$out/compose.json" "$out/configs"

step "x402-gateway check on every shipped configuration"
for toml in "$out"/configs/*.toml; do
  name=$(basename "$toml" .toml)
  mapfile -t vars < "$out/configs/$name.env"
  env "${vars[@]}" "$BIN" check --config "$toml" > "$out/check.txt" 2>&1 \
    || { cat "$out/check.txt" >&2; die "$name: check failed"; }
  echo "   $name: OK"
done

step "systemd-analyze verify + security deploy/x402-gateway.service"
command -v systemd-analyze > /dev/null || die "systemd-analyze is missing (apt-get install systemd)"
# verify needs ExecStart's binary to exist: the built one stands in for /usr/local/bin's.
sed "s#/usr/local/bin/x402-gateway#$BIN#g" deploy/x402-gateway.service > "$out/x402-gateway.service"
verify=$(systemd-analyze verify --man=no --generators=no "$out/x402-gateway.service" 2>&1) || true
# It exits 0 on unknown keys and bad values too: any message is a failure.
[ -z "$verify" ] || die "systemd-analyze verify: $verify"
grep -q '^Type=notify$' deploy/x402-gateway.service || die "the unit is not Type=notify"
exposure=$(systemd-analyze security --offline=true "$out/x402-gateway.service" 2>&1 \
  | sed -n 's/.*Overall exposure level for x402-gateway.service: \([0-9.]*\).*/\1/p')
[ -n "$exposure" ] || die "systemd-analyze security gave no exposure level"
awk -v e="$exposure" 'BEGIN { exit !(e <= 2.0) }' || die "exposure $exposure above 2.0"
echo "   verify: clean; exposure $exposure (systemd-analyze security, 0 = locked down, 10 = open)"

step "the image's runtime: uid from the Dockerfile, own network namespace"
if [ "$(id -u)" != 0 ]; then
  echo "   SKIPPED: needs root (unshare --net, setpriv); CI runs as root"
else
  ensure_node_tools
  command -v ip > /dev/null || { apt-get update -qq > /dev/null && apt-get install -y -qq iproute2 > /dev/null; }
  read -r uid gid < <(sed -n 's/^USER \([0-9]*\):\([0-9]*\)$/\1 \2/p' deploy/Dockerfile)
  state=$(sed -n 's/^ENV STATE_DIRECTORY=//p' deploy/Dockerfile)
  root="$out/image"
  # The image's filesystem: binary and config root-owned and read-only to the user.
  install -d -m 0755 "$root/usr/local/bin" "$root/etc/x402-gateway"
  install -m 0755 "$BIN" "$root/usr/local/bin/x402-gateway"
  install -m 0644 deploy/container.toml "$root/etc/x402-gateway/gateway.toml"
  install -d -m 0700 -o "$uid" -g "$gid" "$root$state"
  install -d -m 1777 "$root/tmp"
  chmod 0755 "$out"
  unshare --net bash scripts/deploy-check.sh --smoke-inside "$root"
fi

awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "deploy-check: all passed in %.1f s\n", b - a }'
