//! Time for sans-IO state machines.
//!
//! The cores never read a clock: the daemon converts `std::time::Instant` into an
//! [`Instant`] once per worker cycle (nanoseconds since an epoch of its choosing, e.g. its
//! start), and the simulator advances one by hand. Durations are `std::time::Duration`.

use std::ops::{Add, AddAssign};
use std::time::Duration;

/// A point in time, in nanoseconds since an epoch chosen by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(pub u64);

impl Instant {
    /// The epoch itself.
    pub const ZERO: Instant = Instant(0);

    /// An instant `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Instant(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// How long after `earlier` this instant is, or zero if it is not after it.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;

    fn add(self, rhs: Duration) -> Instant {
        // Saturate rather than wrap: 2^64 ns is ~584 years, so saturation only ever
        // means "never", which is what a huge timeout asks for.
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, rhs: Duration) {
        *self = *self + rhs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_and_since() {
        let t = Instant::from_nanos(1_000);
        let u = t + Duration::from_micros(2);
        assert_eq!(u.as_nanos(), 3_000);
        assert_eq!(u.saturating_duration_since(t), Duration::from_nanos(2_000));
        assert_eq!(t.saturating_duration_since(u), Duration::ZERO);
        assert_eq!((t + Duration::MAX).as_nanos(), u64::MAX);
    }
}
