//! Time, as a value the broker and verifiers are given (never read from the
//! wall in the middle of a decision): [`SystemClock`] in production, a
//! [`ManualClock`] in tests, which moves only when told, so no test sleeps
//! to wait for an expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Seconds since the Unix epoch.
    fn now_secs(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// How far (ms) the system's clock is behind this one: 0 unless this
    /// one holds its time while the system's went back ([`Monotone`]).
    fn behind_ms(&self) -> u64 {
        0
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

/// The system's clock shifted by an offset that moves when told: what a
/// test broker runs on, so time passes for the proofs a test client makes,
/// and an expiry is reached by a jump instead of a sleep.
#[derive(Debug, Default)]
pub struct ShiftedClock(AtomicI64);

impl ShiftedClock {
    /// The system's clock, not shifted yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jumps forward by `secs`.
    pub fn advance_secs(&self, secs: u64) {
        self.advance_ms(secs.saturating_mul(1000));
    }

    /// Jumps forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        let ms = i64::try_from(ms).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Jumps back by `secs`, as a system clock set back does.
    pub fn go_back_secs(&self, secs: u64) {
        let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        self.0.fetch_sub(ms, Ordering::SeqCst);
    }
}

impl Clock for ShiftedClock {
    fn now_ms(&self) -> u64 {
        SystemClock
            .now_ms()
            .saturating_add_signed(self.0.load(Ordering::SeqCst))
    }
}

/// A clock that never goes back: the highest time its source has shown.
///
/// What the broker runs on. Replay records and caches forget what expired
/// by this time; if it went back (a system clock set back, by hand or by
/// NTP stepping it), what they forgot would be fresh again, and a proof or
/// a single-use credential used once would be taken a second time. So
/// while the source is behind, the time holds (and [`Clock::behind_ms`]
/// says by how much) until the source catches up (or the process
/// restarts). A restarted process starts from its source again; what an
/// earlier one cleared is covered otherwise (the broker asks its nonce for
/// proofs dated before the latest time uses were cleared).
#[derive(Debug)]
pub struct Monotone {
    source: Arc<dyn Clock>,
    high: AtomicU64,
}

impl Monotone {
    /// `source`, never going back from what it shows now.
    pub fn new(source: Arc<dyn Clock>) -> Self {
        let high = AtomicU64::new(source.now_ms());
        Self { source, high }
    }
}

impl Clock for Monotone {
    fn now_ms(&self) -> u64 {
        let now = self.source.now_ms();
        self.high.fetch_max(now, Ordering::SeqCst).max(now)
    }

    /// How far (ms) the source is behind this clock: 0 unless it went back.
    fn behind_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.source.now_ms())
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
        s.go_back_secs(7200);
        assert!(s.now_secs() <= SystemClock.now_secs() - 3599);
    }

    #[test]
    fn a_monotone_clock_holds_while_its_source_is_behind() {
        let source = Arc::new(ManualClock::at_ms(5_000));
        let shifted = Arc::new(ShiftedClock::new());
        let m = Monotone::new(Arc::clone(&source) as Arc<dyn Clock>);
        assert_eq!((m.now_ms(), m.behind_ms()), (5_000, 0));
        source.advance_ms(1_500);
        assert_eq!(m.now_ms(), 6_500);
        // Set back 4 s: the time holds at 6.5 s, 4 s ahead of the source.
        source.0.store(2_500, Ordering::SeqCst);
        assert_eq!((m.now_ms(), m.behind_ms()), (6_500, 4_000));
        source.advance_ms(3_000);
        assert_eq!((m.now_ms(), m.behind_ms()), (6_500, 1_000));
        // Caught up: it moves with the source again.
        source.advance_ms(1_200);
        assert_eq!((m.now_ms(), m.behind_ms()), (6_700, 0));
        let m = Monotone::new(Arc::clone(&shifted) as Arc<dyn Clock>);
        let before = m.now_ms();
        shifted.go_back_secs(60);
        assert!(m.now_ms() >= before && m.behind_ms() >= 59_000);
    }
}
