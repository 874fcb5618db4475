//! The one clock: wall time for everything recorded or compared with a chain (unix seconds and
//! milliseconds), and monotonic instants for measuring how long something took.
//!
//! Owns: [`Clock`] (the injectable wall clock: [`SystemClock`] in production, [`ManualClock`]
//! in tests, which advance it instead of waiting), and the only calls of `SystemTime::now` and
//! `Instant::now` in the crate (`clippy.toml` refuses them elsewhere). Instants are Tokio's, so
//! a test that pauses Tokio's time (`tokio::time::pause`) controls them too.
//!
//! Does not own: timers and timeouts (Tokio's).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

/// A monotonic instant (Tokio's: paused and advanced with Tokio's clock in tests).
pub type Instant = tokio::time::Instant;

/// Wall time, as the payment core reads it. Shared (`Arc<dyn Clock>`) by everything that
/// compares a time with an authorization's window or writes one to the journal.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the unix epoch.
    fn now_ms(&self) -> u64;

    /// Seconds since the unix epoch.
    fn unix(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one place that reads the system's wall clock
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    ms: AtomicU64,
}

impl ManualClock {
    /// A clock showing `ms` (unix milliseconds).
    pub fn at(ms: u64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            ms: AtomicU64::new(ms),
        })
    }

    /// A clock showing the system's time now, frozen there.
    pub fn now() -> Arc<ManualClock> {
        Self::at(SystemClock.now_ms())
    }

    /// Moves the clock forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms`.
    pub fn set(&self, ms: u64) {
        self.ms.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.ms.load(Ordering::SeqCst)
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Milliseconds since the unix epoch, by the system clock (for code that has no clock of its
/// own to be tested with: logs, the command line, request ids).
pub fn now_ms() -> u64 {
    SystemClock.now_ms()
}

/// Seconds since the unix epoch, by the system clock.
pub fn unix_now() -> u64 {
    SystemClock.unix()
}

/// The wall time now, as a `SystemTime` (span and log timestamps).
#[allow(clippy::disallowed_methods)] // the one place that reads the system's wall clock
pub fn system_time() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// The monotonic time now.
#[allow(clippy::disallowed_methods)] // the one place that reads the monotonic clock
pub fn instant() -> Instant {
    tokio::time::Instant::now()
}

/// A `Duration` as whole milliseconds (saturating).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000_500);
        assert_eq!((c.now_ms(), c.unix()), (1_000_500, 1000));
        c.advance(Duration::from_millis(700));
        assert_eq!(c.unix(), 1001);
        c.set(5);
        assert_eq!(c.now_ms(), 5);
        assert!(SystemClock.unix() > 1_700_000_000);
    }
}
