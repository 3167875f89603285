//! The simulator's implementations of core's `Spawn` and `Clock`: madsim tasks, blocking work
//! run inline (the simulated disk never blocks), and a clock whose rate can differ per node.

use cohort_core::env::{BoxFuture, Clock, Instant, Spawn};
use cohort_net::runtime::TokioClock;
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::sync::Mutex;
use std::time::Duration;

/// Tasks on madsim; blocking work (appends and fsyncs) takes a seeded random time first, like a
/// real disk, which widens every window in which something is in flight but not durable.
pub struct SimSpawn {
    rng: Mutex<StdRng>,
    latency_max: Duration,
}

impl SimSpawn {
    pub fn new(seed: u64, latency_max: Duration) -> SimSpawn {
        SimSpawn { rng: Mutex::new(StdRng::seed_from_u64(seed)), latency_max }
    }
}

impl Spawn for SimSpawn {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        if self.latency_max.is_zero() {
            work();
            return Box::pin(std::future::ready(()));
        }
        let latency = Duration::from_micros(
            self.rng.lock().expect("not poisoned").gen_range(0..=self.latency_max.as_micros() as u64),
        );
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            work();
        })
    }
}

/// A clock that runs `rate_ppm` parts per million fast (positive) or slow (negative) compared
/// with simulated time: nodes with different rates disagree on how long a timeout is.
pub struct SkewedClock {
    base: TokioClock,
    rate_ppm: i64,
}

impl SkewedClock {
    pub fn new(rate_ppm: i64) -> SkewedClock {
        assert!(rate_ppm.abs() < 500_000, "a clock runs at least half as fast as time");
        SkewedClock { base: TokioClock::new(), rate_ppm }
    }

    fn scale(&self, nanos: u64) -> u64 {
        (nanos as i128 * (1_000_000 + self.rate_ppm as i128) / 1_000_000) as u64
    }

    fn unscale(&self, nanos: u64) -> u64 {
        (nanos as i128 * 1_000_000 / (1_000_000 + self.rate_ppm as i128)) as u64
    }
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        Instant::from_nanos(self.scale(self.base.now().as_nanos()))
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        let wait_nanos = deadline.as_nanos().saturating_sub(self.now().as_nanos());
        Box::pin(tokio::time::sleep(Duration::from_nanos(self.unscale(wait_nanos) + 1)))
    }
}
