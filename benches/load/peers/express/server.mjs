// Load-benchmark peer: Express behind the official @x402/express payment middleware.
//
// GET /paid costs $0.001 (USDC on Base Sepolia, eip155:84532); once paid, the request is
// forwarded to GET {UPSTREAM_URL}/paid and the upstream's status, content type and body are
// returned. Verification and settlement go to the HTTP facilitator at FACILITATOR_URL
// (/supported at start-up, /verify and /settle per paid request).
//
// Environment:
//   LISTEN_PORT      port to bind on 127.0.0.1 (default 18502)
//   UPSTREAM_URL     base URL of the upstream (default http://127.0.0.1:18100)
//   FACILITATOR_URL  base URL of the facilitator (default http://127.0.0.1:18200)

import express from "express";
import { paymentMiddleware, x402ResourceServer } from "@x402/express";
import { HTTPFacilitatorClient } from "@x402/core/server";
import { ExactEvmScheme } from "@x402/evm/exact/server";

const LISTEN_HOST = "127.0.0.1";
const LISTEN_PORT = Number.parseInt(process.env.LISTEN_PORT ?? "18502", 10);
const UPSTREAM_URL = (process.env.UPSTREAM_URL ?? "http://127.0.0.1:18100").replace(/\/+$/, "");
const FACILITATOR_URL = process.env.FACILITATOR_URL ?? "http://127.0.0.1:18200";

const NETWORK = "eip155:84532";
const PAY_TO = "0x90F79bf6EB2c4f870365E785982E1f101E93b906";
const UPSTREAM_PAID = `${UPSTREAM_URL}/paid`;

if (!Number.isInteger(LISTEN_PORT) || LISTEN_PORT <= 0 || LISTEN_PORT > 65535) {
  console.error(`invalid LISTEN_PORT: ${process.env.LISTEN_PORT}`);
  process.exit(2);
}

const facilitator = new HTTPFacilitatorClient({ url: FACILITATOR_URL });
const resourceServer = new x402ResourceServer(facilitator).register(NETWORK, new ExactEvmScheme());

const routes = {
  "GET /paid": {
    accepts: {
      scheme: "exact",
      price: "$0.001",
      network: NETWORK,
      payTo: PAY_TO,
      // maxTimeoutSeconds left to the library default (300).
    },
    description: "x402 load benchmark resource",
    mimeType: "application/json",
  },
};

const app = express();
app.disable("x-powered-by");
app.disable("etag");

// Fetches /supported from the facilitator in the background at start-up (the library default).
app.use(paymentMiddleware(routes, resourceServer));

// Node's global fetch (undici) keeps upstream connections alive and pools them.
app.get("/paid", async (_req, res) => {
  let upstream;
  let body;
  try {
    upstream = await fetch(UPSTREAM_PAID);
    body = Buffer.from(await upstream.arrayBuffer());
  } catch {
    // A status >= 400 makes the middleware skip settlement.
    res.status(502).type("text/plain").end("bad gateway");
    return;
  }
  res.status(upstream.status);
  const contentType = upstream.headers.get("content-type");
  if (contentType) res.setHeader("Content-Type", contentType);
  res.end(body);
});

const server = app.listen(LISTEN_PORT, LISTEN_HOST, () => {
  console.log(
    `x402 express peer listening on http://${LISTEN_HOST}:${LISTEN_PORT} ` +
      `(upstream ${UPSTREAM_URL}, facilitator ${FACILITATOR_URL})`,
  );
});
server.on("error", (err) => {
  console.error(err);
  process.exit(1);
});
// Idle client connections outlive Node's 5 s default so load generators' pools stay warm.
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
