"""The end-to-end rows' measuring instruments (used by bench.py): JSON-RPC to the local chain,
a block watcher, the payment journal, and the after-the-run on-chain check.

- BlockWatcher polls `eth_blockNumber` every ~10 ms from a thread of its own and records the
  wall time each block number was first seen (blocks that appear between two polls get the
  later poll's time: an upper bound, at most one poll interval late).
- chain_check scans every block of a row's range with `eth_getBlockReceipts` (batched JSON-RPC)
  and counts what happened: EIP-3009 `AuthorizationUsed` logs of the payer (one per settled
  payment), the settlement transactions (sent by the facilitator signer) and their gas, the
  payer's and the recipient's USDC balance deltas.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path


class Rpc:
    """A keep-alive JSON-RPC client (one connection; not shared between threads)."""

    def __init__(self, url: str, timeout: float = 30):
        u = urllib.parse.urlparse(url)
        self.host, self.port, self.path = u.hostname, u.port or 80, u.path or "/"
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None
        self.next_id = 0

    def _post(self, body: object) -> object:
        data = json.dumps(body).encode()
        for attempt in range(3):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port,
                                                           timeout=self.timeout)
                self.conn.request("POST", self.path, data,
                                  {"content-type": "application/json"})
                resp = self.conn.getresponse()
                return json.loads(resp.read())
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.1)
        raise AssertionError("unreachable")

    def call(self, method: str, *params: object) -> object:
        self.next_id += 1
        out = self._post({"jsonrpc": "2.0", "id": self.next_id, "method": method,
                          "params": list(params)})
        if "error" in out:
            raise RuntimeError(f"{method}: {out['error']}")
        return out["result"]

    def batch(self, calls: list[tuple[str, list]], size: int = 100) -> list[object]:
        results: list[object] = []
        for i in range(0, len(calls), size):
            chunk = calls[i:i + size]
            body = [{"jsonrpc": "2.0", "id": j, "method": m, "params": p}
                    for j, (m, p) in enumerate(chunk)]
            out = sorted(self._post(body), key=lambda r: r["id"])
            for r in out:
                if "error" in r:
                    raise RuntimeError(f"{chunk[r['id']][0]}: {r['error']}")
                results.append(r["result"])
        return results

    def block_number(self) -> int:
        return int(self.call("eth_blockNumber"), 16)

    def usdc_balance(self, usdc: str, who: str, block: int) -> int:
        data = "0x70a08231" + who.lower().removeprefix("0x").rjust(64, "0")
        return int(self.call("eth_call", {"to": usdc, "data": data}, hex(block)), 16)


class BlockWatcher:
    """Records when each block was first seen (wall clock, ms since the epoch)."""

    def __init__(self, url: str, interval: float = 0.010, cpu: int | None = None):
        self.url, self.interval, self.cpu = url, interval, cpu
        self.first_seen: dict[int, float] = {}
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="block-watcher", daemon=True)

    def __enter__(self) -> "BlockWatcher":
        self._thread.start()
        while not self.first_seen and self._thread.is_alive():
            time.sleep(0.005)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})  # this thread only: with the load
            except OSError:
                pass
        rpc = Rpc(self.url, timeout=5)
        last = None
        while not self._stop.is_set():
            try:
                n = rpc.block_number()
            except (OSError, RuntimeError, ValueError):
                time.sleep(self.interval)
                continue
            now = time.time() * 1000
            self.polls += 1
            if last is None:
                self.first_seen[n] = now
                last = n
            elif n > last:
                for b in range(last + 1, n + 1):
                    self.first_seen[b] = now
                last = n
            self._stop.wait(self.interval)

    def wait_quiet(self, quiet: float = 1.0, timeout: float = 30) -> None:
        """Waits until no block has appeared for `quiet` seconds (in-flight settlements done)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            latest = max(self.first_seen.values(), default=0)
            if time.time() * 1000 - latest >= quiet * 1000:
                return
            time.sleep(0.05)


def header_nonces(headers: Path, start: int, count: int) -> list[str]:
    """The EIP-3009 nonces of pre-signed header lines [start, start + count)."""
    nonces = []
    with open(headers) as f:
        for i, line in enumerate(f):
            if i < start:
                continue
            if i >= start + count:
                break
            payload = json.loads(base64.b64decode(line.strip()))
            nonces.append(payload["payload"]["authorization"]["nonce"].lower())
    return nonces


def journal_open(path: Path, done: tuple[str, ...]) -> int:
    """Payments of the journal whose settlement is not done yet (-1: no journal to read)."""
    if not path.exists():
        return -1
    marks = ",".join("?" * len(done))
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        return db.execute(f"SELECT count(*) FROM payments WHERE state NOT IN ({marks})",
                          done).fetchone()[0]


def journal_rows(path: Path) -> list[dict]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute(
            "SELECT payer, nonce, state, tx, created_at, updated_at FROM payments")]


def wait_drained(path: Path, done: tuple[str, ...], timeout: float) -> tuple[bool, float]:
    """Waits until the journal has no open payment; returns (drained, seconds waited)."""
    started = time.time()
    while time.time() - started < timeout:
        try:
            if journal_open(path, done) <= 0:
                return True, time.time() - started
        except sqlite3.Error:
            pass
        time.sleep(0.1)
    return False, time.time() - started


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def chain_check(rpc: Rpc, *, first: int, last: int, before: tuple[int, int], usdc: str,
                topic: str, payer: str, pay_to: str, signer: str, price: int,
                presigned: list[str], ok_responses: int, connections: int) -> dict:
    """What blocks first..last (inclusive) did for one row, and whether every payment of the
    row settled exactly once. `presigned` are the nonces the row sent (in order); `before`
    the payer's and pay_to's balances at block first - 1 (read then: anvil keeps the state of
    recent blocks only, and a row can mine thousands)."""
    usdc, payer, pay_to, signer = (a.lower() for a in (usdc, payer, pay_to, signer))
    payer_topic = "0x" + payer.removeprefix("0x").rjust(64, "0")
    receipts: list[dict] = []
    if last >= first:
        calls = [("eth_getBlockReceipts", [hex(b)]) for b in range(first, last + 1)]
        for block in rpc.batch(calls, size=50):
            receipts.extend(block or [])
    nonces: list[str] = []
    tx_block: dict[str, int] = {}
    settle_txs, reverted, gas, foreign = 0, 0, 0, 0
    for r in receipts:
        tx = r["transactionHash"].lower()
        tx_block[tx] = int(r["blockNumber"], 16)
        if (r.get("from") or "").lower() == signer:
            settle_txs += 1
            gas += int(r["gasUsed"], 16)
            reverted += r.get("status") != "0x1"
        else:
            foreign += 1
        for log in r.get("logs", []):
            t = log.get("topics", [])
            if (log["address"].lower() == usdc and len(t) >= 3 and t[0].lower() == topic
                    and t[1].lower() == payer_topic):
                nonces.append(t[2].lower())
    settled = len(nonces)
    sent = set(presigned)
    unique = len(set(nonces)) == settled
    foreign_nonces = sum(1 for n in nonces if n not in sent)
    payer_delta = before[0] - rpc.usdc_balance(usdc, payer, last)
    pay_to_delta = rpc.usdc_balance(usdc, pay_to, last) - before[1]
    balances_ok = payer_delta == settled * price == pay_to_delta
    # Every 2xx was paid for and settled once (settled >= 2xx, with unique nonces and exact
    # balances). Settled without a 2xx counted: wrk abandons up to `connections` requests in
    # flight at the end of each of its two runs (warm-up, measured), and those may settle; more
    # than that means payments settled for requests answered non-2xx.
    served_ok = settled >= ok_responses
    count_ok = served_ok and settled <= ok_responses + 2 * connections
    return {
        "blocks": [first, last],
        "settled": settled,
        "ok_responses": ok_responses,
        "sent": len(presigned),
        "unique": unique,
        "foreign_nonces": foreign_nonces,
        "payer_delta": payer_delta,
        "pay_to_delta": pay_to_delta,
        "balances_ok": balances_ok,
        "settled_without_2xx": settled - ok_responses,
        "count_ok": count_ok,
        "exactly_once": unique and foreign_nonces == 0 and balances_ok and served_ok,
        "settle_txs": settle_txs,
        "reverted_txs": reverted,
        "other_txs": foreign,
        "gas": gas,
        "gas_per_payment": gas / settled if settled else None,
        "tx_per_1000": settle_txs * 1000 / settled if settled else None,
        "tx_block": tx_block,
        "nonces": nonces,
    }


def journal_check(path: Path, onchain_nonces: list[str], tx_block: dict[str, int],
                  first_seen: dict[int, float]) -> dict:
    """Cross-checks a gateway's journal with the chain; per-payment settlement lag (ms):
    first sight of the block holding its settlement minus the journal's created_at."""
    rows = journal_rows(path)
    settled = [r for r in rows if r["state"] in ("settled", "delivered") and r["tx"]]
    states: dict[str, int] = {}
    for r in rows:
        states[r["state"]] = states.get(r["state"], 0) + 1
    journal_nonces = {r["nonce"].lower() for r in settled}
    every_nonce = {r["nonce"].lower() for r in rows}
    chain = set(onchain_nonces)
    lags, missing_block = [], 0
    for r in settled:
        block = tx_block.get(r["tx"].lower())
        if block is None or block not in first_seen:
            missing_block += 1
            continue
        lags.append(first_seen[block] - r["created_at"])
    return {
        "journal_rows": len(rows),
        "journal_states": states,
        "journal_settled": len(settled),
        # Every payment the journal calls settled is on chain, and every one on chain is a
        # payment of the journal (one still `settling` when the gateway stopped may be mined).
        "journal_matches_chain": journal_nonces <= chain and chain <= every_nonce,
        "journal_exact": journal_nonces == chain,
        "lag_samples": len(lags),
        "lag_missing_block": missing_block,
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags) if lags else None,
    }
