//! cohort-net's integration tests: one binary, a module per theme.

mod transport;
