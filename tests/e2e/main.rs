//! End-to-end tests: real `cohort` processes on loopback, real TCP, real fsync.

mod basics;
mod cluster;
mod debug;
mod export;
mod failover;
mod idle;
mod large_objects;
mod membership;
mod observability;
mod operations;
mod raft_mode;
mod replica_sets;
mod robustness;
mod tls;
