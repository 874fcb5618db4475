//! Per-client token buckets: how many challenges, or failed payments, one client may cause.
//!
//! Owns: [`RateLimiter`]. A client is an IPv4 address or an IPv6 /64 (one host's whole
//! allocation), so rotating addresses within a prefix gains nothing. Buckets live in a sharded
//! map bounded in size: a full bucket is the same as no bucket, so full ones are dropped first
//! when a shard fills; if a shard is still full of partly drained buckets (a flood from more
//! clients than it can track), new clients are let through untracked rather than refused, as
//! refusing would let the flood lock everyone out. Time is passed in (milliseconds), so tests
//! need no clock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;

use crate::config::Rate;

const SHARDS: usize = 32;
/// Clients tracked per shard.
const PER_SHARD: usize = 4096;

#[derive(Clone, Copy)]
struct Bucket {
    /// Tokens left, in thousandths.
    milli: u64,
    /// When `milli` was computed.
    at_ms: u64,
}

/// A client's key: IPv4 address, or the /64 of an IPv6 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct ClientKey(u128);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(u128::from(u32::from(v4))),
                None => ClientKey((u128::from(v6) & !u128::from(u64::MAX)) | 1 << 32),
            },
        }
    }
}

/// Token buckets, one per client.
pub struct RateLimiter {
    rate: Rate,
    shards: Vec<Mutex<HashMap<ClientKey, Bucket>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Milliseconds since the epoch (the system clock; buckets are given the time by the caller).
pub fn now_ms() -> u64 {
    crate::clock::now_ms()
}

impl RateLimiter {
    /// Buckets of `rate.count` tokens, refilled at `rate.count` per period.
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn full(&self) -> u64 {
        u64::from(self.rate.count) * 1000
    }

    fn refill(&self, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.at_ms);
        let add = u128::from(elapsed) * u128::from(self.rate.count) * 1000
            / u128::from(self.rate.period_ms.max(1));
        b.milli = (u128::from(b.milli) + add).min(u128::from(self.full())) as u64;
        b.at_ms = now_ms.max(b.at_ms);
    }

    /// Seconds until one token is back.
    fn wait_s(&self, b: &Bucket) -> u32 {
        let missing = 1000u64.saturating_sub(b.milli);
        let ms = missing * self.rate.period_ms / (u64::from(self.rate.count) * 1000).max(1);
        u32::try_from(ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
    }

    fn with_bucket<T>(&self, ip: IpAddr, now_ms: u64, f: impl FnOnce(&mut Bucket) -> T) -> T {
        let key = ClientKey::from(ip);
        let mut shard = self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = shard.get_mut(&key) {
            self.refill(b, now_ms);
            return f(b);
        }
        let mut fresh = Bucket {
            milli: self.full(),
            at_ms: now_ms,
        };
        if shard.len() >= PER_SHARD {
            let full = self.full();
            shard.retain(|_, b| {
                self.refill(b, now_ms);
                b.milli < full
            });
            if shard.len() >= PER_SHARD {
                tracing::warn!("rate limiter shard full: a new client is not tracked");
                return f(&mut fresh);
            }
        }
        let out = f(&mut fresh);
        if fresh.milli < self.full() {
            shard.insert(key, fresh);
        }
        out
    }

    /// Takes one token for `ip`.
    ///
    /// # Errors
    /// Seconds until a token is back, when none is left.
    pub fn take(&self, ip: IpAddr, now_ms: u64) -> Result<(), u32> {
        self.with_bucket(ip, now_ms, |b| {
            if b.milli >= 1000 {
                b.milli -= 1000;
                Ok(())
            } else {
                Err(self.wait_s(b))
            }
        })
    }

    /// Whether `ip` has a token left, without taking it.
    ///
    /// # Errors
    /// Seconds until a token is back, when none is left.
    pub fn check(&self, ip: IpAddr, now_ms: u64) -> Result<(), u32> {
        self.with_bucket(ip, now_ms, |b| {
            if b.milli >= 1000 {
                Ok(())
            } else {
                Err(self.wait_s(b))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::new(Rate {
            count: 3,
            period_ms: 3000,
        });
        let a = ip("10.0.0.1");
        for _ in 0..3 {
            assert_eq!(l.take(a, 0), Ok(()));
        }
        assert_eq!(l.take(a, 0), Err(1));
        assert!(l.check(a, 0).is_err());
        // Another client is independent.
        assert_eq!(l.take(ip("10.0.0.2"), 0), Ok(()));
        // One token per second comes back.
        assert_eq!(l.take(a, 999), Err(1));
        assert_eq!(l.take(a, 1000), Ok(()));
        assert_eq!(l.take(a, 1000), Err(1));
        assert_eq!(l.take(a, 10_000), Ok(()));
    }

    #[test]
    fn ipv6_clients_are_their_slash_64() {
        let l = RateLimiter::new(Rate {
            count: 1,
            period_ms: 60_000,
        });
        assert_eq!(l.take(ip("2001:db8::1"), 0), Ok(()));
        assert!(l.take(ip("2001:db8::ffff:1"), 0).is_err());
        assert_eq!(l.take(ip("2001:db8:0:1::1"), 0), Ok(()));
        // An IPv4-mapped address is the IPv4 client.
        assert_eq!(l.take(ip("192.0.2.1"), 0), Ok(()));
        assert!(l.take(ip("::ffff:192.0.2.1"), 0).is_err());
    }

    #[test]
    fn memory_is_bounded() {
        let l = RateLimiter::new(Rate {
            count: 2,
            period_ms: 1000,
        });
        for n in 0..(SHARDS * PER_SHARD * 2) as u32 {
            let _ = l.take(IpAddr::V4(n.into()), 0);
        }
        let held: usize = l.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(held <= SHARDS * PER_SHARD, "{held}");
        // Later, the drained buckets are full again and make room.
        assert_eq!(l.take(ip("203.0.113.9"), 5000), Ok(()));
    }
}
