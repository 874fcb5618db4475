"""The official x402 Python client (x402HttpxClient) paying one URL; prints {status, body, receipt}.

    PAYER_KEY=0x... python py_client.py URL
"""
import asyncio
import json
import os
import sys

from eth_account import Account
from x402 import x402Client
from x402.http import decode_payment_response_header
from x402.http.clients import x402HttpxClient
from x402.mechanisms.evm import EthAccountSigner
from x402.mechanisms.evm.exact.register import register_exact_evm_client


async def main(url: str) -> int:
    client = x402Client()
    register_exact_evm_client(client, EthAccountSigner(Account.from_key(os.environ["PAYER_KEY"])))
    async with x402HttpxClient(client, timeout=60) as http:
        r = await http.get(url)
    header = r.headers.get("payment-response") or r.headers.get("x-payment-response")
    receipt = None
    if header:
        decoded = decode_payment_response_header(header)
        receipt = decoded.model_dump(by_alias=True, exclude_none=True) if hasattr(decoded, "model_dump") else decoded
    print(json.dumps({"status": r.status_code, "body": r.text, "receipt": receipt}))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
