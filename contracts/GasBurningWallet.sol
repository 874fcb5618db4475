// SPDX-License-Identifier: MIT
//
// GasBurningWallet: a hostile payer for the batch tests (never deployed anywhere real).
//
// A smart-contract wallet whose EIP-1271 `isValidSignature` accepts any signature, after burning
// all but a little of the gas it is given. Paying with it through a batch (Multicall3's
// `aggregate3`, where every call gets what the calls before it left) starves every call after
// its own: the test shows that the other payers' settlements still succeed.
pragma solidity ^0.8.20;

contract GasBurningWallet {
    function isValidSignature(bytes32, bytes calldata) external view returns (bytes4) {
        uint256 x;
        while (gasleft() > 40_000) {
            x = uint256(keccak256(abi.encode(x)));
        }
        return x == type(uint256).max ? bytes4(0) : bytes4(0x1626ba7e);
    }
}
