//! Suites that any implementation must pass, as named cases: this crate's tests run them on
//! [`FsDisk`](crate::FsDisk), [`SimDisk`](crate::SimDisk) and the log engine, and whoever
//! builds another `Disk` (a fault-injecting wrapper, say) runs them too.
//!
//! Each suite takes a builder and runs every case on a fresh instance, printing the case's name
//! first, so a failure names its case.

mod disk;
mod log;

pub use disk::{disk_suite, sim_crash_suite};
pub use log::{entries, log_crash_suite, log_suite, LogModel};
