#!/usr/bin/env python3
"""The load benchmark's driver (run it through benches/load/run.sh, which builds and installs).

Starts the shared upstream and the shared fixed-answer facilitator (nginx, CPU 1), then for
each scenario starts the system under test pinned to CPU 0, warms it up, and measures it with
wrk pinned to CPU 1: requests/s, p50/p99 latency, and CPU time of the system under test per
request (utime + stime of its whole process tree, from /proc). Paid scenarios send a fresh
pre-signed payment header with every request. Results go to docs/benchmarks.md (between the
generated-section markers) and to .local/bench/results-*.json.

Loopback only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import hashlib
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  (the end-to-end rows' instruments, next to this file)

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "benches" / "load"
WORK = ROOT / ".local" / "bench"
# Outside the checkout, as scripts/env.sh sets it: the target dir and crates.io tools.
X402_CACHE = Path(os.environ.get("X402_CACHE", Path.home() / ".cache/x402-gateway"))
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- BEGIN GENERATED (benches/load/run.sh) -->", "<!-- END GENERATED -->"
E2E_BEGIN = "<!-- BEGIN GENERATED END-TO-END (benches/load/run.sh) -->"
E2E_END = "<!-- END GENERATED END-TO-END -->"

# Anvil dev accounts: public test keys, never used anywhere real.
PAYER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
PAYER_KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
FACILITATOR_KEY = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"

PORTS = {
    "upstream": 18100,
    "upstream_sut": 18101,
    "facilitator": 18200,
    "nginx": 18300,
    "pingora": 18301,
    "gateway": 18302,
    "axum": 18501,
    "express": 18502,
    "chain": 18545,
    "e2e_facilitator": 18400,  # the end-to-end rows' standalone facilitator (c, d, e)
}
SUT_CPU, LOAD_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", X402_CACHE / "target"))


@dataclass
class Scenario:
    """One row of the table."""

    key: str
    label: str
    system: str  # which process to start (see start_system)
    path: str
    paid: bool = False
    ready_status: int = 200
    connections: int | None = None
    duration: int | None = None
    verification: str = ""  # extra [verification] lines for the gateway
    embedded: bool = False
    binary: str = ""  # another gateway binary (--baseline): run with a config it reads
    journal: bool = True  # the payment journal on (a fresh file per run) or off
    # End-to-end rows (real chain): which facilitator settles, and how the gateway settles.
    e2e: str = ""  # the row's letter in the end-to-end table; "" for the other rows
    chain_facilitator: str = ""  # embedded | gateway-http | x402-rs | ts
    deferred: bool = False  # route settlement = "deferred" (with [payment.deferred])
    batch: bool = False  # the embedded facilitator batches (batch_max, batch_window)
    facilitator_extra: str = ""  # more [facilitator] lines
    journal_extra: str = ""  # more [journal] lines


SCENARIOS = [
    Scenario("upstream", "upstream direct (nginx `return 200`)", "upstream", "/free/x"),
    Scenario("nginx", "nginx `proxy_pass`", "nginx", "/free/x"),
    Scenario("nginx_402", "nginx static 402 (`return 402`)", "nginx", "/early", ready_status=402),
    Scenario("pingora", "bare Pingora passthrough", "pingora", "/free/x"),
    Scenario("pingora_402", "bare Pingora early 402 (28-byte body)", "pingora", "/early",
             ready_status=402),
    Scenario("pingora_402_sized", "bare Pingora early 402, gateway-sized (static 1.2 KB)",
             "pingora", "/early-sized", ready_status=402),
    Scenario("gw_free", "x402-gateway free route", "gateway", "/free/x"),
    Scenario("gw_402", "x402-gateway 402 challenge", "gateway", "/paid", ready_status=402),
    Scenario("gw_paid_after", "x402-gateway paid, after_response", "gateway", "/paid", paid=True,
             ready_status=402),
    Scenario("gw_paid_before", "x402-gateway paid, before_upstream", "gateway", "/paid-before",
             paid=True, ready_status=402),
    Scenario("gw_paid_after_local", "x402-gateway paid, after_response, local verification",
             "gateway", "/paid", paid=True, ready_status=402, verification='mode = "local"'),
    Scenario("gw_paid_before_local", "x402-gateway paid, before_upstream, local verification",
             "gateway", "/paid-before", paid=True, ready_status=402,
             verification='mode = "local"'),
    Scenario("gw_paid_after_nojournal", "x402-gateway paid, after_response, journal off",
             "gateway", "/paid", paid=True, ready_status=402, journal=False),
    Scenario("gw_paid_after_local_nojournal",
             "x402-gateway paid, after_response, local verification, journal off", "gateway",
             "/paid", paid=True, ready_status=402, verification='mode = "local"', journal=False),
    Scenario("gw_paid_deferred_local", "x402-gateway paid, deferred, local verification",
             "gateway", "/paid", paid=True, ready_status=402, verification='mode = "local"',
             deferred=True),
    Scenario("axum_paid", "x402-axum 2.x paid", "axum", "/paid", paid=True, ready_status=402),
    Scenario("express_paid", "@x402/express 2.27 paid", "express", "/paid", paid=True,
             ready_status=402),
    Scenario("gw_anvil", "x402-gateway paid, embedded facilitator on anvil (real USDC)",
             "gateway", "/paid-before", paid=True, ready_status=402, connections=16,
             embedded=True),
    Scenario("gw_anvil_local", "x402-gateway paid, embedded facilitator on anvil, local "
             "verification", "gateway", "/paid-before", paid=True, ready_status=402,
             connections=16, embedded=True, verification='mode = "local"'),
]


# The end-to-end table: the same paid route on anvil with Circle's USDC, every payment settled
# on chain for real, checked afterwards (exactly once, balances, gas). `--only e2e` runs these
# and the gateway's free route (the latency reference).
LOCAL = 'mode = "local"'
E2E_SCENARIOS = [
    Scenario("e2e_a", "a. x402-gateway, after_response, embedded facilitator", "gateway",
             "/paid", paid=True, ready_status=402, embedded=True, e2e="a",
             chain_facilitator="embedded"),
    Scenario("e2e_a_sync", "a'. x402-gateway, after_response, embedded facilitator, "
             "sync_batch_window 20ms", "gateway", "/paid", paid=True, ready_status=402,
             embedded=True, e2e="a'", chain_facilitator="embedded",
             facilitator_extra='\nsync_batch_window = "20ms"'),
    Scenario("e2e_b", "b. x402-gateway, deferred, embedded facilitator, batched, local "
             "verification", "gateway", "/paid", paid=True, ready_status=402, embedded=True,
             e2e="b", chain_facilitator="embedded", deferred=True, batch=True,
             verification=LOCAL),
    Scenario("e2e_b_normal", "b''. x402-gateway, deferred, embedded facilitator, batched, local "
             "verification, journal sync = \"normal\"", "gateway", "/paid", paid=True,
             ready_status=402, embedded=True, e2e="b''", chain_facilitator="embedded",
             deferred=True, batch=True, verification=LOCAL, journal_extra='\nsync = "normal"'),
    Scenario("e2e_b_verify", "b'. x402-gateway, deferred, embedded facilitator, batched, "
             "facilitator verification", "gateway", "/paid", paid=True, ready_status=402,
             embedded=True, e2e="b'", chain_facilitator="embedded", deferred=True, batch=True),
    Scenario("e2e_c", "c. x402-gateway, deferred, standalone `x402-gateway facilitator` over "
             "HTTP, local verification", "gateway", "/paid", paid=True, ready_status=402,
             e2e="c", chain_facilitator="gateway-http", deferred=True, verification=LOCAL),
    Scenario("e2e_d", "d. x402-axum + x402-rs facilitator", "axum", "/paid", paid=True,
             ready_status=402, e2e="d", chain_facilitator="x402-rs"),
    Scenario("e2e_e", "e. @x402/express + official TypeScript facilitator", "express", "/paid",
             paid=True, ready_status=402, e2e="e", chain_facilitator="ts"),
]
SCENARIOS += E2E_SCENARIOS
E2E_REFERENCE = ("gw_free",)  # rows of the main table the end-to-end ratios use
# The deferred rows' [payment.deferred] (caps high: they must not refuse in a throughput run).
DEFERRED_MAX_DELAY_S = 5
# The longest a deferred row waits after its load for the gateway's queue to drain (bounded:
# an unbatched queue settles about as fast as one signer's transactions go, ~100/s here).
DEFERRED_DRAIN_S = 180
DEFERRED = ('[payment.deferred]\nmax_per_payer = "$1000000"\nmax_total = "$1000000"\n'
            f'max_delay = "{DEFERRED_MAX_DELAY_S}s"')
BATCH = 'batch_max = 100\nbatch_window = "200ms"'
PRICE_ATOMIC = 1000  # $0.001 of USDC, every paid route of every system
PAY_TO = "0x90F79bf6EB2c4f870365E785982E1f101E93b906"
USDC = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
SIGNER = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"  # FACILITATOR_KEY's account
# keccak256("AuthorizationUsed(address,bytes32)"): EIP-3009's event, one per settled payment.
AUTHORIZATION_USED = "0x98de503528ee59b575ef0c0a2576a82497bfc029a5685b209e9ec333479b10a5"
X402_RS_VERSION = "0.12.5"
X402_RS = X402_CACHE / "x402-rs-0.12.5/bin/x402-rs"
# Journal states of a payment whose settlement is done (either way); anything else is open.
JOURNAL_DONE = ("settled", "delivered", "failed")


# Rows that --baseline runs with an older binary as well.
BASELINE_KEYS = ("gw_free", "gw_402", "gw_paid_after", "gw_paid_before", "gw_paid_after_local",
                 "gw_paid_before_local", "gw_paid_after_nojournal", "gw_paid_deferred_local")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def render(template: Path, out: Path, **values: object) -> Path:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace("{{" + k + "}}", str(v))
    left = re.findall(r"\{\{[A-Z_]+\}\}", text)
    if left:
        raise SystemExit(f"{template}: unfilled {left}")
    out.write_text(text)
    return out


class Proc:
    """A started process (its own session, output to a file)."""

    def __init__(self, name: str, argv: list[str], cpu: str, env: dict | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.logfile = WORK / f"{name}.log"
        out = open(self.logfile, "ab")
        full_env = dict(os.environ, **(env or {}))
        self.p = subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=full_env, cwd=cwd, start_new_session=True)
        out.close()

    def tree(self) -> list[int]:
        pids, todo = [], [self.p.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                kids = []
            todo.extend(int(k) for k in kids)
        return pids

    def cpu_seconds(self) -> float:
        total = 0
        for pid in self.tree():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / CLK_TCK

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()


def wait_http(proc: Proc, port: int, path: str, status: int, timeout: float = 60) -> dict:
    """Waits until GET path answers `status`; returns the response headers."""
    deadline = time.time() + timeout
    last = "no answer"
    while time.time() < deadline:
        if not proc.alive():
            raise SystemExit(f"{proc.name} exited; see {proc.logfile}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
                got, headers = r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            got, headers = e.code, dict(e.headers)
        except (urllib.error.URLError, OSError) as e:
            got, headers, last = None, {}, str(e)
        if got == status:
            return {k.lower(): v for k, v in headers.items()}
        if got is not None:
            last = f"HTTP {got}"
        time.sleep(0.1)
    raise SystemExit(f"{proc.name} did not answer {status} on {path} ({last}); see {proc.logfile}")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.shared: list[Proc] = []
        self.header_files: dict[str, Path] = {}
        self.chain_started = False
        self.chain_rpc = ""
        self.results: list[dict] = []
        # How far each pre-signed header file has been used, across rows: a header (an
        # EIP-3009 nonce) is never sent twice in a run, which the chain rows need.
        self.offsets: dict[Path, int] = {}

    # --- shared services -------------------------------------------------------------------
    def nginx(self, name: str, template: str, cpu: str, **values: object) -> Proc:
        conf = render(HERE / "nginx" / template, WORK / f"{name}.conf", WORK=WORK, NAME=name,
                      **values)
        (WORK / f"{name}-tmp").mkdir(exist_ok=True)
        return Proc(name, [self.args.nginx, "-p", str(WORK), "-c", str(conf)], cpu)

    def start_shared(self) -> None:
        up = self.nginx("upstream", "upstream.conf", LOAD_CPU, PORT=PORTS["upstream"])
        fac = self.nginx("facilitator", "facilitator.conf", LOAD_CPU, PORT=PORTS["facilitator"],
                         PAYER=PAYER)
        self.shared += [up, fac]
        wait_http(up, PORTS["upstream"], "/", 200)
        wait_http(fac, PORTS["facilitator"], "/supported", 200)

    def start_chain(self) -> str:
        if self.chain_rpc:
            return self.chain_rpc
        port = PORTS["chain"]
        # Pinned with the load: the chain is part of the environment, not the system under test.
        out = subprocess.run(["taskset", "-c", LOAD_CPU, str(ROOT / "scripts/chain.sh"), "start",
                              str(port)],
                             capture_output=True, text=True, env=dict(os.environ, PAYER_USDC="1000"))
        if out.returncode != 0:
            raise SystemExit(f"chain.sh start failed: {out.stderr}")
        self.chain_started = True
        self.chain_rpc = out.stdout.strip().splitlines()[-1]
        return self.chain_rpc

    def fresh_chain(self) -> str:
        """A new chain for an end-to-end row (anvil restarted, USDC deployed and the payer
        funded again), so that every row starts from the same state: anvil's cost per block
        grows with the chain's state, and one-transaction-per-payment rows run after the
        batched rows' tens of thousands of payments were measured many times slower (row c:
        1.9 paid req/s there, 83.8 on a fresh chain)."""
        self.stop_chain()
        return self.start_chain()

    def stop_chain(self) -> None:
        if self.chain_started:
            subprocess.run([str(ROOT / "scripts/chain.sh"), "stop", str(PORTS["chain"])],
                           capture_output=True)
            self.chain_rpc = ""

    def stop_all(self) -> None:
        for p in self.shared:
            p.stop()
        self.stop_chain()

    # --- systems under test ----------------------------------------------------------------
    def start_system(self, s: Scenario, port: int, facilitator_url: str = "") -> Proc:
        name = f"sut-{s.key}"
        facilitator_url = facilitator_url or f"http://127.0.0.1:{PORTS['facilitator']}"
        if s.system == "upstream":
            return self.nginx(name, "upstream.conf", SUT_CPU, PORT=port)
        if s.system == "nginx":
            return self.nginx(name, "proxy.conf", SUT_CPU, PORT=port,
                              UPSTREAM_PORT=PORTS["upstream"])
        if s.system == "pingora":
            binary = target_dir() / "release/examples/bare_pingora"
            return Proc(name, [str(binary), f"127.0.0.1:{port}",
                               f"127.0.0.1:{PORTS['upstream']}"], SUT_CPU)
        if s.system == "gateway":
            conf, env = self.gateway_config(s, port, name, facilitator_url)
            binary = Path(s.binary) if s.binary else target_dir() / "release/x402-gateway"
            return Proc(name, [str(binary), "run", "--config", str(conf)], SUT_CPU, env)
        if s.system == "axum":
            binary = target_dir() / "axum-peer/release/x402-axum-peer"
            env = {"LISTEN": f"127.0.0.1:{port}",
                   "UPSTREAM_URL": f"http://127.0.0.1:{PORTS['upstream']}",
                   "FACILITATOR_URL": facilitator_url,
                   "THREADS": "1"}
            return Proc(name, [str(binary)], SUT_CPU, env)
        if s.system == "express":
            env = {"LISTEN_PORT": str(port), "NODE_ENV": "production",
                   "UPSTREAM_URL": f"http://127.0.0.1:{PORTS['upstream']}",
                   "FACILITATOR_URL": facilitator_url}
            return Proc(name, ["node", "server.mjs"], SUT_CPU, env,
                        cwd=HERE / "peers/express")
        raise SystemExit(f"unknown system {s.system}")

    def embedded_facilitator(self, batch: bool = False) -> str:
        """[facilitator] lines of an embedded facilitator on the local chain."""
        rpc = self.start_chain()
        lines = ('embedded = true\nrpc = { "eip155:84532" = "%s" }\n'
                 'signer_keys = ["${FACILITATOR_KEY}"]' % rpc)
        return lines + ("\n" + BATCH if batch else "")

    def gateway_config(self, s: Scenario, port: int, name: str,
                       facilitator_url: str) -> tuple[Path, dict]:
        """Renders a gateway's config file; returns it and the environment it needs."""
        env = {}
        if s.embedded:
            facilitator = self.embedded_facilitator(s.batch) + s.facilitator_extra
            env["FACILITATOR_KEY"] = FACILITATOR_KEY
        else:
            facilitator = f'url = "{facilitator_url}"'
        # Abuse limits on, high enough for one load generator on one IP: the limiter's
        # cost is measured, its refusals are not; the journal in a fresh file per run. A
        # --baseline binary gets the same unless it does not read [limits] and [journal] (from
        # before them): then it gets neither.
        limits = ('[limits]\nchallenge_rate = "100000000/s"\n'
                  'failed_payment_rate = "100000000/s"')
        journal = WORK / f"{name}-journal.db"
        for f in WORK.glob(f"{name}-journal.db*"):
            f.unlink()
        limits += (f'\n[journal]\npath = "{journal}"{s.journal_extra}' if s.journal
                   else '\n[journal]\nenabled = false')
        values = dict(PORT=port, UPSTREAM_PORT=PORTS["upstream"], FACILITATOR=facilitator,
                      VERIFICATION=s.verification, DEFERRED=DEFERRED if s.deferred else "",
                      PAID_SETTLEMENT='settlement = "deferred"' if s.deferred else "")
        conf = render(HERE / "gateway.toml", WORK / f"{name}.toml", LIMITS=limits, **values)
        if s.binary and not self.accepts(s.binary, conf):
            log(f"{s.key}: {s.binary} does not read [limits]/[journal]: run without them")
            conf = render(HERE / "gateway.toml", WORK / f"{name}.toml", LIMITS="", **values)
        return conf, env

    @staticmethod
    def accepts(binary: str, conf: Path) -> bool:
        """Whether a gateway binary takes a config file (`check`)."""
        return subprocess.run([binary, "check", "--config", str(conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL).returncode == 0

    def start_chain_facilitator(self, s: Scenario) -> tuple[Proc | None, str]:
        """The standalone facilitator an end-to-end row's server calls (started, answering
        /supported), pinned with the system under test: it is part of the x402 stack being
        measured, as the embedded facilitator is part of the gateway's process."""
        port = PORTS["e2e_facilitator"]
        url = f"http://127.0.0.1:{port}"
        if not port_free(port):
            raise SystemExit(f"port {port} is in use (needed for {s.key}'s facilitator)")
        rpc = self.start_chain()
        env = {"FACILITATOR_KEY": FACILITATOR_KEY}
        name = f"facilitator-{s.key}"
        if s.chain_facilitator == "gateway-http":
            # A gateway config file whose [facilitator] is embedded, no batching; its per-IP
            # request limit (server_rate, default 20/s) off: the gateway is its only client.
            conf = render(HERE / "gateway.toml", WORK / f"{name}.toml", PORT=PORTS["gateway"],
                          UPSTREAM_PORT=PORTS["upstream"],
                          FACILITATOR=self.embedded_facilitator() + '\nserver_rate = "off"',
                          VERIFICATION="", LIMITS="",
                          DEFERRED="", PAID_SETTLEMENT="")
            proc = Proc(name, [str(target_dir() / "release/x402-gateway"), "facilitator",
                               "--config", str(conf), "--listen", f"127.0.0.1:{port}"],
                        SUT_CPU, env)
        elif s.chain_facilitator == "x402-rs":
            # x402-rs 0.12.5's JSON config (src/config.rs): the signer from the environment,
            # the RPC URL literal; v1 and v2 exact EVM schemes.
            conf = WORK / f"{name}.json"
            conf.write_text(json.dumps({
                "port": port, "host": "127.0.0.1",
                "chains": {"eip155:84532": {"eip1559": True, "signers": ["$FACILITATOR_KEY"],
                                            "rpc": [{"http": rpc}],
                                            "receipt_timeout_secs": 30}},
                "schemes": [{"id": "v1-eip155-exact", "chains": "eip155:*"},
                            {"id": "v2-eip155-exact", "chains": "eip155:*"}],
            }, indent=1))
            # cwd: it reads a .env from its working directory.
            proc = Proc(name, [str(X402_RS), "--config", str(conf)], SUT_CPU,
                        dict(env, RUST_LOG="warn"), cwd=WORK)
        elif s.chain_facilitator == "ts":
            proc = Proc(name, ["node", "server.mjs"], SUT_CPU,
                        dict(env, RPC_URL=rpc, LISTEN_PORT=str(port), NODE_ENV="production"),
                        cwd=HERE / "peers/ts-facilitator")
        else:
            return None, ""
        wait_http(proc, port, "/supported", 200)
        return proc, url

    # --- payment headers -------------------------------------------------------------------
    def headers_for(self, challenge_b64: str) -> Path:
        """Pre-signed headers for the first option of a challenge (shared by every system
        offering the same requirements)."""
        required = json.loads(base64.b64decode(challenge_b64))
        accepted = json.dumps(required["accepts"][0], sort_keys=True)
        digest = hashlib.sha256(accepted.encode()).hexdigest()[:12]
        if digest in self.header_files:
            return self.header_files[digest]
        challenge = WORK / f"challenge-{digest}.b64"
        challenge.write_text(challenge_b64)
        out = WORK / f"headers-{digest}.txt"
        log(f"signing {self.args.headers} payment headers for {accepted}")
        started = time.time()
        subprocess.run([str(target_dir() / "release/examples/presign"), "--challenge",
                        str(challenge), "--count", str(self.args.headers), "--out", str(out)],
                       check=True, env=dict(os.environ, X402_PAYER_KEY=PAYER_KEY))
        log(f"signed in {time.time() - started:.1f} s")
        self.header_files[digest] = out
        return out

    # --- measuring -------------------------------------------------------------------------
    def wrk(self, port: int, s: Scenario, seconds: int, headers: Path | None,
            offset: int) -> dict:
        conns = s.connections or self.args.connections
        threads = min(self.args.wrk_threads, conns)
        url = f"http://127.0.0.1:{port}{s.path}"
        argv = ["taskset", "-c", LOAD_CPU, "wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s",
                "--timeout", "10s"]
        if headers:
            argv += ["-s", str(HERE / "wrk/paid.lua"), url, "--", str(headers), str(offset),
                     str(threads)]
        else:
            argv += ["-s", str(HERE / "wrk/static.lua"), url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
        for line in out.stdout.splitlines():
            if line.startswith("BENCH_JSON "):
                return json.loads(line[len("BENCH_JSON "):])
        raise SystemExit(f"wrk gave no result:\n{out.stdout}\n{out.stderr}")

    def perf(self, proc: Proc, s: Scenario) -> subprocess.Popen:
        """Samples the system under test during the measured run (`perf report -i FILE`)."""
        data = WORK / f"perf-{s.key}.data"
        log(f"profiling {s.key} into {data}")
        return subprocess.Popen(
            ["perf", "record", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384",
             "-o", str(data), "-p", ",".join(map(str, proc.tree()))],
            stdout=subprocess.DEVNULL, stderr=open(WORK / "perf.log", "ab"))

    def run_scenario(self, s: Scenario) -> dict:
        if s.e2e:
            return self.run_e2e(s)
        port = PORTS["upstream_sut" if s.system == "upstream" else s.system]
        if not port_free(port):
            raise SystemExit(f"port {port} is in use (needed for {s.key})")
        proc = self.start_system(s, port)
        try:
            headers = wait_http(proc, port, s.path, s.ready_status)
            header_file, offset = None, 0
            if s.paid:
                challenge = headers.get("payment-required")
                if not challenge:
                    raise SystemExit(f"{s.key}: no PAYMENT-REQUIRED header on {s.path}")
                header_file = self.headers_for(challenge)
                offset = self.offsets.get(header_file, 0)
            duration = s.duration or self.args.duration
            warm = self.wrk(port, s, self.args.warmup, header_file, offset)
            offset += warm["used"]
            perf = self.perf(proc, s) if self.args.perf else None
            before = proc.cpu_seconds()
            r = self.wrk(port, s, duration, header_file, offset)
            cpu = proc.cpu_seconds() - before
            if header_file:
                self.offsets[header_file] = offset + r["used"]
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait(timeout=120)
            if not proc.alive():
                raise SystemExit(f"{s.key}: system under test died; see {proc.logfile}")
        finally:
            proc.stop()
        seconds = r["duration_us"] / 1e6
        row = {
            "key": s.key,
            "label": s.label,
            "connections": s.connections or self.args.connections,
            "requests": r["requests"],
            "rps": r["requests"] / seconds,
            "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000,
            "cpu_us": cpu * 1e6 / max(r["requests"], 1),
            "cpu_util": cpu / seconds,
            "non_2xx": r["non_2xx"],
            "errors": r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
            "expected_status": s.ready_status if not s.paid else 200,
        }
        log(f"{s.key}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, p99 "
            f"{row['p99_ms']:.2f} ms, {row['cpu_us']:.1f} CPU-µs/req, non-2xx {row['non_2xx']}, "
            f"errors {row['errors']}")
        return row

    # --- end-to-end rows (real chain) -------------------------------------------------------
    def e2e_unavailable(self, s: Scenario) -> str:
        """Why an end-to-end row cannot run here ("" when it can)."""
        if s.chain_facilitator == "x402-rs" and not X402_RS.exists():
            return f"x402-rs 0.12.5 is not installed at {X402_RS} (benches/load/run.sh installs it)"
        if s.chain_facilitator == "ts" and not (
                HERE / "peers/ts-facilitator/node_modules/@x402/core").exists():
            return "benches/load/peers/ts-facilitator has no node_modules (run.sh runs npm ci)"
        if s.system == "gateway":
            # The deferred rows need a gateway that knows [payment.deferred] and batching:
            # a build without them refuses the config, and the row says so instead of failing
            # the whole run.
            conf, env = self.gateway_config(s, PORTS["gateway"], f"check-{s.key}",
                                            f"http://127.0.0.1:{PORTS['e2e_facilitator']}")
            out = subprocess.run([str(target_dir() / "release/x402-gateway"), "check",
                                  "--config", str(conf)], capture_output=True, text=True,
                                 env=dict(os.environ, **env), timeout=60)
            if out.returncode != 0:
                lines = [ln.strip() for ln in (out.stdout + out.stderr).splitlines()
                         if ln.strip()]
                why = next((ln for ln in lines if "deferred" in ln or "batch" in ln),
                           lines[0] if lines else f"exit {out.returncode}")
                why = re.sub(r"\s*\(known here:.*\)", "", why).lstrip("- ")
                return f"this gateway build refuses the row's config ({why})"
        return ""

    def probe_paid(self, port: int, path: str, header_file: Path, line: int) -> str:
        """Sends pre-signed header number `line` once; returns "STATUS X-PAYMENT-STATUS"."""
        with open(header_file) as f:
            for i, h in enumerate(f):
                if i == line:
                    break
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"PAYMENT-SIGNATURE": h.strip()})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return f"{r.status} {r.headers.get('x-payment-status', '')}".strip()
        except urllib.error.HTTPError as e:
            return f"{e.code} {e.headers.get('x-payment-status', '')}".strip()

    def run_e2e(self, s: Scenario) -> dict:
        """One end-to-end row: warm-up and measured run with unique pre-signed payments
        against a server whose facilitator settles on the local chain, then (after deferred
        settlements drained) the on-chain exactly-once check, gas and settlement lag."""
        base = {"key": s.key, "label": s.label, "e2e": s.e2e, "deferred": s.deferred}
        why = self.e2e_unavailable(s)
        if why:
            log(f"{s.key}: not run: {why}")
            return dict(base, skipped=why)
        port = PORTS[s.system]
        if not port_free(port):
            raise SystemExit(f"port {port} is in use (needed for {s.key})")
        rpc_url = self.fresh_chain()
        rpc = e2e.Rpc(rpc_url)
        conns = s.connections or self.args.connections
        procs: list[Proc] = []
        journal = WORK / f"sut-{s.key}-journal.db"
        try:
            fac, fac_url = self.start_chain_facilitator(s)
            if fac:
                procs.append(fac)
            proc = self.start_system(s, port, fac_url)
            procs.append(proc)
            headers = wait_http(proc, port, s.path, s.ready_status)
            challenge = headers.get("payment-required")
            if not challenge:
                raise SystemExit(f"{s.key}: no PAYMENT-REQUIRED header on {s.path}")
            header_file = self.headers_for(challenge)
            start = self.offsets.get(header_file, 0)
            with e2e.BlockWatcher(rpc_url, cpu=int(LOAD_CPU)) as watcher:
                first = rpc.block_number() + 1
                before = (rpc.usdc_balance(USDC, PAYER, first - 1),
                          rpc.usdc_balance(USDC, PAY_TO, first - 1))
                probe = ""
                if s.deferred:
                    # One paid request first: a deferred answer says so (X-PAYMENT-STATUS).
                    probe = self.probe_paid(port, s.path, header_file, start)
                    if probe != "200 queued":
                        log(f"{s.key}: a paid request answered {probe!r}, not '200 queued'")
                warm = self.wrk(port, s, self.args.warmup, header_file,
                                start + (1 if s.deferred else 0))
                cpu_before = sum(p.cpu_seconds() for p in procs)
                r = self.wrk(port, s, s.duration or self.args.duration, header_file,
                             start + (1 if s.deferred else 0) + warm["used"])
                cpu = sum(p.cpu_seconds() for p in procs) - cpu_before
                used = warm["used"] + r["used"] + (1 if s.deferred else 0)
                self.offsets[header_file] = start + used
                drained, drain_s = True, 0.0
                if s.system == "gateway" and s.journal:
                    timeout = DEFERRED_DRAIN_S if s.deferred else 30
                    drained, drain_s = e2e.wait_drained(journal, JOURNAL_DONE, timeout)
                    if not drained:
                        log(f"{s.key}: journal not drained after {drain_s:.0f} s")
                # Stopped before the range closes: what a stopping server still settles
                # (a drain on SIGTERM) belongs to this row.
                for p in procs:
                    if not p.alive():
                        raise SystemExit(f"{s.key}: {p.name} died; see {p.logfile}")
                for p in reversed(procs):
                    p.stop()
                watcher.wait_quiet(quiet=1.0, timeout=30)
                last = rpc.block_number()
        finally:
            for p in reversed(procs):
                p.stop()
        seconds = r["duration_us"] / 1e6
        ok = r["requests"] - r["non_2xx"]
        ok_all = ok + warm["requests"] - warm["non_2xx"] + (probe.startswith("200 "))
        check = e2e.chain_check(
            rpc, first=first, last=last, before=before, usdc=USDC, topic=AUTHORIZATION_USED,
            payer=PAYER, pay_to=PAY_TO, signer=SIGNER, price=PRICE_ATOMIC,
            presigned=e2e.header_nonces(header_file, start, used), ok_responses=ok_all,
            connections=conns)
        row = dict(
            base, connections=conns, requests=r["requests"], ok=ok, rps=ok / seconds,
            p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000, non_2xx=r["non_2xx"],
            errors=r["connect_errors"] + r["read_errors"] + r["write_errors"] + r["timeouts"],
            cpu_us=cpu * 1e6 / max(ok, 1), warmup_ok=warm["requests"] - warm["non_2xx"],
            drained=drained, drain_s=drain_s, watcher_polls=watcher.polls, probe=probe,
            **{k: v for k, v in check.items() if k not in ("tx_block", "nonces")})
        if s.system == "gateway" and s.journal and journal.exists():
            row.update(e2e.journal_check(journal, check["nonces"], check["tx_block"],
                                         watcher.first_seen))
        lag = ("before response" if not s.deferred else
               f"p50 {fmt_ms(row.get('lag_p50_ms'))}, p99 {fmt_ms(row.get('lag_p99_ms'))}")
        log(f"{s.key}: {row['rps']:,.1f} paid req/s, p50 {row['p50_ms']:.2f} ms, p99 "
            f"{row['p99_ms']:.2f} ms; settled {row['settled']} on chain for {ok_all} 2xx "
            f"(sent {row['sent']}), exactly once: {row['exactly_once']}; lag {lag}; "
            f"gas/payment {fmt_num(row['gas_per_payment'], 0)}, tx/1000 "
            f"{fmt_num(row['tx_per_1000'], 1)}; non-2xx {row['non_2xx']}, errors {row['errors']}")
        return row

    def run(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        scenarios = list(SCENARIOS)
        if self.args.baseline:
            # Each gateway row, run again with the baseline binary right before it.
            scenarios = []
            for s in SCENARIOS:
                if s.key in BASELINE_KEYS:
                    scenarios.append(dataclasses.replace(
                        s, key=s.key + "_base", label=s.label + " — baseline binary",
                        binary=self.args.baseline))
                scenarios.append(s)
        if self.args.only and "e2e" in self.args.only:
            # The end-to-end table and the rows its ratios refer to.
            self.args.only = [k for k in self.args.only if k != "e2e"] + list(E2E_REFERENCE) + [
                s.key for s in E2E_SCENARIOS]
        wanted = [s for s in scenarios if not self.args.only or s.key in self.args.only
                  or s.key.removesuffix("_base") in self.args.only]
        if self.args.skip:
            wanted = [s for s in wanted if s.key not in self.args.skip]
        try:
            self.start_shared()
            for s in wanted:
                self.results.append(self.run_scenario(s))
        finally:
            self.stop_all()
        for f in self.header_files.values():
            f.unlink(missing_ok=True)  # tens of MB each; signed afresh by every run
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        (WORK / f"results-{stamp}.json").write_text(json.dumps(self.results, indent=1))
        if not self.args.no_doc:
            write_doc(self.results, self.args)


# --- the report ------------------------------------------------------------------------------
def cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not found"


def lock_version(lock: Path, name: str) -> str:
    if not lock.exists():
        return "?"
    if lock.suffix == ".json":
        pkgs = json.loads(lock.read_text()).get("packages", {})
        return pkgs.get(f"node_modules/{name}", {}).get("version", "?")
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(name), lock.read_text())
    return m.group(1) if m else "?"


def machine() -> list[str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    axum_lock = HERE / "peers/axum/Cargo.lock"
    express_lock = HERE / "peers/express/package-lock.json"
    return [
        f"- Machine: {os.cpu_count()} × {cpu}, {int(mem) // 1024 // 1024} GiB RAM, "
        f"Linux {platform.release()}",
        f"- {cmd(['rustc', '-V'])}; pingora {lock_version(ROOT / 'Cargo.lock', 'pingora-core')}, "
        f"tokio {lock_version(ROOT / 'Cargo.lock', 'tokio')}, "
        f"alloy {lock_version(ROOT / 'Cargo.lock', 'alloy')}",
        f"- {cmd(['nginx', '-v'])}; {cmd(['wrk', '-v'])}; node {cmd(['node', '-v'])}",
        f"- x402-axum {lock_version(axum_lock, 'x402-axum')} (crates.io); "
        f"@x402/express {lock_version(express_lock, '@x402/express')}, "
        f"express {lock_version(express_lock, 'express')} (npm)",
    ]


def ratio(rows: dict, a: str, b: str, what: str = "rps") -> str:
    if a not in rows or b not in rows or not rows[b][what]:
        return "n/a"
    return f"{rows[a][what] / rows[b][what]:.2f}×"


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v / 1000:.2f} s" if abs(v) >= 1000 else f"{v:.0f} ms"


def fmt_num(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}"


def replace_section(text: str, begin: str, end: str, generated: str) -> str:
    if begin in text and end in text:
        return text[: text.index(begin)] + generated + text[text.index(end) + len(end):]
    return text.rstrip("\n") + "\n\n" + generated + "\n"


def write_doc(results: list[dict], args: argparse.Namespace) -> None:
    """Rewrites the generated section(s) of docs/benchmarks.md: the main table when the run had
    rows of it (beyond the end-to-end table's reference rows), the end-to-end table when the
    run had end-to-end rows."""
    main_rows = [r for r in results if not r.get("e2e")]
    e2e_rows = [r for r in results if r.get("e2e")]
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if main_rows and not (e2e_rows and all(r["key"] in E2E_REFERENCE for r in main_rows)):
        text = replace_section(text, BEGIN, END, main_section(main_rows, args))
    if e2e_rows:
        text = replace_section(text, E2E_BEGIN, E2E_END, e2e_section(results, args))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    log(f"wrote {DOC.relative_to(ROOT)}")


def e2e_section(results: list[dict], args: argparse.Namespace) -> str:
    rows = {r["key"]: r for r in results}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    conns = sorted({r["connections"] for r in results if r.get("e2e") and "skipped" not in r})
    out = [E2E_BEGIN, "", f"Latest run: {now}, `benches/load/run.sh {' '.join(args.argv)}`"
           .rstrip(), ""]
    out += machine()
    out += [
        f"- x402-rs {X402_RS_VERSION} facilitator (crates.io binary); official TypeScript "
        f"facilitator @x402/core "
        f"{lock_version(HERE / 'peers/ts-facilitator/package-lock.json', '@x402/core')}, "
        f"viem {lock_version(HERE / 'peers/ts-facilitator/package-lock.json', 'viem')}; anvil "
        f"{lock_version(ROOT / 'tools/node/package-lock.json', '@foundry-rs/anvil-linux-amd64')}"
        " (automine: a block is mined as soon as transactions arrive), chain id "
        "84532, Circle's FiatTokenV2_2 behind its proxy at the Base Sepolia USDC address.",
        f"- Server and facilitator (in-process or its own process) pinned to CPU {SUT_CPU}; "
        f"wrk, the upstream, anvil and the block watcher to CPU {LOAD_CPU}. "
        f"{', '.join(map(str, conns)) or args.connections} connections, {args.warmup} s "
        f"warm-up then {args.duration} s measured per row; every request carries a fresh "
        "pre-signed payment, never sent twice in the run.",
        "",
        "| row | paid req/s | p50 ms | p99 ms | settlement lag p50 / p99 | gas per payment | "
        "tx per 1,000 payments | settled on chain / 2xx | exactly once |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    e2e_rows = [r for r in results if r.get("e2e")]
    for r in e2e_rows:
        if "skipped" in r:
            out.append(f"| {r['label']} | not run: {r['skipped']} | | | | | | | |")
            continue
        lag = ("before response" if not r["deferred"] else
               f"{fmt_ms(r.get('lag_p50_ms'))} / {fmt_ms(r.get('lag_p99_ms'))}")
        once = "yes" if r["exactly_once"] and r.get("journal_matches_chain", True) else "**no**"
        if not r["drained"]:
            once = (f"**incomplete**: queue not drained after {r['drain_s']:.0f} s "
                    f"({r['ok_responses'] - r['settled']:,} paid answers not settled yet)")
        elif r["exactly_once"] and not r["count_ok"]:
            once += (f" ({r['settled_without_2xx']:,} settled without a counted 2xx: more than "
                     f"wrk's {2 * r['connections']} abandoned)")
        out.append(
            f"| {r['label']} | {r['rps']:,.1f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {lag} | "
            f"{fmt_num(r['gas_per_payment'], 0)} | {fmt_num(r['tx_per_1000'], 1)} | "
            f"{r['settled']:,} / {r['ok_responses']:,} | {once} |")
    if "gw_free" in rows:
        f = rows["gw_free"]
        out.append(f"| reference: {f['label']} (no payment) | {f['rps']:,.0f} | "
                   f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | | | | | |")
    ran = [r for r in e2e_rows if "skipped" not in r]
    if ran:
        out += ["", "The on-chain check of each row (blocks of the row's warm-up, measured run and "
                "drain):", "",
                "| row | blocks | payments sent | 2xx | settled (`AuthorizationUsed`) | nonces "
                "unique, all sent by the row | payer Δ / pay_to Δ (USDC) | settlement tx "
                "(reverted) | journal | non-2xx | errors |",
                "|---|---|---:|---:|---:|---|---|---:|---|---:|---:|"]
        for r in ran:
            nonces = "yes" if r["unique"] and not r["foreign_nonces"] else (
                f"**no** ({r['foreign_nonces']} foreign, unique: {r['unique']})")
            if "journal_rows" in r:
                states = ", ".join(f"{k} {v:,}" for k, v in sorted(r["journal_states"].items()))
                agree = ("= chain" if r.get("journal_exact", r["journal_matches_chain"]) else
                         "consistent with the chain" if r["journal_matches_chain"] else
                         "**≠ chain**")
                journal = (f"{states}; {agree}"
                           + ("" if r["drained"] else f"; **not drained** after "
                              f"{r['drain_s']:.0f} s"))
            else:
                journal = "—"
            out.append(
                f"| {r['e2e']} | {r['blocks'][0]}–{r['blocks'][1]} | {r['sent']:,} | "
                f"{r['ok_responses']:,} | {r['settled']:,} | {nonces} | "
                f"−{r['payer_delta'] / 1e6:,.3f} / +{r['pay_to_delta'] / 1e6:,.3f} | "
                f"{r['settle_txs']:,} ({r['reverted_txs']}) | {journal} | {r['non_2xx']} | "
                f"{r['errors']} |")
    for r in ran:
        if r["deferred"] and r.get("probe") != "200 queued":
            out += ["", f"Row {r['e2e']}: a paid request answered `{r.get('probe')}`, not "
                    "`200` with `X-PAYMENT-STATUS: queued`."]
    targets: list[str] = []

    def have(*keys: str) -> bool:
        return all(k in rows and "skipped" not in rows[k] for k in keys)

    if have("e2e_b", "e2e_a"):
        targets.append(f"| b ÷ a, paid req/s | {ratio(rows, 'e2e_b', 'e2e_a')} | ≥ 20× |")
    if have("e2e_b", "e2e_d"):
        targets.append(f"| b ÷ d, paid req/s | {ratio(rows, 'e2e_b', 'e2e_d')} | ≥ 100× |")
    if have("e2e_b", "gw_free"):
        targets.append(f"| b p50 ÷ gateway free-route p50 | "
                      f"{ratio(rows, 'e2e_b', 'gw_free', 'p50_ms')} | ≤ 2× |")
    if have("e2e_b_normal", "gw_free"):
        targets.append(f"| b'' (journal `sync = \"normal\"`) p50 ÷ gateway free-route p50 | "
                       f"{ratio(rows, 'e2e_b_normal', 'gw_free', 'p50_ms')} | (≤ 2×) |")
    if have("e2e_b", "e2e_a") and rows["e2e_a"]["gas_per_payment"]:
        share = rows["e2e_b"]["gas_per_payment"] / rows["e2e_a"]["gas_per_payment"]
        targets.append(f"| gas per payment, b ÷ a | {share * 100:.0f}% | ≤ 40% |")
    for k in ("e2e_b", "e2e_b_normal", "e2e_b_verify", "e2e_c"):
        if have(k):
            targets.append(f"| settlement lag p99, {rows[k]['e2e']} | "
                           f"{fmt_ms(rows[k].get('lag_p99_ms'))} | ≤ max_delay "
                           f"({DEFERRED_MAX_DELAY_S} s) + 2 blocks |")
    if targets:
        out += ["", "| target (this run) | measured | target |", "|---|---:|---|", *targets]
    out += ["", E2E_END]
    return "\n".join(out)


def main_section(results: list[dict], args: argparse.Namespace) -> str:
    rows = {r["key"]: r for r in results}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [BEGIN, "", f"Latest run: {now}, `benches/load/run.sh {' '.join(args.argv)}`".rstrip(),
           ""]
    out += machine()
    out += [
        f"- Each system under test pinned to CPU {SUT_CPU}; wrk ({args.wrk_threads} threads), "
        f"the upstream and the facilitator pinned to CPU {LOAD_CPU}. {args.connections} "
        f"connections unless noted, {args.warmup} s warm-up then {args.duration} s measured.",
        "- Upstream: nginx `return 200` with a 64-byte JSON body. Facilitator: nginx answering "
        "every `/verify` valid and every `/settle` successful (fixed answers, shared by all "
        "systems). Paid requests each carry a fresh pre-signed `PAYMENT-SIGNATURE` "
        "(EIP-3009, unique nonce).",
        "- CPU-µs/req: user + system CPU of the system under test's processes during the "
        "measured run, divided by the requests completed. The kernel charges loopback network "
        "work (softirq) to the process running on the CPU, so network-heavy rows can show a "
        "CPU use above 100%.",
        "",
        "| system | conns | req/s | p50 ms | p99 ms | CPU-µs/req | CPU use | non-2xx | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        bad = r["non_2xx"] if r["expected_status"] == 200 else "(402 expected)"
        out.append(f"| {r['label']} | {r['connections']} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                   f"{r['p99_ms']:.2f} | {r['cpu_us']:.1f} | {r['cpu_util'] * 100:.0f}% | {bad} | "
                   f"{r['errors']} |")
    out += ["", "| ratio (throughput) | value | target |", "|---|---:|---|"]
    pairs = [
        ("gateway free ÷ bare Pingora", "gw_free", "pingora", "≥ 0.95×"),
        ("gateway free ÷ nginx proxy_pass", "gw_free", "nginx", "as close as possible"),
        ("bare Pingora ÷ nginx proxy_pass", "pingora", "nginx", ""),
        ("gateway 402 ÷ bare Pingora early 402", "gw_402", "pingora_402", "≥ 1.0×"),
        ("gateway 402 ÷ bare Pingora early 402 of the same size", "gw_402", "pingora_402_sized",
         "≥ 1.0×"),
        ("gateway 402 ÷ nginx static 402", "gw_402", "nginx_402", ""),
    ]
    for mode in ("after", "before"):
        for local in ("", "_local"):
            key = f"gw_paid_{mode}{local}"
            if key not in rows:
                continue
            name = f"gateway paid {mode}{' local' if local else ''}"
            pairs.append((f"{name} ÷ x402-axum", key, "axum_paid", "≥ 2×"))
            pairs.append((f"{name} ÷ @x402/express", key, "express_paid", "≥ 10×"))
    pairs.append(("gateway paid deferred local ÷ x402-axum", "gw_paid_deferred_local",
                  "axum_paid", "≥ 1.0×"))
    for name, a, b, target in pairs:
        if a in rows and b in rows:
            out.append(f"| {name} | {ratio(rows, a, b)} | {target} |")
    out += ["", "| CPU per request | µs | target |", "|---|---:|---|"]
    if "gw_free" in rows:
        free = rows["gw_free"]["cpu_us"]
        for key in ("gw_paid_after", "gw_paid_before", "gw_paid_after_local",
                    "gw_paid_before_local"):
            if key in rows:
                extra = rows[key]["cpu_us"] - free
                target = "≤ +45 µs" if key.endswith("_local") else ""
                out.append(f"| {rows[key]['label']} − free route | +{extra:.1f} | {target} |")
    for a, b in (("gw_free", "nginx"), ("pingora", "nginx")):
        if a in rows and b in rows:
            out.append(f"| {rows[a]['label']} ÷ nginx proxy_pass (CPU) | "
                       f"{ratio(rows, a, b, 'cpu_us')} | |")
    journal_pairs = [("gw_paid_after", "gw_paid_after_nojournal"),
                     ("gw_paid_after_local", "gw_paid_after_local_nojournal")]
    journal_pairs = [(a, b) for a, b in journal_pairs if a in rows and b in rows]
    if journal_pairs:
        out += ["", "The payment journal's cost (`sync = \"full\"`, group commit), in this run:", "",
                "| row | req/s journal on ÷ off | CPU-µs/req on − off |", "|---|---:|---:|"]
        for a, b in journal_pairs:
            out.append(f"| {rows[a]['label']} | {ratio(rows, a, b)} | "
                       f"{rows[a]['cpu_us'] - rows[b]['cpu_us']:+.1f} |")
    base = [k for k in BASELINE_KEYS if k in rows and k + "_base" in rows]
    if base:
        out += ["", f"Against the baseline binary (`--baseline {args.baseline}`), in this run:", "",
                "| row | req/s ÷ baseline | CPU-µs/req ÷ baseline | target |",
                "|---|---:|---:|---|"]
        for k in base:
            out.append(f"| {rows[k]['label']} | {ratio(rows, k, k + '_base')} | "
                       f"{ratio(rows, k, k + '_base', 'cpu_us')} | within 5% |")
    out += ["", END]
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=int, default=8, help="measured seconds per scenario")
    p.add_argument("--warmup", type=int, default=2, help="warm-up seconds per scenario")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--wrk-threads", type=int, default=2)
    p.add_argument("--headers", type=int, default=300_000, help="pre-signed headers per offer")
    p.add_argument("--only", type=lambda v: v.split(","), default=None,
                   help="comma-separated scenario keys: " + ",".join(s.key for s in SCENARIOS))
    p.add_argument("--skip", type=lambda v: v.split(","), default=None)
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--nginx", default="/usr/sbin/nginx")
    p.add_argument("--baseline", default="",
                   help="another x402-gateway binary (e.g. a build of main before a change): "
                        "every gateway row is also run with it, and the ratios reported")
    p.add_argument("--perf", action="store_true",
                   help="record a perf profile of each system under test (.local/bench/perf-*.data)")
    args = p.parse_args()
    args.argv = sys.argv[1:]
    if os.cpu_count() and os.cpu_count() < 2:
        raise SystemExit("the benchmark pins the system under test and the load to two CPUs")
    Bench(args).run()


if __name__ == "__main__":
    main()
