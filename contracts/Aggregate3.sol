// SPDX-License-Identifier: MIT
//
// Aggregate3: the batch contract of the local chain.
//
// The embedded facilitator settles many payments in one transaction by calling
// `aggregate3((address,bool,bytes)[])` at the canonical Multicall3 address
// (0xcA11bde05977b3631167028862bE2a173976CA11), where the chains we target have Multicall3
// deployed. A fresh anvil has nothing there, so `tools/node/devchain.mjs setup` compiles this
// contract and places its runtime code at that address. It is our own, minimal code with the
// same ABI (the part of it we call): each call runs in order; a failed call is recorded when
// its `allowFailure` is true and reverts the whole batch (with the call's own revert data)
// otherwise. Ether sent along is not forwarded.
pragma solidity ^0.8.20;

contract Aggregate3 {
    struct Call3 {
        address target;
        bool allowFailure;
        bytes callData;
    }

    struct Result {
        bool success;
        bytes returnData;
    }

    function aggregate3(Call3[] calldata calls) external payable returns (Result[] memory results) {
        uint256 n = calls.length;
        results = new Result[](n);
        for (uint256 i = 0; i < n; ++i) {
            Call3 calldata c = calls[i];
            (bool ok, bytes memory data) = c.target.call(c.callData);
            if (!ok && !c.allowFailure) {
                assembly ("memory-safe") {
                    revert(add(data, 32), mload(data))
                }
            }
            results[i] = Result(ok, data);
        }
    }
}
