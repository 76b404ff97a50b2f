//! Time, as a value the broker and verifiers are given (never read from the
//! wall in the middle of a decision): [`SystemClock`] in production, a
//! [`ManualClock`] in tests, which moves only when told, so no test sleeps
//! to wait for an expiry.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock at `ms` since the epoch.
    pub fn at_ms(ms: u64) -> Self {
        Self(AtomicU64::new(ms))
    }

    /// A clock at the system's current time.
    pub fn now() -> Self {
        Self::at_ms(SystemClock.now_ms())
    }

    /// Moves the clock forward by `secs`.
    pub fn advance_secs(&self, secs: u64) {
        self.0
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The system's clock shifted forward by an offset that only grows when
/// told: what a test broker runs on, so time passes for the proofs a test
/// client makes, and an expiry is reached by a jump instead of a sleep.
#[derive(Debug, Default)]
pub struct ShiftedClock(AtomicU64);

impl ShiftedClock {
    /// The system's clock, not shifted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jumps forward by `secs`.
    pub fn advance_secs(&self, secs: u64) {
        self.0
            .fetch_add(secs.saturating_mul(1000), Ordering::SeqCst);
    }

    /// Jumps forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        SystemClock
            .now_ms()
            .saturating_add(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at_ms(1_000_500);
        assert_eq!((c.now_ms(), c.now_secs()), (1_000_500, 1000));
        c.advance_secs(2);
        assert_eq!(c.now_secs(), 1002);
        c.advance_ms(600);
        assert_eq!(c.now_ms(), 1_003_100);
        assert!(SystemClock.now_secs() > 1_700_000_000);
        let s = ShiftedClock::new();
        s.advance_secs(3600);
        assert!(s.now_secs() >= SystemClock.now_secs() + 3599);
    }
}
