//! Recipient addresses (`pay_to`) that cannot be what the operator meant: placeholders copied
//! from examples, and development accounts whose private keys are public.
//!
//! Owns: [`placeholder`] (refused on every network) and [`public_dev_account`] (refused where
//! the money is real, on mainnets).

use alloy::primitives::Address;

use crate::protocol::Network;

/// The `payTo` of the x402 documentation's and reference SDKs' examples: payments to it go to
/// a stranger.
const DOCS_EXAMPLE: &str = "209693bc6afc0c5328ba36faf03c514ef312287c";

/// The ten accounts of the standard development mnemonic (`test test … junk`) that anvil and
/// hardhat fund by default. Their private keys are printed by both tools, so anyone can move
/// what is paid to them.
const DEV_ACCOUNTS: [&str; 10] = [
    "f39fd6e51aad88f6f4ce6ab8827279cfffb92266",
    "70997970c51812dc3a010c7d01b50e0d17dc79c8",
    "3c44cdddb6a900fa2b585dd299e03d12fa4293bc",
    "90f79bf6eb2c4f870365e785982e1f101e93b906",
    "15d34aaf54267db7d7c367839aaf71a00a2c6a65",
    "9965507d1a55bcc2695c58ba16fb37d819b0a4dc",
    "976ea74026e726554db657fa54763abd0c3a0aa9",
    "14dc79964da2c08b23698b3d3cc7ca32193d9955",
    "23618e81e3f5cdf7f54c3d65f7fbc0abf5b21e8f",
    "a0ee7a142d267c1f36714e4a8f75612f20a79720",
];

/// Chain ids of the built-in networks whose tokens have real value.
const MAINNETS: &[u64] = &[
    1, 8453, 43114, 137, 1329, 2741, 4689, 3338, 1514, 41923, 4326, 143, 988,
];

/// Why `addr` is obviously a placeholder, if it is: the zero address, a burn address such as
/// `0x…dEaD` (at most 8 non-zero hex digits), a repeating pattern (`0x1111…`,
/// `0x1234567890abcdef…`, `0xdeadbeef…`), or the x402 documentation's example `payTo`.
pub(super) fn placeholder(addr: &Address) -> Option<&'static str> {
    let hex = alloy::hex::encode(addr.as_slice());
    let b = hex.as_bytes();
    if addr.is_zero() {
        return Some("the zero address would burn every payment");
    }
    if hex == DOCS_EXAMPLE {
        return Some("the example payTo of the x402 documentation: payments would go to a stranger; use your own address");
    }
    if b.iter().filter(|&&c| c == b'0').count() >= 32 {
        return Some("a burn or placeholder address (almost all zeros): payments would be lost; use your own address");
    }
    // A period of at most 16 hex digits: 40 random digits repeat like that with probability
    // 16^-24, so a real address is never refused.
    if (1..=16).any(|p| b.iter().skip(p).zip(b).all(|(x, y)| x == y)) {
        return Some(
            "a placeholder (a repeating pattern of hex digits), not a wallet: use your own address",
        );
    }
    None
}

/// The index of `addr` among the public anvil/hardhat development accounts, when `network` is
/// a mainnet (on a test network or a local chain they are the normal recipients).
pub(super) fn public_dev_account(addr: &Address, network: &Network) -> Option<usize> {
    if !MAINNETS.contains(&network.chain_id()) {
        return None;
    }
    let hex = alloy::hex::encode(addr.as_slice());
    DEV_ACCOUNTS.iter().position(|a| *a == hex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::signers::local::PrivateKeySigner;

    fn addr(s: &str) -> Address {
        s.parse().unwrap()
    }

    #[test]
    fn obvious_placeholders_are_named() {
        for a in [
            "0x0000000000000000000000000000000000000000",
            "0x000000000000000000000000000000000000dEaD",
            "0x0000000000000000000000000000000000000001",
            "0x1111111111111111111111111111111111111111",
            "0xffffffffffffffffffffffffffffffffffffffff",
            "0x1234567890123456789012345678901234567890",
            "0x1234567890abcdef1234567890abcdef12345678",
            "0x0123456789abcdef0123456789abcdef01234567",
            "0xdeadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
            "0xabcdefabcdefabcdefabcdefabcdefabcdefabcd",
            "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
        ] {
            assert!(placeholder(&addr(a)).is_some(), "{a}");
        }
    }

    #[test]
    fn real_looking_addresses_pass() {
        for a in [
            "0x90F79bf6EB2c4f870365E785982E1f101E93b906",
            "0x833589fCD6eDb6E08f4c7C32D4f71b54bdA02913",
            // A vanity address with many leading zeros (Seaport 1.5).
            "0x00000000000000ADc04C56Bf30aC9d3c0aAF14dC",
        ] {
            assert_eq!(placeholder(&addr(a)), None, "{a}");
        }
    }

    #[test]
    fn the_dev_accounts_are_those_of_the_public_keys_and_refused_only_on_mainnets() {
        // Keys 0–3 of the standard mnemonic, as printed by anvil and hardhat.
        for (i, key) in [
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
            "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
            "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
            "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
        ]
        .into_iter()
        .enumerate()
        {
            let a = key.parse::<PrivateKeySigner>().unwrap().address();
            let base = Network::parse("base").unwrap();
            assert_eq!(public_dev_account(&a, &base), Some(i));
            let eth = Network::parse("eip155:1").unwrap();
            assert_eq!(public_dev_account(&a, &eth), Some(i));
            for testnet in ["base-sepolia", "eip155:31337", "sepolia"] {
                assert_eq!(
                    public_dev_account(&a, &Network::parse(testnet).unwrap()),
                    None
                );
            }
        }
        // Every mainnet id is in the built-in table.
        for id in MAINNETS {
            assert!(Network::from_chain_id(*id).v1_name().is_some(), "{id}");
        }
    }
}
