//! core's `Clock` and `Spawn` on tokio (madsim-tokio: real tokio in production, madsim's
//! deterministic runtime under `--cfg madsim`).

use cohort_core::env::{BoxFuture, Clock, Instant, Spawn};

/// Monotonic time from tokio's clock, counted from when this clock was made.
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock { epoch: tokio::time::Instant::now() }
    }

    fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + std::time::Duration::from_nanos(at.as_nanos())
    }
}

impl Default for TokioClock {
    fn default() -> TokioClock {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        let elapsed = tokio::time::Instant::now().duration_since(self.epoch);
        Instant::from_nanos(u64::try_from(elapsed.as_nanos()).expect("uptime fits in u64 nanoseconds"))
    }

    fn sleep_until(&self, deadline: Instant) -> BoxFuture<()> {
        Box::pin(tokio::time::sleep_until(self.to_tokio(deadline)))
    }
}

/// Tasks on the current tokio runtime; blocking work on its blocking pool.
#[derive(Default)]
pub struct TokioSpawn;

impl Spawn for TokioSpawn {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        tokio::spawn(task);
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        // madsim marks this deprecated (nothing may block in a simulation); the simulator
        // brings its own `Spawn` and never builds this one.
        #[allow(deprecated)]
        let handle = tokio::task::spawn_blocking(work);
        Box::pin(async move {
            if let Err(error) = handle.await {
                // The work panicked: an invariant broke inside it. Keep the panic loud.
                panic!("blocking work failed: {error}");
            }
        })
    }

    fn run_brief(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        // On the calling task: a hop to the blocking pool and back (two thread wake-ups) took
        // longer than applying a lone write does.
        work();
        Box::pin(std::future::ready(()))
    }
}
