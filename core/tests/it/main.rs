//! cohort-core's integration tests: one binary, a module per theme.

mod determinism_rules;
