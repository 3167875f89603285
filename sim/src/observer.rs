//! Raft safety, watched as it happens: at most one leader per term of a partition, and every
//! replica applies the same entry at every index.

use crate::trace::{now_ns, Trace};
use cohort_core::ids::{NodeId, PartitionId};
use cohort_core::observe::Observer;
use cohort_core::partition::ElectionCause;
use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, Default)]
struct State {
    leaders: BTreeMap<(PartitionId, u64), NodeId>,
    /// (partition, index) -> (term, hash of the data), from the first replica that applied it.
    applied: BTreeMap<(PartitionId, u64), (u64, u64, NodeId)>,
    violations: Vec<String>,
    /// (partition, index) already reported as diverged: each is reported once.
    reported: std::collections::BTreeSet<(PartitionId, u64)>,
    snapshots_installed: u64,
    /// Replicas unloaded (each one loaded again, or still unloaded, later).
    unloads: u64,
    /// Elections started (pre-vote or vote), in order: (node, partition, term, cause).
    elections_started: Vec<(NodeId, PartitionId, u64, ElectionCause)>,
}

pub struct SafetyObserver {
    state: Mutex<State>,
    trace: Trace,
}

impl std::fmt::Debug for SafetyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SafetyObserver")
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl SafetyObserver {
    pub fn new(trace: Trace) -> SafetyObserver {
        SafetyObserver { state: Mutex::new(State::default()), trace }
    }

    /// Raft safety violations seen so far, in the order they happened.
    pub fn violations(&self) -> Vec<String> {
        self.state.lock().expect("not poisoned").violations.clone()
    }

    /// Highest index applied anywhere, per partition.
    pub fn applied_max(&self) -> BTreeMap<PartitionId, u64> {
        let state = self.state.lock().expect("not poisoned");
        let mut out = BTreeMap::new();
        for &(partition, index) in state.applied.keys() {
            let entry = out.entry(partition).or_insert(0);
            *entry = index.max(*entry);
        }
        out
    }

    /// The leader of the highest term seen for `partition`.
    pub fn latest_leader(&self, partition: PartitionId) -> Option<NodeId> {
        let state = self.state.lock().expect("not poisoned");
        state.leaders.range((partition, 0)..=(partition, u64::MAX)).next_back().map(|(_, &node)| node)
    }

    /// Snapshots replicas received and installed (how much the run exercised transfers).
    pub fn snapshots_installed(&self) -> u64 {
        self.state.lock().expect("not poisoned").snapshots_installed
    }

    /// Replicas unloaded so far (how much the run exercised unloading and loading).
    pub fn unloads(&self) -> u64 {
        self.state.lock().expect("not poisoned").unloads
    }

    /// Elections replicas started so far, with their causes.
    pub fn elections_started(&self) -> Vec<(NodeId, PartitionId, u64, ElectionCause)> {
        self.state.lock().expect("not poisoned").elections_started.clone()
    }

    pub fn elections_won(&self) -> usize {
        self.state.lock().expect("not poisoned").leaders.len()
    }
}

impl Observer for SafetyObserver {
    fn election_started(&self, node: NodeId, partition: PartitionId, term: u64, cause: ElectionCause) {
        self.trace
            .event(now_ns(), format!("node {node} partition {partition} campaigns at term {term}: {}", cause.name()));
        self.state.lock().expect("not poisoned").elections_started.push((node, partition, term, cause));
    }

    fn applied(&self, node: NodeId, partition: PartitionId, index: u64, term: u64, data: &[u8]) {
        let hash = fnv1a(data);
        let mut state = self.state.lock().expect("not poisoned");
        match state.applied.get(&(partition, index)) {
            None => {
                state.applied.insert((partition, index), (term, hash, node));
            }
            Some(&(first_term, first_hash, first_node)) => {
                if (first_term, first_hash) != (term, hash) && state.reported.insert((partition, index)) {
                    let message = format!(
                        "partition {partition} index {index}: node {first_node} applied term {first_term} \
                         data {first_hash:016x}, node {node} applied term {term} data {hash:016x}"
                    );
                    drop(state);
                    self.trace.event(now_ns(), format!("VIOLATION {message}"));
                    self.state.lock().expect("not poisoned").violations.push(message);
                }
            }
        }
    }

    fn load_changed(&self, node: NodeId, partition: PartitionId, loaded: bool) {
        let what = if loaded { "loaded" } else { "unloaded" };
        self.trace.event(now_ns(), format!("replica {what} partition={partition} node={node}"));
        if !loaded {
            self.state.lock().expect("not poisoned").unloads += 1;
        }
    }

    fn snapshot_installed(&self, node: NodeId, partition: PartitionId, index: u64) {
        self.trace.event(now_ns(), format!("snapshot installed partition={partition} node={node} index={index}"));
        self.state.lock().expect("not poisoned").snapshots_installed += 1;
    }

    fn became_leader(&self, node: NodeId, partition: PartitionId, term: u64) {
        self.trace.event(now_ns(), format!("leader partition={partition} node={node} term={term}"));
        let mut state = self.state.lock().expect("not poisoned");
        match state.leaders.insert((partition, term), node) {
            Some(other) if other != node => {
                let message = format!("partition {partition} term {term} has two leaders: {other} and {node}");
                state.violations.push(message.clone());
                drop(state);
                self.trace.event(now_ns(), format!("VIOLATION {message}"));
            }
            _ => {}
        }
    }
}
