//! Deterministic simulation of cohort: seeded runs of real nodes on madsim under injected
//! faults, the workload histories they record, and the checkers that judge them.
//!
//! The harness (`cluster`, `faults`, `workload`, `scenario`, ...) exists only in simulation
//! builds (`RUSTFLAGS="--cfg madsim"`, see `scripts/sim`); the history, the checkers and the
//! campaign runner build everywhere, so their tests run with the rest of the workspace.

pub mod campaign;
pub mod checkers;
pub mod history;

#[cfg(madsim)]
pub mod cluster;
#[cfg(madsim)]
pub mod faults;
#[cfg(madsim)]
pub mod observer;
#[cfg(madsim)]
pub mod quiescence;
#[cfg(madsim)]
pub mod scenario;
#[cfg(madsim)]
pub mod sim_env;
#[cfg(madsim)]
pub mod trace;
#[cfg(madsim)]
pub mod workload;
