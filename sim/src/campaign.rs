//! The campaign runner: sweeps seeds, each in its own process (`cohort-sim run`), with a
//! progress bar, and prints a summary and, for each failing seed, the command that replays it.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// One seed's result, as `cohort-sim run --json` prints it on its last line.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SeedSummary {
    pub seed: u64,
    pub passed: bool,
    pub failures: Vec<String>,
    pub faults: Vec<String>,
    pub trace_hash: String,
    pub simulated_ms: u64,
    pub operations: usize,
    pub episodes: u64,
    pub snapshots_installed: u64,
}

#[derive(Clone, Debug)]
pub struct CampaignOptions {
    pub seeds: u64,
    pub first_seed: u64,
    pub scenario: String,
    pub bug: Option<String>,
    pub jobs: usize,
    /// Stop at the first failing seed (proving a planted bug is caught).
    pub stop_on_failure: bool,
}

pub struct CampaignResult {
    pub run: u64,
    pub failed: Vec<SeedSummary>,
    pub wall_seconds: f64,
    pub simulated_seconds: f64,
}

fn replay_command(seed: u64, options: &CampaignOptions) -> String {
    let mut command = format!("scripts/sim replay --seed {seed} --scenario {}", options.scenario);
    if let Some(bug) = &options.bug {
        command.push_str(&format!(" --bug {bug}"));
    }
    command
}

/// Runs one seed in a child process of this same binary. A process that dies without a
/// summary (a failed assertion) is a failed seed with an empty trace hash.
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
            // The process died without a summary: a panic (an invariant assert) is a failure too.
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
                failures: vec![format!("the run crashed ({}): {reason}", output.status)],
                faults: Vec::new(),
                trace_hash: String::new(),
                simulated_ms: 0,
                operations: 0,
                episodes: 0,
                snapshots_installed: 0,
            }
        }
    }
}

pub fn run(options: &CampaignOptions) -> CampaignResult {
    let started = Instant::now();
    let bar = indicatif::ProgressBar::new(options.seeds);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} seeds  {msg}  [{elapsed_precise}, eta {eta}]")
            .expect("a valid template"),
    );
    let (tx, rx) = mpsc::channel();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..options.jobs.max(1) {
        let (tx, next, stop, options) = (tx.clone(), next.clone(), stop.clone(), options.clone());
        workers.push(std::thread::spawn(move || loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if i >= options.seeds || stop.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let summary = run_seed(options.first_seed + i, &options.scenario, options.bug.as_deref());
            if !summary.passed && options.stop_on_failure {
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            if tx.send(summary).is_err() {
                return;
            }
        }));
    }
    drop(tx);
    let mut summaries = Vec::new();
    for summary in rx {
        bar.inc(1);
        if !summary.passed {
            bar.println(format!("seed {} FAILED: {}", summary.seed, summary.failures.join("; ")));
            bar.println(format!("  replay: {}", replay_command(summary.seed, options)));
        }
        summaries.push(summary);
        let failed = summaries.iter().filter(|s| !s.passed).count();
        bar.set_message(format!("{failed} failed"));
    }
    for worker in workers {
        worker.join().expect("campaign workers do not panic");
    }
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
         snapshots installed {} (in {} seeds)",
        wall_seconds,
        simulated_seconds,
        simulated_seconds / wall_seconds.max(1e-9),
        summaries.len() as f64 * 60.0 / wall_seconds.max(1e-9),
        summaries.iter().map(|s| s.operations).sum::<usize>(),
        summaries.iter().map(|s| s.snapshots_installed).sum::<u64>(),
        summaries.iter().filter(|s| s.snapshots_installed > 0).count(),
    );
    println!("faults (seeds with it on / of those failed):");
    for (fault, (on, failed)) in &per_fault {
        println!("  {fault:<18} {on:>5} / {failed}");
    }
    for s in &failed {
        println!("FAILED seed {}: {}", s.seed, s.failures.join("; "));
        println!("  replay: {}", replay_command(s.seed, options));
    }
    CampaignResult { run: summaries.len() as u64, failed, wall_seconds, simulated_seconds }
}
