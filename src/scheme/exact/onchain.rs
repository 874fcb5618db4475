//! The `exact` scheme's calls on chain: what a facilitator reads before settling, the
//! settlement call itself, and what the token's reverts mean.
//!
//! Owns: the token's ABI as this scheme uses it (`authorizationState`, `balanceOf`, both
//! `transferWithAuthorization` overloads), [`transfer_input`] (the overload picked by the
//! signature's length: `v, r, s` for 65 bytes, `bytes` for smart wallets) and [`revert_reason`]
//! (a revert's text as a reference reason).

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::SolCall;

use super::wire::Payload;
use crate::protocol::ErrorReason;

alloy::sol! {
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool);
    function balanceOf(address account) external view returns (uint256);
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external;
    function transferWithAuthorization(address from, address to, uint256 value, uint256 validAfter, uint256 validBefore, bytes32 nonce, bytes signature) external;
}

/// The call data of `authorizationState(authorizer, nonce)`.
pub fn authorization_state_input(authorizer: Address, nonce: B256) -> Vec<u8> {
    authorizationStateCall { authorizer, nonce }.abi_encode()
}

/// Reads `authorizationState`'s answer: whether the authorization is used (or cancelled).
///
/// # Errors
/// An answer that is not a boolean.
pub fn decode_authorization_state(out: &[u8]) -> Result<bool, String> {
    authorizationStateCall::abi_decode_returns(out).map_err(|e| e.to_string())
}

/// The call data of `balanceOf(account)`.
pub fn balance_of_input(account: Address) -> Vec<u8> {
    balanceOfCall { account }.abi_encode()
}

/// Reads `balanceOf`'s answer.
///
/// # Errors
/// An answer that is not a `uint256`.
pub fn decode_balance(out: &[u8]) -> Result<U256, String> {
    balanceOfCall::abi_decode_returns(out).map_err(|e| e.to_string())
}

/// The call data of `transferWithAuthorization`, picking the overload by signature length.
pub fn transfer_input(p: &Payload) -> Vec<u8> {
    let a = &p.authorization;
    let sig = &p.signature;
    let (valid_after, valid_before) = (U256::from(a.valid_after), U256::from(a.valid_before));
    if sig.len() == 65 {
        transferWithAuthorization_0Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            v: sig[64],
            r: B256::from_slice(&sig[..32]),
            s: B256::from_slice(&sig[32..64]),
        }
        .abi_encode()
    } else {
        transferWithAuthorization_1Call {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: valid_after,
            validBefore: valid_before,
            nonce: a.nonce,
            signature: sig.clone(),
        }
        .abi_encode()
    }
}

/// Maps a revert or RPC error text of `transferWithAuthorization` to a reference reason.
pub fn revert_reason(message: &str) -> ErrorReason {
    let m = message.to_ascii_lowercase();
    if m.contains("authorization is used") || m.contains("used or canceled") {
        ErrorReason::NonceAlreadyUsed
    } else if m.contains("exceeds balance") {
        ErrorReason::InsufficientBalance
    } else if m.contains("invalid signature") {
        ErrorReason::InvalidSignature
    } else if m.contains("not yet valid") {
        ErrorReason::ValidAfter
    } else if m.contains("authorization is expired") {
        ErrorReason::ValidBefore
    } else {
        ErrorReason::SimulationFailed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverts_map_to_reference_reasons() {
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: authorization is used or canceled"),
            ErrorReason::NonceAlreadyUsed
        );
        assert_eq!(
            revert_reason("execution reverted: ERC20: transfer amount exceeds balance"),
            ErrorReason::InsufficientBalance
        );
        assert_eq!(
            revert_reason("execution reverted: FiatTokenV2: invalid signature"),
            ErrorReason::InvalidSignature
        );
        assert_eq!(
            revert_reason("something else"),
            ErrorReason::SimulationFailed
        );
    }
}
