//! The campaign runners: sweep seeds, each in its own process (`cohort-sim run`), on a pool
//! of worker threads, with a progress bar; then print a summary (failures counted by the
//! checker that caught them) and, for each failing seed, the command that replays it.
//!
//! - [`run`]: a window of seeds of one scenario (CI's campaigns, and proof that a planted bug
//!   is caught by the checker meant for it).
//! - [`nightly`]: every scenario round-robin over a fresh window of seeds until a time budget
//!   is spent, with a JSON summary for whoever runs it on a schedule.

use crate::checkers::{Checker, Failure};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// One seed's result, as `cohort-sim run --json` prints it on its last line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedSummary {
    pub seed: u64,
    pub passed: bool,
    pub failures: Vec<Failure>,
    pub faults: Vec<String>,
    pub trace_hash: String,
    pub simulated_ms: u64,
    pub operations: usize,
    pub episodes: u64,
    pub snapshots_installed: u64,
    #[serde(default)]
    pub unloads: u64,
}

impl SeedSummary {
    /// The checkers that reported something, each once, in `Checker` order.
    pub fn checkers(&self) -> Vec<Checker> {
        let mut checkers: Vec<Checker> = self.failures.iter().map(|f| f.checker).collect();
        checkers.sort_unstable();
        checkers.dedup();
        checkers
    }
}

/// One seed to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub scenario: String,
    pub seed: u64,
    pub bug: Option<String>,
}

impl Job {
    /// The one command that replays this seed with its full trace.
    pub fn replay_command(&self) -> String {
        let mut command = format!("scripts/sim replay --seed {} --scenario {}", self.seed, self.scenario);
        if let Some(bug) = &self.bug {
            command.push_str(&format!(" --bug {bug}"));
        }
        command
    }
}

/// Runs one seed in a child process of this same binary. A process that dies without a
/// summary (a failed assertion, a panic) is a failed seed, caught by [`Checker::Crash`], with
/// an empty trace hash.
pub fn run_seed(seed: u64, scenario: &str, bug: Option<&str>) -> SeedSummary {
    let exe = std::env::current_exe().expect("the campaign knows its own binary");
    let mut command = Command::new(exe);
    command.args(["run", "--json", "--seed", &seed.to_string(), "--scenario", scenario]);
    if let Some(bug) = bug {
        command.args(["--bug", bug]);
    }
    let output = command.stdin(Stdio::null()).stderr(Stdio::piped()).output().expect("starting a seed's process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    match stdout.lines().last().and_then(|line| serde_json::from_str::<SeedSummary>(line).ok()) {
        Some(summary) => summary,
        None => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("assert"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ");
            SeedSummary {
                seed,
                passed: false,
                failures: vec![Failure::new(Checker::Crash, format!("the run died ({}): {reason}", output.status))],
                faults: Vec::new(),
                trace_hash: String::new(),
                simulated_ms: 0,
                operations: 0,
                episodes: 0,
                snapshots_installed: 0,
                unloads: 0,
            }
        }
    }
}

/// Runs jobs from `next` on `jobs` threads until it returns `None` or `stop` is set, handing
/// each result to `done` on the calling thread as it arrives; `done` returns whether to stop.
fn run_pool(
    jobs: usize,
    next: impl Fn() -> Option<Job> + Send + Sync + 'static,
    mut done: impl FnMut(Job, SeedSummary) -> bool,
) {
    let next = Arc::new(next);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let mut workers = Vec::new();
    for _ in 0..jobs.max(1) {
        let (tx, next, stop) = (tx.clone(), next.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Some(job) = next() else { return };
                let summary = run_seed(job.seed, &job.scenario, job.bug.as_deref());
                if tx.send((job, summary)).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    for (job, summary) in rx {
        if done(job, summary) {
            stop.store(true, Ordering::SeqCst);
        }
    }
    for worker in workers {
        worker.join().expect("campaign workers do not panic");
    }
}

/// Seeds that failed, counted by each checker that reported something in them.
fn count_by_checker<'a>(summaries: impl IntoIterator<Item = &'a SeedSummary>) -> BTreeMap<Checker, u64> {
    let mut counts = BTreeMap::new();
    for summary in summaries {
        for checker in summary.checkers() {
            *counts.entry(checker).or_default() += 1;
        }
    }
    counts
}

fn format_counts(counts: &BTreeMap<Checker, u64>) -> String {
    if counts.is_empty() {
        return "none".to_owned();
    }
    counts.iter().map(|(checker, n)| format!("{checker} {n}")).collect::<Vec<_>>().join(", ")
}

/// Prints a line above the bar; a hidden bar (output not a terminal, as in CI or cron) would
/// swallow it, so then it goes to stdout directly.
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
    bar
}

#[derive(Clone, Debug)]
pub struct CampaignOptions {
    pub seeds: u64,
    pub first_seed: u64,
    pub scenario: String,
    pub bug: Option<String>,
    pub jobs: usize,
    /// Stop at the first seed that one of these checkers fails (any checker if empty): proof
    /// that a planted bug is caught, and by what.
    pub stop_on: Option<Vec<Checker>>,
}

pub struct CampaignResult {
    pub run: u64,
    pub failed: Vec<SeedSummary>,
    /// The first seed (in completion order) that a checker of `stop_on` failed.
    pub caught: Option<SeedSummary>,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
}

/// Whether `summary` failed by one of `checkers` (by any, if `checkers` is empty).
fn caught_by(summary: &SeedSummary, checkers: &[Checker]) -> bool {
    !summary.passed && (checkers.is_empty() || summary.checkers().iter().any(|c| checkers.contains(c)))
}

pub fn run(options: &CampaignOptions) -> CampaignResult {
    let started = Instant::now();
    let bar = progress_bar(options.seeds, "{bar:40} {pos}/{len} seeds  {msg}  [{elapsed_precise}, eta {eta}]");
    let next_index = Arc::new(Mutex::new(0u64));
    let next = {
        let (seeds, first_seed) = (options.seeds, options.first_seed);
        let (scenario, bug) = (options.scenario.clone(), options.bug.clone());
        move || {
            let mut index = next_index.lock().expect("not poisoned");
            (*index < seeds).then(|| {
                *index += 1;
                Job { scenario: scenario.clone(), seed: first_seed + *index - 1, bug: bug.clone() }
            })
        }
    };
    let mut summaries = Vec::new();
    let mut caught = None;
    run_pool(options.jobs, next, |job, summary| {
        bar.inc(1);
        if !summary.passed {
            for failure in &summary.failures {
                say(&bar, format!("seed {} FAILED: {failure}", summary.seed));
            }
            say(&bar, format!("  replay: {}", job.replay_command()));
        }
        let stop = match &options.stop_on {
            Some(checkers) if caught.is_none() && caught_by(&summary, checkers) => {
                caught = Some(summary.clone());
                true
            }
            _ => false,
        };
        summaries.push(summary);
        bar.set_message(format!("{} failed", summaries.iter().filter(|s| !s.passed).count()));
        stop
    });
    bar.finish();
    summaries.sort_by_key(|s| s.seed);
    let wall_seconds = started.elapsed().as_secs_f64();
    let simulated_seconds = summaries.iter().map(|s| s.simulated_ms as f64 / 1000.0).sum::<f64>();
    let failed: Vec<SeedSummary> = summaries.iter().filter(|s| !s.passed).cloned().collect();
    let mut per_fault: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in &summaries {
        for f in &s.faults {
            let entry = per_fault.entry(f.as_str()).or_default();
            entry.0 += 1;
            entry.1 += u64::from(!s.passed);
        }
    }
    println!();
    println!(
        "scenario {}  bug {}  seeds run {}  passed {}  failed {}",
        options.scenario,
        options.bug.as_deref().unwrap_or("none"),
        summaries.len(),
        summaries.len() - failed.len(),
        failed.len()
    );
    println!(
        "wall {:.1} s  simulated {:.0} s  simulated/wall {:.1}x  seeds/minute {:.1}  operations {}  \
         snapshots installed {} (in {} seeds)  replicas unloaded {} (in {} seeds)",
        wall_seconds,
        simulated_seconds,
        simulated_seconds / wall_seconds.max(1e-9),
        summaries.len() as f64 * 60.0 / wall_seconds.max(1e-9),
        summaries.iter().map(|s| s.operations).sum::<usize>(),
        summaries.iter().map(|s| s.snapshots_installed).sum::<u64>(),
        summaries.iter().filter(|s| s.snapshots_installed > 0).count(),
        summaries.iter().map(|s| s.unloads).sum::<u64>(),
        summaries.iter().filter(|s| s.unloads > 0).count(),
    );
    println!("failed seeds by checker: {}", format_counts(&count_by_checker(&failed)));
    println!("faults (seeds with it on / of those failed):");
    for (fault, (on, failed)) in &per_fault {
        println!("  {fault:<18} {on:>5} / {failed}");
    }
    for s in &failed {
        let job = Job { scenario: options.scenario.clone(), seed: s.seed, bug: options.bug.clone() };
        println!("FAILED seed {} [{}]", s.seed, s.checkers().iter().map(|c| c.name()).collect::<Vec<_>>().join(","));
        for failure in &s.failures {
            println!("  {failure}");
        }
        println!("  replay: {}", job.replay_command());
    }
    CampaignResult { run: summaries.len() as u64, failed, caught, wall_seconds, simulated_seconds }
}

#[derive(Clone, Debug)]
pub struct NightlyOptions {
    pub scenarios: Vec<String>,
    /// No seed starts after this much wall time; running ones finish.
    pub budget: Duration,
    /// Seed `first_seed + k` of every scenario runs in round `k`.
    pub first_seed: u64,
    pub jobs: usize,
}

/// A nightly run's results per scenario.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ScenarioTotals {
    pub seeds: u64,
    pub passed: u64,
    pub failed: u64,
    pub simulated_seconds: f64,
    pub operations: u64,
    /// Failed seeds by each checker that reported something in them.
    pub failures_by_checker: BTreeMap<Checker, u64>,
}

/// A failing seed of a nightly run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NightlyFailure {
    pub scenario: String,
    pub seed: u64,
    pub failures: Vec<Failure>,
    pub replay: String,
}

/// What `cohort-sim nightly` writes as JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NightlySummary {
    pub first_seed: u64,
    /// The last round started: scenarios ran seeds `first_seed ..= first_seed + rounds - 1`
    /// (the last round may be partial).
    pub rounds: u64,
    pub jobs: usize,
    pub budget_minutes: f64,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
    pub simulated_per_wall: f64,
    pub seeds: u64,
    pub failed: u64,
    pub failures_by_checker: BTreeMap<Checker, u64>,
    pub scenarios: BTreeMap<String, ScenarioTotals>,
    pub failures: Vec<NightlyFailure>,
}

impl NightlySummary {
    pub fn passed(&self) -> bool {
        self.failed == 0
    }
}

/// How often a nightly run prints a line saying where it is (for logs, where the bar is not
/// drawn).
const NIGHTLY_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Runs every scenario round-robin (round `k` runs seed `first_seed + k` of each) until the
/// budget is spent; returns the summary.
pub fn nightly(options: &NightlyOptions) -> NightlySummary {
    assert!(!options.scenarios.is_empty(), "a nightly run needs a scenario");
    let started = Instant::now();
    let budget_seconds = options.budget.as_secs().max(1);
    let bar = progress_bar(budget_seconds, "{bar:40} {pos}/{len} s  {msg}");
    let next_job = Arc::new(Mutex::new(0u64));
    let next = {
        let (scenarios, first_seed, budget) = (options.scenarios.clone(), options.first_seed, options.budget);
        let next_job = next_job.clone();
        move || {
            if started.elapsed() >= budget {
                return None;
            }
            let mut k = next_job.lock().expect("not poisoned");
            let job = Job {
                scenario: scenarios[(*k % scenarios.len() as u64) as usize].clone(),
                seed: first_seed + *k / scenarios.len() as u64,
                bug: None,
            };
            *k += 1;
            Some(job)
        }
    };
    let mut scenarios: BTreeMap<String, ScenarioTotals> =
        options.scenarios.iter().map(|s| (s.clone(), ScenarioTotals::default())).collect();
    let mut failures = Vec::new();
    let mut last_report = Instant::now();
    run_pool(options.jobs, next, |job, summary| {
        let totals = scenarios.get_mut(&job.scenario).expect("a scenario of this run");
        totals.seeds += 1;
        totals.simulated_seconds += summary.simulated_ms as f64 / 1000.0;
        totals.operations += summary.operations as u64;
        if summary.passed {
            totals.passed += 1;
        } else {
            totals.failed += 1;
            for checker in summary.checkers() {
                *totals.failures_by_checker.entry(checker).or_default() += 1;
            }
            for failure in &summary.failures {
                say(&bar, format!("{} seed {} FAILED: {failure}", job.scenario, job.seed));
            }
            say(&bar, format!("  replay: {}", job.replay_command()));
            failures.push(NightlyFailure {
                scenario: job.scenario.clone(),
                seed: job.seed,
                failures: summary.failures,
                replay: job.replay_command(),
            });
        }
        let where_it_is = format!(
            "{} seeds, {} failed ({})",
            scenarios.values().map(|t| t.seeds).sum::<u64>(),
            failures.len(),
            scenarios.iter().map(|(name, t)| format!("{name} {}", t.seeds)).collect::<Vec<_>>().join(", ")
        );
        bar.set_position(started.elapsed().as_secs().min(budget_seconds));
        bar.set_message(where_it_is.clone());
        if last_report.elapsed() >= NIGHTLY_REPORT_EVERY {
            last_report = Instant::now();
            say(&bar, format!("[{:>5} s] {where_it_is}", started.elapsed().as_secs()));
        }
        false
    });
    bar.finish();
    let wall_seconds = started.elapsed().as_secs_f64();
    let simulated_seconds = scenarios.values().map(|t| t.simulated_seconds).sum::<f64>();
    let mut failures_by_checker = BTreeMap::new();
    for totals in scenarios.values() {
        for (checker, n) in &totals.failures_by_checker {
            *failures_by_checker.entry(*checker).or_default() += n;
        }
    }
    failures.sort_by(|a, b| (&a.scenario, a.seed).cmp(&(&b.scenario, b.seed)));
    let jobs_started = *next_job.lock().expect("not poisoned");
    NightlySummary {
        first_seed: options.first_seed,
        rounds: jobs_started.div_ceil(options.scenarios.len() as u64),
        jobs: options.jobs,
        budget_minutes: options.budget.as_secs_f64() / 60.0,
        wall_seconds,
        simulated_seconds,
        simulated_per_wall: simulated_seconds / wall_seconds.max(1e-9),
        seeds: scenarios.values().map(|t| t.seeds).sum(),
        failed: failures.len() as u64,
        failures_by_checker,
        scenarios,
        failures,
    }
}

/// Prints a nightly summary for people (the JSON is for machines).
pub fn print_nightly(summary: &NightlySummary) {
    println!();
    println!(
        "nightly: {} seeds ({} rounds from seed {}), {} failed; wall {:.0} s, simulated {:.0} s, simulated/wall {:.1}x",
        summary.seeds,
        summary.rounds,
        summary.first_seed,
        summary.failed,
        summary.wall_seconds,
        summary.simulated_seconds,
        summary.simulated_per_wall
    );
    println!("failed seeds by checker: {}", format_counts(&summary.failures_by_checker));
    for (name, totals) in &summary.scenarios {
        println!(
            "  {name:<18} seeds {:>6}  failed {:>4}  simulated {:>8.0} s  operations {:>9}  [{}]",
            totals.seeds,
            totals.failed,
            totals.simulated_seconds,
            totals.operations,
            format_counts(&totals.failures_by_checker)
        );
    }
    for failure in &summary.failures {
        println!("FAILED {} seed {}", failure.scenario, failure.seed);
        for f in &failure.failures {
            println!("  {f}");
        }
        println!("  replay: {}", failure.replay);
    }
}
