//! Integration tests of cohort-sim through its public API.

mod linearizability;

mod lost_writes;
