use super::spawn::BoxFuture;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on a node's monotonic clock, in nanoseconds since the clock's own epoch (its
/// start). Only differences between two `Instant`s of one clock mean anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    nanos: u64,
}

impl Instant {
    pub const ZERO: Instant = Instant { nanos: 0 };

    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant { nanos }
    }

    pub const fn as_nanos(self) -> u64 {
        self.nanos
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.nanos.saturating_sub(earlier.nanos))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let d_nanos = u64::try_from(d.as_nanos()).expect("durations fit in u64 nanoseconds");
        Instant { nanos: self.nanos.checked_add(d_nanos).expect("instant overflow") }
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        assert!(earlier <= self, "instant subtraction would be negative");
        Duration::from_nanos(self.nanos - earlier.nanos)
    }
}

/// A monotonic clock and its timers.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
    /// Completes at or after `deadline` on this clock.
    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        let a = Instant::from_nanos(1_000);
        let b = a + Duration::from_micros(2);
        assert_eq!(b.as_nanos(), 3_000);
        assert_eq!(b - a, Duration::from_nanos(2_000));
        assert_eq!(a.saturating_duration_since(b), Duration::ZERO);
    }
}
