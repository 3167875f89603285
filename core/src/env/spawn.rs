use std::future::Future;
use std::pin::Pin;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Starts tasks. Production maps this to tokio; the simulator to madsim's deterministic
/// executor (through the same madsim-tokio API).
pub trait Spawn: Send + Sync + 'static {
    /// Runs `task` concurrently; `name` shows in traces.
    fn spawn(&self, name: &'static str, task: BoxFuture<()>);
    /// Runs blocking work (a `write` and `fsync`) where it cannot stall async tasks, and
    /// completes with it. The simulator runs it inline: its disk never blocks.
    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()>;
    /// Runs blocking work so brief (usually tens of microseconds: no fsync, a few small rows)
    /// that handing it to another thread and back would cost more than the work. Production runs it
    /// where it is asked; by default it is `run_blocking`'s, so the simulator's injected
    /// latency reaches it too.
    fn run_brief(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        self.run_blocking(work)
    }
}
