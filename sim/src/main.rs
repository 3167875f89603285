//! `cohort-sim`: seeded simulation runs and campaigns. Build it with `--cfg madsim` (the
//! `scripts/sim` wrapper does); a normal build only explains that.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "cohort-sim", about = "Deterministic simulation of a cohort cluster")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

/// Which run: a seed, a scenario, and perhaps a planted bug.
#[derive(clap::Args, Debug)]
struct SeedArgs {
    #[arg(long)]
    seed: u64,
    #[arg(long, default_value = "three")]
    scenario: String,
    /// A planted bug to turn on (simulation builds only).
    #[arg(long)]
    bug: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Commands {
    /// Run one seed.
    Run {
        #[command(flatten)]
        run: SeedArgs,
        /// Print the summary as one JSON line (for the campaign runner).
        #[arg(long)]
        json: bool,
        /// Print the full trace.
        #[arg(long)]
        trace: bool,
    },
    /// Run one seed with its full trace; the last line is `trace-hash: <hex>`.
    Replay {
        #[command(flatten)]
        run: SeedArgs,
    },
    /// Sweep seeds, each in its own process.
    Campaign {
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        first_seed: u64,
        #[arg(long, default_value = "three")]
        scenario: String,
        #[arg(long)]
        bug: Option<String>,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// Succeed only if some seed fails (proof that a planted bug is caught); stops at the
        /// first failure.
        #[arg(long)]
        expect_failure: bool,
    },
    /// Run one seed twice in separate processes and compare trace hashes.
    CheckDeterminism {
        #[command(flatten)]
        run: SeedArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Run { run, json, trace } => run_one(run.seed, &run.scenario, run.bug.as_deref(), json, trace),
        Commands::Replay { run } => run_one(run.seed, &run.scenario, run.bug.as_deref(), false, true),
        Commands::Campaign { seeds, first_seed, scenario, bug, jobs, expect_failure } => {
            let options = cohort_sim::campaign::CampaignOptions {
                seeds,
                first_seed,
                scenario,
                bug,
                jobs,
                stop_on_failure: expect_failure,
            };
            let result = cohort_sim::campaign::run(&options);
            match (expect_failure, result.failed.is_empty()) {
                (false, true) => ExitCode::SUCCESS,
                (false, false) => ExitCode::FAILURE,
                (true, false) => {
                    println!("as expected, seed {} caught the planted bug", result.failed[0].seed);
                    ExitCode::SUCCESS
                }
                (true, true) => {
                    println!("the planted bug was NOT caught in {} seeds", result.run);
                    ExitCode::FAILURE
                }
            }
        }
        Commands::CheckDeterminism { run } => check_determinism(run.seed, &run.scenario, run.bug.as_deref()),
    }
}

/// Runs `cohort-sim replay` for the seed in two fresh processes and compares the hashes.
fn check_determinism(seed: u64, scenario: &str, bug: Option<&str>) -> ExitCode {
    // A run that died has no trace hash: that is no proof of determinism.
    let hash = || Some(cohort_sim::campaign::run_seed(seed, scenario, bug).trace_hash).filter(|h| !h.is_empty());
    let (first, second) = (hash(), hash());
    match (first, second) {
        (Some(a), Some(b)) if a == b => {
            println!("deterministic: seed {seed} gave trace-hash {a} twice");
            ExitCode::SUCCESS
        }
        (a, b) => {
            println!("NOT deterministic: seed {seed} gave {a:?} then {b:?}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn run_one(seed: u64, scenario: &str, bug: Option<&str>, json: bool, trace: bool) -> ExitCode {
    use cohort_sim::scenario::{self, RunOptions};
    let Some(scenario) = scenario::scenario(scenario) else {
        eprintln!(
            "unknown scenario {scenario:?}; known: {:?}",
            scenario::scenarios().iter().map(|s| s.name).collect::<Vec<_>>()
        );
        return ExitCode::FAILURE;
    };
    let bug = match bug {
        None => None,
        Some(name) => match cohort_core::bugs::Bug::from_name(name) {
            Some(bug) => Some(bug),
            None => {
                eprintln!("unknown bug {name:?}; known: {:?}", cohort_core::bugs::Bug::ALL.map(|b| b.name()));
                return ExitCode::FAILURE;
            }
        },
    };
    if std::env::var_os("COHORT_SIM_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("COHORT_SIM_LOG"))
            .try_init();
    }
    let options = RunOptions { seed, scenario, bug, keep_trace: trace };
    let mut config = madsim::Config::default();
    config.net.send_latency = std::time::Duration::from_micros(50)..std::time::Duration::from_millis(2);
    let runtime = madsim::runtime::Runtime::with_seed_and_config(seed, config);
    let report = runtime.block_on(scenario::run(options));
    let passed = report.failures.is_empty();
    if json {
        let summary = cohort_sim::campaign::SeedSummary {
            seed,
            passed,
            failures: report.failures.clone(),
            faults: report.faults.iter().map(|f| f.name().to_owned()).collect(),
            trace_hash: report.trace_hash.clone(),
            simulated_ms: report.simulated_ns / 1_000_000,
            operations: report.operations,
            episodes: report.episodes,
            snapshots_installed: report.snapshots_installed,
        };
        println!("{}", serde_json::to_string(&summary).expect("serializable"));
    } else {
        println!(
            "seed {seed}: {} ({} operations, {} fault episodes, {} snapshots installed, {:.0} s simulated)",
            if passed { "passed" } else { "FAILED" },
            report.operations,
            report.episodes,
            report.snapshots_installed,
            report.simulated_ns as f64 / 1e9,
        );
        for failure in &report.failures {
            println!("  {failure}");
        }
        println!("trace-hash: {}", report.trace_hash);
    }
    if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(not(madsim))]
fn run_one(_seed: u64, _scenario: &str, _bug: Option<&str>, _json: bool, _trace: bool) -> ExitCode {
    eprintln!("cohort-sim runs seeds only when built with RUSTFLAGS=\"--cfg madsim\": use scripts/sim");
    ExitCode::FAILURE
}
