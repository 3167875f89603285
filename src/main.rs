//! The `cohort` binary: a node (`cohort node`), a local cluster (`cohort dev`), and a client
//! CLI over the cluster's API.

use clap::Parser;
use cohort::cli::{self, Cli};
use std::process::ExitCode;

fn main() -> ExitCode {
    let allocator_warnings = cohort::memory::tune_allocator();
    let cli = Cli::parse();
    cli::init_tracing(&cli);
    for warning in allocator_warnings {
        tracing::warn!("{warning}");
    }
    // Tokio would panic on a value it cannot use; say so plainly instead.
    if let Err(error) = cohort::config::runtime_threads() {
        eprintln!("error: {error}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(cli::run(cli));
    // Every task ends with the runtime, and with them the last holders of a stopped node's
    // state store: its file changes no more, and is sealed for offline checks.
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    match outcome {
        Ok(Some(stopped)) => match cohort::node::seal_store(&stopped.data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            // A client error says what kind of failure it was (see `ClientError::exit_code`).
            match error.downcast_ref::<cohort_net::client::ClientError>() {
                Some(client_error) => ExitCode::from(client_error.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}
