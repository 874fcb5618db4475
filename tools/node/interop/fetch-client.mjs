// The official @x402/fetch client paying one URL; prints {status, body, receipt} as JSON.
//   PAYER_KEY=0x... node fetch-client.mjs URL v2|v1
// v1 mode registers only the v1 scheme and hides the PAYMENT-REQUIRED header from the client,
// so it reads the v1 JSON body and pays with X-PAYMENT, as a v1 server would make it.
import { wrapFetchWithPayment, x402Client, decodePaymentResponseHeader } from "@x402/fetch";
import { registerExactEvmScheme } from "@x402/evm/exact/client";
import { ExactEvmSchemeV1 } from "@x402/evm/exact/v1/client";
import { privateKeyToAccount } from "viem/accounts";

const [url, mode = "v2"] = process.argv.slice(2);
const account = privateKeyToAccount(process.env.PAYER_KEY);
const client = new x402Client();
let base = fetch;
if (mode === "v1") {
  client.registerV1("base-sepolia", new ExactEvmSchemeV1(account));
  base = async (input, init) => {
    const r = await fetch(input, init);
    if (r.status !== 402) return r;
    const headers = new Headers(r.headers);
    headers.delete("payment-required");
    return new Response(await r.arrayBuffer(), { status: r.status, headers });
  };
} else {
  registerExactEvmScheme(client, { signer: account });
}
try {
  const resp = await wrapFetchWithPayment(base, client)(url);
  const body = await resp.text();
  const header = resp.headers.get("payment-response") ?? resp.headers.get("x-payment-response");
  console.log(JSON.stringify({ status: resp.status, body, receipt: header ? decodePaymentResponseHeader(header) : null }));
} catch (e) {
  console.log(JSON.stringify({ status: 0, error: String(e?.message ?? e) }));
  process.exitCode = 1;
}
