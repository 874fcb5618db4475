// End-to-end load-benchmark peer: the official TypeScript facilitator (@x402/core
// x402Facilitator with the @x402/evm exact scheme) as a small HTTP server, settling on a local
// chain with chain id 84532 (anvil; Circle's USDC at the Base Sepolia address). Used by
// benches/load/bench.py behind the @x402/express peer (row e of the end-to-end table).
//
// Wired the way the x402 examples wire it: one viem wallet client (extended with public
// actions) for the signer account, no batching; plus viem's own nonce manager (below).
//
// Environment:
//   RPC_URL          JSON-RPC URL of the chain (default http://127.0.0.1:8545)
//   LISTEN_PORT      port to bind on 127.0.0.1 (default 18402)
//   FACILITATOR_KEY  the signer's private key (0x...); pays the gas
import http from "node:http";
import { createWalletClient, defineChain, http as viemHttp, nonceManager, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";

const rpc = process.env.RPC_URL ?? "http://127.0.0.1:8545";
const port = Number.parseInt(process.env.LISTEN_PORT ?? "18402", 10);
if (!process.env.FACILITATOR_KEY) {
  console.error("FACILITATOR_KEY is not set");
  process.exit(2);
}
const chain = defineChain({
  id: 84532, name: "local base-sepolia", nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpc] } },
});
// viem's nonce manager hands out transaction nonces locally: without it, concurrent settlements
// read the same pending nonce and all but one fail ("nonce too low"; measured: about two of
// three settlements at 64 connections). TS_NONCE_MANAGER=0 runs without it.
const account = privateKeyToAccount(process.env.FACILITATOR_KEY,
  process.env.TS_NONCE_MANAGER === "0" ? {} : { nonceManager });
const wallet = createWalletClient({ account, chain, transport: viemHttp(rpc) }).extend(publicActions);
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, {
  signer: toFacilitatorEvmSigner(Object.assign(wallet, { address: account.address })),
  networks: "eip155:84532",
});

const json = (res, status, value) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
};
const server = http.createServer(async (req, res) => {
  try {
    if (req.method === "GET" && req.url === "/supported") return json(res, 200, facilitator.getSupported());
    let body = "";
    for await (const chunk of req) body += chunk;
    const { paymentPayload, paymentRequirements } = JSON.parse(body);
    if (req.url === "/verify") return json(res, 200, await facilitator.verify(paymentPayload, paymentRequirements));
    if (req.url === "/settle") {
      const settled = await facilitator.settle(paymentPayload, paymentRequirements);
      // Failures only (the benchmark's log): a settlement that did not happen, and why.
      if (!settled.success) console.error(`settle failed: ${settled.errorReason} ${settled.errorMessage ?? ""}`);
      return json(res, 200, settled);
    }
    json(res, 404, { error: "not found" });
  } catch (e) {
    console.error(`${req.url}: ${e?.message ?? e}`);
    json(res, 500, { error: String(e?.message ?? e) });
  }
});
server.keepAliveTimeout = 65_000;
server.headersTimeout = 66_000;
server.listen(port, "127.0.0.1", () => console.log(`ts facilitator on 127.0.0.1:${port} (rpc ${rpc}, signer ${account.address})`));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
  });
}
