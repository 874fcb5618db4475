#!/usr/bin/env bash
# The main job: a local demo that pays through the gateway end to end.
#
# Brings up a local chain (anvil, chain id 84532) with Circle's real USDC at the Base Sepolia
# address, a sample JSON API that knows nothing of payments, and x402-gateway in front of it
# with the embedded facilitator; then an agent (`x402-gateway pay`) pays for one request.
# Prints the 402, the payment, the 200 with its receipt, the on-chain transaction and the
# balances before and after, then keeps the stack up for you to curl until Ctrl-C.
# Then the same API behind a real nginx and a real Caddy, with the gateway as their auth service
# (forward-auth mode), paid through each. Set DEMO_EXIT=1 to stop at the end.
# Logs: .local/demo/*.log
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

CHAIN_PORT="${CHAIN_PORT:-18545}"
API_PORT="${API_PORT:-13000}"
GATEWAY_PORT="${GATEWAY_PORT:-18402}"
ADMIN_PORT="${ADMIN_PORT:-19402}"
AUTH_PORT="${AUTH_PORT:-18404}"
NGINX_PORT="${NGINX_PORT:-18080}"
CADDY_PORT="${CADDY_PORT:-18081}"
DIR=.local/demo
RPC="http://127.0.0.1:$CHAIN_PORT"
GATEWAY="http://127.0.0.1:$GATEWAY_PORT"
# Anvil dev accounts: public test keys, never used anywhere real.
PAYER=0x70997970C51812dc3A010C7d01b50e0d17dc79C8
PAYER_KEY=0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d
FACILITATOR_KEY=0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a
PAYEE=0x90F79bf6EB2c4f870365E785982E1f101E93b906

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/chain.sh stop "$CHAIN_PORT" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for port in "$API_PORT" "$GATEWAY_PORT" "$ADMIN_PORT" "$AUTH_PORT" "$NGINX_PORT" "$CADDY_PORT"; do
  if (echo > "/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use; set API_PORT / GATEWAY_PORT / ADMIN_PORT / AUTH_PORT / NGINX_PORT / CADDY_PORT / CHAIN_PORT" >&2; exit 1
  fi
done

started=$(date +%s.%N)
bold "building (first run on a fresh machine: a few minutes)"
ensure_build_tools
ensure_node_tools
ensure_proxy_tools
cargo build --release --locked --quiet
BIN="$CARGO_TARGET_DIR/release/x402-gateway"
mkdir -p "$DIR"
ready_from=$(date +%s.%N)

bold "starting a local chain with real USDC (anvil, chain id 84532)"
PAYER_USDC=10 scripts/chain.sh start "$CHAIN_PORT" > /dev/null

"$BIN" sample-api --listen "127.0.0.1:$API_PORT" > "$DIR/api.log" 2>&1 &
pids+=($!)
cat > "$DIR/gateway.toml" <<TOML
[server]
listen = "127.0.0.1:$GATEWAY_PORT"
threads = 1

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[auth]
listen = "127.0.0.1:$AUTH_PORT"

[upstream]
url = "http://127.0.0.1:$API_PORT"

[facilitator]
embedded = true
rpc = { "eip155:84532" = "$RPC" }
signer_keys = ["\${FACILITATOR_KEY}"]

[payment]
pay_to = "$PAYEE"
network = "base-sepolia"

[[route]]
path = "/weather/*"
methods = ["GET"]
price = "\$0.001"
description = "Current weather for a city"
mime_type = "application/json"

[[route]]
path = "/health"
price = "free"
TOML
export FACILITATOR_KEY
"$BIN" check --config "$DIR/gateway.toml"
"$BIN" run --config "$DIR/gateway.toml" > "$DIR/gateway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "$GATEWAY/health" && break; sleep 0.1; done
curl -sf -o /dev/null "$GATEWAY/health" || { echo "the gateway did not start; see $DIR/gateway.log" >&2; exit 1; }
up=$(date +%s.%N)
awk -v a="$ready_from" -v b="$up" -v c="$started" 'BEGIN { printf "stack up in %.1f s (%.1f s including the build)\n", b - a, b - c }'

balances() { node tools/node/devchain.mjs balance --rpc "$RPC" "$PAYER" "$PAYEE" | awk '{printf "  %s  %s USDC\n", $1, $2/1e6}'; }
bold "balances before (payer, payee)"
balances

bold "1. an agent asks for the weather without paying"
echo "\$ curl -i $GATEWAY/weather/paris"
curl -s -i "$GATEWAY/weather/paris" | tee "$DIR/402.txt" | sed -n '1,/^\r$/p' | grep -iv '^payment-required'
echo "PAYMENT-REQUIRED (decoded):"
grep -i '^payment-required:' "$DIR/402.txt" | cut -d' ' -f2 | tr -d '\r' | base64 -d | python3 -m json.tool

bold "2. the agent signs a USDC authorization and retries"
echo "\$ x402-gateway pay $GATEWAY/weather/paris"
X402_PAYER_KEY=$PAYER_KEY "$BIN" pay "$GATEWAY/weather/paris" 2> "$DIR/pay.txt" > "$DIR/body.txt"
cat "$DIR/pay.txt"; echo "body: $(cat "$DIR/body.txt")"
tx=$(sed -n 's/^transaction: //p' "$DIR/pay.txt")

bold "3. the transaction on chain"
tools/node/node_modules/.bin/cast receipt "$tx" --rpc-url "$RPC" | grep -E '^(blockNumber|gasUsed|status|transactionHash|from|to) '

bold "balances after (payer, payee)"
balances

bold "4. the operator's view (admin listener: /readyz, /metrics)"
echo "\$ curl http://127.0.0.1:$ADMIN_PORT/readyz"
curl -s "http://127.0.0.1:$ADMIN_PORT/readyz"
echo "\$ curl -s http://127.0.0.1:$ADMIN_PORT/metrics | grep -E '^x402_(payments|revenue|challenges|signer)'"
curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" | grep -E '^x402_(payments|revenue|challenges|signer)'

bold "5. the same API behind nginx and Caddy, the gateway as their auth service ([auth] listen)"
scripts/proxy.sh nginx "$NGINX_PORT" "127.0.0.1:$AUTH_PORT" "127.0.0.1:$API_PORT" "$DIR/nginx" > "$DIR/nginx.log" 2>&1 &
pids+=($!)
scripts/proxy.sh caddy "$CADDY_PORT" "127.0.0.1:$AUTH_PORT" "127.0.0.1:$API_PORT" "$DIR/caddy" > "$DIR/caddy.log" 2>&1 &
pids+=($!)
for base in "http://127.0.0.1:$NGINX_PORT" "http://127.0.0.1:$CADDY_PORT"; do
  for _ in $(seq 100); do curl -s -o /dev/null "$base/health" && break; sleep 0.1; done
done
for proxy in "nginx (auth_request):$NGINX_PORT" "Caddy (forward_auth):$CADDY_PORT"; do
  name="${proxy%:*}" base="http://127.0.0.1:${proxy##*:}"
  echo "-- $name, deploy/ example config"
  echo "\$ curl -i $base/weather/tokyo"
  curl -s -i "$base/weather/tokyo" | sed -n '1p' | tr -d '\r'
  echo "\$ x402-gateway pay $base/weather/tokyo"
  X402_PAYER_KEY=$PAYER_KEY "$BIN" pay "$base/weather/tokyo" 2> "$DIR/pay-proxy.txt" > "$DIR/body.txt"
  grep -E '^(HTTP|PAYMENT-RESPONSE|transaction)' "$DIR/pay-proxy.txt"; echo "body: $(cat "$DIR/body.txt")"
done
echo "\$ grep x402_gateway::access $DIR/gateway.log | tail -1   # one access line per request"
grep x402_gateway::access "$DIR/gateway.log" | tail -1

if [ "${DEMO_EXIT:-0}" = 1 ] || [ ! -t 0 ]; then
  bold "done"
  exit 0
fi
bold "the stack stays up: try it (Ctrl-C stops and cleans up)"
cat <<TXT
  curl -i $GATEWAY/weather/london                                   # 402 challenge
  X402_PAYER_KEY=$PAYER_KEY \\
    $BIN pay $GATEWAY/weather/london                                 # pay and get the data
  curl $GATEWAY/health                                              # free route
  curl http://127.0.0.1:$ADMIN_PORT/metrics                              # Prometheus metrics
  curl -i http://127.0.0.1:$NGINX_PORT/weather/london                       # the same paywall, through nginx
  curl -i http://127.0.0.1:$CADDY_PORT/weather/london                       # and through Caddy
  logs: $DIR/gateway.log
TXT
while true; do sleep 3600; done
