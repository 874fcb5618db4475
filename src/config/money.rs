//! Price strings → atomic token units, with exact decimal arithmetic (never floating point).
//!
//! Owns: the price syntax of `gateway.toml` (`"$0.001"`, `"0.001 USDC"`, atomic `"1000"`,
//! `"free"`) and its conversion with an asset's decimals. A price that the asset's decimals
//! cannot represent exactly is an error, not a rounding.
//! Lives in `config` because a price only has meaning once validated against its asset.

use alloy::primitives::U256;

use super::assets::Asset;

/// A price as written, before an asset gives it decimals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Price {
    /// `"free"`: no payment.
    Free,
    /// `"$0.001"`: US dollars, for USD stablecoins.
    Dollars(String),
    /// `"0.001 USDC"`: whole tokens of the named symbol.
    Tokens(String, String),
    /// `"1000"`: atomic units.
    Atomic(U256),
}

/// Parses the price syntax. The decimal parts are checked here; conversion needs the asset.
///
/// # Errors
/// A message saying what is wrong and what is accepted.
pub fn parse_price(text: &str) -> Result<Price, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("free") {
        return Ok(Price::Free);
    }
    if let Some(rest) = t.strip_prefix('$') {
        let rest = rest.trim();
        check_decimal(rest)?;
        return Ok(Price::Dollars(rest.to_owned()));
    }
    if let Some((num, sym)) = t.split_once(char::is_whitespace) {
        let (num, sym) = (num.trim(), sym.trim());
        check_decimal(num)?;
        if sym.is_empty() || !sym.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(format!("`{sym}` is not a token symbol"));
        }
        return Ok(Price::Tokens(num.to_owned(), sym.to_owned()));
    }
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return U256::from_str_radix(t, 10)
            .map(Price::Atomic)
            .map_err(|_| format!("`{t}` is too large"));
    }
    Err(format!(
        "`{text}` is not a price: write \"$0.001\", \"0.001 USDC\", atomic units like \"1000\", or \"free\""
    ))
}

fn check_decimal(s: &str) -> Result<(), String> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
        && !(s.contains('.') && frac.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!("`{s}` is not a plain decimal number like 0.001"))
    }
}

/// Converts a decimal string of whole tokens into atomic units: `"0.001"` at 6 decimals is 1000.
///
/// # Errors
/// When the number has more fractional digits than `decimals` (not representable), or overflows.
pub fn to_atomic(decimal: &str, decimals: u8) -> Result<U256, String> {
    let (int, frac) = decimal.split_once('.').unwrap_or((decimal, ""));
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(decimals) {
        return Err(format!(
            "{decimal} has {} decimal places but the asset has {decimals}: it cannot be paid exactly",
            frac.len()
        ));
    }
    let digits = format!(
        "{int}{frac}{}",
        "0".repeat(usize::from(decimals) - frac.len())
    );
    U256::from_str_radix(&digits, 10).map_err(|_| format!("{decimal} is too large"))
}

/// Formats atomic units as whole tokens, without trailing zeros: 1000 at 6 decimals is "0.001".
pub fn format_units(amount: U256, decimals: u8) -> String {
    let s = amount.to_string();
    let d = usize::from(decimals);
    if d == 0 {
        return s;
    }
    let padded = format!("{s:0>width$}", width = d + 1);
    let (int, frac) = padded.split_at(padded.len() - d);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

/// Resolves a non-free price against an asset.
///
/// # Errors
/// Dollars on a non-USD asset, a symbol that is not the asset's, zero, or an inexact amount.
pub fn resolve(price: &Price, asset: &Asset) -> Result<U256, String> {
    let amount = match price {
        Price::Free => return Err("internal: free has no amount".into()),
        Price::Dollars(d) => {
            if !asset.usd_stable {
                return Err(format!(
                    "a dollar price needs a USD stablecoin; {} is not known to be one: write \"{d} {}\" or atomic units",
                    asset.symbol, asset.symbol
                ));
            }
            to_atomic(d, asset.decimals)?
        }
        Price::Tokens(d, sym) => {
            if !sym.eq_ignore_ascii_case(&asset.symbol) {
                return Err(format!(
                    "the price is in {sym} but the asset is {}",
                    asset.symbol
                ));
            }
            to_atomic(d, asset.decimals)?
        }
        Price::Atomic(a) => *a,
    };
    if amount.is_zero() {
        return Err("a price of zero cannot be paid with `exact`: write \"free\" instead".into());
    }
    Ok(amount)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::assets;

    fn usdc() -> Asset {
        assets::by_symbol(84532, "USDC").unwrap()
    }

    #[test]
    fn reference_examples_convert_exactly() {
        assert_eq!(
            resolve(&parse_price("$0.01").unwrap(), &usdc()),
            Ok(U256::from(10000))
        );
        assert_eq!(
            resolve(&parse_price("$0.001").unwrap(), &usdc()),
            Ok(U256::from(1000))
        );
        assert_eq!(
            resolve(&parse_price("0.001 USDC").unwrap(), &usdc()),
            Ok(U256::from(1000))
        );
        assert_eq!(
            resolve(&parse_price("1000").unwrap(), &usdc()),
            Ok(U256::from(1000))
        );
        assert_eq!(
            resolve(&parse_price(" $ 12.5 ").unwrap(), &usdc()),
            Ok(U256::from(12_500_000))
        );
        // The float trap of the v1 SDK: 0.0079 * 10**6 = 7900.000000000001 in JS.
        assert_eq!(
            resolve(&parse_price("$0.0079").unwrap(), &usdc()),
            Ok(U256::from(7900))
        );
        assert_eq!(
            resolve(&parse_price("$0.0010000").unwrap(), &usdc()),
            Ok(U256::from(1000))
        );
        assert_eq!(parse_price("FREE"), Ok(Price::Free));
    }

    #[test]
    fn unrepresentable_and_malformed_prices_are_errors() {
        assert!(resolve(&parse_price("$0.0000001").unwrap(), &usdc())
            .unwrap_err()
            .contains("cannot be paid exactly"));
        assert!(resolve(&parse_price("$0").unwrap(), &usdc())
            .unwrap_err()
            .contains("free"));
        assert!(resolve(&parse_price("0").unwrap(), &usdc()).is_err());
        assert!(resolve(&parse_price("1 DAI").unwrap(), &usdc())
            .unwrap_err()
            .contains("DAI"));
        for bad in [
            "",
            "$",
            "$-1",
            "$1e-3",
            "$.5",
            "$1.",
            "0.001",
            "1,000",
            "abc",
            "$0.1 USDC",
            "1 US-DC",
        ] {
            assert!(parse_price(bad).is_err(), "{bad}");
        }
        let mut tok = usdc();
        tok.usd_stable = false;
        assert!(resolve(&Price::Dollars("1".into()), &tok)
            .unwrap_err()
            .contains("stablecoin"));
    }

    #[test]
    fn formats_units_both_ways() {
        for (atomic, s) in [
            (1000u64, "0.001"),
            (1, "0.000001"),
            (12_500_000, "12.5"),
            (1_000_000, "1"),
        ] {
            assert_eq!(format_units(U256::from(atomic), 6), s);
            assert_eq!(to_atomic(s, 6), Ok(U256::from(atomic)));
        }
        assert_eq!(format_units(U256::from(7u64), 0), "7");
    }
}
