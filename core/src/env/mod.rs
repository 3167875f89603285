//! The traits every effect goes through: time, files, the network, tasks.
//!
//! core never reads a clock, touches a file or opens a socket itself. Production builds an
//! [`Env`] from tokio's clock, the real file system and TCP; the simulator builds one from the
//! same parts on madsim with a crash-faithful disk and fault wrappers. Randomness is not a
//! trait: it is a seed handed to whoever needs it (see [`Env::seed`]).

mod clock;
mod disk;
mod spawn;
mod transport;

pub use clock::{Clock, Instant};
pub use disk::{write_file_atomic, Disk, DiskError, DiskFile, PositionalFile};
pub use spawn::{BoxFuture, Spawn};
pub use transport::{Envelope, Heartbeat, HeartbeatEcho, Payload, Transport};

use std::sync::Arc;

/// Everything a node needs from the outside world, in one place: the one swap point between
/// production and simulation.
#[derive(Clone)]
pub struct Env {
    pub clock: Arc<dyn Clock>,
    pub disk: Arc<dyn Disk>,
    pub spawn: Arc<dyn Spawn>,
    /// The root of every seeded random choice the node makes (election jitter, backoff).
    pub seed: u64,
    /// Where the node's parts count what they do. Never read back by core's logic.
    pub metrics: Arc<crate::metrics::NodeMetrics>,
    /// A test harness's view into every replica (see `observe`); `None` in production.
    pub observer: Option<Arc<dyn crate::observe::Observer>>,
}
