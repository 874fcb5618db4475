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

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "benches" / "load"
WORK = ROOT / ".local" / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- BEGIN GENERATED (benches/load/run.sh) -->", "<!-- END GENERATED -->"

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
}
SUT_CPU, LOAD_CPU = "0", "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def target_dir() -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/x402-gateway/target"))


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


# Rows that --baseline runs with an older binary as well.
BASELINE_KEYS = ("gw_free", "gw_402", "gw_paid_after", "gw_paid_before", "gw_paid_after_local",
                 "gw_paid_before_local")


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
        self.results: list[dict] = []

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
        port = PORTS["chain"]
        # Pinned with the load: the chain is part of the environment, not the system under test.
        out = subprocess.run(["taskset", "-c", LOAD_CPU, str(ROOT / "scripts/chain.sh"), "start",
                              str(port)],
                             capture_output=True, text=True, env=dict(os.environ, PAYER_USDC="1000"))
        if out.returncode != 0:
            raise SystemExit(f"chain.sh start failed: {out.stderr}")
        self.chain_started = True
        return out.stdout.strip().splitlines()[-1]

    def stop_all(self) -> None:
        for p in self.shared:
            p.stop()
        if self.chain_started:
            subprocess.run([str(ROOT / "scripts/chain.sh"), "stop", str(PORTS["chain"])],
                           capture_output=True)

    # --- systems under test ----------------------------------------------------------------
    def start_system(self, s: Scenario, port: int) -> Proc:
        name = f"sut-{s.key}"
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
            env = {}
            if s.embedded:
                rpc = self.start_chain()
                facilitator = ('embedded = true\nrpc = { "eip155:84532" = "%s" }\n'
                               'signer_keys = ["${FACILITATOR_KEY}"]' % rpc)
                env["FACILITATOR_KEY"] = FACILITATOR_KEY
            else:
                facilitator = f'url = "http://127.0.0.1:{PORTS["facilitator"]}"'
            # Abuse limits on, high enough for one load generator on one IP: the limiter's
            # cost is measured, its refusals are not. A --baseline binary from before [limits]
            # gets none.
            limits = "" if s.binary else (
                '[limits]\nchallenge_rate = "100000000/s"\nfailed_payment_rate = "100000000/s"')
            if not s.binary:
                journal = WORK / f"{name}-journal.db"
                for f in WORK.glob(f"{name}-journal.db*"):
                    f.unlink()
                limits += (f'\n[journal]\npath = "{journal}"' if s.journal
                           else '\n[journal]\nenabled = false')
            conf = render(HERE / "gateway.toml", WORK / f"{name}.toml", PORT=port,
                          UPSTREAM_PORT=PORTS["upstream"], FACILITATOR=facilitator,
                          VERIFICATION=s.verification, LIMITS=limits)
            binary = Path(s.binary) if s.binary else target_dir() / "release/x402-gateway"
            return Proc(name, [str(binary), "run", "--config", str(conf)], SUT_CPU, env)
        if s.system == "axum":
            binary = target_dir() / "axum-peer/release/x402-axum-peer"
            env = {"LISTEN": f"127.0.0.1:{port}",
                   "UPSTREAM_URL": f"http://127.0.0.1:{PORTS['upstream']}",
                   "FACILITATOR_URL": f"http://127.0.0.1:{PORTS['facilitator']}",
                   "THREADS": "1"}
            return Proc(name, [str(binary)], SUT_CPU, env)
        if s.system == "express":
            env = {"LISTEN_PORT": str(port), "NODE_ENV": "production",
                   "UPSTREAM_URL": f"http://127.0.0.1:{PORTS['upstream']}",
                   "FACILITATOR_URL": f"http://127.0.0.1:{PORTS['facilitator']}"}
            return Proc(name, ["node", "server.mjs"], SUT_CPU, env,
                        cwd=HERE / "peers/express")
        raise SystemExit(f"unknown system {s.system}")

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
            duration = s.duration or self.args.duration
            warm = self.wrk(port, s, self.args.warmup, header_file, offset)
            offset += warm["used"]
            perf = self.perf(proc, s) if self.args.perf else None
            before = proc.cpu_seconds()
            r = self.wrk(port, s, duration, header_file, offset)
            cpu = proc.cpu_seconds() - before
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


def write_doc(results: list[dict], args: argparse.Namespace) -> None:
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
    generated = "\n".join(out)
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        text = text[: text.index(BEGIN)] + generated + text[text.index(END) + len(END):]
    else:
        DOC.parent.mkdir(exist_ok=True)
        text = "# Benchmarks\n\n" + generated + "\n"
    DOC.write_text(text)
    log(f"wrote {DOC.relative_to(ROOT)}")


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
