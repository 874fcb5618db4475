//! EIP-3009 `TransferWithAuthorization` typed data and EIP-712 hashing (data only, no IO).
//!
//! Owns: the typed-data struct, domain separators, the signing digest and ECDSA recovery with
//! the same acceptance rules as Circle's FiatToken (`v` ∈ {27, 28}, low `s`).
//! Does not own: deciding what a valid payment is (`verify::local`).

use alloy::primitives::{keccak256, Address, Signature, B256, U256};
use alloy::sol_types::{Eip712Domain, SolStruct};

use super::wire::Authorization;

alloy::sol! {
    /// EIP-3009 typed data, field order and types exactly as the standard.
    #[derive(Debug)]
    struct TransferWithAuthorization {
        address from;
        address to;
        uint256 value;
        uint256 validAfter;
        uint256 validBefore;
        bytes32 nonce;
    }
}

/// Half the secp256k1 group order: signatures with a larger `s` are rejected on chain (EIP-2).
const SECP256K1_HALF_N: U256 = U256::from_limbs([
    0xdfe92f46681b20a0,
    0x5d576e7357a4501d,
    0xffffffffffffffff,
    0x7fffffffffffffff,
]);

/// The EIP-712 domain separator of a token: `name`/`version` from the requirement's `extra`,
/// the chain id and the token address.
pub fn domain_separator(name: &str, version: &str, chain_id: u64, token: Address) -> B256 {
    Eip712Domain::new(
        Some(name.to_owned().into()),
        Some(version.to_owned().into()),
        Some(U256::from(chain_id)),
        Some(token),
        None,
    )
    .separator()
}

impl From<&Authorization> for TransferWithAuthorization {
    fn from(a: &Authorization) -> Self {
        TransferWithAuthorization {
            from: a.from,
            to: a.to,
            value: a.value,
            validAfter: U256::from(a.valid_after),
            validBefore: U256::from(a.valid_before),
            nonce: a.nonce,
        }
    }
}

/// The digest a payer signs: `keccak256(0x1901 ‖ domainSeparator ‖ hashStruct(message))`.
pub fn signing_hash(domain_separator: &B256, auth: &Authorization) -> B256 {
    let struct_hash = TransferWithAuthorization::from(auth).eip712_hash_struct();
    let mut buf = [0u8; 66];
    buf[0] = 0x19;
    buf[1] = 0x01;
    buf[2..34].copy_from_slice(domain_separator.as_slice());
    buf[34..66].copy_from_slice(struct_hash.as_slice());
    keccak256(buf)
}

/// Recovers the signer of a 65-byte `r ‖ s ‖ v` signature over `digest`, with the rules the
/// USDC contract applies: `v` must be 27 or 28 and `s` in the lower half of the curve order.
/// Returns `None` for anything the chain would refuse.
pub fn recover_signer(digest: &B256, signature: &[u8]) -> Option<Address> {
    let bytes: &[u8; 65] = signature.try_into().ok()?;
    if bytes[64] != 27 && bytes[64] != 28 {
        return None;
    }
    let sig = Signature::from_raw_array(bytes).ok()?;
    if sig.s() > SECP256K1_HALF_N {
        return None;
    }
    sig.recover_address_from_prehash(digest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{address, b256, hex};

    // Vectors from x402-protocol.md §8.1 and §8.3.
    fn vector_auth(from: Address) -> Authorization {
        Authorization {
            from,
            to: address!("209693Bc6afc0C5328bA36FaF03C514EF312287C"),
            value: U256::from(10000u64),
            valid_after: 1740672089,
            valid_before: 1740672154,
            nonce: b256!("f3746613c2d920b5fdabc0856f2aeb2d4f88ee6037b8cc5d04a71a4462f13480"),
        }
    }
    const BASE_SEPOLIA_USDC: Address = address!("036CbD53842c5426634e7929541eC2318f3dCF7e");
    const BASE_USDC: Address = address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913");
    const ANVIL0: Address = address!("f39Fd6e51aad88F6F4ce6aB8827279cffFb92266");

    #[test]
    fn typehash_matches_the_standard() {
        assert_eq!(
            TransferWithAuthorization::eip712_type_hash(&TransferWithAuthorization::from(
                &vector_auth(ANVIL0)
            )),
            b256!("7c7c6cdb67a18743f49ec6fa9b35f50d52ed05cbed4cc592e13b44501c1a2267")
        );
    }

    #[test]
    fn domain_separators_match_vectors() {
        assert_eq!(
            domain_separator("USDC", "2", 84532, BASE_SEPOLIA_USDC),
            b256!("71f17a3b2ff373b803d70a5a07c046c1a2bc8e89c09ef722fcb047abe94c9818")
        );
        assert_eq!(
            domain_separator("USD Coin", "2", 8453, BASE_USDC),
            b256!("02fa7265e7c5d81118673727957699e4d68f74cd74b7db77da710fe8a2c7834f")
        );
    }

    #[test]
    fn struct_hash_and_digests_match_vectors() {
        let auth = vector_auth(ANVIL0);
        assert_eq!(
            TransferWithAuthorization::from(&auth).eip712_hash_struct(),
            b256!("b2438b1b8298f6129feb7c6a96cb5bee12d7e8ba27c7c27cde803071ebdc42e8")
        );
        let sep = domain_separator("USDC", "2", 84532, BASE_SEPOLIA_USDC);
        assert_eq!(
            signing_hash(&sep, &auth),
            b256!("50708d3bf7216e1aeabe7bf22081b9f36c7c287530f92510318f13a03d89dc86")
        );
        let sep = domain_separator("USD Coin", "2", 8453, BASE_USDC);
        assert_eq!(
            signing_hash(&sep, &auth),
            b256!("7e9613714edd92ad20fa5b252ec168245031911a3438dd20225f083b6a688f8a")
        );
    }

    #[test]
    fn computed_signatures_recover_to_anvil_account_0() {
        let auth = vector_auth(ANVIL0);
        for (sep, sig) in [
            (
                domain_separator("USDC", "2", 84532, BASE_SEPOLIA_USDC),
                "dc53a4a579de989368a0fae2ef2172ff2f474b4297013f865d171239f17ef4c3157b4b4030f1bebc53d55ace15c2377dff501a60e1e56c291f1000d6e78f082f1b",
            ),
            (
                domain_separator("USD Coin", "2", 8453, BASE_USDC),
                "a70a7d235fd4218a3ed6625525892efed6fd1ac6a193ba612bb9da921620bce74885a8f7f56d2dc2f46005b7d6a089ae3469455a911004b6c4a6ab600677f56c1c",
            ),
        ] {
            let sig = hex::decode(sig).unwrap();
            assert_eq!(recover_signer(&signing_hash(&sep, &auth), &sig), Some(ANVIL0));
        }
    }

    #[test]
    fn spec_example_signature_recovers_to_its_from() {
        let from = address!("857b06519E91e3A54538791bDbb0E22373e36b66");
        let auth = vector_auth(from);
        let sep = domain_separator("USDC", "2", 84532, BASE_SEPOLIA_USDC);
        let digest = signing_hash(&sep, &auth);
        assert_eq!(
            digest,
            b256!("f256992871671abcb27ff92885a7afa46218724e5fc0bac35d050115aa1d22e6")
        );
        let sig = hex::decode(crate::scheme::tests::SPEC_SIGNATURE).unwrap();
        assert_eq!(recover_signer(&digest, &sig), Some(from));
    }

    #[test]
    fn rejects_signatures_the_chain_would_refuse() {
        let auth = vector_auth(ANVIL0);
        let sep = domain_separator("USDC", "2", 84532, BASE_SEPOLIA_USDC);
        let digest = signing_hash(&sep, &auth);
        let good = hex::decode("dc53a4a579de989368a0fae2ef2172ff2f474b4297013f865d171239f17ef4c3157b4b4030f1bebc53d55ace15c2377dff501a60e1e56c291f1000d6e78f082f1b").unwrap();
        // v = 0/1 form: USDC's ECRecover requires 27/28.
        let mut v01 = good.clone();
        v01[64] -= 27;
        assert_eq!(recover_signer(&digest, &v01), None);
        // High-s twin of a valid signature (s' = n - s, v flipped) recovers the same key off chain
        // but is rejected on chain.
        let n = U256::from_str_radix(
            "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",
            16,
        )
        .unwrap();
        let s = U256::from_be_slice(&good[32..64]);
        let mut high = good.clone();
        high[32..64].copy_from_slice(&(n - s).to_be_bytes::<32>());
        high[64] = if good[64] == 27 { 28 } else { 27 };
        assert_eq!(recover_signer(&digest, &high), None);
        // Wrong length.
        assert_eq!(recover_signer(&digest, &good[..64]), None);
        // A different message recovers to someone else.
        let mut other = auth;
        other.value = U256::from(10001u64);
        assert_ne!(
            recover_signer(&signing_hash(&sep, &other), &good),
            Some(ANVIL0)
        );
    }
}
