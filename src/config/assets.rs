//! The built-in asset table: USDC (and USDT0 on Stable) per EVM chain, with the EIP-712 domain
//! each token really uses on chain.
//!
//! Owns: symbol → (address, decimals, EIP-712 name and version) per chain id.
//! Sources: the x402 v2 default asset table and the v1 legacy USDC table (x402-protocol.md §7.2).
//! Names differ per chain and must equal the token's on-chain `name()`: Base says "USD Coin",
//! Base Sepolia says "USDC". A wrong name makes every signature silently invalid.

use alloy::primitives::{address, Address};

/// A token a route can be priced in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Asset {
    /// Short symbol for display and `"0.5 USDC"` prices.
    pub symbol: String,
    /// Token contract.
    pub address: Address,
    /// Decimals of one whole token.
    pub decimals: u8,
    /// EIP-712 domain name.
    pub name: String,
    /// EIP-712 domain version.
    pub version: String,
    /// Whether one whole token is one US dollar, so that `"$0.01"` prices are allowed.
    pub usd_stable: bool,
}

struct BuiltIn {
    chain_id: u64,
    symbol: &'static str,
    address: Address,
    name: &'static str,
    version: &'static str,
}

const fn usdc(chain_id: u64, address: Address, name: &'static str) -> BuiltIn {
    BuiltIn {
        chain_id,
        symbol: "USDC",
        address,
        name,
        version: "2",
    }
}

const BUILT_IN: &[BuiltIn] = &[
    usdc(
        8453,
        address!("833589fCD6eDb6E08f4c7C32D4f71b54bdA02913"),
        "USD Coin",
    ),
    usdc(
        84532,
        address!("036CbD53842c5426634e7929541eC2318f3dCF7e"),
        "USDC",
    ),
    usdc(
        137,
        address!("3c499c542cEF5E3811e1192ce70d8cC03d5c3359"),
        "USD Coin",
    ),
    usdc(
        80002,
        address!("41E94Eb019C0762f9Bfcf9Fb1E58725BfB0e7582"),
        "USDC",
    ),
    usdc(
        42161,
        address!("af88d065e77c8cC2239327C5EDb3A432268e5831"),
        "USD Coin",
    ),
    usdc(
        421614,
        address!("75faf114eafb1BDbe2F0316DF893fd58CE46AA4d"),
        "USD Coin",
    ),
    usdc(
        43114,
        address!("B97EF9Ef8734C71904D8002F8b6Bc66Dd9c48a6E"),
        "USD Coin",
    ),
    usdc(
        43113,
        address!("5425890298aed601595a70AB815c96711a31Bc65"),
        "USD Coin",
    ),
    usdc(
        1,
        address!("A0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"),
        "USD Coin",
    ),
    usdc(
        143,
        address!("754704Bc059F8C67012fEd69BC8A327a5aafb603"),
        "USDC",
    ),
    usdc(
        1328,
        address!("4fcf1784b31630811181f670aea7a7bef803eaed"),
        "USDC",
    ),
    usdc(
        1329,
        address!("e15fc38f6d8c56af07bbcbe3baf5708a2bf42392"),
        "USDC",
    ),
    usdc(
        4689,
        address!("cdf79194c6c285077a58da47641d4dbe51f63542"),
        "Bridged USDC",
    ),
    usdc(
        3338,
        address!("bbA60da06c2c5424f03f7434542280FCAd453d10"),
        "USDC",
    ),
    usdc(
        2741,
        address!("84a71ccd554cc1b02749b35d22f684cc8ec987e1"),
        "Bridged USDC",
    ),
    usdc(
        11124,
        address!("e4C7fBB0a626ed208021ccabA6Be1566905E2dFc"),
        "Bridged USDC",
    ),
    usdc(
        1514,
        address!("F1815bd50389c46847f0Bda824eC8da914045D14"),
        "Bridged USDC",
    ),
    usdc(
        41923,
        address!("12a272A581feE5577A5dFa371afEB4b2F3a8C2F8"),
        "Bridged USDC (Stargate)",
    ),
    usdc(
        324705682,
        address!("2e08028E3C4c2356572E096d8EF835cD5C6030bD"),
        "Bridged USDC (SKALE Bridge)",
    ),
    BuiltIn {
        chain_id: 988,
        symbol: "USDT0",
        address: address!("779Ded0c9e1022225f8E0630b35a9b54bE713736"),
        name: "USDT0",
        version: "1",
    },
    BuiltIn {
        chain_id: 2201,
        symbol: "USDT0",
        address: address!("78Cf24370174180738C5B8E352B6D14c83a6c9A9"),
        name: "USDT0",
        version: "1",
    },
];

impl BuiltIn {
    fn asset(&self) -> Asset {
        Asset {
            symbol: self.symbol.to_owned(),
            address: self.address,
            decimals: 6,
            name: self.name.to_owned(),
            version: self.version.to_owned(),
            usd_stable: true,
        }
    }
}

/// The built-in asset with this symbol (case-insensitive) on a chain.
pub fn by_symbol(chain_id: u64, symbol: &str) -> Option<Asset> {
    BUILT_IN
        .iter()
        .find(|b| b.chain_id == chain_id && b.symbol.eq_ignore_ascii_case(symbol))
        .map(BuiltIn::asset)
}

/// The built-in asset at this address on a chain.
pub fn by_address(chain_id: u64, address: Address) -> Option<Asset> {
    BUILT_IN
        .iter()
        .find(|b| b.chain_id == chain_id && b.address == address)
        .map(BuiltIn::asset)
}

/// The symbols known on a chain, for error messages.
pub fn symbols_on(chain_id: u64) -> Vec<&'static str> {
    BUILT_IN
        .iter()
        .filter(|b| b.chain_id == chain_id)
        .map(|b| b.symbol)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_and_base_sepolia_use_different_domain_names() {
        assert_eq!(by_symbol(8453, "usdc").unwrap().name, "USD Coin");
        assert_eq!(by_symbol(84532, "USDC").unwrap().name, "USDC");
        let a = by_address(84532, address!("036CbD53842c5426634e7929541eC2318f3dCF7e")).unwrap();
        assert_eq!((a.decimals, a.version.as_str()), (6, "2"));
        assert!(by_symbol(31337, "USDC").is_none());
        assert_eq!(symbols_on(988), vec!["USDT0"]);
    }
}
