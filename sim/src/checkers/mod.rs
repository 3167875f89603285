//! Checkers: pure functions that judge a recorded run and explain what went wrong.
//!
//! They take what the simulation recorded (a [`History`](crate::history::History), and more
//! later) and return a typed verdict; none of them needs a runtime, so they are tested on
//! hand-written and generated histories as well as on simulated runs.

pub mod linearizability;

pub use linearizability::{check_linearizable, KeyReport, Report, Violation, STATES_PER_KEY_MAX_DEFAULT};
