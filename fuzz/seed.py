#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the test fixtures and the shipped configs.

Run from the repository root: `python3 fuzz/seed.py`. The seeds are committed (fuzz/corpus/);
`cargo fuzz run` grows them, and the test command replays whatever is committed.
"""
import base64
import hashlib
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
CORPUS = ROOT / "fuzz" / "corpus"
FIX = ROOT / "tests" / "fixtures"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


def b64(obj):
    return base64.b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


# --- payment_header: the spec's payloads, and spellings clients really send ---
v2 = json.loads(base64.b64decode((FIX / "v2_payment_signature.b64").read_text().strip()))
v1 = json.loads(base64.b64decode((FIX / "v1_x_payment.b64").read_text().strip()))
for f in ["v2_payment_signature.b64", "v1_x_payment.b64"]:
    put("payment_header", (FIX / f).read_text().strip())
hexed = json.loads(json.dumps(v2))
hexed["payload"]["authorization"]["value"] = "0x2710"  # crates.io x402-reqwest
put("payment_header", b64(hexed))
numbers = json.loads(json.dumps(v1))
numbers["payload"]["authorization"]["validBefore"] = 1740672154
put("payment_header", b64(numbers))
unpadded = b64(v2).rstrip("=")
put("payment_header", unpadded)
stringy = json.loads(json.dumps(v2))
stringy["x402Version"] = "2"
put("payment_header", b64(stringy))
smart = json.loads(json.dumps(v2))
smart["payload"]["signature"] = "0x" + "ab" * 200
put("payment_header", b64(smart))
for junk in ["", "=", "e30=", "bnVsbA==", "W10=", "eyJ4NDAyVmVyc2lvbiI6M30="]:
    put("payment_header", junk)

# --- route_lookup: the spellings routers read differently ---
for t in [
    "/weather/paris", "/weather/paris?units=metric", "/WEATHER/Paris/", "//weather//paris",
    "/%77eather/paris", "/weather%2Fparis", "\\weather\\paris", "/health/../weather/paris",
    "/weather/./paris", "/health%zz", "/weather/%", "/%00admin", "/premium;x=1/a",
    "/premium;/a", "/health/..;/premium/a", "/premium%3bx/a", "/pre%C4%B1mium/a",
    "/%E2%84%AAey", "/a/x/b", "/a/x/b/c/d", "/a//b", "/public/../premium/x", "/premium",
    "/", "", "?", "#", "/weather/paris#frag", "/weather/a%2Fb", "/weather/a%5Cb",
]:
    put("route_lookup", t)

# --- config: the shipped files and the edge cases the tests write ---
for f in ["gateway.toml", "benches/load/gateway.toml"]:
    put("config", (ROOT / f).read_text())
put("config", """
[upstream]
url = "https://localhost:8443"
tls_server_name = "api.internal"
host_header = "client"
[facilitator]
embedded = true
rpc = { "eip155:84532" = "http://127.0.0.1:8545" }
signer_keys = ["${KEY}"]
[payment]
pay_to = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C"
network = "base-sepolia"
[limits]
max_request_body = "1MiB"
challenge_rate = "20/s"
failed_payment_rate = "off"
[server]
unlisted_methods = "charge"
trusted_proxies = ["10.0.0.0/8", "fd00::/8"]
[[route]]
path = "/ws/*"
websocket = true
price = "$0.001"
[[route]]
path = "/x/**"
  [[route.accept]]
  price = "1000"
  [[route.accept]]
  network = "base"
  asset = { address = "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913", decimals = 6, name = "USD Coin", version = "2" }
  price = "0.001 USDC"
""")
put("config", "[upstream]\nurl = 3\n[[route]]\npath = \"weather\"\nprice = 0.001\n")

# --- facilitator_response: answers as facilitators write them ---
def http(status, body, extra=""):
    return f"HTTP/1.1 {status} X\r\ncontent-length: {len(body)}\r\n{extra}\r\n{body}"

for status, body in [
    (200, '{"isValid":true,"payer":"0x857b06519E91e3A54538791bDbb0E22373e36b66"}'),
    (400, '{"isValid":false,"invalidReason":"invalid_exact_evm_insufficient_balance"}'),
    (500, '{"isValid":false,"invalidReason":"invalid_exact_evm_signature","payer":null}'),
    (200, '{"success":true,"transaction":"0xab","network":"eip155:84532"}'),
    (200, '{"success":false,"errorReason":"settlement_pending","transaction":"0xab"}'),
    (200, '{"transaction":"0xab"}'),
    (502, "<html>bad gateway</html>"),
]:
    put("facilitator_response", http(status, body))
put("facilitator_response", "HTTP/1.1 100 Continue\r\n\r\n" + http(200, '{"success":true,"transaction":"0x1"}'))
put("facilitator_response", "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{\"isV\r\n0\r\n\r\n")
put("facilitator_response", "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{\"isValid\":true}")
put("facilitator_response", "HTTP/1.1 204 No Content\r\nkeep-alive: timeout=5\r\n\r\n")

# --- facilitator_request: /verify and /settle bodies, v1 and v2 ---
req2 = dict(v2["accepted"])
put("facilitator_request", json.dumps({"x402Version": 2, "paymentPayload": v2, "paymentRequirements": req2}))
req1 = {"scheme": "exact", "network": "base-sepolia", "maxAmountRequired": "10000",
        "resource": "https://api.example.com/premium-data", "description": "", "mimeType": "",
        "payTo": v2["accepted"]["payTo"], "maxTimeoutSeconds": 60,
        "asset": v2["accepted"]["asset"], "extra": {"name": "USDC", "version": "2"}}
put("facilitator_request", json.dumps({"x402Version": 1, "paymentPayload": v1, "paymentRequirements": req1}))
bad = json.loads(json.dumps(req2))
del bad["extra"]
put("facilitator_request", json.dumps({"x402Version": 2, "paymentPayload": v2, "paymentRequirements": bad}))
put("facilitator_request", "{}")
