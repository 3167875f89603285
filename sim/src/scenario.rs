//! One seed's run: the seed chooses the fault swarm (which faults, how hard), the cluster runs
//! the workload through a safety phase under faults, then everything heals and the run checks
//! liveness, convergence, Raft safety and linearizability.

use crate::checkers::{check_linearizable, check_no_lost_writes, Checker, Failure};
use crate::cluster::SimCluster;
use crate::faults::{NetworkFaults, SharedFaults};
use crate::trace::{now_ns, Trace};
use crate::workload::{self, Shared, SimClient, WorkloadConfig};
use cohort_core::bugs::Bug;
use cohort_core::ids::NodeId;
use cohort_core::node::DIRECTORY;
use cohort_core::node::{ApiError, MembersAction};
use cohort_core::persist::RaftMode;
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Simulated time of the phase under faults.
pub const SAFETY_PHASE: Duration = Duration::from_secs(30);
/// After the heal, every partition must elect and commit a write within this.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(30);
/// After liveness, replicas must reach equal applied indexes within this.
pub const CONVERGENCE_BOUND: Duration = Duration::from_secs(30);
/// Explored states per key before the linearizability search gives up (a failure, not a pass).
pub const LINEARIZABILITY_STATES_MAX: usize = 2_000_000;

/// A named cluster shape and workload.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub nodes: u64,
    pub workload: WorkloadConfig,
    /// Which faults the seed's swarm may draw.
    pub menu: FaultMenu,
    /// After the usual checks, idle partitions must quiesce, wake without elections and fail
    /// over through node liveness alone (`quiescence.rs`).
    pub quiescence: bool,
    /// Replicas of each new partition (default: three, or fewer nodes).
    pub replicas: Option<usize>,
    /// All along the safety phase, an operator turns Raft off and on for the workload's
    /// partitions (which must have one replica each for off to be allowed).
    pub raft_toggle: bool,
}

/// The faults a scenario's swarms draw from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMenu {
    /// Every fault but operator membership changes.
    Standard,
    /// Every fault, membership changes included.
    WithMembership,
    /// Power losses of the whole cluster (always on) and every network, disk-latency, pause
    /// and clock fault, but no crash of some nodes only: a durability bug then loses data on
    /// every replica at once, which only the clients' history can show (a node that lost what
    /// it acknowledged while its leader lives trips raft-rs's own assertions first). Jepsen's
    /// LazyFS tests lose unsynced writes the same way.
    PowerLoss,
}

impl FaultMenu {
    fn allows(self, fault: Fault) -> bool {
        match self {
            FaultMenu::Standard => fault != Fault::Membership,
            FaultMenu::WithMembership => true,
            FaultMenu::PowerLoss => !matches!(
                fault,
                Fault::Crash
                    | Fault::CrashMany
                    | Fault::CrashStorm
                    | Fault::CrashVoter
                    | Fault::CrashAfterAck
                    | Fault::FsyncFailure
                    | Fault::Membership
            ),
        }
    }

    fn always(self, fault: Fault) -> bool {
        self == FaultMenu::PowerLoss && fault == Fault::PowerLoss
    }
}

pub fn scenarios() -> Vec<Scenario> {
    let workload = WorkloadConfig { repos: 3, keys_per_repo: 3, clients: 5, read_ratio: 0.4 };
    let scenario = |name, nodes, workload: &WorkloadConfig, menu| Scenario {
        name,
        nodes,
        workload: workload.clone(),
        menu,
        quiescence: false,
        replicas: None,
        raft_toggle: false,
    };
    vec![
        scenario("three", 3, &workload, FaultMenu::Standard),
        // More partitions than nodes: more elections collide after each mass restart.
        scenario("five", 5, &WorkloadConfig { repos: 6, ..workload.clone() }, FaultMenu::Standard),
        scenario("three-membership", 3, &workload, FaultMenu::WithMembership),
        scenario("five-membership", 5, &workload, FaultMenu::WithMembership),
        scenario("three-power", 3, &workload, FaultMenu::PowerLoss),
        // Many partitions, few of them busy at a time: they quiesce and wake under every fault,
        // then must quiesce, wake without elections and fail over with no request to help.
        Scenario {
            quiescence: true,
            ..scenario("three-quiesce", 3, &WorkloadConfig { repos: 24, ..workload.clone() }, FaultMenu::Standard)
        },
        // One replica per partition, each turned off and on again and again under the faults
        // while clients write and read it: a switch, a crash or a power loss at any moment.
        Scenario {
            replicas: Some(1),
            raft_toggle: true,
            ..scenario("three-raft-mode", 3, &WorkloadConfig { repos: 4, ..workload.clone() }, FaultMenu::Standard)
        },
    ]
}

pub fn scenario(name: &str) -> Option<Scenario> {
    scenarios().into_iter().find(|s| s.name == name)
}

/// The faults a seed turned on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Crash,
    CrashMany,
    /// Every node loses power at the same instant and comes back together: only what each
    /// synced survives, and no surviving leader remembers what its followers acknowledged.
    PowerLoss,
    /// Crash and restart nodes again and again, each right after a leader is elected.
    CrashStorm,
    /// Restart every node at once (elections collide), then crash each node the moment it
    /// grants a vote.
    CrashVoter,
    /// Crash a node the instant it has acknowledged a write: its followers may not know yet
    /// that the write committed, so the next leader learns it late, with clients already
    /// counting on it.
    CrashAfterAck,
    Pause,
    /// Freeze a leader; it wakes still believing it leads.
    PauseLeader,
    /// Disks take up to tens of milliseconds per write and fsync.
    SlowDisk,
    IsolateOne,
    IsolateLeader,
    SplitAsymmetric,
    SplitHalves,
    Loss,
    Delay,
    Duplicate,
    ClockSkew,
    FsyncFailure,
    /// An operator adds and removes replicas of a partition while everything else goes on.
    Membership,
    /// All along, an operator moves partitions' leadership to other nodes, at random moments
    /// or while a write to the partition is in flight: each new leader takes over at once, its
    /// state machine perhaps still applying what the old one committed and answered for.
    TransferLeader,
}

impl Fault {
    pub const ALL: [Fault; 20] = [
        Fault::Crash,
        Fault::CrashMany,
        Fault::PowerLoss,
        Fault::CrashStorm,
        Fault::CrashVoter,
        Fault::CrashAfterAck,
        Fault::Pause,
        Fault::PauseLeader,
        Fault::SlowDisk,
        Fault::IsolateOne,
        Fault::IsolateLeader,
        Fault::SplitAsymmetric,
        Fault::SplitHalves,
        Fault::Loss,
        Fault::Delay,
        Fault::Duplicate,
        Fault::ClockSkew,
        Fault::FsyncFailure,
        Fault::Membership,
        Fault::TransferLeader,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Crash => "crash",
            Fault::CrashMany => "crash-many",
            Fault::PowerLoss => "power-loss",
            Fault::CrashStorm => "crash-storm",
            Fault::CrashVoter => "crash-voter",
            Fault::CrashAfterAck => "crash-after-ack",
            Fault::Pause => "pause",
            Fault::PauseLeader => "pause-leader",
            Fault::SlowDisk => "slow-disk",
            Fault::IsolateOne => "isolate-one",
            Fault::IsolateLeader => "isolate-leader",
            Fault::SplitAsymmetric => "split-asymmetric",
            Fault::SplitHalves => "split-halves",
            Fault::Loss => "loss",
            Fault::Delay => "delay",
            Fault::Duplicate => "duplicate",
            Fault::ClockSkew => "clock-skew",
            Fault::FsyncFailure => "fsync-failure",
            Fault::Membership => "membership",
            Fault::TransferLeader => "transfer-leader",
        }
    }

    /// Faults that happen in episodes (the others are background conditions).
    fn is_episode(self) -> bool {
        !matches!(
            self,
            Fault::Loss | Fault::Delay | Fault::Duplicate | Fault::ClockSkew | Fault::SlowDisk | Fault::TransferLeader
        )
    }
}

/// The seed's swarm: a random subset of faults, and intensities.
#[derive(Clone, Debug)]
pub struct Swarm {
    pub faults: BTreeSet<Fault>,
    pub loss: f64,
    pub duplicate: f64,
    pub delay_max: Duration,
    pub clock_rates_ppm: BTreeMap<NodeId, i64>,
    /// Pause between two episodes, drawn up to this.
    pub episode_gap_max: Duration,
    /// Upper bound of one disk operation's latency.
    pub disk_latency_max: Duration,
}

impl Swarm {
    pub fn choose(rng: &mut StdRng, nodes: u64, menu: FaultMenu) -> Swarm {
        let mut faults = BTreeSet::new();
        for fault in Fault::ALL {
            if !menu.allows(fault) {
                continue;
            }
            // Faults that strike at the worst instant find the subtlest bugs: favour them.
            let odds =
                if matches!(fault, Fault::CrashVoter | Fault::CrashStorm | Fault::CrashAfterAck | Fault::PauseLeader) {
                    0.7
                } else {
                    0.5
                };
            if rng.gen_bool(odds) || menu.always(fault) {
                faults.insert(fault);
            }
        }
        let on = |f: Fault| faults.contains(&f);
        let clock_rates_ppm = (1..=nodes)
            .map(|n| (NodeId(n), if on(Fault::ClockSkew) { rng.gen_range(-200_000..=200_000) } else { 0 }))
            .collect();
        Swarm {
            loss: if on(Fault::Loss) { rng.gen_range(0.01..0.2) } else { 0.0 },
            duplicate: if on(Fault::Duplicate) { rng.gen_range(0.01..0.1) } else { 0.0 },
            delay_max: if on(Fault::Delay) { Duration::from_millis(rng.gen_range(5..200)) } else { Duration::ZERO },
            clock_rates_ppm,
            episode_gap_max: Duration::from_millis(rng.gen_range(500..4000)),
            disk_latency_max: if on(Fault::SlowDisk) {
                Duration::from_millis(rng.gen_range(2..40))
            } else {
                Duration::from_micros(rng.gen_range(10..500))
            },
            faults,
        }
    }

    fn background(&self) -> NetworkFaults {
        NetworkFaults {
            loss: self.loss,
            duplicate: self.duplicate,
            delay_max: self.delay_max,
            ..NetworkFaults::default()
        }
    }
}

/// How a run is asked for.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub scenario: Scenario,
    pub bug: Option<Bug>,
    /// Keep every trace line for printing.
    pub keep_trace: bool,
}

/// What a run found.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub seed: u64,
    pub failures: Vec<Failure>,
    pub faults: Vec<Fault>,
    pub trace_hash: String,
    pub trace: Vec<String>,
    pub simulated_ns: u64,
    pub operations: usize,
    pub episodes: u64,
    pub snapshots_installed: u64,
    pub unloads: u64,
}

fn trace_event(trace: &Trace, line: impl AsRef<str>) {
    trace.event(now_ns(), line);
}

/// Runs one seed inside the madsim runtime (call from `Runtime::block_on`).
pub async fn run(options: RunOptions) -> RunReport {
    let seed = options.seed;
    let scenario = options.scenario.clone();
    #[cfg(madsim)]
    cohort_core::bugs::activate(options.bug);
    let trace = Trace::new(options.keep_trace);
    let mut rng = StdRng::seed_from_u64(seed);
    let swarm = Swarm::choose(&mut rng, scenario.nodes, scenario.menu);
    trace_event(
        &trace,
        format!(
            "seed {seed} scenario {} bug {} faults [{}] loss {:.3} duplicate {:.3} delay_max {:?} disk_latency_max {:?} clock_ppm {:?}",
            scenario.name,
            options.bug.map_or("none", |b| b.name()),
            swarm.faults.iter().map(|f| f.name()).collect::<Vec<_>>().join(","),
            swarm.loss,
            swarm.duplicate,
            swarm.delay_max,
            swarm.disk_latency_max,
            swarm.clock_rates_ppm.values().collect::<Vec<_>>()
        ),
    );
    let faults: SharedFaults = Arc::new(Mutex::new(NetworkFaults::default()));
    let cluster = Arc::new(Mutex::new(SimCluster::start(
        scenario.nodes,
        seed,
        faults.clone(),
        trace.clone(),
        &swarm.clock_rates_ppm,
        swarm.disk_latency_max,
        scenario.quiescence,
        scenario.replicas,
    )));
    let (services, observer) = {
        let c = cluster.lock().expect("not poisoned");
        (c.services(), c.observer.clone())
    };
    let clients = madsim::runtime::Handle::current()
        .create_node()
        .name("clients")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
        .build();
    let shared = Shared::new(services, trace.clone());
    let mut failures = Vec::new();

    // Setup, without faults.
    {
        let shared = shared.clone();
        let repos = scenario.workload.repos;
        clients.spawn(async move { workload::create_repositories(&shared, repos, seed).await }).await.expect("setup");
    }

    // Safety phase: the workload under the swarm's faults.
    *faults.lock().expect("not poisoned") = swarm.background();
    let mut workers = Vec::new();
    for id in 1..=scenario.workload.clients {
        let client = SimClient::new(id, seed, shared.clone());
        let config = scenario.workload.clone();
        workers.push(clients.spawn(client.run(config)));
    }
    let transfers = swarm.faults.contains(&Fault::TransferLeader).then(|| {
        let (shared, trace, repos, nodes) = (shared.clone(), trace.clone(), scenario.workload.repos, scenario.nodes);
        let cluster = cluster.clone();
        clients.spawn(transfer_leaders(cluster, SimClient::new(3_000, seed, shared), trace, seed, repos, nodes))
    });
    let toggles = scenario.raft_toggle.then(|| {
        let (shared, trace, repos) = (shared.clone(), trace.clone(), scenario.workload.repos);
        clients.spawn(toggle_raft(SimClient::new(4_000, seed, shared), trace, seed, repos))
    });
    let mut operator = SimClient::new(2_000, seed, shared.clone());
    let episodes =
        drive_faults(&cluster, &swarm, &mut rng, &trace, scenario.nodes, &mut operator, scenario.workload.repos).await;
    if let Some(transfers) = transfers {
        transfers.await.expect("the transfer operator does not panic");
    }
    if let Some(toggles) = toggles {
        toggles.await.expect("the Raft mode operator does not panic");
    }

    // Heal: no fault from here on.
    trace_event(&trace, "heal");
    heal(&cluster, &faults);
    shared.stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.expect("workers do not panic");
    }

    // Liveness: every partition commits a write within the bound.
    let healed_at = now_ns();
    let liveness = {
        let shared = shared.clone();
        let repos = scenario.workload.repos;
        let keys = scenario.workload.keys_per_repo;
        clients.spawn(async move {
            let mut client = SimClient::new(1_000, seed, shared);
            let deadline = tokio::time::Instant::now() + LIVENESS_BOUND;
            let mut missing = Vec::new();
            for r in 0..repos {
                let mut committed = false;
                while !committed && tokio::time::Instant::now() < deadline {
                    committed = client.cas(r, 0, true).await == crate::history::Outcome::CasOk;
                }
                if !committed {
                    missing.push(r);
                }
            }
            // Final reads of every key: a lost acknowledged write shows here.
            for r in 0..repos {
                let mut done = false;
                while !done && tokio::time::Instant::now() < deadline {
                    done = client.read(r, keys).await;
                }
                if !done {
                    missing.push(r);
                }
            }
            missing
        })
    };
    let missing = liveness.await.expect("the liveness client does not panic");
    if !missing.is_empty() {
        failures.push(Failure::new(
            Checker::Liveness,
            format!("repositories {missing:?} took no write or read within {LIVENESS_BOUND:?} after the heal"),
        ));
    }
    trace_event(&trace, format!("liveness checked after {} ms", (now_ns() - healed_at) / 1_000_000));

    // Convergence: equal applied index and digest on every replica of every partition.
    if let Some(failure) = check_convergence(&shared, &clients, scenario.workload.repos).await {
        failures.push(Failure::new(Checker::Convergence, failure));
    }

    if scenario.quiescence {
        let phase = crate::quiescence::QuiescencePhase {
            cluster: &cluster,
            shared: &shared,
            clients: &clients,
            observer: &observer,
            trace: &trace,
            repos: scenario.workload.repos,
            seed,
        };
        failures.extend(phase.run().await);
    }

    failures.extend(observer.violations().into_iter().map(|v| Failure::new(Checker::RaftSafety, v)));
    let history = shared.history.lock().expect("not poisoned").clone();
    match check_no_lost_writes(&history) {
        Ok(report) => trace_event(
            &trace,
            format!(
                "no lost writes: {} observations, {} acknowledged writes",
                report.observations, report.acknowledged_writes
            ),
        ),
        Err(lost) => {
            for lost in lost {
                trace_event(&trace, format!("LOST WRITE: {lost}"));
                failures.push(Failure::new(Checker::LostWrite, lost.to_string()));
            }
        }
    }
    match check_linearizable(&history, LINEARIZABILITY_STATES_MAX) {
        Ok(report) => {
            trace_event(&trace, format!("linearizable: {} ops, {} states", report.ops_total(), report.states_total()))
        }
        Err(violation) => {
            trace_event(&trace, format!("NOT LINEARIZABLE: {violation}"));
            failures.push(Failure::new(Checker::Linearizability, violation.to_string()));
        }
    }
    trace_event(
        &trace,
        format!("history fingerprint {:016x}, elections {}", history.fingerprint(), observer.elections_won()),
    );
    for failure in &failures {
        trace_event(&trace, format!("FAILED {failure}"));
    }
    RunReport {
        seed,
        failures,
        faults: swarm.faults.iter().copied().collect(),
        trace_hash: trace.hash_hex(),
        trace: trace.lines(),
        simulated_ns: now_ns(),
        operations: history.len(),
        episodes,
        snapshots_installed: observer.snapshots_installed(),
        unloads: observer.unloads(),
    }
}

/// Fault episodes until the safety phase ends; returns how many ran.
async fn drive_faults(
    cluster: &Arc<Mutex<SimCluster>>,
    swarm: &Swarm,
    rng: &mut StdRng,
    trace: &Trace,
    nodes: u64,
    operator: &mut SimClient,
    repos: usize,
) -> u64 {
    let episodes: Vec<Fault> = swarm.faults.iter().copied().filter(|f| f.is_episode()).collect();
    let end = tokio::time::Instant::now() + SAFETY_PHASE;
    let ids: Vec<NodeId> = (1..=nodes).map(NodeId).collect();
    let mut count = 0;
    loop {
        let gap = Duration::from_millis(rng.gen_range(100..=swarm.episode_gap_max.as_millis() as u64));
        if tokio::time::Instant::now() + gap >= end {
            tokio::time::sleep_until(end).await;
            return count;
        }
        tokio::time::sleep(gap).await;
        let Some(&fault) = episodes.choose(rng) else { continue };
        count += 1;
        let hold = Duration::from_millis(rng.gen_range(200..6000));
        let victim = ids[rng.gen_range(0..ids.len())];
        trace_event(trace, format!("episode {}: {} (victim {victim}, {} ms)", count, fault.name(), hold.as_millis()));
        match fault {
            Fault::Crash => {
                cluster.lock().unwrap().crash(victim);
                tokio::time::sleep(hold).await;
                cluster.lock().unwrap().restart(victim);
            }
            Fault::CrashMany => {
                let mut victims = ids.clone();
                victims.shuffle(rng);
                victims.truncate(rng.gen_range(2..=ids.len()));
                for &v in &victims {
                    cluster.lock().unwrap().crash(v);
                }
                tokio::time::sleep(hold).await;
                for &v in &victims {
                    cluster.lock().unwrap().restart(v);
                }
            }
            Fault::PowerLoss => {
                for &v in &ids {
                    cluster.lock().unwrap().crash(v);
                }
                tokio::time::sleep(Duration::from_millis(rng.gen_range(10..1000))).await;
                for &v in &ids {
                    cluster.lock().unwrap().restart(v);
                }
            }
            Fault::CrashStorm => {
                let storm_end = tokio::time::Instant::now() + hold * 3;
                let observer = cluster.lock().unwrap().observer.clone();
                while tokio::time::Instant::now() < storm_end {
                    // Wait for an election to finish somewhere, then crash a node at once: its
                    // vote or its newest entries may not be durable yet.
                    let elections = observer.elections_won();
                    let wait_end = tokio::time::Instant::now() + Duration::from_secs(3);
                    while observer.elections_won() == elections && tokio::time::Instant::now() < wait_end {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    tokio::time::sleep(Duration::from_micros(rng.gen_range(0..3000))).await;
                    let v = ids[rng.gen_range(0..ids.len())];
                    cluster.lock().unwrap().crash(v);
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(10..400))).await;
                    cluster.lock().unwrap().restart(v);
                }
            }
            Fault::CrashVoter => {
                let faults = cluster.lock().unwrap().faults.clone();
                for _round in 0..rng.gen_range(3..7) {
                    for &v in &ids {
                        cluster.lock().unwrap().crash(v);
                    }
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(10..300))).await;
                    {
                        let mut f = faults.lock().unwrap();
                        f.watch_votes = true;
                        f.votes_granted.clear();
                    }
                    for &v in &ids {
                        cluster.lock().unwrap().restart(v);
                    }
                    let round_end = tokio::time::Instant::now() + Duration::from_millis(rng.gen_range(1500..4000));
                    let mut down: Vec<(NodeId, tokio::time::Instant)> = Vec::new();
                    while tokio::time::Instant::now() < round_end {
                        tokio::time::sleep(Duration::from_micros(50)).await;
                        let voters: Vec<NodeId> = std::mem::take(&mut faults.lock().unwrap().votes_granted);
                        for voter in voters {
                            if cluster.lock().unwrap().is_up(voter) && rng.gen_bool(0.7) {
                                cluster.lock().unwrap().crash(voter);
                                let back = tokio::time::Instant::now() + Duration::from_millis(rng.gen_range(5..200));
                                down.push((voter, back));
                            }
                        }
                        let now = tokio::time::Instant::now();
                        for (v, _) in down.iter().filter(|(_, back)| *back <= now) {
                            cluster.lock().unwrap().restart(*v);
                        }
                        down.retain(|(_, back)| *back > now);
                    }
                    faults.lock().unwrap().watch_votes = false;
                    for (v, _) in down {
                        cluster.lock().unwrap().restart(v);
                    }
                }
            }
            Fault::CrashAfterAck => {
                let acks = operator.acks();
                for _ in 0..rng.gen_range(1..=4) {
                    *acks.lock().unwrap() = Some(Vec::new());
                    let wait_end = tokio::time::Instant::now() + Duration::from_secs(3);
                    let acked = loop {
                        let first = acks.lock().unwrap().as_ref().and_then(|a| a.first().copied());
                        if first.is_some() || tokio::time::Instant::now() >= wait_end {
                            break first;
                        }
                        tokio::time::sleep(Duration::from_micros(50)).await;
                    };
                    *acks.lock().unwrap() = None;
                    let Some(node) = acked else { continue };
                    trace_event(trace, format!("node {node} acknowledged a write: crashing it"));
                    cluster.lock().unwrap().crash(node);
                    tokio::time::sleep(Duration::from_millis(rng.gen_range(10..hold.as_millis() as u64))).await;
                    cluster.lock().unwrap().restart(node);
                }
            }
            Fault::Membership if rng.gen_bool(0.25) => {
                // A node loses its data directory and the operator replaces it: only when no
                // partition needs it for a quorum (a partition whose other voters are not a
                // quorum is lost with the disk, in any Raft system).
                if survives_losing(operator.services(), victim, repos).await {
                    cluster.lock().unwrap().wipe_and_join(victim);
                    replace_node(operator, trace, victim, &ids, repos).await;
                } else {
                    trace_event(trace, format!("node {victim} keeps its disk: a partition needs it for a quorum"));
                }
            }
            Fault::Membership => {
                // Take a replica out, then bring it back as a voter (it rejoins empty and
                // catches up from the log); with more nodes than replicas, sometimes add a
                // node that never held the partition.
                let partition = cohort_core::ids::PartitionId(rng.gen_range(1..=repos as u64));
                let node = ids[rng.gen_range(0..ids.len())];
                // Sometimes the operator gives up early: the change may be committed in Raft
                // and not yet recorded in the directory, which the partition's leader then does.
                let patience =
                    if rng.gen_bool(0.5) { workload::OP_TIMEOUT } else { Duration::from_millis(rng.gen_range(5..300)) };
                for action in [MembersAction::Remove, MembersAction::AddVoter] {
                    let outcome = operator.change_members_within(patience, partition, node, action).await;
                    trace_event(trace, format!("membership {action:?} node {node} partition {partition}: {outcome:?}"));
                }
            }
            Fault::Pause | Fault::PauseLeader => {
                let target = if fault == Fault::PauseLeader {
                    current_leader(cluster, rng.gen_range(0..=3)).unwrap_or(victim)
                } else {
                    victim
                };
                cluster.lock().unwrap().pause(target);
                tokio::time::sleep(hold).await;
                cluster.lock().unwrap().resume(target);
            }
            Fault::IsolateOne | Fault::IsolateLeader | Fault::SplitAsymmetric | Fault::SplitHalves => {
                let faults = cluster.lock().unwrap().faults.clone();
                {
                    let mut f = faults.lock().unwrap();
                    match fault {
                        Fault::IsolateOne => f.split(&[victim], &others(&ids, &[victim])),
                        Fault::IsolateLeader => {
                            let leader = current_leader(cluster, rng.gen_range(0..=3)).unwrap_or(victim);
                            trace_event(trace, format!("isolating leader {leader}"));
                            f.split(&[leader], &others(&ids, &[leader]));
                        }
                        Fault::SplitAsymmetric => {
                            // The victim hears everyone but nobody hears it.
                            for &other in &others(&ids, &[victim]) {
                                f.cut.insert((victim, other));
                            }
                        }
                        _ => {
                            let mut shuffled = ids.clone();
                            shuffled.shuffle(rng);
                            let (a, b) = shuffled.split_at(ids.len() / 2);
                            f.split(a, b);
                        }
                    }
                }
                tokio::time::sleep(hold).await;
                faults.lock().unwrap().cut.clear();
                trace_event(trace, "links restored");
            }
            Fault::FsyncFailure => {
                cluster.lock().unwrap().fail_syncs(victim, true);
                tokio::time::sleep(hold).await;
                // A node whose log failed stops its partitions: an operator restarts it.
                let mut c = cluster.lock().unwrap();
                c.crash(victim);
                c.restart(victim);
            }
            Fault::Loss
            | Fault::Delay
            | Fault::Duplicate
            | Fault::ClockSkew
            | Fault::SlowDisk
            | Fault::TransferLeader => unreachable!("background faults"),
        }
    }
}

/// Whether every partition (the directory too) keeps a quorum of voters without `node`, in
/// every replica's view of its membership, and none is changing it through a joint
/// configuration.
async fn survives_losing(services: &crate::cluster::Services, node: NodeId, repos: usize) -> bool {
    let partitions = std::iter::once(DIRECTORY).chain((1..=repos as u64).map(cohort_core::ids::PartitionId));
    for partition in partitions {
        for id in services.ids() {
            let Some(service) = services.get(id) else { continue };
            let Ok(status) = service.router().status(partition).await else { continue };
            let conf = &status.conf_state;
            let voters = conf.voter_nodes();
            if !conf.voters_outgoing.is_empty() || (voters.contains(&node) && voters.len() < 3) {
                return false;
            }
        }
    }
    true
}

/// How long the operator keeps at one step of a replacement before giving up on it.
const REPLACE_STEP_PATIENCE: Duration = Duration::from_secs(30);

/// `cohort node replace`, as the operator runs it (see `src/cli/node.rs`): every other node
/// retires `node`'s lost data directory; each partition's replica on `node` that the new
/// directory does not host yet gives way to a new one; the directory's last. A step that does
/// not finish within its patience ends the replacement (the node stays refused, and the
/// cluster goes on without it).
async fn replace_node(operator: &mut SimClient, trace: &Trace, node: NodeId, ids: &[NodeId], repos: usize) {
    let services = operator.services().clone();
    for &other in ids.iter().filter(|&&o| o != node) {
        let deadline = tokio::time::Instant::now() + REPLACE_STEP_PATIENCE;
        loop {
            // Refused while `other` still counts `node` as answering with another directory than
            // the replacement (it heard from the lost one within the liveness timeout);
            // unavailable while `other` is down, or the replacement is not up yet.
            let replacement = services.get(node).map(|service| service.instance());
            let outcome = replacement.and_then(|replacement| {
                services.get(other).map(|service| service.retire_peer(node, Some(replacement)))
            });
            if let Some(Ok(retirement)) = outcome {
                trace_event(
                    trace,
                    format!("replace: node {other} retired node {node}'s data directory: {retirement:?}"),
                );
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                trace_event(trace, format!("replace: node {other} did not retire node {node}'s directory; given up"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let hosts = |partition| services.get(node).is_some_and(|service| service.router().hosts(partition));
    // The directory last: it must not invite the node while a partition names its old
    // replica. The replacement stops at a step that does not finish.
    let partitions = (1..=repos as u64).map(cohort_core::ids::PartitionId);
    for partition in partitions {
        if !hosts(partition) && replace_replica(operator, trace, node, partition).await.is_none() {
            return;
        }
    }
    if hosts(DIRECTORY) {
        return;
    }
    // The node is told which directory peer it now is (a node replaced before is also still
    // named by the first replacement's peer, until this step): only that one's messages start
    // its directory replica.
    let Some(Some(view)) = replace_replica(operator, trace, node, DIRECTORY).await else { return };
    let Some(peer) = view.info.peers.iter().copied().filter(|peer| peer.node() == node).max() else {
        panic!("the directory names no peer of node {node} once it replaced it: {view:?}");
    };
    // As the operator runs the command again: the node may be down (a crash fault) for a while.
    let deadline = tokio::time::Instant::now() + REPLACE_STEP_PATIENCE;
    loop {
        let told = services.get(node).map(|service| service.join_directory_as(peer));
        trace_event(trace, format!("replace: node {node} told it is directory peer {peer}: {told:?}"));
        // Refused: it hosts its directory replica already.
        if matches!(told, Some(Ok(()) | Err(ApiError::Refused(_)))) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replaces `node`'s replica of `partition`, retrying refusals (another change in flight, too
/// few voters answering yet) within the patience: the members it left, or `Some(None)` if
/// `node` is not a member; `None` if it did not finish.
async fn replace_replica(
    operator: &mut SimClient,
    trace: &Trace,
    node: NodeId,
    partition: cohort_core::ids::PartitionId,
) -> Option<Option<cohort_core::node::PartitionView>> {
    let deadline = tokio::time::Instant::now() + REPLACE_STEP_PATIENCE;
    loop {
        let patience = deadline.saturating_duration_since(tokio::time::Instant::now());
        let outcome = operator.change_members_seen_within(patience, partition, node, MembersAction::Replace).await;
        let said = outcome.as_ref().map(|result| result.as_ref().map(|_| ()));
        trace_event(trace, format!("replace: node {node} partition {partition}: {said:?}"));
        match outcome {
            Some(Ok(view)) => return Some(Some(view)),
            // Not a member (moved away by an earlier membership change): nothing to replace.
            Some(Err(reason)) if reason.contains("not a member") => return Some(None),
            Some(Err(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            _ => return None,
        }
    }
}

/// The `TransferLeader` fault's operator: until the safety phase ends, moves the leadership of
/// a random partition to a random node every so often (refusals, for non-voters, are fine).
async fn transfer_leaders(
    cluster: Arc<Mutex<SimCluster>>,
    mut operator: SimClient,
    trace: Trace,
    seed: u64,
    repos: usize,
    nodes: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7a5f);
    let end = tokio::time::Instant::now() + SAFETY_PHASE;
    loop {
        let gap = Duration::from_millis(rng.gen_range(100..1500));
        if tokio::time::Instant::now() + gap >= end {
            return;
        }
        let (partition, node) = if rng.gen_bool(0.5) {
            tokio::time::sleep(gap).await;
            (cohort_core::ids::PartitionId(rng.gen_range(1..=repos as u64)), NodeId(rng.gen_range(1..=nodes)))
        } else {
            // While a write is in flight, its partition's leader moves: the new leader may learn
            // only after it took over that the old one committed the write (and answered for
            // it), and the write's client may read it back at once from the new leader.
            let writing = operator.writing();
            if tokio::time::timeout(gap, writing.notify.notified()).await.is_err() {
                continue;
            }
            let Some(repo_index) = *writing.last_repo.lock().unwrap() else { continue };
            // Setup creates repository i in partition i + 1 (the directory is partition 0).
            let partition = cohort_core::ids::PartitionId(repo_index as u64 + 1);
            trace_event(&trace, format!("a write to partition {partition} is in flight: moving its leader"));
            // Straight to the leader, and to another node: a detour would let the moment pass.
            let leader = current_leader(&cluster, partition.0);
            if let Some(leader) = leader {
                operator.aim_at(leader);
            }
            let others: Vec<NodeId> = (1..=nodes).map(NodeId).filter(|n| Some(*n) != leader).collect();
            (partition, others[rng.gen_range(0..others.len())])
        };
        let outcome = operator.change_members(partition, node, MembersAction::TransferLeader).await;
        trace_event(&trace, format!("transfer leader of partition {partition} to node {node}: {outcome:?}"));
    }
}

/// The Raft mode operator (`Scenario::raft_toggle`): until the safety phase ends, turns Raft
/// off or on for a random partition every so often, sometimes giving up on the call early.
async fn toggle_raft(mut operator: SimClient, trace: Trace, seed: u64, repos: usize) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4af7);
    let end = tokio::time::Instant::now() + SAFETY_PHASE;
    loop {
        let gap = Duration::from_millis(rng.gen_range(20..600));
        if tokio::time::Instant::now() + gap >= end {
            return;
        }
        tokio::time::sleep(gap).await;
        let partition = cohort_core::ids::PartitionId(rng.gen_range(1..=repos as u64));
        let mode = if rng.gen_bool(0.5) { RaftMode::Off } else { RaftMode::On };
        let patience =
            if rng.gen_bool(0.7) { workload::OP_TIMEOUT } else { Duration::from_millis(rng.gen_range(1..100)) };
        let outcome = operator.set_raft_within(patience, partition, mode).await;
        trace_event(&trace, format!("raft {} for partition {partition}: {outcome:?}", mode.name()));
    }
}

fn others(ids: &[NodeId], except: &[NodeId]) -> Vec<NodeId> {
    ids.iter().copied().filter(|id| !except.contains(id)).collect()
}

/// The leader of the highest term seen for the partition of repository `repo_index` (or the
/// directory for index 0), if any.
fn current_leader(cluster: &Arc<Mutex<SimCluster>>, repo_index: u64) -> Option<NodeId> {
    let observer = cluster.lock().unwrap().observer.clone();
    let partition = if repo_index == 0 { DIRECTORY } else { cohort_core::ids::PartitionId(repo_index) };
    observer.latest_leader(partition)
}

fn heal(cluster: &Arc<Mutex<SimCluster>>, faults: &SharedFaults) {
    *faults.lock().expect("not poisoned") = NetworkFaults::default();
    let mut c = cluster.lock().expect("not poisoned");
    for id in c.ids() {
        c.resume(id);
        if !c.is_up(id) {
            c.restart(id);
        }
        c.disk(id).set_fail_syncs(false);
    }
}

/// Waits until every member of every partition (voters and learners, as its leader's
/// configuration lists them) holds a replica whose applied index and state digest equal the
/// leader's; `Some(explanation)` if that does not happen within the bound.
async fn check_convergence(shared: &Shared, clients: &madsim::runtime::NodeHandle, repos: usize) -> Option<String> {
    let services = shared.services.clone();
    let trace = shared.trace.clone();
    clients
        .spawn(async move {
            let deadline = tokio::time::Instant::now() + CONVERGENCE_BOUND;
            let mut partitions = vec![DIRECTORY];
            partitions.extend((1..=repos as u64).map(cohort_core::ids::PartitionId));
            let mut last = String::new();
            while tokio::time::Instant::now() < deadline {
                let mut views = Vec::new();
                let mut all_equal = true;
                for &partition in &partitions {
                    let view = partition_view(&services, partition).await;
                    all_equal &= view.converged();
                    views.push(format!("partition {partition}: {view}"));
                }
                last = views.join("; ");
                if all_equal {
                    trace.event(now_ns(), format!("converged: {last}"));
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Some(format!("replicas differ {CONVERGENCE_BOUND:?} after the heal: {last}"))
        })
        .await
        .expect("the convergence check does not panic")
}

/// One partition as every node sees it, for the convergence check.
struct PartitionView {
    /// The leader and its configuration's members (voters and learners), if a leader answered.
    leader: Option<(NodeId, Vec<NodeId>)>,
    /// Each node's replica: (applied index, digest), or why there is none to compare.
    replicas: BTreeMap<NodeId, Result<(u64, String), String>>,
}

impl PartitionView {
    /// Every member holds a replica equal to the leader's.
    fn converged(&self) -> bool {
        let Some((leader, members)) = &self.leader else { return false };
        let Some(Ok(reference)) = self.replicas.get(leader) else { return false };
        members.iter().all(|m| matches!(self.replicas.get(m), Some(Ok(view)) if view == reference))
    }
}

impl std::fmt::Display for PartitionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some((leader, members)) = &self.leader else { return write!(f, "no leader") };
        write!(f, "leader {leader}")?;
        for member in members {
            match self.replicas.get(member) {
                Some(Ok((applied, digest))) => write!(f, ", member {member} applied {applied} digest {digest}")?,
                Some(Err(reason)) => write!(f, ", member {member} {reason}")?,
                None => write!(f, ", member {member} not asked")?,
            }
        }
        Ok(())
    }
}

/// A replica's applied index and state digest, from one read of its node's store.
fn stored_state(
    store: &cohort_core::store::Store,
    partition: cohort_core::ids::PartitionId,
) -> Result<(u64, String), String> {
    use cohort_core::store::Rows as _;
    let rows = store.read().map_err(|e| format!("cannot read its store: {e}"))?;
    let applied = rows.partition(partition).map_err(|e| e.to_string())?.map_or(0, |r| r.applied.index);
    let digest = cohort_core::store::check::digest(&rows, partition).map_err(|e| e.to_string())?;
    Ok((applied, digest.to_string()))
}

async fn partition_view(
    services: &crate::cluster::Services,
    partition: cohort_core::ids::PartitionId,
) -> PartitionView {
    let mut view = PartitionView { leader: None, replicas: BTreeMap::new() };
    for id in services.ids() {
        let Some(service) = services.get(id) else {
            view.replicas.insert(id, Err("is down".to_owned()));
            continue;
        };
        let now = service.router().env().clock.now();
        let answer = service
            .router()
            .inspect(partition, move |p| {
                let status = p.status(now);
                let mut members = status.conf_state.voter_nodes();
                members.extend(status.conf_state.learner_nodes());
                p.is_leader().then_some(members)
            })
            .await;
        let replica = match answer {
            Ok(leading) => {
                if let Some(members) = leading {
                    view.leader = Some((id, members));
                }
                stored_state(service.router().store(), partition)
            }
            // An unloaded replica leads nothing; its state is the store's.
            Err(cohort_core::node::RouteError::Unloaded(_)) => stored_state(service.router().store(), partition),
            // A node that is not a member has no replica, rightly; a member without one is a
            // failure that `converged` reports.
            Err(cohort_core::node::RouteError::UnknownPartition(_)) => Err("has no replica".to_owned()),
            Err(error) => Err(format!("did not answer: {error}")),
        };
        view.replicas.insert(id, replica);
    }
    view
}
