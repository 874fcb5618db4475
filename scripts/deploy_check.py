#!/usr/bin/env python3
"""Consistency checks of deploy/ that no schema tool makes (run by scripts/deploy-check.sh).

  deploy_check.py COMPOSE_JSON OUT_DIR

COMPOSE_JSON is `docker compose config --format json` of deploy/docker-compose.yml. Checks that
the Dockerfile, the image's config, the compose file and the Kubernetes manifests agree with each
other (user, state directory, ports, probes, grace periods, secrets), and writes every gateway
configuration they ship to OUT_DIR as NAME.toml with the environment it gets as NAME.env
(KEY=VALUE lines), for `x402-gateway check`. Exit 1 listing every problem.
"""

import fnmatch
import json
import re
import shlex
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
# Anvil dev key #2: the public demo signer (docker-compose.yml sets the same).
DEMO_ENV = {"FACILITATOR_KEY": "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"}
IMAGE_CONFIG = "/etc/x402-gateway/gateway.toml"

problems = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def seconds(text, default):
    """A humantime duration of the config ("35s", "1m", "500ms") in seconds."""
    if text is None:
        return default
    total = 0.0
    for n, unit in re.findall(r"(\d+)\s*(ms|s|m|h)", text):
        total += int(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def env_vars(toml_text):
    return set(re.findall(r"\$\{([A-Za-z0-9_]+)\}", toml_text))


def port_of(listen):
    return int(listen.rsplit(":", 1)[1])


def host_of(listen):
    return listen.rsplit(":", 1)[0].strip("[]")


# === Dockerfile and .dockerignore ===

def dockerfile():
    where = "deploy/Dockerfile"
    text = (DEPLOY / "Dockerfile").read_text()
    lines = []
    for raw in re.sub(r"\\\n", " ", text).splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#"):
            lines.append(raw)
    stages = [i for i, l in enumerate(lines) if l.upper().startswith("FROM ")]
    if len(stages) < 2:
        fail(where, "not a multi-stage build")
    final = lines[stages[-1]:]
    build = lines[: stages[-1]]
    cargo_builds = [i for i, l in enumerate(build) if l.startswith("RUN") and "cargo build" in l]
    copy_src = [i for i, l in enumerate(build) if re.match(r"COPY\s+src\b", l)]
    if not cargo_builds or not copy_src or cargo_builds[0] > copy_src[0]:
        fail(where, "no dependency layer: a `cargo build` must run before `COPY src`")
    if "docker build -f deploy/Dockerfile" not in text:
        fail(where, "the build command is not documented in its header")
    user = [l.split()[1] for l in final if l.upper().startswith("USER ")]
    uid = gid = None
    if not user or not re.fullmatch(r"\d+(:\d+)?", user[-1]):
        fail(where, f"the runtime USER must be numeric (uid:gid), not {user[-1:] or 'unset'}")
    else:
        uid, _, gid = user[-1].partition(":")
        uid, gid = int(uid), int(gid or uid)
        if uid == 0:
            fail(where, "the runtime user is root")
    env = {}
    for l in final:
        if l.upper().startswith("ENV "):
            for kv in shlex.split(l[4:]):
                k, _, v = kv.partition("=")
                env[k] = v
    state = env.get("STATE_DIRECTORY")
    if not state:
        fail(where, "no ENV STATE_DIRECTORY: the journal would go next to the config in /etc")
    elif not any(
        l.startswith("COPY") and f"--chown={uid}:{gid}" in l and l.split()[-1] == state
        for l in final
    ):
        fail(where, f"{state} is not created owned by {uid}:{gid} (COPY --chown)")
    if not any(l.startswith("COPY") and l.endswith(f"deploy/container.toml {IMAGE_CONFIG}") for l in final):
        fail(where, f"the image config {IMAGE_CONFIG} is not deploy/container.toml")
    cmd = [l for l in final if l.startswith("CMD")]
    if not cmd or IMAGE_CONFIG not in cmd[-1]:
        fail(where, f"CMD does not run {IMAGE_CONFIG}")
    exposed = {int(p) for l in final if l.startswith("EXPOSE") for p in l.split()[1:]}
    # Sources copied from the build context must survive .dockerignore.
    rules = []
    for r in (ROOT / ".dockerignore").read_text().splitlines():
        r = r.strip()
        if r and not r.startswith("#"):
            rules.append((r.startswith("!"), r.lstrip("!").rstrip("/")))

    def ignored(rel):
        out = False
        parts = rel.split("/")
        for neg, pat in rules:
            for i in range(1, len(parts) + 1):
                if fnmatch.fnmatchcase("/".join(parts[:i]), pat):
                    out = not neg
                    break
        return out

    for l in lines:
        if l.startswith("COPY") and "--from=" not in l:
            for src in [a for a in l.split()[1:-1] if not a.startswith("--")]:
                matches = [p for p in ROOT.glob(src)] or [ROOT / src]
                for p in matches:
                    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
                    for f in files:
                        rel = str(f.relative_to(ROOT))
                        if ignored(rel):
                            fail(".dockerignore", f"excludes {rel}, which the Dockerfile copies")
                    if not p.exists():
                        fail(where, f"copies {src}, which does not exist")
    return {"uid": uid, "gid": gid, "state": state, "exposed": exposed}


# === The image's config ===

def container_config(image):
    where = "deploy/container.toml"
    text = (DEPLOY / "container.toml").read_text()
    c = tomllib.loads(text)
    admin = c.get("admin", {}).get("listen")
    if not admin or host_of(admin) not in ("0.0.0.0", "::"):
        fail(where, f"[admin] listen = {admin!r}: probes from outside the container cannot reach it")
    listen = c.get("server", {}).get("listen", "0.0.0.0:8402")
    for l in (listen, admin or ":0"):
        if port_of(l) not in image["exposed"]:
            fail("deploy/Dockerfile", f"does not EXPOSE {port_of(l)} ({where})")
    if "path" in c.get("journal", {}):
        fail(where, "sets [journal] path: it belongs in $STATE_DIRECTORY")
    return c, text


# === docker-compose.yml ===

def compose(path, image, config, config_text):
    where = "deploy/docker-compose.yml"
    spec = json.loads(Path(path).read_text())
    services = spec.get("services", {})
    gw, api, chain = services.get("gateway"), services.get("api"), services.get("chain")
    if not (gw and api and chain):
        fail(where, "needs the services gateway, api and chain")
        return
    for name, s in (("gateway", gw), ("chain", chain)):
        if s.get("network_mode") != "service:api":
            fail(where, f"{name} does not share the api's network namespace (network_mode)")
    if gw.get("command") not in (None, []):
        fail(where, "gateway overrides the image's command: it must run the image's config")
    upstream = config["upstream"]["url"]
    api_cmd = api.get("command") or []
    if "sample-api" not in api_cmd or not upstream.endswith(api_cmd[api_cmd.index("--listen") + 1]):
        fail(where, f"api does not listen where the image's config expects it ({upstream})")
    rpc = next(iter(config["facilitator"]["rpc"].values()))
    chain_cmd = " ".join(chain.get("command") or [])
    if f"--port {port_of(rpc.split('//')[1])}" not in chain_cmd or "--chain-id 84532" not in chain_cmd:
        fail(where, f"chain does not serve {rpc} with chain id 84532")
    published = {int(p["target"]): p.get("host_ip") for p in api.get("ports", [])}
    admin_port = port_of(config["admin"]["listen"])
    if port_of(config["server"]["listen"]) not in published:
        fail(where, "the gateway's port is not published")
    if published.get(admin_port, "missing") not in ("127.0.0.1", "::1"):
        fail(where, f"the admin port {admin_port} must be published on the host's loopback only")
    if not any(v.get("target") == image["state"] for v in gw.get("volumes", [])):
        fail(where, f"no volume on the journal directory {image['state']}")
    missing = env_vars(config_text) - set((gw.get("environment") or {}).keys())
    if missing:
        fail(where, f"gateway lacks the environment its config needs: {sorted(missing)}")
    drain = seconds(config["server"].get("drain_timeout"), 35)
    if seconds(gw.get("stop_grace_period", "10s"), 10) <= drain:
        fail(where, f"stop_grace_period must exceed drain_timeout ({drain:.0f}s)")
    if gw.get("depends_on", {}).get("chain", {}).get("condition") != "service_healthy":
        fail(where, "gateway must wait for the chain to be healthy (USDC deployed)")
    if "healthcheck" not in chain:
        fail(where, "chain has no healthcheck")
    for name, s in (("api", api), ("gateway", gw)):
        if s.get("user") not in (None, f"{image['uid']}:{image['gid']}", str(image["uid"])):
            fail(where, f"{name} runs as {s.get('user')}, not the image's user")


# === Kubernetes ===

def kubernetes(image, out):
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        where = f"deploy/kubernetes/{path.name}"
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        secrets = {
            n: set((s.get("stringData") or {}).keys()) | set((s.get("data") or {}).keys())
            for n, s in by_kind.get("Secret", {}).items()
        }
        deployments = by_kind.get("Deployment", {})
        if not deployments:
            fail(where, "no Deployment")
        for dname, dep in deployments.items():
            pod = dep["spec"]["template"]["spec"]
            labels = dep["spec"]["template"]["metadata"].get("labels", {})
            containers = pod["containers"]
            gws = [c for c in containers if "x402-gateway" in c["image"]]
            if len(gws) != 1:
                fail(where, f"{dname}: expected one x402-gateway container")
                continue
            c = gws[0]
            ctx = f"{where}: {dname}/{c['name']}"
            args = c.get("args") or []
            cfg_path = args[args.index("--config") + 1] if "--config" in args else IMAGE_CONFIG
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            cfg_mount = mounts.get(str(Path(cfg_path).parent))
            cm_name = cfg_mount and volumes[cfg_mount["name"]].get("configMap", {}).get("name")
            cm = by_kind.get("ConfigMap", {}).get(cm_name)
            if not cm or Path(cfg_path).name not in cm.get("data", {}):
                fail(ctx, f"{cfg_path} does not come from a ConfigMap in this file")
                continue
            text = cm["data"][Path(cfg_path).name]
            config = tomllib.loads(text)
            name = f"k8s-{path.stem}-{dname}"
            # The environment the container gets: only from Secrets.
            env = {}
            for ef in c.get("envFrom", []):
                ref = ef.get("secretRef", {}).get("name")
                if ref is None:
                    fail(ctx, "envFrom other than a Secret")
                elif ref not in secrets:
                    fail(ctx, f"envFrom Secret {ref} is not in this file")
                else:
                    env.update({k: f"https://placeholder.invalid/{k}" for k in secrets[ref]})
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    env[e["name"]] = f"https://placeholder.invalid/{e['name']}"
                elif e["name"] in env_vars(text):
                    fail(ctx, f"${{{e['name']}}} is set in plain text, not from a Secret")
            missing = env_vars(text) - set(env)
            if missing:
                fail(ctx, f"the config needs {sorted(missing)}, which no Secret provides")
            (out / f"{name}.toml").write_text(text)
            (out / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
            # Probes reach the admin listener.
            admin = config.get("admin", {}).get("listen")
            if not admin or host_of(admin) not in ("0.0.0.0", "::"):
                fail(ctx, f"[admin] listen = {admin!r}: the kubelet's probes cannot reach it")
                continue
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
            for probe, want in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
                get = c.get(probe, {}).get("httpGet", {})
                port = ports.get(get.get("port"), get.get("port"))
                if get.get("path") != want or port != port_of(admin):
                    fail(ctx, f"{probe} must GET {want} on the admin port {port_of(admin)}")
            pre = c.get("lifecycle", {}).get("preStop")
            if not pre:
                fail(ctx, "no preStop (the Pod must leave the endpoints before SIGTERM)")
            pause = (pre or {}).get("sleep", {}).get("seconds", 0)
            drain = seconds(config.get("server", {}).get("drain_timeout"), 35)
            grace = pod.get("terminationGracePeriodSeconds", 30)
            if grace < drain + pause:
                fail(ctx, f"terminationGracePeriodSeconds {grace} < drain_timeout {drain:.0f} + preStop {pause}")
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            if sc.get("runAsUser") not in (None, image["uid"]) or not sc.get("runAsNonRoot"):
                fail(ctx, f"must run as non-root (the image's uid {image['uid']})")
            if sc.get("readOnlyRootFilesystem"):
                for d in (image["state"], "/tmp"):
                    if d not in mounts:
                        fail(ctx, f"read-only root without a volume on {d}")
            server_port = port_of(config.get("server", {}).get("listen", "0.0.0.0:8402"))
            # Services send clients to the gateway, never around it.
            for sname, svc in by_kind.get("Service", {}).items():
                if svc["spec"].get("selector", {}).items() <= labels.items():
                    for p in svc["spec"]["ports"]:
                        t = p.get("targetPort")
                        if ports.get(t, t) != server_port:
                            fail(where, f"Service {sname} targets {t}, not the gateway's port {server_port}")
            upstream = config["upstream"]["url"]
            others = [o for o in containers if o is not c]
            if others:
                # A sidecar: the API is in the Pod, on loopback.
                api_ports = {p["containerPort"] for o in others for p in o.get("ports", [])}
                m = re.match(r"https?://127\.0\.0\.1:(\d+)", upstream)
                if not m or int(m.group(1)) not in api_ports:
                    fail(ctx, f"sidecar upstream {upstream} is not a port of the API container")
            for hname, hpa in by_kind.get("HorizontalPodAutoscaler", {}).items():
                ref = hpa["spec"]["scaleTargetRef"]
                if ref["kind"] == "Deployment" and ref["name"] not in deployments:
                    fail(where, f"HPA {hname} scales {ref['name']}, which is not in this file")


def main():
    compose_json, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    image = dockerfile()
    config, text = container_config(image)
    compose(compose_json, image, config, text)
    kubernetes(image, out)
    for name, path in (("gateway", ROOT / "gateway.toml"), ("container", DEPLOY / "container.toml")):
        (out / f"{name}.toml").write_text(path.read_text())
        (out / f"{name}.env").write_text("".join(f"{k}={v}\n" for k, v in DEMO_ENV.items()))
    if problems:
        print("deploy/ is inconsistent:", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"deploy/ consistent (image user {image['uid']}:{image['gid']}, state {image['state']})")


if __name__ == "__main__":
    main()
