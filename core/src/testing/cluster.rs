//! Several replicas of one partition, driven by hand.

use crate::env::{Envelope, Instant, Payload};
use crate::ids::{NodeId, PartitionId, PeerId, RequestId};
use crate::partition::{Output, Partition, PartitionConfig, ReplicaOptions, Request, Response, StoredState};
use crate::persist::{LogPosition, LogWrite, RecoveredPartition, SnapshotMeta};
use crate::state_machine::Digest;
use crate::store::{self, Commit, Rows as _, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// A response a replica gave, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    pub node: NodeId,
    pub request: RequestId,
    pub response: Response,
}

struct Replica {
    partition: Partition,
    /// Writes handed out and not yet durable, in order, with the ready number to report
    /// (none for a compaction).
    pending_writes: VecDeque<(Option<u64>, LogWrite)>,
    /// What this node's log holds durably: the reference model of the log engine.
    durable: RecoveredPartition,
}

/// A node's saved snapshot files (saved durably at once, as a real save is before it
/// reports), kept across crashes: the partition's rows as a snapshot stream.
type SnapshotFiles = BTreeMap<LogPosition, (SnapshotMeta, Vec<u8>)>;

/// A `MsgSnapshot` on its way: (from, to, message). Delivered whole or not at all, as the
/// transfer protocol (tested on its own) makes it.
type SnapshotInFlight = (NodeId, NodeId, raft::eraftpb::Message);

/// Replicas of one partition with a hand-driven network and disk.
pub struct Cluster {
    pub partition: PartitionId,
    pub now: Instant,
    replicas: BTreeMap<NodeId, Replica>,
    crashed: BTreeMap<NodeId, RecoveredPartition>,
    /// Each node's state store. Every apply commits durably here, so a crash loses none of it.
    stores: BTreeMap<NodeId, Store>,
    in_flight: VecDeque<Envelope>,
    snapshots_in_flight: VecDeque<SnapshotInFlight>,
    snapshot_files: BTreeMap<NodeId, SnapshotFiles>,
    /// How every replica runs Raft.
    pub options: ReplicaOptions,
    /// Snapshots delivered so far (tests check that catching up used one).
    pub snapshots_delivered: usize,
    /// Links that drop everything, as (from, to).
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Links whose messages are lost while liveness still reports both ends up.
    lost: BTreeSet<(NodeId, NodeId)>,
    /// Probability in [0, 1) that a message is dropped.
    pub drop_rate: f64,
    /// When false, persistence completes only through `complete_persists`.
    pub auto_persist: bool,
    rng: StdRng,
    pub responses: Vec<Delivered>,
    next_request: u64,
    seed: u64,
}

impl Cluster {
    /// A new partition on nodes 1..=n.
    pub fn new(n: u64, seed: u64) -> Cluster {
        let partition = PartitionId(7);
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        let now = Instant::ZERO;
        let mut cluster = Cluster {
            partition,
            now,
            replicas: BTreeMap::new(),
            crashed: BTreeMap::new(),
            stores: BTreeMap::new(),
            in_flight: VecDeque::new(),
            snapshots_in_flight: VecDeque::new(),
            snapshot_files: BTreeMap::new(),
            options: ReplicaOptions::default(),
            snapshots_delivered: 0,
            cut: BTreeSet::new(),
            lost: BTreeSet::new(),
            drop_rate: 0.0,
            auto_persist: true,
            rng: StdRng::seed_from_u64(seed),
            responses: Vec::new(),
            next_request: 0,
            seed,
        };
        cluster.start_replicas(&voters);
        cluster
    }

    /// A new partition on nodes 1..=n whose replicas run with `options`.
    pub fn with_options(n: u64, seed: u64, options: ReplicaOptions) -> Cluster {
        let mut cluster = Cluster::new(0, seed);
        cluster.options = options;
        let voters: Vec<NodeId> = (1..=n).map(NodeId).collect();
        cluster.start_replicas(&voters);
        cluster
    }

    /// A new partition on nodes 1..=n as the build that introduced `format` created one: it
    /// keeps that format until a leader proposes the latest.
    pub fn new_in_format(n: u64, seed: u64, format: store::Format) -> Cluster {
        Cluster::with_options(n, seed, ReplicaOptions { bootstrap_format: format, ..ReplicaOptions::default() })
    }

    fn start_replicas(&mut self, voters: &[NodeId]) {
        for &node in voters {
            let config = self.config(node, self.seed.wrapping_add(node.0));
            let replica = Partition::create(config, voters, self.now);
            self.stores.insert(node, Store::in_memory());
            self.replicas.insert(
                node,
                Replica { partition: replica, pending_writes: VecDeque::new(), durable: RecoveredPartition::default() },
            );
        }
        self.collect_all();
    }

    fn config(&self, node: NodeId, seed: u64) -> PartitionConfig {
        let mut config = PartitionConfig::new(node, self.partition, seed);
        config.options = self.options.clone();
        config
    }

    /// The store's applied index and digest of `node`'s replica.
    pub fn state(&self, node: NodeId) -> (u64, Digest) {
        let rows = self.stores[&node].read().expect("an in-memory store reads");
        let applied = rows.partition(self.partition).expect("reads").map_or(0, |r| r.applied.index);
        (applied, store::check::digest(&rows, self.partition).expect("reads"))
    }

    /// The format of the partition's rows in `node`'s store.
    pub fn format(&self, node: NodeId) -> store::Format {
        store::Format::of(&self.stores[&node].read().expect("reads"), self.partition).expect("reads")
    }

    /// The digest of `node`'s replica's state.
    pub fn digest(&self, node: NodeId) -> Digest {
        self.state(node).1
    }

    pub fn nodes(&self) -> Vec<NodeId> {
        self.replicas.keys().copied().collect()
    }

    pub fn replica(&self, node: NodeId) -> &Partition {
        &self.replicas[&node].partition
    }

    /// `node`'s replica, to reach inside it (tests of the partition's internals).
    pub fn replica_mut(&mut self, node: NodeId) -> &mut Partition {
        &mut self.replicas.get_mut(&node).expect("node is up").partition
    }

    /// `node`'s replica's status, now.
    pub fn status_of(&self, node: NodeId) -> crate::partition::PartitionStatus {
        self.replica(node).status(self.now)
    }

    pub fn durable(&self, node: NodeId) -> &RecoveredPartition {
        &self.replicas[&node].durable
    }

    /// What a crashed node's log holds.
    pub fn crashed_durable(&self, node: NodeId) -> &RecoveredPartition {
        &self.crashed[&node]
    }

    /// The replicas that think they lead, with their terms.
    pub fn leaders(&self) -> Vec<(NodeId, u64)> {
        self.replicas.iter().filter(|(_, r)| r.partition.is_leader()).map(|(&n, r)| (n, r.partition.term())).collect()
    }

    /// The one leader of the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leaders().into_iter().max_by_key(|&(_, term)| term).map(|(n, _)| n)
    }

    /// Messages sent and not yet delivered or dropped, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Envelope> {
        self.in_flight.iter()
    }

    pub fn isolate(&mut self, node: NodeId) {
        for other in self.nodes() {
            if other != node {
                self.cut.insert((node, other));
                self.cut.insert((other, node));
            }
        }
        self.report_liveness();
    }

    /// Loses every message from `from` to `to` until `heal`, while node liveness still
    /// reports both nodes up: as a full mailbox does.
    pub fn lose_messages(&mut self, from: NodeId, to: NodeId) {
        self.lost.insert((from, to));
    }

    pub fn heal(&mut self) {
        self.cut.clear();
        self.lost.clear();
        self.report_liveness();
    }

    /// Tells every replica which nodes it cannot hear from, as each node's liveness monitor
    /// would once its timeout passed: nodes crashed, and nodes on the far side of a cut.
    pub fn report_liveness(&mut self) {
        let nodes: BTreeSet<NodeId> = self.nodes().into_iter().chain(self.crashed.keys().copied()).collect();
        for node in self.nodes() {
            let down: BTreeSet<NodeId> = nodes
                .iter()
                .copied()
                .filter(|&o| self.crashed.contains_key(&o) || self.cut.contains(&(o, node)))
                .collect();
            let now = self.now;
            self.replicas.get_mut(&node).expect("listed").partition.handle_down_nodes(now, &down);
            self.collect(node);
        }
    }

    /// Sends a request to `node`'s replica; its answer lands in `responses`.
    pub fn request(&mut self, node: NodeId, body: Request) -> RequestId {
        self.next_request += 1;
        let request = RequestId(self.next_request);
        let now = self.now;
        self.replicas.get_mut(&node).expect("node is up").partition.handle_request(now, request, body);
        self.collect(node);
        request
    }

    pub fn response(&self, request: RequestId) -> Option<&Response> {
        self.responses.iter().find(|d| d.request == request).map(|d| &d.response)
    }

    /// Starts an empty replica on a node that is not in the cluster yet (a member being added),
    /// as the peer the leader's membership names for it.
    pub fn add_empty_replica(&mut self, node: NodeId) {
        assert!(!self.replicas.contains_key(&node), "node {node} has no replica yet");
        let leader = self.leader().expect("a member is added through a leader");
        let conf = self.status_of(leader).conf_state;
        let peer = conf.members().into_iter().map(PeerId).find(|p| p.node() == node).expect("added by the leader");
        let mut config = self.config(node, self.seed.wrapping_add(node.0));
        config.peer = peer;
        let partition = Partition::create_empty(config, self.now);
        self.stores.insert(node, Store::in_memory());
        self.replicas.insert(
            node,
            Replica { partition, pending_writes: VecDeque::new(), durable: RecoveredPartition::default() },
        );
        self.collect(node);
    }

    /// Deletes `node`'s replica and everything it held (it left the partition).
    pub fn delete_replica(&mut self, node: NodeId) {
        self.replicas.remove(&node).expect("node is up");
        self.in_flight.retain(|e| e.from != node);
        self.snapshots_in_flight.retain(|(from, _, _)| *from != node);
        self.snapshot_files.remove(&node);
        self.stores.remove(&node);
    }

    /// Stops `node` at once: what it had not made durable is lost.
    pub fn crash(&mut self, node: NodeId) {
        let replica = self.replicas.remove(&node).expect("node is up");
        self.in_flight.retain(|e| e.to != node && e.from != node);
        // A snapshot on its way to a crashed node is reported failed when its turn comes.
        self.snapshots_in_flight.retain(|(from, _, _)| *from != node);
        self.crashed.insert(node, replica.durable);
        self.report_liveness();
    }

    /// Restarts a crashed node from its durable log and its store: committed entries after
    /// the store's applied index are applied again.
    pub fn restart(&mut self, node: NodeId) {
        let durable = self.crashed.remove(&node).expect("node was crashed");
        let mut config = self.config(node, self.seed.wrapping_add(node.0 * 1000));
        // As the router does: the replica's own membership names its incarnation.
        let member = durable.conf_state.members().into_iter().map(PeerId).find(|p| p.node() == node);
        config.peer = member.unwrap_or(PeerId::new(node, 0));
        let rows = self.stores[&node].read().expect("reads");
        let record = rows.partition(self.partition).expect("reads");
        let format = store::Format::of(&rows, self.partition).expect("reads");
        let stored = record
            .map(|r| StoredState { applied: r.applied, conf_state: r.conf_state, raft: r.raft, format })
            .unwrap_or_default();
        let partition = Partition::open(config, durable.clone(), stored, self.now);
        self.replicas.insert(node, Replica { partition, pending_writes: VecDeque::new(), durable });
        self.collect(node);
        self.report_liveness();
    }

    /// Restarts a crashed node as the router does: its replica rests until something needs it.
    pub fn restart_resting(&mut self, node: NodeId) {
        self.restart(node);
        self.replicas.get_mut(&node).expect("restarted").partition.rest();
    }

    /// Unloads `node`'s replica and loads it again at once, as the router does, if it may
    /// unload now; the record it was reduced to.
    pub fn unload_and_reload(&mut self, node: NodeId) -> Option<crate::partition::Dormant> {
        let dormant = self.replicas[&node].partition.dormant()?;
        let mut config = self.config(node, self.seed.wrapping_add(node.0 * 1000));
        config.peer = dormant.peer;
        let replica = self.replicas.get_mut(&node).expect("node is up");
        replica.partition = Partition::reopen(config, &dormant, self.now);
        self.collect(node);
        Some(dormant)
    }

    /// Makes every pending write of `node` durable and tells its replica.
    pub fn complete_persists(&mut self, node: NodeId) {
        self.persist_pending(node);
        self.collect(node);
    }

    /// The log of `node` failed: its pending writes are lost and its replica is told.
    pub fn fail_persists(&mut self, node: NodeId, error: crate::persist::PersistError) {
        let replica = self.replicas.get_mut(&node).expect("node is up");
        replica.pending_writes.clear();
        replica.partition.handle_persist_failed(error);
        self.collect(node);
    }

    fn persist_pending(&mut self, node: NodeId) {
        let now = self.now;
        let replica = self.replicas.get_mut(&node).expect("node is up");
        let mut last = None;
        while let Some((number, write)) = replica.pending_writes.pop_front() {
            replica.durable.apply(&write);
            last = number.or(last);
        }
        if let Some(number) = last {
            replica.partition.handle_persisted(now, number);
        }
    }

    fn collect_all(&mut self) {
        for node in self.nodes() {
            self.collect(node);
        }
    }

    /// Drains `node`'s outputs into the network, its disk queue and `responses`.
    fn collect(&mut self, node: NodeId) {
        loop {
            let replica = self.replicas.get_mut(&node).expect("node is up");
            let mut any = false;
            while let Some(output) = replica.partition.poll_output() {
                any = true;
                match output {
                    Output::Send(envelope) => self.in_flight.push_back(envelope),
                    Output::Persist { ready_number, write } => {
                        replica.pending_writes.push_back((Some(ready_number), write))
                    }
                    Output::Compact(write) => replica.pending_writes.push_back((None, write)),
                    Output::SendSnapshot { to, message } => self.snapshots_in_flight.push_back((node, to, message)),
                    Output::Apply(entries) => {
                        let store = &self.stores[&node];
                        let partition = self.partition;
                        let applied = store
                            .write(Commit::Durable, |rows| store::apply_entries(rows, partition, &entries))
                            .expect("an in-memory store applies");
                        let last = applied.last().expect("a batch applies something").position;
                        replica.partition.handle_applied(self.now, applied);
                        replica.partition.handle_store_durable(self.now, last);
                    }
                    Output::Read { request, query } => {
                        let rows = self.stores[&node].read().expect("reads");
                        let applied_index =
                            rows.partition(self.partition).expect("reads").map_or(0, |r| r.applied.index);
                        let result = store::read::read(&rows, self.partition, &query).expect("reads");
                        let response = Response::Read { result, applied_index };
                        self.responses.push(Delivered { node, request, response });
                    }
                    Output::SaveSnapshot => {
                        let rows = self.stores[&node].read().expect("reads");
                        let record = rows.partition(self.partition).expect("reads").expect("something was applied");
                        let meta = SnapshotMeta { position: record.applied, conf_state: record.conf_state };
                        let mut bytes = Vec::new();
                        store::snapshot::export(&rows, self.partition, &mut bytes).expect("writing to memory");
                        let files = self.snapshot_files.entry(node).or_default();
                        files.insert(meta.position, (meta.clone(), bytes));
                        replica.partition.handle_snapshot_saved(self.now, Ok(meta));
                    }
                    Output::InstallSnapshot(meta) => {
                        let (_, bytes) = &self.snapshot_files[&node][&meta.position];
                        let partition = self.partition;
                        let format = self.stores[&node]
                            .write(Commit::Durable, |rows| {
                                let counts = store::snapshot::import(
                                    rows,
                                    partition,
                                    meta.position.index,
                                    &mut &bytes[..],
                                    &store::DedupLimits::DEFAULT,
                                )
                                .expect("a saved snapshot imports");
                                let record = store::PartitionRecord {
                                    applied: meta.position,
                                    conf_state: meta.conf_state.clone(),
                                    counts,
                                    raft: crate::persist::RaftMode::On,
                                };
                                rows.set_partition(partition, &record)?;
                                store::Format::of(rows, partition)
                            })
                            .expect("an in-memory store installs");
                        replica.partition.handle_snapshot_installed(self.now, Ok(format));
                    }
                    Output::Respond { request, response } => self.responses.push(Delivered { node, request, response }),
                    // One partition only here: the directory's allocations have no replica to
                    // create.
                    Output::PartitionAllocated { .. }
                    | Output::MembersChanged { .. }
                    | Output::DirectoryReady
                    | Output::LeaderMembers { .. } => {}
                }
            }
            if !any || !self.auto_persist {
                return;
            }
            if self.replicas[&node].pending_writes.is_empty() {
                return;
            }
            self.persist_pending(node);
        }
    }

    /// Does one thing: delivers the next message if any, else advances time to the earliest
    /// timeout and ticks. Returns false when nothing at all can happen.
    pub fn step(&mut self) -> bool {
        if let Some((from, to, message)) = self.snapshots_in_flight.pop_front() {
            self.deliver_snapshot(from, to, message);
            return true;
        }
        if let Some(envelope) = self.in_flight.pop_front() {
            let dropped = self.cut.contains(&(envelope.from, envelope.to))
                || self.lost.contains(&(envelope.from, envelope.to))
                || (self.drop_rate > 0.0 && self.rng.gen_bool(self.drop_rate));
            let to = envelope.to;
            if !dropped {
                if let Some(replica) = self.replicas.get_mut(&to) {
                    let Payload::Raft(message) = envelope.payload else {
                        panic!("the harness sends only raft messages")
                    };
                    replica.partition.handle_message(self.now, message);
                    self.collect(to);
                }
            }
            return true;
        }
        let Some(next) = self.replicas.values().filter_map(|r| r.partition.poll_timeout()).min() else {
            return false;
        };
        self.now = self.now.max(next);
        for node in self.nodes() {
            let now = self.now;
            self.replicas.get_mut(&node).expect("listed").partition.handle_tick(now);
            self.collect(node);
        }
        true
    }

    /// Hands the snapshot `from` saved at the message's position to `to`, then tells `from`
    /// how it went.
    fn deliver_snapshot(&mut self, from: NodeId, to: NodeId, message: raft::eraftpb::Message) {
        let metadata = message.get_snapshot().get_metadata();
        let position = LogPosition { index: metadata.index, term: metadata.term };
        let file = self.snapshot_files.get(&from).and_then(|files| files.get(&position)).cloned();
        let reachable =
            !self.cut.contains(&(from, to)) && !self.lost.contains(&(from, to)) && self.replicas.contains_key(&to);
        let delivered = match (file, reachable) {
            (Some((meta, bytes)), true) => {
                self.snapshot_files.entry(to).or_default().insert(position, (meta.clone(), bytes));
                let replica = self.replicas.get_mut(&to).expect("reachable");
                replica.partition.handle_snapshot_received(self.now, message, meta);
                self.snapshots_delivered += 1;
                self.collect(to);
                true
            }
            _ => false,
        };
        if let Some(replica) = self.replicas.get_mut(&from) {
            replica.partition.report_snapshot(self.now, to, delivered);
            self.collect(from);
        }
    }

    /// Puts `envelope` at the head of the network, as if a peer had just sent it (tests of
    /// hostile or buggy peers).
    pub fn inject(&mut self, envelope: Envelope) {
        self.in_flight.push_front(envelope);
    }

    /// Steps until `done` holds, at most `steps_max` steps; returns whether it held.
    pub fn drive_until(&mut self, steps_max: usize, mut done: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..steps_max {
            if done(self) {
                return true;
            }
            if !self.step() {
                return done(self);
            }
        }
        done(self)
    }

    /// Committed entries of every live replica agree at every index they both hold.
    pub fn assert_logs_agree(&self) {
        // (node, commit index, index -> (term, data))
        type Log = (NodeId, u64, BTreeMap<u64, (u64, Vec<u8>)>);
        let logs: Vec<Log> = self
            .replicas
            .iter()
            .map(|(&node, r)| {
                let commit = r.durable.hard_state.commit;
                let entries = r
                    .durable
                    .entries
                    .iter()
                    .filter(|e| e.index <= commit)
                    .map(|e| (e.index, (e.term, e.data.clone())))
                    .collect();
                (node, commit, entries)
            })
            .collect();
        for (i, (a, _, log_a)) in logs.iter().enumerate() {
            for (b, _, log_b) in &logs[i + 1..] {
                for (index, entry) in log_a {
                    if let Some(other) = log_b.get(index) {
                        assert_eq!(entry, other, "committed entry {index} differs on nodes {a} and {b}");
                    }
                }
            }
        }
    }
}
