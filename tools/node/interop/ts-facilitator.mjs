// The official TypeScript facilitator (@x402/core x402Facilitator + @x402/evm exact scheme) as a
// small HTTP server, used as the third-party reference in the interop tests.
//   FACILITATOR_KEY=0x... node ts-facilitator.mjs RPC_URL PORT
import http from "node:http";
import { createWalletClient, defineChain, http as viemHttp, publicActions } from "viem";
import { privateKeyToAccount } from "viem/accounts";
import { x402Facilitator } from "@x402/core/facilitator";
import { registerExactEvmScheme } from "@x402/evm/exact/facilitator";
import { toFacilitatorEvmSigner } from "@x402/evm";

const [rpc, port] = process.argv.slice(2);
const chain = defineChain({
  id: 84532, name: "local base-sepolia", nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
  rpcUrls: { default: { http: [rpc] } },
});
const account = privateKeyToAccount(process.env.FACILITATOR_KEY);
const wallet = createWalletClient({ account, chain, transport: viemHttp(rpc) }).extend(publicActions);
const facilitator = new x402Facilitator();
registerExactEvmScheme(facilitator, { signer: toFacilitatorEvmSigner(Object.assign(wallet, { address: account.address })), networks: "eip155:84532" });

const json = (res, status, value) => {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v)));
};
http.createServer(async (req, res) => {
  try {
    if (req.method === "GET" && req.url === "/supported") return json(res, 200, facilitator.getSupported());
    let body = "";
    for await (const chunk of req) body += chunk;
    const { paymentPayload, paymentRequirements } = JSON.parse(body);
    if (req.url === "/verify") return json(res, 200, await facilitator.verify(paymentPayload, paymentRequirements));
    if (req.url === "/settle") return json(res, 200, await facilitator.settle(paymentPayload, paymentRequirements));
    json(res, 404, { error: "not found" });
  } catch (e) {
    json(res, 500, { error: String(e?.message ?? e) });
  }
}).listen(Number(port), "127.0.0.1", () => console.log(`ts facilitator on ${port}`));
