//! Helpers to drive partitions without any runtime: N replicas in one thread, a message queue
//! that can drop and cut links, persistence completed at once or held back, and a clock that
//! jumps to the next timeout. Compiled for core's own tests and, with the `testing` feature,
//! for other crates' tests.

mod cluster;
mod runtime;
mod state;

pub use cluster::{Cluster, Delivered};
pub use runtime::{ManualClock, ManualExecutor};
pub use state::partition_state;
