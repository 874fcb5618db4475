//! `[limits]` and the small value syntaxes abuse limits are written in: byte sizes
//! (`"10MiB"`), rates (`"20/s"`, `"600/m"`, `"off"`) and CIDR blocks (`"10.0.0.0/8"`).
//!
//! Owns: [`LimitsConfig`], [`Rate`], [`Cidr`] and their parsers. Does not own: enforcing them
//! (`limits` at the crate root, `verify::replay`, the proxy).

use std::net::IpAddr;

/// `[limits]`: what one client, or all of them together, may cost the gateway.
#[derive(Clone, Debug)]
pub struct LimitsConfig {
    /// Largest request body on a priced route, in bytes (`413` above).
    pub max_request_body: u64,
    /// Largest total size of a request's headers (names and values), in bytes (`431` above).
    pub max_header_bytes: usize,
    /// Most authorizations the replay guard holds at once (`503` + `Retry-After` when full).
    pub max_pending_payments: usize,
    /// Unpaid requests to priced routes (each answered with a challenge), per client IP.
    pub challenge_rate: Option<Rate>,
    /// Payments refused (bad signature, wrong amount, unfunded, replayed …), per client IP.
    pub failed_payment_rate: Option<Rate>,
    /// Most facilitator calls (`/verify` + `/settle`) in flight at once.
    pub max_concurrent_facilitator_calls: usize,
    /// Connections open at once on the paying listener; more are closed as they arrive.
    pub max_connections: usize,
    /// From a request head's first byte to its end, at most (slowloris).
    pub header_timeout: std::time::Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_body: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_pending_payments: 100_000,
            challenge_rate: Some(Rate {
                count: 100,
                period_ms: 1000,
            }),
            failed_payment_rate: Some(Rate {
                count: 60,
                period_ms: 60_000,
            }),
            max_concurrent_facilitator_calls: 1024,
            max_connections: 10_000,
            header_timeout: std::time::Duration::from_secs(10),
        }
    }
}

/// A token bucket's shape: up to `count` events at once, refilled at `count` per period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events per period, which is also the burst.
    pub count: u32,
    /// The period in milliseconds.
    pub period_ms: u64,
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period_ms {
            1000 => "s",
            60_000 => "m",
            3_600_000 => "h",
            _ => return write!(f, "{}/{}ms", self.count, self.period_ms),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// Parses `"20/s"`, `"600/m"`, `"1000/h"`; `"off"` is `None`.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_rate(s: &str) -> Result<Option<Rate>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let bad = || format!("`{s}` is not a rate like \"20/s\", \"600/m\", \"1000/h\" or \"off\"");
    let (n, unit) = t.split_once('/').ok_or_else(bad)?;
    let count: u32 = n.trim().parse().map_err(|_| bad())?;
    if count == 0 {
        return Err(format!("`{s}`: use \"off\" to disable a limit, not 0"));
    }
    let period_ms = match unit.trim() {
        "s" | "sec" | "second" => 1000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return Err(bad()),
    };
    Ok(Some(Rate { count, period_ms }))
}

/// Parses a byte size: an integer of bytes, or a number with `KiB`, `MiB`, `GiB`, `KB`, `MB`,
/// `GB` (powers of 1024 and 1000).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size like \"10MiB\" or 65536"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => {
            return Err(format!(
                "`{s}`: unknown unit (use KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// An IP network: an address and a prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `10.0.0.0/8`, `fd00::/8`, or a single address.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block like 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| format!("`{s}` has an invalid prefix length"))?
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in this block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("20/s").unwrap(),
            Some(Rate {
                count: 20,
                period_ms: 1000
            })
        );
        assert_eq!(parse_rate("600/m").unwrap().unwrap().period_ms, 60_000);
        assert_eq!(parse_rate("off").unwrap(), None);
        for bad in ["20", "0/s", "x/s", "5/d", ""] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_rate("600/m").unwrap().unwrap().to_string(), "600/m");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("64 KiB").unwrap(), 64 << 10);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        for bad in ["", "ten", "5 parsecs", "99999999999999999999GiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        let one = Cidr::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = Cidr::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("1.2.3.4".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "::/129"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }
}
