//! cohort-core: the deterministic heart of a cohort node.
//!
//! Everything here is driven by explicit inputs: time comes from [`env::Clock`], randomness
//! from a seed, and every byte that reaches a disk or a socket leaves through the traits in
//! [`env`]. This crate depends on neither tokio nor madsim (a test checks it), so the same
//! code runs in production, in the simulator and in plain unit tests.

pub mod bugs;
pub mod codec;
pub mod env;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod observe;
pub mod partition;
pub mod persist;
mod raft_logger;
pub mod snapshot;
pub mod state_machine;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
