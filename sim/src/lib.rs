//! Deterministic simulation of cohort: workload histories and the checkers that judge them.

pub mod checkers;
pub mod history;
