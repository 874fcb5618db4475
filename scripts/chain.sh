#!/usr/bin/env bash
# Local chain: anvil (from npm, project-local; no states persisted to disk: a long benchmark
# otherwise leaves gigabytes in ~/.foundry) with chain id 84532 and Circle's real USDC at the
# Base Sepolia address, payer funded.
#   scripts/chain.sh start [PORT]   start (or reuse) anvil and deploy/fund USDC; prints the RPC URL
#   scripts/chain.sh stop  [PORT]   stop the anvil started for PORT
# Output of anvil goes to .local/chain-PORT.log. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

PORT="${2:-${CHAIN_PORT:-8545}}"
RPC="http://127.0.0.1:$PORT"
STATE=.local
PIDFILE="$STATE/chain-$PORT.pid"
# Dev accounts (public keys of the standard test mnemonic; never fund them anywhere real).
PAYER=0x70997970C51812dc3A010C7d01b50e0d17dc79C8

rpc_up() {
  curl -s -m 1 -X POST -H 'content-type: application/json' \
    --data '{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}' "$RPC" 2>/dev/null | grep -q '"result"'
}

case "${1:-}" in
  start)
    ensure_node_tools
    mkdir -p "$STATE"
    if ! rpc_up; then
      tools/node/node_modules/.bin/anvil --host 127.0.0.1 --port "$PORT" --chain-id 84532 --max-persisted-states 0 \
        --silent > "$STATE/chain-$PORT.log" 2>&1 &
      echo $! > "$PIDFILE"
      for _ in $(seq 100); do rpc_up && break; sleep 0.1; done
      rpc_up || { echo "anvil did not start; see $STATE/chain-$PORT.log" >&2; exit 1; }
    fi
    node tools/node/devchain.mjs setup --rpc "$RPC" --fund "$PAYER=${PAYER_USDC:-100}" >&2
    echo "$RPC"
    ;;
  stop)
    # Waits for it to exit (a start right after must not find the old chain still answering).
    if [ -f "$PIDFILE" ]; then
      pid="$(cat "$PIDFILE")"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$PIDFILE"
    fi
    ;;
  *)
    echo "usage: $0 start|stop [PORT]" >&2; exit 2 ;;
esac
