//! The `cohort` binary's library: configuration, node assembly, HTTP, and the CLI's commands.
//! `anyhow` is used here and nowhere below.

pub mod cli;
pub mod config;
pub mod data_dir_lock;
pub mod http;
pub mod memory;
mod metered_disk;
pub mod node;
mod status_page;
mod uploads;
