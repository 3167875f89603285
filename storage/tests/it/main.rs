//! cohort-storage's integration tests: one binary, a module per theme.

mod disks;
mod group_commit;
mod identity;
mod log;
mod log_model;
mod recovery_input;
mod seal;
mod snapshots;
mod store;
