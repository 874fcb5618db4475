//! Cache of facilitator verdicts keyed by the digest of the payment payload, so that a client
//! retrying the same payment (after a released attempt) costs no facilitator call.
//!
//! Owns: [`VerdictCache`]. An entry lives for `cache_ttl`, and never past the payment's
//! `validBefore`. Only verdicts are cached, never outages.

use std::time::{Duration, Instant};

use alloy::primitives::B256;
use moka::sync::Cache;
use moka::Expiry;

use crate::protocol::VerifyResponse;

#[derive(Clone)]
struct Cached {
    verdict: VerifyResponse,
    ttl: Duration,
}

struct PerEntry;

impl Expiry<B256, Cached> for PerEntry {
    fn expire_after_create(&self, _: &B256, v: &Cached, _: Instant) -> Option<Duration> {
        Some(v.ttl)
    }
}

/// Facilitator verdicts by payload digest.
pub struct VerdictCache {
    entries: Cache<B256, Cached>,
    ttl: Duration,
}

impl VerdictCache {
    /// A cache of at most `capacity` verdicts, each kept at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        VerdictCache {
            entries: Cache::builder()
                .max_capacity(capacity)
                .expire_after(PerEntry)
                .build(),
            ttl,
        }
    }

    /// The cached verdict for a payload digest.
    pub fn get(&self, digest: &B256) -> Option<VerifyResponse> {
        self.entries.get(digest).map(|c| c.verdict)
    }

    /// Stores a verdict until `min(now + ttl, valid_before)`.
    pub fn insert(&self, digest: B256, verdict: VerifyResponse, valid_before: u64, now: u64) {
        let left = Duration::from_secs(valid_before.saturating_sub(now));
        let ttl = self.ttl.min(left);
        if !ttl.is_zero() {
            self.entries.insert(digest, Cached { verdict, ttl });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> VerifyResponse {
        VerifyResponse {
            is_valid: true,
            invalid_reason: None,
            invalid_message: None,
            payer: None,
        }
    }

    #[test]
    fn hit_miss_and_validity_cap() {
        let c = VerdictCache::new(100, Duration::from_secs(30));
        let d = B256::repeat_byte(7);
        assert!(c.get(&d).is_none());
        c.insert(d, ok(), 1000, 0);
        assert_eq!(c.get(&d), Some(ok()));
        // Already expired payments are not cached at all.
        let e = B256::repeat_byte(8);
        c.insert(e, ok(), 10, 10);
        assert!(c.get(&e).is_none());
    }

    #[test]
    fn entries_expire() {
        let c = VerdictCache::new(100, Duration::from_secs(30));
        let d = B256::repeat_byte(9);
        c.insert(d, ok(), 1, 0);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(c.get(&d).is_none());
    }
}
