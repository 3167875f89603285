//! Reconnect pacing: exponential, capped, with seeded jitter so peers do not retry in step.

use rand::{rngs::StdRng, Rng, SeedableRng};
use std::time::Duration;

pub struct Backoff {
    next_ms: u64,
    min_ms: u64,
    max_ms: u64,
    rng: StdRng,
}

impl Backoff {
    pub fn new(min_ms: u64, max_ms: u64, seed: u64) -> Backoff {
        assert!(0 < min_ms && min_ms <= max_ms);
        Backoff { next_ms: min_ms, min_ms, max_ms, rng: StdRng::seed_from_u64(seed) }
    }

    /// The wait before the next attempt; each call doubles the next one up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next_ms;
        self.next_ms = (self.next_ms * 2).min(self.max_ms);
        // Full jitter in [base/2, base].
        Duration::from_millis(self.rng.gen_range(base / 2..=base))
    }

    pub fn reset(&mut self) {
        self.next_ms = self.min_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_and_resets() {
        let mut b = Backoff::new(10, 80, 1);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert!(delays[0] <= 10 && delays[5] >= 40 && delays[5] <= 80, "{delays:?}");
        b.reset();
        assert!(b.next_delay().as_millis() <= 10);
    }
}
