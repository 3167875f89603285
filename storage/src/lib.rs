//! cohort-storage: a node's durable state over core's [`Disk`](cohort_core::env::Disk) trait.
//!
//! - [`log`]: the one write-ahead log shared by every partition of a node (segments,
//!   checkpoints, compaction, crash recovery) and the group commit that makes many
//!   partitions' writes durable with one fsync.
//! - [`fs_disk`]: the production disk over the real file system.
//! - [`sim_disk`]: the simulated disk whose crashes lose and tear what was not synced.
//! - [`conformance`]: the suites every disk and the log engine must pass.
//! - [`limits`]: every bound, with its unit.
//!
//! Architecture invariant: nothing here reads a clock, spawns a thread or names a runtime;
//! blocking work is handed to core's `Spawn::run_blocking`, so the same code runs on tokio and
//! on madsim.

pub mod conformance;
pub mod fs_disk;
pub mod limits;
pub mod log;
pub mod sim_disk;

pub use fs_disk::FsDisk;
pub use log::{LogEngine, LogError, LogOptions};
pub use sim_disk::SimDisk;
