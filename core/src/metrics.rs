//! A node's metrics, updated where things happen and read by the HTTP server. The types come
//! from `prometheus-client` (lock-free counters and histograms; no runtime, no I/O). Label
//! cardinality is bounded: nothing is labelled per partition.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A metric's labels: a handful of fixed names and values (a cause, a peer node), never a
/// partition.
pub type Labels = Vec<(&'static str, String)>;

/// Latency buckets from 50 µs to about 3 s, in seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 17)
}

pub struct NodeMetrics {
    /// Writes proposed by this node: on a leader, or forwarded by a follower to its leader.
    pub proposals: Counter,
    /// Times a replica saw its partition's leader change.
    pub leader_changes: Counter,
    /// Elections this node's replicas started, by cause (`ElectionCause::name`).
    pub elections: Family<Labels, Counter>,
    /// Election timeouts a follower let pass because its leader's node was alive; it asked
    /// the leader to heartbeat instead (`Partition::hold_election_for_live_leader`).
    pub elections_held: Counter,
    /// Quiesced replicas that woke, by cause (`WakeCause::name`).
    pub wakes: Family<Labels, Counter>,
    /// Replicas on this node that are quiesced (loaded ones; unloaded ones are counted apart).
    pub partitions_quiesced: Gauge,
    /// Replicas on this node that are unloaded: a `Dormant` record each, no task, no timer.
    pub partitions_unloaded: Gauge,
    /// Unloaded replicas loaded again, by what needed them (`LoadCause::name`).
    pub partition_loads: Family<Labels, Counter>,
    /// Replicas unloaded.
    pub partition_unloads: Counter,
    /// Whether each other node answers (1) or not (0), as node liveness sees it.
    pub peer_alive: Family<Labels, Gauge>,
    /// Times a node was seen to stop answering.
    pub peer_down_events: Counter,
    /// The latest round trip to each other node, measured by node-liveness heartbeats.
    pub peer_rtt_seconds: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// From a write's arrival at its partition to its answer after apply.
    pub commit_latency_seconds: Histogram,
    /// From entries handed to the store's applier to their being applied.
    pub apply_latency_seconds: Histogram,
    /// Write transactions the applier committed for entries, and the entries they applied:
    /// their ratio is how well group apply batches (each commit has a fixed cost).
    pub apply_transactions: Counter,
    pub applied_entries: Counter,
    /// One fsync of the write-ahead log (or of a snapshot or identity file: rare).
    pub fsync_latency_seconds: Histogram,
    /// One fsync of the state store's file: one per durable commit, which no write waits for.
    pub store_fsync_latency_seconds: Histogram,
    /// Partitions this node leads with a voter on a node that is down.
    pub partitions_under_replicated: Gauge,
    /// Replicas on this node that are awake and know no leader.
    pub partitions_leaderless: Gauge,
    /// Snapshots saved by this node's replicas (each one compacts the log).
    pub snapshots_saved: Counter,
    /// Snapshot transfers completed, as sender and as receiver, and their bytes.
    pub snapshots_sent: Counter,
    pub snapshot_sent_bytes: Counter,
    pub snapshots_received: Counter,
    pub snapshot_received_bytes: Counter,
    /// From a snapshot transfer's first chunk to its last acknowledgement (sender side).
    pub snapshot_send_seconds: Histogram,
    /// Replicas by role, kept by each replica's actor as its role changes.
    pub partitions_leader: Gauge,
    pub partitions_follower: Gauge,
    pub partitions_candidate: Gauge,
    pub partitions_learner: Gauge,
}

impl Default for NodeMetrics {
    fn default() -> NodeMetrics {
        NodeMetrics {
            proposals: Counter::default(),
            leader_changes: Counter::default(),
            elections: Family::default(),
            elections_held: Counter::default(),
            wakes: Family::default(),
            partitions_quiesced: Gauge::default(),
            partitions_unloaded: Gauge::default(),
            partition_loads: Family::default(),
            partition_unloads: Counter::default(),
            peer_alive: Family::default(),
            peer_down_events: Counter::default(),
            peer_rtt_seconds: Family::default(),
            commit_latency_seconds: Histogram::new(latency_buckets()),
            apply_latency_seconds: Histogram::new(latency_buckets()),
            apply_transactions: Counter::default(),
            applied_entries: Counter::default(),
            fsync_latency_seconds: Histogram::new(latency_buckets()),
            store_fsync_latency_seconds: Histogram::new(latency_buckets()),
            partitions_under_replicated: Gauge::default(),
            partitions_leaderless: Gauge::default(),
            snapshots_saved: Counter::default(),
            snapshots_sent: Counter::default(),
            snapshot_sent_bytes: Counter::default(),
            snapshots_received: Counter::default(),
            snapshot_received_bytes: Counter::default(),
            snapshot_send_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            partitions_leader: Gauge::default(),
            partitions_follower: Gauge::default(),
            partitions_candidate: Gauge::default(),
            partitions_learner: Gauge::default(),
        }
    }
}

impl NodeMetrics {
    /// Adds every metric to `registry` under the `cohort` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "proposals",
            "Writes proposed by this node's replicas, directly or forwarded",
            self.proposals.clone(),
        );
        registry.register("leader_changes", "Leader changes seen by this node's replicas", self.leader_changes.clone());
        registry.register("elections", "Elections started by this node's replicas, by cause", self.elections.clone());
        registry.register(
            "elections_held",
            "Election timeouts this node's followers let pass once, their leader's node being alive",
            self.elections_held.clone(),
        );
        registry.register("wakes", "Quiesced replicas on this node that woke, by cause", self.wakes.clone());
        registry.register(
            "partitions_quiesced",
            "Replicas on this node that are quiesced (no timer, no messages)",
            self.partitions_quiesced.clone(),
        );
        registry.register(
            "partitions_unloaded",
            "Replicas on this node that are unloaded (a few hundred bytes each until needed)",
            self.partitions_unloaded.clone(),
        );
        registry.register(
            "partition_loads",
            "Unloaded replicas on this node loaded again, by cause",
            self.partition_loads.clone(),
        );
        registry.register("partition_unloads", "Replicas on this node unloaded", self.partition_unloads.clone());
        registry.register(
            "peer_alive",
            "Whether each other node answers node-liveness heartbeats (1) or not (0)",
            self.peer_alive.clone(),
        );
        registry.register(
            "peer_down_events",
            "Times node liveness saw another node stop answering",
            self.peer_down_events.clone(),
        );
        registry.register_with_unit(
            "peer_rtt",
            "The latest round trip to each other node, from node-liveness heartbeats",
            Unit::Seconds,
            self.peer_rtt_seconds.clone(),
        );
        registry.register_with_unit(
            "commit_latency",
            "Time from a write's arrival at its partition to its answer after apply",
            Unit::Seconds,
            self.commit_latency_seconds.clone(),
        );
        registry.register_with_unit(
            "apply_latency",
            "Time from committed entries handed to the store's applier to their being applied",
            Unit::Seconds,
            self.apply_latency_seconds.clone(),
        );
        registry.register(
            "apply_transactions",
            "Write transactions the store's applier committed to apply entries",
            self.apply_transactions.clone(),
        );
        registry.register(
            "applied_entries",
            "Log entries the store's applier applied (over apply_transactions: entries per transaction)",
            self.applied_entries.clone(),
        );
        registry.register(
            "partitions_under_replicated",
            "Partitions this node leads that have a voter on a node that is down",
            self.partitions_under_replicated.clone(),
        );
        registry.register(
            "partitions_leaderless",
            "Replicas on this node that are awake and know no leader (an election is due or under way)",
            self.partitions_leaderless.clone(),
        );
        registry.register_with_unit(
            "fsync_latency",
            "Time of one write-ahead log fsync (the state store's are apart, in store_fsync_latency)",
            Unit::Seconds,
            self.fsync_latency_seconds.clone(),
        );
        registry.register_with_unit(
            "store_fsync_latency",
            "Time of one fsync of the state store's file (one per durable commit, made while writes go on)",
            Unit::Seconds,
            self.store_fsync_latency_seconds.clone(),
        );
        registry.register("snapshots_saved", "Snapshots saved by this node's replicas", self.snapshots_saved.clone());
        registry.register(
            "snapshots_sent",
            "Snapshot transfers this node completed as sender",
            self.snapshots_sent.clone(),
        );
        registry.register_with_unit(
            "snapshot_sent",
            "Bytes of snapshots this node sent whole",
            Unit::Bytes,
            self.snapshot_sent_bytes.clone(),
        );
        registry.register(
            "snapshots_received",
            "Snapshot transfers this node completed as receiver",
            self.snapshots_received.clone(),
        );
        registry.register_with_unit(
            "snapshot_received",
            "Bytes of snapshots this node received whole",
            Unit::Bytes,
            self.snapshot_received_bytes.clone(),
        );
        registry.register_with_unit(
            "snapshot_send",
            "Time to send one snapshot, first chunk to last acknowledgement",
            Unit::Seconds,
            self.snapshot_send_seconds.clone(),
        );
        registry.register(
            "partitions_leader",
            "Replicas on this node that lead their partition",
            self.partitions_leader.clone(),
        );
        registry.register("partitions_follower", "Replicas on this node that follow", self.partitions_follower.clone());
        registry.register(
            "partitions_candidate",
            "Replicas on this node that are campaigning",
            self.partitions_candidate.clone(),
        );
        registry.register(
            "partitions_learner",
            "Replicas on this node that are learners",
            self.partitions_learner.clone(),
        );
    }
}
