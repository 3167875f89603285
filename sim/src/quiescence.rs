//! The quiescence phase of the `*-quiesce` scenarios, after the usual heal, liveness and
//! convergence checks and with no fault left:
//!
//! 1. idle: every replica of every partition on every node must quiesce;
//! 2. mass wake: one write to every partition at once; every write commits and no replica
//!    starts an election (a wake never costs one while the leader's node is up: CockroachDB
//!    #9372);
//! 3. idle again, then the node leading the most partitions dies and stays dead; with no
//!    request to wake them, every partition it led must elect a leader on a live node within
//!    `FAILOVER_BOUND`, through node liveness alone (hibernated groups that never wake: TiKV
//!    #16429; the planted bug `quiesce-ignores-liveness`).

use crate::checkers::{Checker, Failure};
use crate::cluster::{Services, SimCluster};
use crate::observer::SafetyObserver;
use crate::trace::{now_ns, Trace};
use crate::workload::{Shared, SimClient};
use cohort_core::ids::{NodeId, PartitionId};
use cohort_core::node::DIRECTORY;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Idle time after which every replica must be quiesced: the longest quiesce delay a seed
/// picks (3 s) plus the asking round, with room to spare.
const QUIESCE_BOUND: Duration = Duration::from_secs(10);
/// Time for the mass wake's writes to commit.
const WAKE_BOUND: Duration = Duration::from_secs(10);
/// From a leader's node dying to every partition it led having a live leader, with no
/// requests: liveness timeout (2 election timeouts, 2 s) and then elections, a few of which
/// may split (each round 1-2 s).
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

pub struct QuiescencePhase<'a> {
    pub cluster: &'a Arc<Mutex<SimCluster>>,
    pub shared: &'a Shared,
    pub clients: &'a madsim::runtime::NodeHandle,
    pub observer: &'a SafetyObserver,
    pub trace: &'a Trace,
    pub repos: usize,
    pub seed: u64,
}

impl QuiescencePhase<'_> {
    pub async fn run(&self) -> Vec<Failure> {
        let mut failures = Vec::new();
        let partitions: Vec<PartitionId> =
            std::iter::once(DIRECTORY).chain((1..=self.repos as u64).map(PartitionId)).collect();

        if let Some(awake) = self.wait_all_quiesced(&partitions).await {
            failures.push(Failure::new(Checker::Quiesce, format!("idle for {QUIESCE_BOUND:?}, still awake: {awake}")));
            return failures;
        }
        self.trace.event(now_ns(), "quiescence: every replica quiesced");

        let elections_before = self.observer.elections_started().len();
        let missing = self.write_to_every_repo().await;
        if !missing.is_empty() {
            failures.push(Failure::new(
                Checker::Liveness,
                format!("waking quiesced partitions: repositories {missing:?} took no write within {WAKE_BOUND:?}"),
            ));
        }
        let elections: Vec<String> = self.observer.elections_started()[elections_before..]
            .iter()
            .map(|(node, partition, term, cause)| {
                format!("node {node} partition {partition} term {term} ({})", cause.name())
            })
            .collect();
        if !elections.is_empty() {
            failures.push(Failure::new(
                Checker::Quiesce,
                format!("waking quiesced partitions with every node up started elections: {}", elections.join(", ")),
            ));
        }
        self.trace.event(now_ns(), format!("quiescence: mass wake done, {} elections", elections.len()));

        if let Some(awake) = self.wait_all_quiesced(&partitions).await {
            failures.push(Failure::new(Checker::Quiesce, format!("idle again, still awake: {awake}")));
            return failures;
        }
        failures.extend(self.failover(&partitions).await);
        failures
    }

    /// Waits up to `QUIESCE_BOUND` for every replica on every node to be quiesced; `None` if
    /// they are, else the replicas still awake.
    async fn wait_all_quiesced(&self, partitions: &[PartitionId]) -> Option<String> {
        let services = self.shared.services.clone();
        let partitions = partitions.to_vec();
        self.clients
            .spawn(async move {
                let deadline = tokio::time::Instant::now() + QUIESCE_BOUND;
                loop {
                    let awake = awake_replicas(&services, &partitions).await;
                    if awake.is_empty() {
                        return None;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Some(awake.join(", "));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            })
            .await
            .expect("the quiescence check does not panic")
    }

    /// One write to every repository, all at once; the repositories that took none in time.
    async fn write_to_every_repo(&self) -> Vec<usize> {
        let mut writers = Vec::new();
        for repo in 0..self.repos {
            let mut client = SimClient::new(4_000 + repo as u64, self.seed, self.shared.clone());
            writers.push(self.clients.spawn(async move {
                let deadline = tokio::time::Instant::now() + WAKE_BOUND;
                while tokio::time::Instant::now() < deadline {
                    if client.cas(repo, 0, true).await == crate::history::Outcome::CasOk {
                        return None;
                    }
                }
                Some(repo)
            }));
        }
        let mut missing = Vec::new();
        for writer in writers {
            missing.extend(writer.await.expect("writers do not panic"));
        }
        missing
    }

    /// Kills the node leading the most partitions, waits, and checks that every partition it
    /// led has a leader on a live node.
    async fn failover(&self, partitions: &[PartitionId]) -> Vec<Failure> {
        let mut led: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
        for &partition in partitions {
            if let Some(leader) = self.observer.latest_leader(partition) {
                led.entry(leader).or_default().push(partition);
            }
        }
        let Some((victim, victims_partitions)) = led.into_iter().max_by_key(|(node, p)| (p.len(), *node)) else {
            return vec![Failure::new(Checker::Liveness, "no partition has a leader before the failover")];
        };
        self.trace.event(
            now_ns(),
            format!("quiescence: node {victim} dies leading {} quiesced partitions", victims_partitions.len()),
        );
        self.cluster.lock().expect("not poisoned").crash(victim);
        let services = self.shared.services.clone();
        let checked = victims_partitions.clone();
        let leaderless = self
            .clients
            .spawn(async move {
                tokio::time::sleep(FAILOVER_BOUND).await;
                let mut leaderless = Vec::new();
                for partition in checked {
                    if live_leader(&services, partition).await.is_none() {
                        leaderless.push(format!("{partition} ({})", describe(&services, partition).await));
                    }
                }
                leaderless
            })
            .await
            .expect("the failover check does not panic");
        self.cluster.lock().expect("not poisoned").restart(victim);
        if leaderless.is_empty() {
            self.trace.event(now_ns(), format!("quiescence: every partition node {victim} led elected again"));
            return Vec::new();
        }
        vec![Failure::new(
            Checker::Liveness,
            format!(
                "{FAILOVER_BOUND:?} after node {victim} died while its partitions were quiesced, partitions \
                 {} have no leader on a live node",
                leaderless.join(", ")
            ),
        )]
    }
}

/// Replicas (as "partition P on node N") that are not quiesced, on every node that is up.
async fn awake_replicas(services: &Services, partitions: &[PartitionId]) -> Vec<String> {
    let mut awake = Vec::new();
    for node in services.ids() {
        let Some(service) = services.get(node) else { continue };
        for &partition in partitions {
            let now = service.router().env().clock.now();
            let state = service
                .router()
                .inspect(partition, move |p| {
                    let status = p.status(now);
                    let matched: Vec<_> = status.progress.iter().map(|r| (r.node.0, r.match_index)).collect();
                    (
                        p.is_quiesced(),
                        format!(
                        "{:?} term {} last {} commit {} applied {} matched {matched:?} pending {:?} last wake {:?} {}",
                        status.role,
                        status.term,
                        status.last_index,
                        status.commit_index,
                        status.applied_index,
                        p.pending_work(),
                        p.last_wake(),
                        p.quiesce_debug()
                    ),
                    )
                })
                .await;
            match state {
                Ok((true, _))
                | Err(
                    cohort_core::node::RouteError::UnknownPartition(_) | cohort_core::node::RouteError::Unloaded(_),
                ) => {}
                Ok((false, why)) => awake.push(format!("partition {partition} on node {node} ({why})")),
                Err(error) => awake.push(format!("partition {partition} on node {node} ({error})")),
            }
        }
    }
    awake
}

/// Every live replica of `partition`: role, term, indexes, quiesce state, last election.
async fn describe(services: &Services, partition: PartitionId) -> String {
    let mut replicas = Vec::new();
    for node in services.ids() {
        let Some(service) = services.get(node) else { continue };
        let now = service.router().env().clock.now();
        let state = service
            .router()
            .inspect(partition, move |p| {
                let s = p.status(now);
                format!(
                    "{:?} term {} leader {:?} last {} commit {} applied {} {} last election {:?}",
                    s.role,
                    s.term,
                    s.leader,
                    s.last_index,
                    s.commit_index,
                    s.applied_index,
                    p.quiesce_debug(),
                    p.last_election()
                )
            })
            .await;
        replicas.push(format!("node {node}: {}", state.unwrap_or_else(|e| e.to_string())));
    }
    replicas.join("; ")
}

/// A node that is up and leads `partition`, if any.
async fn live_leader(services: &Services, partition: PartitionId) -> Option<NodeId> {
    for node in services.ids() {
        let Some(service) = services.get(node) else { continue };
        if service.router().inspect(partition, |p| p.is_leader()).await == Ok(true) {
            return Some(node);
        }
    }
    None
}
