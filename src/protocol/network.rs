//! EVM network identifiers: CAIP-2 ids (`eip155:84532`, v2) and the v1 names (`base-sepolia`).
//!
//! Owns: the v1 name ↔ chain id table (x402 reference §7.1) and parsing of either spelling.
//! Does not own: assets on a network (`config::assets`).

use std::fmt;

/// v1 network names and their chain ids. Names marked in the SDK as v2-only are included; the
/// challenge builder decides which of them a legacy client can read ([`LEGACY_V1_NAMES`]).
const V1_NAMES: &[(&str, u64)] = &[
    ("base", 8453),
    ("base-sepolia", 84532),
    ("avalanche", 43114),
    ("avalanche-fuji", 43113),
    ("polygon", 137),
    ("polygon-amoy", 80002),
    ("sei", 1329),
    ("sei-testnet", 1328),
    ("abstract", 2741),
    ("abstract-testnet", 11124),
    ("iotex", 4689),
    ("peaq", 3338),
    ("story", 1514),
    ("educhain", 41923),
    ("skale-base-sepolia", 324705682),
    ("ethereum", 1),
    ("sepolia", 11155111),
    ("megaeth", 4326),
    ("monad", 143),
    ("stable", 988),
    ("stable-testnet", 2201),
];

/// v1 names that the legacy zod schema of `x402-fetch`/`x402-axios` accepts. Offering any other
/// name in a v1 body makes those clients throw on the whole challenge.
pub const LEGACY_V1_NAMES: &[&str] = &[
    "base",
    "base-sepolia",
    "avalanche",
    "avalanche-fuji",
    "polygon",
    "polygon-amoy",
    "sei",
    "sei-testnet",
    "abstract",
    "abstract-testnet",
    "iotex",
    "peaq",
    "story",
    "educhain",
    "skale-base-sepolia",
];

/// An EVM network, known by chain id, with both spellings prepared.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Network {
    chain_id: u64,
    caip2: Box<str>,
    v1_name: Option<&'static str>,
}

impl Network {
    /// The network of an EVM chain id.
    pub fn from_chain_id(chain_id: u64) -> Self {
        Network {
            chain_id,
            caip2: format!("eip155:{chain_id}").into_boxed_str(),
            v1_name: V1_NAMES
                .iter()
                .find(|(_, id)| *id == chain_id)
                .map(|(name, _)| *name),
        }
    }

    /// Parses a v1 name (`base-sepolia`) or a CAIP-2 id (`eip155:84532`). Returns `None` for
    /// anything else, including non-EVM namespaces.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(id) = s.strip_prefix("eip155:") {
            if id.is_empty() || id.starts_with('0') || !id.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return id.parse().ok().map(Self::from_chain_id);
        }
        V1_NAMES
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, id)| Self::from_chain_id(*id))
    }

    /// The chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// CAIP-2 id, e.g. `eip155:84532`.
    pub fn caip2(&self) -> &str {
        &self.caip2
    }

    /// v1 name, e.g. `base-sepolia`, if the chain has one.
    pub fn v1_name(&self) -> Option<&'static str> {
        self.v1_name
    }

    /// Whether a legacy v1 client can read this network's name.
    pub fn legacy_v1_readable(&self) -> bool {
        self.v1_name.is_some_and(|n| LEGACY_V1_NAMES.contains(&n))
    }

    /// Whether `s` names this network in either spelling.
    pub fn is_named(&self, s: &str) -> bool {
        s == &*self.caip2 || self.v1_name == Some(s)
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.caip2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_spellings_to_the_same_network() {
        let a = Network::parse("base-sepolia").unwrap();
        let b = Network::parse("eip155:84532").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.caip2(), "eip155:84532");
        assert_eq!(a.v1_name(), Some("base-sepolia"));
        assert!(a.is_named("base-sepolia") && a.is_named("eip155:84532"));
        assert!(!a.is_named("base"));
    }

    #[test]
    fn unknown_chains_have_no_v1_name() {
        let n = Network::parse("eip155:31337").unwrap();
        assert_eq!(n.v1_name(), None);
        assert!(!n.legacy_v1_readable());
        assert!(Network::parse("eip155:137").unwrap().legacy_v1_readable());
        assert!(!Network::parse("monad").unwrap().legacy_v1_readable());
    }

    #[test]
    fn rejects_non_evm_and_malformed_ids() {
        for s in [
            "solana:5eykt4UsFv8P8NJdTREpY1vzqKqZKvdp",
            "eip155:",
            "eip155:0x1",
            "eip155:01",
            "Base",
            "",
        ] {
            assert!(Network::parse(s).is_none(), "{s}");
        }
    }
}
