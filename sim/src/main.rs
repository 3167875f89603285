//! `cohort-sim`: seeded simulation runs and campaigns. Build it with `--cfg madsim` (the
//! `scripts/sim` wrapper does); a normal build only explains that.

use clap::{Parser, Subcommand};
use cohort_sim::checkers::Checker;
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
        /// With --expect-failure: only a failure reported by one of these checkers counts
        /// (linearizability, lost-write, raft-safety, convergence, liveness, crash).
        #[arg(long, value_delimiter = ',', requires = "expect_failure")]
        expect_checker: Vec<String>,
    },
    /// Run every scenario round-robin over a fresh window of seeds until the time is up; write
    /// a JSON summary. Fails if any seed failed.
    Nightly {
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
        #[arg(long, default_value_t = 2)]
        jobs: usize,
        /// First seed of the window (default: one drawn from the wall clock, printed in the
        /// summary, so each night explores seeds no campaign ran before).
        #[arg(long)]
        first_seed: Option<u64>,
        /// Scenarios to run (default: all).
        #[arg(long, value_delimiter = ',')]
        scenario: Vec<String>,
        /// Where the JSON summary goes.
        #[arg(long, default_value = "sim-nightly.json")]
        out: std::path::PathBuf,
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
        Commands::Campaign { seeds, first_seed, scenario, bug, jobs, expect_failure, expect_checker } => {
            let mut checkers = Vec::new();
            for name in &expect_checker {
                match Checker::from_name(name) {
                    Some(checker) => checkers.push(checker),
                    None => {
                        eprintln!("unknown checker {name:?}; known: {:?}", Checker::ALL.map(|c| c.name()));
                        return ExitCode::FAILURE;
                    }
                }
            }
            let options = cohort_sim::campaign::CampaignOptions {
                seeds,
                first_seed,
                scenario,
                bug,
                jobs,
                stop_on: expect_failure.then_some(checkers.clone()),
            };
            let result = cohort_sim::campaign::run(&options);
            let wanted = if checkers.is_empty() {
                "any checker".to_owned()
            } else {
                checkers.iter().map(|c| c.name()).collect::<Vec<_>>().join(" or ")
            };
            match (expect_failure, result.caught, result.failed.is_empty()) {
                (false, _, true) => ExitCode::SUCCESS,
                (false, _, false) => ExitCode::FAILURE,
                (true, Some(caught), _) => {
                    let by = caught.checkers().iter().map(|c| c.name()).collect::<Vec<_>>().join(", ");
                    println!("as expected, seed {} caught the planted bug (by {by}; wanted {wanted})", caught.seed);
                    ExitCode::SUCCESS
                }
                (true, None, _) => {
                    println!("the planted bug was NOT caught by {wanted} in {} seeds", result.run);
                    ExitCode::FAILURE
                }
            }
        }
        Commands::Nightly { minutes, jobs, first_seed, scenario, out } => {
            nightly(minutes, jobs, first_seed, scenario, &out)
        }
        Commands::CheckDeterminism { run } => check_determinism(run.seed, &run.scenario, run.bug.as_deref()),
    }
}

fn nightly(
    minutes: f64,
    jobs: usize,
    first_seed: Option<u64>,
    scenarios: Vec<String>,
    out: &std::path::Path,
) -> ExitCode {
    if !(minutes > 0.0 && minutes.is_finite()) {
        eprintln!("--minutes must be a positive number, not {minutes}");
        return ExitCode::FAILURE;
    }
    // Outside any simulation: the wall clock only picks a seed window, printed for replays.
    let first_seed = first_seed.unwrap_or_else(|| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // Far above CI's windows (seeds 1..=200), a new window each minute.
        1_000_000 + (now.as_secs() / 60) * 10_000
    });
    let known = known_scenarios();
    if known.is_empty() {
        eprintln!("cohort-sim runs seeds only when built with RUSTFLAGS=\"--cfg madsim\": use scripts/sim");
        return ExitCode::FAILURE;
    }
    if let Some(unknown) = scenarios.iter().find(|s| !known.contains(s)) {
        eprintln!("unknown scenario {unknown:?}; known: {known:?}");
        return ExitCode::FAILURE;
    }
    let options = cohort_sim::campaign::NightlyOptions {
        scenarios: if scenarios.is_empty() { known } else { scenarios },
        budget: std::time::Duration::from_secs_f64(minutes * 60.0),
        first_seed,
        jobs,
    };
    println!(
        "nightly: {} minutes, {} jobs, scenarios {}, seeds from {first_seed}; summary to {}",
        minutes,
        jobs,
        options.scenarios.join(","),
        out.display()
    );
    let summary = cohort_sim::campaign::nightly(&options);
    cohort_sim::campaign::print_nightly(&summary);
    let json = serde_json::to_string_pretty(&summary).expect("serializable");
    if let Err(error) = std::fs::write(out, json + "\n") {
        eprintln!("cannot write {}: {error}", out.display());
        return ExitCode::FAILURE;
    }
    if summary.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `cohort-sim replay` for the seed in two fresh processes and compares the hashes.
fn check_determinism(seed: u64, scenario: &str, bug: Option<&str>) -> ExitCode {
    // A run that died without a summary has no trace hash: that is no proof of determinism (a
    // run that panicked reports its hash up to the panic).
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
fn known_scenarios() -> Vec<String> {
    cohort_sim::scenario::scenarios().iter().map(|s| s.name.to_owned()).collect()
}

#[cfg(not(madsim))]
fn known_scenarios() -> Vec<String> {
    Vec::new()
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
    // A run that dies (a node's assertion, a harness bug) still ends with its trace hash, so
    // that it replays deterministically like any other failure.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(scenario::run(options))));
    let report = match outcome {
        Ok(report) => report,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("a panic without a message");
            let trace_hash = cohort_sim::trace::current_hash().unwrap_or_default();
            if json {
                let summary = cohort_sim::campaign::SeedSummary {
                    seed,
                    passed: false,
                    failures: vec![cohort_sim::checkers::Failure::new(
                        cohort_sim::checkers::Checker::Crash,
                        format!("the run panicked: {message}"),
                    )],
                    faults: Vec::new(),
                    trace_hash,
                    simulated_ms: 0,
                    operations: 0,
                    episodes: 0,
                    snapshots_installed: 0,
                    unloads: 0,
                };
                println!("{}", serde_json::to_string(&summary).expect("serializable"));
            } else {
                println!("seed {seed}: FAILED (the run panicked: {message})");
                println!("trace-hash: {trace_hash}");
            }
            return ExitCode::FAILURE;
        }
    };
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
            unloads: report.unloads,
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
