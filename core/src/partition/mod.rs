//! One partition's replica as a plain struct (sans-IO): it owns a Raft node and decides what
//! its state machine must do, is fed events through `handle_*`, and is drained through
//! `poll_*`. The state machine itself lives in the node's store (`crate::store`): committed
//! entries leave as `Output::Apply` and their results come back through `handle_applied`;
//! reads leave as `Output::Read` once they may be answered.
//!
//! The driver (the actor in `node`, or a test) follows one loop:
//! 1. feed an input: `handle_message`, `handle_tick`, `handle_request`, `handle_persisted`,
//!    `handle_applied`, `handle_store_durable`, ...;
//! 2. drain `poll_output` until it returns `None`, carrying each output out in order
//!    (`Persist` outputs must become durable in that order, `Apply` outputs applied in it);
//! 3. sleep until `poll_timeout` (none means nothing will happen until the next input).
//!
//! A `Partition` never reads a clock, touches a disk or a socket, or draws unseeded
//! randomness, so tests can drive three of them by hand in one thread.

mod dormant;
mod format;
mod forwarded;
mod input;
mod lag;
mod output;
mod peer_check;
mod proposals;
mod quiesce;
mod raft_mode;
mod reads;
mod ready;
mod storage;

pub use dormant::Dormant;
pub use input::{MembershipChange, ReadConsistency, Request};
pub use output::{Output, Response};
pub use quiesce::{ElectionCause, WakeCause};

/// What an empty normal entry with `context` does, for tools that show a log: the switches a
/// partition writes into its own log, or a new leader's first entry.
pub fn describe_empty_entry(context: &[u8]) -> &'static str {
    match raft_mode::switch_of(true, &[], context) {
        Some(RaftMode::Off) => "turns Raft off",
        Some(RaftMode::On) => "turns Raft on",
        None => match format::switch_of(true, &[], context) {
            Some(Format::PlacedByIndex) => "switches the store's format: objects placed by index",
            Some(Format::DedupRing) => "switches the store's format: dedup results in rings",
            Some(Format::Original) => unreachable!("no entry switches to the original format"),
            None => "a new leader's first entry",
        },
    }
}

use crate::env::{Envelope, Instant, Payload};
use crate::ids::{NodeId, PartitionId, PeerId, RequestId};
use crate::limits;
use crate::observe::Observer;
use crate::persist::{
    ConfState, EntryKind, HardState, LogEntry, LogPosition, LogWrite, PersistError, RaftMode, RecoveredPartition,
    SnapshotMeta,
};
use crate::raft_logger::raft_logger;
use crate::state_machine::{self, Command, ReadQuery};
use crate::store::{Applied, Format};
use forwarded::Forwarded;
use proposals::Proposals;
use quiesce::Quiesce;
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reads::Reads;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use storage::PartitionStorage;

/// How every replica of a node runs Raft: one definition, from the node's configuration down
/// to each `Partition`. The timing is in ticks of `tick_interval`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaOptions {
    pub tick_interval: Duration,
    /// A follower that hears no leader for between `election_ticks` and twice that (drawn
    /// from the seeded source) starts an election.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// The log is compacted through what the store has made durable; a leader holds a
    /// compaction back (for a while) for a live follower at most this many entries behind,
    /// which would otherwise need a whole snapshot for want of a few entries.
    pub log_retain_entries: u64,
    /// A leader idle for this many ticks quiesces its partition (see `quiesce.rs`); 0 never.
    pub quiesce_after_ticks: u64,
    /// A follower quiesced this many ticks with nothing in flight is unloaded: only its
    /// `Dormant` record stays in memory until a request or a message needs it; 0 never.
    pub unload_after_ticks: u64,
    /// The largest snapshot this replica accepts from a peer; a larger transfer is refused at
    /// its first chunk, as is one the disk has no room for.
    pub snapshot_size_bytes_max: u64,
    /// Whether a new partition whose only voter is this replica runs Raft from its start. When
    /// false it starts with Raft off (`raft_mode.rs`); partitions of several voters, and the
    /// directory, always run Raft.
    pub raft_enabled_by_default: bool,
    /// The store format a new partition's bootstrap log switches to (`format.rs`). Always the
    /// latest outside tests and the simulator, which also create partitions as earlier builds
    /// did, so that a leader's switch of an old partition runs under their faults.
    pub bootstrap_format: Format,
}

impl Default for ReplicaOptions {
    fn default() -> ReplicaOptions {
        ReplicaOptions {
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_retain_entries: 10_000,
            quiesce_after_ticks: 20,
            unload_after_ticks: 100,
            snapshot_size_bytes_max: limits::SNAPSHOT_SIZE_BYTES_MAX_DEFAULT,
            raft_enabled_by_default: true,
            bootstrap_format: Format::LATEST,
        }
    }
}

/// One replica's identity, seed and hooks, with the node's `ReplicaOptions`.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    pub node: NodeId,
    /// This replica's Raft id (see [`PeerId`]); `node`'s own id for an initial member.
    pub peer: PeerId,
    pub partition: PartitionId,
    pub options: ReplicaOptions,
    /// Seeds this replica's election jitter.
    pub seed: u64,
    /// Watches applies and elections (simulation checkers); `None` in production.
    pub observer: Option<Arc<dyn Observer>>,
}

impl PartitionConfig {
    pub fn new(node: NodeId, partition: PartitionId, seed: u64) -> PartitionConfig {
        PartitionConfig {
            node,
            peer: PeerId::new(node, 0),
            partition,
            options: ReplicaOptions::default(),
            seed,
            observer: None,
        }
    }
}

/// A replica's role, as reported in status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Leader,
    Candidate,
    Follower,
    /// A member that cannot vote (a Raft learner).
    Learner,
}

impl Role {
    /// How status pages, the API and the CLI name it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Candidate => "candidate",
            Role::Follower => "follower",
            Role::Learner => "learner",
        }
    }
}

/// One member's replication progress, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    pub node: NodeId,
    pub voter: bool,
    pub match_index: u64,
    /// How the leader replicates to it: `probe` (finding where its log ends), `replicate`
    /// (streaming entries) or `snapshot` (a snapshot is on its way).
    pub state: &'static str,
    /// How far behind in time: the age of the oldest entry it lacks (zero if it lacks none).
    pub behind: Duration,
    /// How long since the leader last heard from it (`None`: not since it became leader;
    /// the leader itself: zero).
    pub last_heard: Option<Duration>,
}

/// A replica's view of its partition, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    pub partition: PartitionId,
    pub node: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_index: u64,
    /// The last entry compacted away: the log starts after it.
    pub compacted_index: u64,
    /// The store has made its state durable through here.
    pub durable_index: u64,
    /// Quiesced: no timer, nothing sent until an input wakes it (`quiesce.rs`).
    pub quiesced: bool,
    /// Unloaded: only its `Dormant` record is in memory (`dormant.rs`); implies quiesced.
    pub unloaded: bool,
    pub conf_state: ConfState,
    /// Filled on the leader only.
    pub progress: Vec<ReplicaProgress>,
    /// Whether the partition runs Raft (off: its one replica shows as its leader).
    pub raft: RaftMode,
}

/// What the store holds of a partition when its replica opens: how far it has applied, and
/// the membership as of then (`None` fields of a partition the store has never applied).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredState {
    pub applied: LogPosition,
    pub conf_state: ConfState,
    /// The Raft mode as of `applied`.
    pub raft: RaftMode,
    /// The store's format of the partition's rows as of `applied` (`format.rs`).
    pub format: Format,
}

/// A replica of one partition. See the module documentation for how to drive it.
pub struct Partition {
    config: PartitionConfig,
    /// With Raft off, left as it was when Raft went off, and never called; its storage is still
    /// the log (see `raft_mode.rs`).
    raw: RawNode<PartitionStorage>,
    mode: RaftMode,
    /// A switch of `mode` asked for and not made yet.
    switching: Option<raft_mode::PendingSwitch>,
    /// Raft off: log writes handed out and not durable yet, oldest first: (number, last index).
    unpersisted_off: VecDeque<(u64, u64)>,
    /// The number of the latest log write handed out (or Ready handled): numbers only rise.
    last_ready_number: u64,
    /// Added to the Raft node's ready numbers: the numbers handed out before it was built.
    raft_numbers_from: u64,
    /// The hard state last handed to the log (see `log_hard_state`).
    logged_hard_state: HardState,
    proposals: Proposals,
    forwarded: Forwarded,
    /// Ticks since this replica started; times out forwarded writes.
    ticks: u64,
    reads: Reads,
    outputs: VecDeque<Output>,
    /// Readies handed to the log and not yet durable, oldest first; the messages each one
    /// may only send once it (and every earlier one) is durable.
    unpersisted: VecDeque<(u64, Vec<raft::eraftpb::Message>)>,
    next_tick_at: Instant,
    /// Election jitter comes from here, never from raft-rs's own unseeded generator; so do
    /// tick phases. Xoshiro: 32 bytes of state (`StdRng`'s ChaCha was ten times that, in every
    /// replica).
    rng: Xoshiro256PlusPlus,
    /// (term, role, leader) when last seen; a change means raft reset its election timer.
    observed: (u64, StateRole, u64),
    conf_state_dirty: bool,
    fatal: Option<PersistError>,
    /// The term this replica leads, as of the end of the last input.
    leading_term: Option<u64>,
    /// Entries up to here were committed before this start: applying them replays history,
    /// whose directory changes must not be acted on again (see `Output::DirectoryReady`).
    replayed_through: u64,
    directory_ready: bool,
    /// The store has applied every entry through here (`handle_applied`).
    applied: LogPosition,
    /// Committed entries were handed to the store (`Output::Apply`) through this index.
    applying: u64,
    /// Command bytes of each `Output::Apply` batch handed out and not yet answered, oldest
    /// first, and their sum.
    apply_batches_in_flight: VecDeque<u64>,
    apply_bytes_in_flight: u64,
    /// The store has made its state durable through here (`handle_store_durable`): the log
    /// may be compacted up to it, and no further.
    store_durable: LogPosition,
    /// A `SaveSnapshot` was handed out and not yet reported saved or failed.
    saving_snapshot: bool,
    /// After a failed save, the tick before which no new one is tried.
    snapshot_retry_tick: u64,
    /// A snapshot received whole, waiting for Raft to accept it. (This and the next two are
    /// boxed: they are rare, and every loaded replica would carry them inline, 120 bytes each.)
    staged_snapshot: Option<Box<SnapshotMeta>>,
    /// A snapshot Raft accepted, being installed into the store (`Output::InstallSnapshot`);
    /// no Ready is handled until it is (`handle_snapshot_installed`).
    installing: Option<Box<SnapshotMeta>>,
    /// A leader holding a compaction back for a follower just behind gives up at this tick.
    compaction_deadline_tick: Option<u64>,
    /// A snapshot the store took, waiting for the Ready that records it in the log.
    installed_snapshot: Option<Box<SnapshotMeta>>,
    /// Awake, asking to quiesce, or quiesced (see `quiesce.rs`).
    quiesce: Quiesce,
    /// On a leader: how far behind in time its members are (`lag.rs`).
    lag: lag::LeaderLag,
    /// Why and at which tick this replica last woke from quiescence.
    last_wake: Option<(WakeCause, u64)>,
    /// Nodes the node's liveness monitor reports down.
    down_nodes: BTreeSet<NodeId>,
    /// Whether this replica was campaigning at the end of the last input, what made it start
    /// when the cause is known before Raft acts (a transfer, a request), and why the latest
    /// election it started started.
    was_candidate: bool,
    campaign_trigger: Option<ElectionCause>,
    last_election: Option<ElectionCause>,
    /// `campaign` was called; the election starts once Raft allows it.
    campaign_asked: bool,
    /// An election timeout was held for a live leader since this replica last heard from it
    /// (`quiesce.rs`, `hold_election_for_live_leader`): the next one is not.
    election_held: bool,
    /// Election timeouts held, for metrics.
    elections_held: u64,
    /// The store's format of the partition's rows, as far as this replica knows (`format.rs`).
    format: Format,
    /// The term in which this replica, leading, proposed switching to the latest format.
    format_proposed_in: Option<u64>,
}

impl Partition {
    /// Creates a brand-new replica of a partition whose initial voters are `voters` (the same
    /// list on every replica). Its first output persists that membership; the store applies
    /// it like any committed entry. A partition of one voter starts with Raft off if the
    /// options say so: its first write also holds the entry that turns Raft off.
    ///
    /// With an earlier `bootstrap_format` in the options, its bootstrap log is as the build
    /// that introduced that format wrote it: it keeps that format until a leader proposes the
    /// latest.
    pub fn create(config: PartitionConfig, voters: &[NodeId], now: Instant) -> Partition {
        let mut bootstrap = bootstrap_entries(voters, config.options.bootstrap_format);
        assert!(voters.contains(&config.node), "a partition is created on one of its voters");
        assert_eq!(config.peer, PeerId::new(config.node, 0), "initial members are incarnation 0");
        let alone = voters.iter().all(|&voter| voter == config.node);
        if alone && !config.options.raft_enabled_by_default && config.partition != crate::ids::DIRECTORY {
            bootstrap.push(LogEntry {
                index: bootstrap.len() as u64 + 1,
                term: BOOTSTRAP_TERM,
                kind: EntryKind::Normal,
                data: Vec::new(),
                context: raft_mode::RAFT_OFF_MARK.to_vec(),
            });
        }
        let last = bootstrap.last().expect("at least one voter").index;
        let recovered = RecoveredPartition {
            conf_state: ConfState { voters: voters.iter().map(|n| n.0).collect(), ..ConfState::default() },
            hard_state: HardState { term: BOOTSTRAP_TERM, vote: 0, commit: last },
            entries: bootstrap.clone(),
            ..RecoveredPartition::default()
        };
        // Nothing is handed to the store before the bootstrap write is durable. (The replica
        // learns its format from the committed bootstrap, as any replica opening does.)
        let mut partition = Partition::open_unsettled(config, recovered, StoredState::default(), now);
        partition.persist_metadata(bootstrap);
        partition
    }

    /// A replica that knows nothing yet, on a node newly added to the partition: the leader
    /// brings it its log (membership included) from the first entry, or a snapshot.
    pub fn create_empty(config: PartitionConfig, now: Instant) -> Partition {
        Partition::open(config, RecoveredPartition::default(), StoredState::default(), now)
    }

    /// Reopens a replica from what the log recovered and what the store holds: committed
    /// entries after the store's applied index are applied again.
    ///
    /// The store may be ahead of the log: a snapshot installed into the store whose log record
    /// was lost to a crash. Then the log starts after the store's position, as if that record
    /// had been written, and it is written now.
    pub fn open(
        config: PartitionConfig,
        recovered: RecoveredPartition,
        stored: StoredState,
        now: Instant,
    ) -> Partition {
        let mut partition = Partition::open_unsettled(config, recovered, stored, now);
        if partition.mode == RaftMode::Off {
            // Raft off, every entry in the log is durable, so committed (Raft hands out its own
            // committed entries in its first Ready).
            let last = partition.raw.store().hard_state().commit;
            partition.hand_out_through(last);
        }
        partition
    }

    /// `open`, without handing any entry to the store yet.
    fn open_unsettled(
        config: PartitionConfig,
        mut recovered: RecoveredPartition,
        stored: StoredState,
        now: Instant,
    ) -> Partition {
        assert!(config.options.election_ticks > config.options.heartbeat_ticks, "election outlasts heartbeats");
        let applied = stored.applied;
        assert!(
            applied.index >= recovered.compacted.index,
            "partition {}: the log is compacted through {:?}, past what the store made durable ({applied:?})",
            config.partition,
            recovered.compacted
        );
        let log_holds_applied = applied.index == recovered.compacted.index
            || recovered
                .entries
                .get((applied.index - recovered.compacted.index - 1) as usize)
                .is_some_and(|e| e.term == applied.term);
        let snapshot_record = if log_holds_applied {
            assert!(
                applied.index > recovered.compacted.index || applied.term == recovered.compacted.term,
                "the store's position agrees with the log's compaction"
            );
            None
        } else {
            tracing::info!(partition = %config.partition, ?applied, "the store is ahead of the log: it starts after the store");
            recovered.entries.clear();
            recovered.compacted = applied;
            recovered.snapshot = Some(applied);
            recovered.conf_state = stored.conf_state.clone();
            Some((applied, stored.conf_state.clone()))
        };
        // The store applies only committed entries: whatever it applied is committed.
        recovered.hard_state.commit = recovered.hard_state.commit.max(applied.index);
        let mode = raft_mode::mode_at_open(&recovered, applied.index, stored.raft);
        if mode == RaftMode::Off {
            // One replica, no Raft: every entry the log holds is durable, so committed.
            let last = recovered.entries.last().map_or(recovered.compacted.index, |e| e.index);
            recovered.hard_state.commit = recovered.hard_state.commit.max(last);
        }
        // A directory replica added to the group later (a replacement node's; its incarnation
        // is the index of the change that added it) acts on no entry before that: they are the
        // history of the members it replaced, whose replicas are not its own. Once applied
        // through there, it reconciles with the whole directory (`Output::DirectoryReady`).
        let replayed_through = match config.partition {
            crate::ids::DIRECTORY => recovered.hard_state.commit.max(config.peer.incarnation()),
            _ => recovered.hard_state.commit,
        };
        let recovered_hard_state = recovered.hard_state;
        let storage = PartitionStorage::new(&recovered);
        assert_eq!(config.peer.node(), config.node, "a replica's peer id names its node");
        let raw = new_raw_node(&config, storage, applied.index);
        let rng = Xoshiro256PlusPlus::seed_from_u64(config.seed ^ config.partition.0.rotate_left(32));
        let mut partition = Partition {
            next_tick_at: now + config.options.tick_interval,
            observed: (u64::MAX, StateRole::Follower, u64::MAX),
            config,
            raw,
            mode,
            switching: None,
            unpersisted_off: VecDeque::new(),
            last_ready_number: 0,
            raft_numbers_from: 0,
            logged_hard_state: recovered_hard_state,
            proposals: Proposals::default(),
            forwarded: Forwarded::default(),
            ticks: 0,
            reads: Reads::default(),
            outputs: VecDeque::new(),
            unpersisted: VecDeque::new(),
            rng,
            conf_state_dirty: false,
            fatal: None,
            leading_term: None,
            replayed_through,
            directory_ready: false,
            applied,
            applying: applied.index,
            apply_batches_in_flight: VecDeque::new(),
            apply_bytes_in_flight: 0,
            store_durable: applied,
            saving_snapshot: false,
            snapshot_retry_tick: 0,
            staged_snapshot: None,
            installing: None,
            compaction_deadline_tick: None,
            installed_snapshot: None,
            quiesce: Quiesce::awake(),
            lag: lag::LeaderLag::default(),
            last_wake: None,
            down_nodes: BTreeSet::new(),
            was_candidate: false,
            campaign_trigger: None,
            last_election: None,
            campaign_asked: false,
            election_held: false,
            elections_held: 0,
            format: format::at_open(&recovered, applied.index, stored.format),
            format_proposed_in: None,
        };
        if let Some((position, conf_state)) = snapshot_record {
            let mut write = LogWrite::new(partition.config.partition);
            write.snapshot = Some((position, conf_state));
            partition.logged_hard_state = partition.raw.store().hard_state();
            write.hard_state = Some(partition.logged_hard_state);
            partition.unpersisted.push_back((0, Vec::new()));
            partition.outputs.push_back(Output::Persist { ready_number: 0, write });
        }
        partition.announce_directory_if_replayed();
        partition.rejitter();
        partition
    }

    // ---- getters ----

    pub fn id(&self) -> PartitionId {
        self.config.partition
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// This replica's Raft id.
    pub fn peer(&self) -> PeerId {
        self.config.peer
    }

    /// Whether this replica serves its partition's writes: Raft's leader, or the only replica
    /// with Raft off.
    pub fn is_leader(&self) -> bool {
        self.mode == RaftMode::Off || self.raw.raft.state == StateRole::Leader
    }

    /// Whether this replica leads a partition with a voter on a node that node liveness
    /// reports down: one more failure from losing its quorum (or already past it).
    pub fn is_under_replicated(&self) -> bool {
        self.is_leader()
            && self.raw.raft.prs().conf().voters().ids().iter().any(|id| self.down_nodes.contains(&PeerId(id).node()))
    }

    /// Whether this replica is awake and knows no leader: an election is due or under way.
    /// (A resting replica that knows none, after a restart, elects on its first request.)
    pub fn is_leaderless(&self) -> bool {
        self.leader().is_none() && !self.is_quiesced()
    }

    pub fn leader(&self) -> Option<NodeId> {
        if self.mode == RaftMode::Off {
            return Some(self.config.node);
        }
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => Some(PeerId(id).node()),
        }
    }

    /// Whether this replica is campaigning (pre-vote or vote).
    pub fn status_role_is_candidate(&self) -> bool {
        matches!(self.raw.raft.state, StateRole::Candidate | StateRole::PreCandidate)
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The last entry the store has applied.
    pub fn applied(&self) -> LogPosition {
        self.applied
    }

    /// Readies handed out as `Persist` and not yet reported durable.
    pub fn unpersisted_readies(&self) -> usize {
        self.unpersisted.len() + self.unpersisted_off.len()
    }

    /// `Apply` batches handed out and not yet answered.
    pub fn apply_batches_in_flight(&self) -> usize {
        self.apply_batches_in_flight.len()
    }

    pub fn apply_bytes_in_flight(&self) -> u64 {
        self.apply_bytes_in_flight
    }

    /// The oldest batch handed to the store came back (applied, or failed).
    fn apply_batch_returned(&mut self) {
        let bytes = self.apply_batches_in_flight.pop_front().expect("applied entries were handed out");
        self.apply_bytes_in_flight -= bytes;
    }

    pub fn is_failed(&self) -> bool {
        self.fatal.is_some()
    }

    /// How far the furthest-behind member is behind this leader, in entries; 0 unless leading.
    /// How far behind in time the furthest member is, on a leader (zero elsewhere).
    pub fn leader_lag_time(&self, now: Instant) -> Duration {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return Duration::ZERO;
        }
        let last = raft.raft_log.last_index();
        raft.prs()
            .iter()
            .filter(|(&id, _)| id != raft.id)
            .map(|(_, p)| self.lag.behind(p.matched, last, now))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    pub fn leader_lag_entries(&self) -> u64 {
        let raft = &self.raw.raft;
        if raft.state != StateRole::Leader {
            return 0;
        }
        let last = raft.raft_log.last_index();
        raft.prs()
            .iter()
            .filter(|(&id, _)| id != raft.id)
            .map(|(_, p)| last.saturating_sub(p.matched))
            .max()
            .unwrap_or(0)
    }

    /// This replica's role (cheap: no copy of the membership).
    pub fn role(&self) -> Role {
        let raft = &self.raw.raft;
        if self.mode == RaftMode::Off {
            return Role::Leader;
        }
        match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower if raft.prs().conf().learners().contains(&self.config.peer.0) => Role::Learner,
            StateRole::Follower => Role::Follower,
        }
    }

    /// This replica's view of its partition at `now` (which dates the leader's view of its
    /// members: how far behind, last heard).
    pub fn status(&self, now: Instant) -> PartitionStatus {
        let raft = &self.raw.raft;
        let conf_state: ConfState = (&raft.prs().conf().to_conf_state()).into();
        let role = self.role();
        let progress = if raft.state == StateRole::Leader && self.mode == RaftMode::On {
            let last = raft.raft_log.last_index();
            let mut progress: Vec<_> = raft
                .prs()
                .iter()
                .map(|(&id, pr)| ReplicaProgress {
                    node: PeerId(id).node(),
                    voter: !conf_state.learners.contains(&id),
                    match_index: pr.matched,
                    state: match pr.state {
                        raft::ProgressState::Probe => "probe",
                        raft::ProgressState::Replicate => "replicate",
                        raft::ProgressState::Snapshot => "snapshot",
                    },
                    behind: if id == raft.id { Duration::ZERO } else { self.lag.behind(pr.matched, last, now) },
                    last_heard: if id == raft.id { Some(Duration::ZERO) } else { self.lag.last_heard(id, now) },
                })
                .collect();
            progress.sort_by_key(|p| p.node);
            progress
        } else {
            Vec::new()
        };
        PartitionStatus {
            partition: self.config.partition,
            node: self.config.node,
            role,
            term: raft.term,
            leader: self.leader(),
            commit_index: self.commit_index(),
            applied_index: self.applied.index,
            last_index: raft::Storage::last_index(self.raw.store()).expect("known"),
            compacted_index: self.raw.store().compacted().index,
            durable_index: self.store_durable.index,
            quiesced: self.is_quiesced(),
            unloaded: false,
            conf_state,
            progress,
            raft: self.mode,
        }
    }

    /// The last committed entry: Raft's commit, or with Raft off the last durable entry.
    fn commit_index(&self) -> u64 {
        match self.mode {
            RaftMode::On => self.raw.raft.raft_log.committed,
            RaftMode::Off => match self.unpersisted_off.front() {
                Some(&(_, index)) => index - 1,
                None => self.raw.store().hard_state().commit,
            },
        }
    }

    // ---- inputs ----

    /// A Raft message from another replica of this partition.
    pub fn handle_message(&mut self, now: Instant, message: raft::eraftpb::Message) {
        if message.to != self.config.peer.0 {
            // For another incarnation of this node's membership (an old replica, or one not
            // created yet): it must not count for this one.
            tracing::debug!(partition = %self.config.partition, to = %PeerId(message.to), me = %self.config.peer,
                "message for another incarnation dropped");
            return;
        }
        if self.fatal.is_some() {
            return;
        }
        if self.mode == RaftMode::Off {
            tracing::debug!(partition = %self.config.partition, from = %PeerId(message.from),
                "Raft is off: a peer's message dropped");
            return;
        }
        if let Err(refusal) = peer_check::check(&self.raw.raft, &message) {
            tracing::warn!(partition = %self.config.partition, from = %PeerId(message.from), kind = ?message.get_msg_type(),
                %refusal, "refused a peer's raft message");
            return;
        }
        if self.is_leader() {
            self.lag.heard_from(message.from, now);
        }
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow {
            self.campaign_trigger = Some(ElectionCause::Transfer);
        }
        if !self.quiesce_before_step(now, &message) {
            return;
        }
        let quiesce_request = (message.get_msg_type() == raft::eraftpb::MessageType::MsgHeartbeat
            && quiesce::is_quiesce_mark(&message))
        .then(|| message.clone());
        self.step(message);
        if let Some(request) = quiesce_request {
            self.quiesce_after_step(&request);
        }
        self.after_input(now);
    }

    /// Steps a peer's message into Raft. A hold on this replica's election
    /// (`hold_election_for_live_leader`) ends when it hears from its leader: what only a
    /// leader sends, from the one it follows once stepped. (Not any message from that peer: a
    /// leader that restarted and pre-votes is no leader, and its pre-votes must not keep its
    /// followers holding their elections forever.)
    fn step(&mut self, message: raft::eraftpb::Message) {
        let from_leader = matches!(
            message.get_msg_type(),
            raft::eraftpb::MessageType::MsgAppend
                | raft::eraftpb::MessageType::MsgHeartbeat
                | raft::eraftpb::MessageType::MsgSnapshot
        );
        let from = message.from;
        // raft-rs rejects messages from unknown peers and stale terms itself; an error here
        // is a message that lost a race (for example from a removed peer), not a bug.
        if let Err(e) = self.raw.step(message) {
            tracing::debug!(partition = %self.config.partition, error = %e, "raft rejected a message");
        }
        if from_leader && from == self.raw.raft.leader_id {
            self.election_held = false;
        }
    }

    /// A snapshot arrived whole and checked as a file: `message` is the leader's `MsgSnapshot`
    /// for it. Returns whether Raft took it (it refuses one no newer than what this replica has
    /// committed); if it did, `Output::InstallSnapshot` asks the store to take the file's
    /// state, and nothing else happens to the log until `handle_snapshot_installed`.
    pub fn handle_snapshot_received(
        &mut self,
        now: Instant,
        message: raft::eraftpb::Message,
        meta: SnapshotMeta,
    ) -> bool {
        if message.to != self.config.peer.0
            || self.fatal.is_some()
            || self.installing.is_some()
            || self.mode == RaftMode::Off
        {
            return false;
        }
        self.wake(now, WakeCause::Message);
        let metadata = message.get_snapshot().get_metadata();
        let index = metadata.index;
        assert_eq!((metadata.index, metadata.term), (meta.position.index, meta.position.term));
        self.staged_snapshot = Some(Box::new(meta));
        self.step(message);
        let accepted = self.raw.raft.snap().is_some_and(|s| s.get_metadata().index == index);
        let staged = *self.staged_snapshot.take().expect("staged above");
        if accepted && staged.position.index <= self.applying {
            // Raft replaces only an uncommitted past with a snapshot; one at or behind what was
            // applied means this replica's committed log and its leader's disagree, which no
            // honest peer causes. The replica stops rather than the node.
            tracing::error!(partition = %self.config.partition, snapshot = ?staged.position, applied = self.applying,
                "partition stopped: Raft took a snapshot behind what this replica applied (its peers broke Raft's rules)");
            self.stop(PersistError(Arc::new(std::io::Error::other("a snapshot behind the applied state"))));
            return false;
        }
        if accepted {
            self.installing = Some(Box::new(staged.clone()));
            self.outputs.push_back(Output::InstallSnapshot(staged));
        }
        self.after_input(now);
        accepted
    }

    /// The store took (`Ok`) the snapshot `Output::InstallSnapshot` asked for, durably: the
    /// replica's state is the snapshot's, and the log records it next. A failure stops the
    /// replica (Raft has accepted the snapshot; there is no going back to the old log).
    /// `result`: the installed rows' format, or why it failed.
    pub fn handle_snapshot_installed(&mut self, now: Instant, result: Result<Format, String>) {
        let meta = *self.installing.take().expect("a snapshot was being installed");
        let format = match result {
            Ok(format) => format,
            Err(reason) => {
                tracing::error!(partition = %self.config.partition, %reason, "partition stopped: installing a snapshot failed");
                self.stop(PersistError(Arc::new(std::io::Error::other(format!("installing a snapshot: {reason}")))));
                return;
            }
        };
        // Whatever told this replica its partition's format was committed, so before the
        // snapshot, which carries it in its rows.
        assert!(format >= self.format, "a snapshot past the switch to {:?} has {format:?}", self.format);
        self.format = format;
        tracing::info!(partition = %self.config.partition, node = %self.config.node, position = ?meta.position,
            "snapshot installed in the store");
        if let Some(observer) = &self.config.observer {
            observer.snapshot_installed(self.config.node, self.config.partition, meta.position.index);
        }
        assert!(self.apply_batches_in_flight.is_empty(), "the store applies in order: earlier batches came back first");
        self.applied = meta.position;
        self.applying = meta.position.index;
        self.store_durable = self.store_durable.max(meta.position);
        self.conf_state_dirty = false;
        self.installed_snapshot = Some(Box::new(meta));
        self.serve_ready_reads();
        // A directory replica that joined late may reach the entry that added it this way.
        self.announce_directory_if_replayed();
        self.after_input(now);
    }

    /// A snapshot transfer to `to` ended: Raft resumes replicating to it (after a failure,
    /// it sends a new snapshot when it next needs one).
    pub fn report_snapshot(&mut self, now: Instant, to: NodeId, delivered: bool) {
        if self.fatal.is_some() || self.mode == RaftMode::Off {
            return;
        }
        self.wake(now, WakeCause::Message);
        let status = if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
        let peer = self.raw.raft.prs().iter().map(|(&id, _)| PeerId(id)).find(|p| p.node() == to);
        if let Some(peer) = peer {
            self.raw.report_snapshot(peer.0, status);
        }
        self.after_input(now);
    }

    /// The snapshot a `SaveSnapshot` asked for is written (`Ok`, with the position and
    /// membership of the state it holds) or could not be. A saved snapshot is what raft-rs
    /// sends followers that need one.
    pub fn handle_snapshot_saved(&mut self, now: Instant, result: Result<SnapshotMeta, String>) {
        assert!(self.saving_snapshot, "a snapshot was asked for");
        self.saving_snapshot = false;
        let meta = match result {
            Ok(meta) => meta,
            Err(error) => {
                tracing::error!(partition = %self.config.partition, %error, "cannot save a snapshot; retrying later");
                self.snapshot_retry_tick = self.ticks + SNAPSHOT_RETRY_TICKS;
                return;
            }
        };
        if self.fatal.is_some() {
            return;
        }
        assert_eq!(self.mode, RaftMode::On, "Raft goes off only once no snapshot is being saved");
        let held = self.raw.store().snapshot_meta().map_or(0, |m| m.position.index);
        if meta.position.index > held {
            self.raw.mut_store().set_snapshot(meta);
        }
        self.after_input(now);
    }

    /// The store applied `applied` (the next entries handed out, in order): answer their
    /// proposals and forwarded writes, act on directory changes, serve reads now due.
    pub fn handle_applied(&mut self, now: Instant, applied: Vec<Applied>) {
        self.apply_batch_returned();
        if self.fatal.is_some() {
            return;
        }
        for Applied { position, outcome } in applied {
            assert_eq!(position.index, self.applied.index + 1, "entries come back applied in order, once");
            self.applied = position;
            self.settle_applied(position, outcome);
        }
        self.advance_raft_applied();
        self.serve_ready_reads();
        self.announce_directory_if_replayed();
        self.after_input(now);
    }

    /// The store failed to apply: nothing it would have answered can be; the replica stops.
    pub fn handle_apply_failed(&mut self, error: PersistError) {
        tracing::error!(partition = %self.config.partition, %error, "partition stopped: the store failed");
        if !self.apply_batches_in_flight.is_empty() {
            self.apply_batch_returned();
        }
        self.stop(error);
    }

    /// The store's state is durable through `position`: the log may drop what it covers.
    pub fn handle_store_durable(&mut self, now: Instant, position: LogPosition) {
        if self.fatal.is_some() || position.index <= self.store_durable.index {
            return;
        }
        assert!(position.index <= self.applied.index, "the store makes durable only what it applied");
        self.store_durable = position;
        self.after_input(now);
    }

    /// Compacts the log through what the store has made durable, unless (on a leader) a live
    /// follower is just behind it: it would need a whole snapshot for want of a few entries,
    /// so the compaction waits for it, up to a deadline. A follower further behind than
    /// `log_retain_entries` is not waited for.
    fn maybe_compact(&mut self) {
        let compacted = self.raw.store().compacted();
        let mut target = self.store_durable;
        if target.index <= compacted.index || self.installing.is_some() {
            return;
        }
        if self.is_leader() && self.mode == RaftMode::On {
            let floor = target.index.saturating_sub(self.config.options.log_retain_entries);
            let me = self.config.peer.0;
            let behind = self
                .raw
                .raft
                .prs()
                .iter()
                .filter(|(&id, pr)| id != me && pr.recent_active && (floor..target.index).contains(&pr.matched))
                .map(|(_, pr)| pr.matched)
                .min();
            if let Some(matched) = behind {
                let deadline = *self.compaction_deadline_tick.get_or_insert(
                    self.ticks + COMPACTION_WAIT_TICKS_PER_ELECTION * self.config.options.election_ticks as u64,
                );
                if self.ticks < deadline {
                    // Keep what the follower still needs; compact the rest.
                    if matched <= compacted.index {
                        return;
                    }
                    let term = self.raw.raft.raft_log.term(matched).expect("a held entry's term is known");
                    target = LogPosition { index: matched, term };
                }
            } else {
                self.compaction_deadline_tick = None;
            }
            if let Some(held) = self.held_for_down_members(target) {
                if held.index <= compacted.index {
                    return;
                }
                target = held;
            }
        }
        self.raw.mut_store().compact_to(target);
        let mut write = LogWrite::new(self.config.partition);
        write.compact_through = Some(target);
        self.outputs.push_back(Output::Compact(write));
    }

    /// Where a leader stops compacting (before `target`) for members on nodes known down, if
    /// what they will lack when they return is small: from what each matched, or, for one this
    /// leader never heard from (it was elected because that node died), from the start of its
    /// term. Such a member then catches up from the log, not by a snapshot: after a node that
    /// led thousands of partitions dies and restarts, its replicas need only the entries of
    /// the terms their new leaders began, not thousands of snapshots at once.
    fn held_for_down_members(&self, target: LogPosition) -> Option<LogPosition> {
        if self.down_nodes.is_empty() {
            return None;
        }
        let raft = &self.raw.raft;
        let storage = self.raw.store();
        let compacted = storage.compacted();
        let term_start = storage.first_index_of_term(raft.term).map(|first| first - 1);
        let held = raft
            .prs()
            .iter()
            .filter(|(&id, _)| id != raft.id && self.down_nodes.contains(&PeerId(id).node()))
            .filter_map(|(_, pr)| if pr.matched > 0 { Some(pr.matched) } else { term_start })
            .filter(|&matched| matched < target.index && matched >= compacted.index)
            .min()?;
        if storage.size_bytes_after(held) > limits::DOWN_MEMBER_LOG_RETAIN_BYTES_MAX {
            return None;
        }
        let term = raft.raft_log.term(held).expect("a held entry's term is known");
        Some(LogPosition { index: held, term })
    }

    /// Time passed. Ticks Raft once if a tick is due.
    pub fn handle_tick(&mut self, now: Instant) {
        if self.fatal.is_some() || now < self.next_tick_at || self.is_quiesced() || self.mode == RaftMode::Off {
            return;
        }
        // One tick per call even after a long pause: a paused process resumes with one timer
        // firing, not a burst that would start an election at once.
        self.next_tick_at = now + self.config.options.tick_interval;
        self.ticks += 1;
        for request in self.forwarded.expire(self.ticks) {
            self.respond(request, Response::Unknown);
        }
        // Not while a snapshot is installed but Raft has not yet been told it is applied:
        // an election timeout would make raft-rs read entries the snapshot compacted away,
        // which it treats as fatal (three-quiesce seed 117, a pause between the two).
        let snapshot_settling = self.raw.raft.raft_log.applied < self.raw.store().compacted().index;
        if self.quiesce_on_tick(now) && !snapshot_settling && !self.hold_election_for_live_leader() {
            self.raw.tick();
        }
        self.after_input(now);
        self.maybe_quiesce();
    }

    /// A client request. The answer comes as an `Output::Respond` for `request`, now or later.
    pub fn handle_request(&mut self, now: Instant, request: RequestId, body: Request) {
        if let Some(err) = &self.fatal {
            let response = Response::Failed(err.clone());
            self.respond(request, response);
            return;
        }
        if self.mode == RaftMode::Off {
            self.handle_request_off(now, request, body);
            return;
        }
        if !matches!(body, Request::Read { consistency: ReadConsistency::Stale, .. }) {
            self.wake(now, WakeCause::Request);
            // A request is activity: a leader's idle count starts again.
            self.quiesce = Quiesce::awake();
        }
        match body {
            Request::Write(command) => self.propose(request, command, false),
            Request::ForwardedWrite(command) => self.propose(request, command, true),
            Request::Read { query, consistency: ReadConsistency::Stale } => self.serve_read(request, query),
            Request::Read { query, consistency: ReadConsistency::Linearizable } => {
                self.read_linearizable(request, query)
            }
            Request::ChangeMembership(change) => self.propose_membership(now, request, change),
            Request::TransferLeader(to) => self.transfer_leader(request, to),
            Request::SetRaft(RaftMode::Off) => self.turn_off(request),
            Request::SetRaft(RaftMode::On) => self.respond(request, Response::RaftMode(RaftMode::On)),
        }
        self.after_input(now);
    }

    /// Every `Persist` up to and including `ready_number` is durable.
    pub fn handle_persisted(&mut self, now: Instant, ready_number: u64) {
        if self.fatal.is_some() {
            return;
        }
        if self.mode == RaftMode::Off {
            self.handle_persisted_off(now, ready_number);
            return;
        }
        let mut released = false;
        while let Some((number, _)) = self.unpersisted.front() {
            if *number > ready_number {
                break;
            }
            let (_, messages) = self.unpersisted.pop_front().expect("front exists");
            for message in messages {
                self.send(message);
            }
            released = true;
        }
        assert!(released, "persisted ready {ready_number} was outstanding");
        // Numbers at or below `raft_numbers_from` were not this Raft node's (0 is no ready).
        self.raw.on_persist_ready(ready_number.saturating_sub(self.raft_numbers_from));
        self.advance_raft_applied();
        self.after_input(now);
    }

    /// Starts an election as soon as Raft allows instead of waiting for the election timeout
    /// (a brand-new partition whose creator wants it usable at once): raft-rs refuses to
    /// campaign while committed membership changes are unapplied, as a new partition's
    /// bootstrap entries are until the store has applied them.
    pub fn campaign(&mut self, now: Instant) {
        // Raft off, the replica counts as its partition's leader: it never campaigns.
        if self.fatal.is_some() || self.is_leader() {
            return;
        }
        self.wake(now, WakeCause::Request);
        self.campaign_asked = true;
        self.after_input(now);
    }

    /// Campaigns if asked to and Raft can: everything committed is applied, and no leader has
    /// shown up meanwhile.
    fn campaign_if_asked(&mut self) {
        let raft = &self.raw.raft;
        if !self.campaign_asked || raft.raft_log.applied < raft.raft_log.committed {
            return;
        }
        self.campaign_asked = false;
        // raft-rs campaigns when told to even if this replica is no voter (a learner, or a new
        // replica that has not received its membership yet), and then fails an assertion.
        if self.fatal.is_some() || raft.leader_id != raft::INVALID_ID || !raft.promotable() {
            return;
        }
        self.campaign_trigger = Some(ElectionCause::Requested);
        if let Err(error) = self.raw.campaign() {
            tracing::warn!(partition = %self.config.partition, %error, "campaign refused");
        }
    }

    /// A log write failed: nothing that depended on it may be acknowledged. The replica stops;
    /// every waiting request fails.
    pub fn handle_persist_failed(&mut self, error: PersistError) {
        tracing::error!(partition = %self.config.partition, %error, "partition stopped: log write failed");
        self.stop(error);
    }

    /// Stops the replica for good: every waiting request fails with `error`.
    fn stop(&mut self, error: PersistError) {
        for request in self.proposals.drain().into_iter().chain(self.forwarded.drain()) {
            self.respond(request, Response::Failed(error.clone()));
        }
        for (request, _) in self.reads.take_all() {
            self.respond(request, Response::Failed(error.clone()));
        }
        self.unpersisted.clear();
        self.unpersisted_off.clear();
        self.fatal = Some(error);
    }

    // ---- outputs ----

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Gives back the spare capacity of the replica's queues, and of Raft's, once it has gone
    /// quiet with its outputs carried out: a burst (an election, a catch-up) leaves them sized
    /// for it, and a quiesced replica may stay loaded for a long time (a leader for as long as
    /// it leads). Measured with heaptrack on a node of 2,000 quiesced replicas: the outputs'
    /// queue alone kept about 860 bytes per replica on average (an `Output` is 328 bytes).
    /// Cheap: a quiet replica's queues are empty, or nearly.
    pub fn shrink_idle_buffers(&mut self) {
        assert!(self.is_quiesced(), "only a quiesced replica's queues stay empty");
        if self.outputs.is_empty() {
            self.outputs = VecDeque::new();
        }
        self.unpersisted.shrink_to_fit();
        self.unpersisted_off.shrink_to_fit();
        self.apply_batches_in_flight.shrink_to_fit();
        let raft = &mut self.raw.raft;
        raft.msgs.shrink_to_fit();
        raft.raft_log.unstable.entries.shrink_to_fit();
        raft.read_only.pending_read_index.shrink_to_fit();
        raft.read_only.read_index_queue.shrink_to_fit();
    }

    /// When `handle_tick` next has work; `None` if the replica has stopped.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.fatal.is_some() || self.is_quiesced() || self.mode == RaftMode::Off {
            return None;
        }
        Some(self.next_tick_at)
    }

    // ---- internals ----

    fn after_input(&mut self, now: Instant) {
        if self.mode == RaftMode::Off {
            self.maybe_finish_switch(now);
            if self.mode == RaftMode::Off {
                self.maybe_compact();
            }
            return;
        }
        self.campaign_if_asked();
        self.propose_format_if_unknown();
        self.process_ready();
        self.rejitter();
        self.start_reads();
        // Starting reads may have produced raft messages (singleton leaders answer at once).
        self.process_ready();
        self.note_leadership(now);
        self.note_appended(now);
        self.note_election();
        self.maybe_compact();
        self.maybe_save_snapshot();
        self.maybe_finish_switch(now);
    }

    /// Saves a snapshot of the store's state when raft-rs asked for one that the held one
    /// cannot serve (none yet, too old, or from before the receiver was a member).
    fn maybe_save_snapshot(&mut self) {
        if self.saving_snapshot || self.fatal.is_some() || self.ticks < self.snapshot_retry_tick {
            return;
        }
        if self.raw.store().take_snapshot_wanted() {
            self.saving_snapshot = true;
            self.outputs.push_back(Output::SaveSnapshot);
        }
    }

    /// On the directory's replica, once history is replayed: one `DirectoryReady`.
    pub(super) fn announce_directory_if_replayed(&mut self) {
        if self.config.partition != crate::ids::DIRECTORY || self.directory_ready {
            return;
        }
        if self.applied.index < self.replayed_through {
            return;
        }
        self.directory_ready = true;
        self.outputs.push_back(Output::DirectoryReady);
    }

    /// On a leader of a partition other than the directory: asks the node to make sure the
    /// directory records this replica's membership.
    pub(super) fn announce_members(&mut self) {
        if self.config.partition != crate::ids::DIRECTORY && self.is_leader() {
            // Raft's configuration holds every membership change handed out so far.
            let conf = self.raw.store().conf_state();
            self.outputs.push_back(Output::LeaderMembers { conf, as_of: self.applying });
        }
    }

    /// Whether an entry at `index` is live (not a replay of what was committed before start).
    pub(super) fn is_live(&self, index: u64) -> bool {
        index > self.replayed_through
    }

    /// Reports leadership won or lost since the last input (raft changes role inside `step`
    /// and `tick`, so this compares with what the previous input left).
    fn note_leadership(&mut self, now: Instant) {
        let leading = self.is_leader().then_some(self.raw.raft.term);
        if leading == self.leading_term {
            return;
        }
        let (partition, node, term) = (self.config.partition, self.config.node, self.raw.raft.term);
        match leading {
            Some(term) => {
                tracing::info!(%partition, %node, term, "became leader");
                self.lag.became_leader(now);
                if let Some(observer) = &self.config.observer {
                    observer.became_leader(node, partition, term);
                }
                self.announce_members();
            }
            None => {
                tracing::info!(%partition, %node, term, "stepped down");
                self.lag.stepped_down();
                // What this replica proposed may still commit under the next leader, or not:
                // tell the callers now rather than at their timeout. Writes are idempotent, so
                // they can retry; an entry that applies here later finds no caller.
                for request in self.proposals.drain() {
                    self.respond(request, Response::Unknown);
                }
            }
        }
        self.leading_term = leading;
    }

    /// On a leader: dates what it appended, and forgets the dates every member is past.
    fn note_appended(&mut self, now: Instant) {
        if !self.is_leader() {
            return;
        }
        let raft = &self.raw.raft;
        let matched_min = raft.prs().iter().filter(|(&id, _)| id != raft.id).map(|(_, p)| p.matched).min();
        self.lag.appended(raft.raft_log.last_index(), now);
        self.lag.prune(matched_min.unwrap_or(u64::MAX));
        self.lag.retain_members(|id| raft.prs().get(id).is_some());
    }

    /// Records why an election this replica just started started.
    fn note_election(&mut self) {
        let candidate = self.status_role_is_candidate();
        if candidate && !self.was_candidate {
            let cause = self.campaign_trigger.unwrap_or_else(|| self.election_cause());
            self.last_election = Some(cause);
            let raft = &self.raw.raft;
            let woken = self.last_wake.map(|(wake, tick)| (wake.name(), self.ticks.saturating_sub(tick)));
            tracing::info!(
                partition = %self.config.partition,
                term = raft.term,
                cause = cause.name(),
                ?woken,
                last_index = raft.raft_log.last_index(),
                "starting an election"
            );
            if let Some(observer) = &self.config.observer {
                observer.election_started(self.config.node, self.config.partition, self.raw.raft.term, cause);
            }
        }
        self.was_candidate = candidate;
        self.campaign_trigger = None;
    }

    /// Why the latest election this replica started started.
    pub fn last_election(&self) -> Option<ElectionCause> {
        self.last_election
    }

    fn propose(&mut self, request: RequestId, command: Command, forward: bool) {
        if let Err(rejection) = state_machine::validate(&command) {
            self.respond(request, Response::Invalid(rejection.to_string()));
            return;
        }
        if !self.is_leader() {
            let leader = self.leader();
            if forward && leader.is_some() && !self.forwarded.is_full() {
                self.forward(request, command);
            } else {
                self.respond(request, Response::NotLeader { leader });
            }
            return;
        }
        if self.proposals.is_full() || self.switching.is_some() {
            self.respond(request, Response::Busy);
            return;
        }
        let Some(data) = self.encode_command(request, &command) else { return };
        let last_before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                let (index, term) = self.proposed_entry(last_before);
                if crate::bugs::is_active(crate::bugs::Bug::AckUncommitted) {
                    if let state_machine::WriteOp::Transaction { objects, .. } = &command.op {
                        // Planted: answer as if applied, before any quorum has the entry.
                        let object_ids = objects.iter().map(|o| o.oid).collect();
                        let ok = state_machine::WriteOk { index, object_ids, partition: None };
                        self.respond(request, Response::Written(Ok(ok)));
                        return;
                    }
                }
                self.await_entry(index, term, request);
            }
            // Dropped: a leadership transfer is under way or too much is uncommitted.
            Err(raft::Error::ProposalDropped) => self.respond(request, Response::Busy),
            Err(e) => panic!("propose on a leader failed unexpectedly: {e}"),
        }
    }

    /// The entry a proposal Raft just accepted appended (exactly one, after `last_before`):
    /// its index and term.
    fn proposed_entry(&self, last_before: u64) -> (u64, u64) {
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(index, last_before + 1, "a proposal appends exactly one entry");
        (index, self.raw.raft.term)
    }

    /// `request` is answered once the entry at (`index`, `term`) applies. A request waiting
    /// for that index in an earlier term lost its entry: it is told `NotLeader`.
    fn await_entry(&mut self, index: u64, term: u64, request: RequestId) {
        if let Some(displaced) = self.proposals.insert(index, term, request) {
            let leader = self.leader();
            self.respond(displaced, Response::NotLeader { leader });
        }
    }

    /// `command` as an entry's data, or `None` (answered `Invalid`) if that is too large.
    fn encode_command(&mut self, request: RequestId, command: &Command) -> Option<Vec<u8>> {
        let data = command.encode();
        if data.len() > limits::COMMAND_SIZE_BYTES_MAX {
            let message = format!("write of {} bytes exceeds {} bytes", data.len(), limits::COMMAND_SIZE_BYTES_MAX);
            self.respond(request, Response::Invalid(message));
            return None;
        }
        Some(data)
    }

    /// Proposes one membership change after checking it is safe: one change at a time, never
    /// the last voter, never a change after which the voters that answer are not a quorum.
    fn propose_membership(&mut self, now: Instant, request: RequestId, change: MembershipChange) {
        if !self.may_propose(request, |partition| partition.check_membership(now, change)) {
            return;
        }
        use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
        let last_before = self.raw.raft.raft_log.last_index();
        // A new incarnation: the index this change takes.
        let new_peer = |node| PeerId::new(node, last_before + 1);
        let singles = match change {
            MembershipChange::AddLearner(node) => vec![(ConfChangeType::AddLearnerNode, new_peer(node))],
            MembershipChange::Promote(node) => {
                vec![(ConfChangeType::AddNode, self.member_peer(node).expect("checked: a learner"))]
            }
            MembershipChange::Remove(node) => {
                vec![(ConfChangeType::RemoveNode, self.member_peer(node).expect("checked: a member"))]
            }
            MembershipChange::Replace(node) => {
                let old = self.member_peer(node).expect("checked: a member");
                let voter = self.raw.raft.prs().conf().voters().contains(old.0);
                let role = if voter { ConfChangeType::AddNode } else { ConfChangeType::AddLearnerNode };
                // Two changes: raft enters a joint configuration and leaves it on its own once
                // the leader applies it (`transition` Auto).
                vec![(ConfChangeType::RemoveNode, old), (role, new_peer(node))]
            }
        };
        let mut conf_change = ConfChangeV2::default();
        for (change_type, peer) in singles {
            let mut single = ConfChangeSingle::default();
            single.set_change_type(change_type);
            single.node_id = peer.0;
            conf_change.mut_changes().push(single);
        }
        match self.raw.propose_conf_change(Vec::new(), conf_change) {
            Ok(()) => {
                let (index, term) = self.proposed_entry(last_before);
                self.await_entry(index, term, request);
            }
            Err(error) => self.respond(request, Response::Refused(format!("raft refused the change: {error}"))),
        }
    }

    /// Whether this replica may propose an operator's change now: it leads, `check` passes and
    /// a proposal fits; if not, `request` is answered why.
    fn may_propose(&mut self, request: RequestId, check: impl FnOnce(&Self) -> Result<(), String>) -> bool {
        let response = if !self.is_leader() {
            Response::NotLeader { leader: self.leader() }
        } else if let Err(reason) = check(self) {
            Response::Refused(reason)
        } else if self.proposals.is_full() {
            Response::Busy
        } else {
            return true;
        };
        self.respond(request, response);
        false
    }

    /// The peer id of `node`'s replica if it is a member (voter or learner).
    fn member_peer(&self, node: NodeId) -> Option<PeerId> {
        let conf = self.raw.raft.prs().conf();
        let voters = conf.voters().ids();
        let found = voters.iter().chain(conf.learners().iter().copied()).find(|&id| PeerId(id).node() == node);
        found.map(PeerId)
    }

    fn check_membership(&self, now: Instant, change: MembershipChange) -> Result<(), String> {
        let raft = &self.raw.raft;
        if self.switching.is_some() {
            return Err("Raft is being turned off for this partition".into());
        }
        if raft.has_pending_conf() {
            return Err("another membership change of this partition is in flight; try again once it applies".into());
        }
        let conf = raft.prs().conf();
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        // Voters the leader has heard from within an election timeout, itself included. Raft's
        // `recent_active` alone is not that: check-quorum clears it every election timeout,
        // and it is set again only by the next answer, a heartbeat later.
        let election_timeout = self.config.options.tick_interval * self.config.options.election_ticks as u32;
        let answering = |peers: &[u64]| {
            peers
                .iter()
                .filter(|&&v| {
                    v == self.config.peer.0
                        || raft.prs().get(v).is_some_and(|p| p.recent_active)
                        || self.lag.last_heard(v, now).is_some_and(|ago| ago < election_timeout)
                })
                .count()
        };
        let is_voter = |n: NodeId| voters.iter().any(|&v| PeerId(v).node() == n);
        let is_learner = |n: NodeId| conf.learners().iter().any(|&l| PeerId(l).node() == n);
        match change {
            MembershipChange::AddLearner(node) => {
                if is_voter(node) || is_learner(node) {
                    return Err(format!("node {node} is already a member"));
                }
            }
            MembershipChange::Promote(node) => {
                if is_voter(node) {
                    return Err(format!("node {node} is already a voter"));
                }
                if !is_learner(node) {
                    return Err(format!("node {node} is not a learner of this partition; add it first"));
                }
            }
            MembershipChange::Remove(node) => {
                if !is_voter(node) && !is_learner(node) {
                    return Err(format!("node {node} is not a member"));
                }
                if node == self.config.node {
                    return Err(format!("node {node} leads this partition; transfer leadership first"));
                }
                if is_voter(node) {
                    let remaining: Vec<u64> = voters.iter().copied().filter(|&v| PeerId(v).node() != node).collect();
                    if remaining.is_empty() {
                        return Err("that would remove the last voter".into());
                    }
                    let answering = answering(&remaining);
                    if answering < remaining.len() / 2 + 1 {
                        return Err(format!(
                            "removing node {node} would leave {answering} of {} remaining voters answering: no quorum",
                            remaining.len()
                        ));
                    }
                }
            }
            MembershipChange::Replace(node) => {
                if !is_voter(node) && !is_learner(node) {
                    return Err(format!("node {node} is not a member"));
                }
                if node == self.config.node {
                    return Err(format!("node {node} leads this partition: its replica has not lost its data"));
                }
                if is_voter(node) {
                    // Both configurations of the joint one need a quorum; in each, node's
                    // replica (old or new) does not answer.
                    let others: Vec<u64> = voters.iter().copied().filter(|&v| PeerId(v).node() != node).collect();
                    let answering = answering(&others);
                    let quorum = voters.len() / 2 + 1;
                    if answering < quorum {
                        return Err(format!(
                            "replacing node {node}'s replica needs {quorum} of the other {} voters answering; {answering} do",
                            others.len()
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn transfer_leader(&mut self, request: RequestId, to: NodeId) {
        if !self.is_leader() {
            let leader = self.leader();
            self.respond(request, Response::NotLeader { leader });
            return;
        }
        let voter = self.raw.raft.prs().conf().voters().ids().iter().find(|&v| PeerId(v).node() == to);
        let Some(voter) = voter else {
            self.respond(request, Response::Refused(format!("node {to} is not a voter of this partition")));
            return;
        };
        if self.switching.is_some() {
            self.respond(request, Response::Refused("Raft is being turned off for this partition".into()));
            return;
        }
        if to != self.config.node {
            self.raw.transfer_leader(voter);
        }
        self.respond(request, Response::Transferring);
    }

    /// Hands `command` to raft-rs, which sends it to the leader as a `MsgPropose`.
    fn forward(&mut self, request: RequestId, command: Command) {
        let key = (command.client, command.seq);
        match self.raw.propose(Vec::new(), command.encode()) {
            Ok(()) => {
                // Two election timeouts: long enough for a leader change, short enough that a
                // lost forward is retried soon.
                let give_up_at = self.ticks + 2 * self.config.options.election_ticks as u64;
                if let Some(replaced) = self.forwarded.insert(key, request, give_up_at) {
                    self.respond(replaced, Response::Unknown);
                }
            }
            Err(_) => {
                let leader = self.leader();
                self.respond(request, Response::NotLeader { leader });
            }
        }
    }

    fn read_linearizable(&mut self, request: RequestId, query: ReadQuery) {
        if !self.is_leader() {
            let leader = self.leader();
            self.respond(request, Response::NotLeader { leader });
            return;
        }
        if crate::bugs::is_active(crate::bugs::Bug::StaleRead) {
            // Planted: a leader that may already be deposed answers from its own state.
            self.serve_read(request, query);
            return;
        }
        if self.reads.is_full() {
            self.respond(request, Response::Busy);
            return;
        }
        self.reads.hold((request, query));
    }

    /// Sends held reads into a ReadIndex round once this leader has committed in its term.
    fn start_reads(&mut self) {
        if !self.is_leader() {
            let leader = self.leader();
            for (request, _) in self.reads.take_unconfirmed() {
                self.respond(request, Response::NotLeader { leader });
            }
            return;
        }
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        if let Some(context) = self.reads.start_round() {
            self.raw.read_index(reads::context_bytes(context));
        }
    }

    fn serve_ready_reads(&mut self) {
        let mut applied = self.applied.index;
        if crate::bugs::is_active(crate::bugs::Bug::ReadBeforeApply) {
            // Planted: a confirmed read index is taken as applied already.
            applied = u64::MAX - 1;
        }
        for (request, query) in self.reads.take_ready(applied) {
            self.serve_read(request, query);
        }
    }

    /// Answers a read from the store's state, which holds at least everything applied here.
    fn serve_read(&mut self, request: RequestId, query: ReadQuery) {
        self.outputs.push_back(Output::Read { request, query });
    }

    fn respond(&mut self, request: RequestId, response: Response) {
        self.outputs.push_back(Output::Respond { request, response });
    }

    fn send(&mut self, message: raft::eraftpb::Message) {
        let to = PeerId(message.to).node();
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot {
            self.outputs.push_back(Output::SendSnapshot { to, message });
            return;
        }
        let envelope =
            Envelope { partition: self.config.partition, from: self.config.node, to, payload: Payload::Raft(message) };
        self.outputs.push_back(Output::Send(envelope));
    }

    /// Raft resets its election timer whenever term, role or leader changes; replace the
    /// timeout it drew from its unseeded generator with one from our seeded source, so runs
    /// replay.
    fn rejitter(&mut self) {
        let raft = &self.raw.raft;
        let now = (raft.term, raft.state, raft.leader_id);
        if now == self.observed {
            return;
        }
        self.observed = now;
        let ticks = self.config.options.election_ticks;
        let timeout = self.rng.gen_range(ticks..2 * ticks);
        self.raw.raft.set_randomized_election_timeout(timeout);
    }

    /// Persists the bootstrap log on its own, outside any Ready (at creation).
    fn persist_metadata(&mut self, bootstrap: Vec<LogEntry>) {
        assert!(self.unpersisted.is_empty(), "metadata is persisted before any ready");
        let mut write = LogWrite::new(self.config.partition);
        write.entries = bootstrap;
        write.conf_state = Some(self.raw.store().conf_state());
        self.logged_hard_state = self.raw.store().hard_state();
        write.hard_state = Some(self.logged_hard_state);
        self.conf_state_dirty = false;
        // Ready numbers start at 1; 0 names this write.
        match self.mode {
            RaftMode::On => self.unpersisted.push_back((0, Vec::new())),
            RaftMode::Off => {
                let last = write.entries.last().expect("a bootstrap entry at least").index;
                self.unpersisted_off.push_back((0, last));
            }
        }
        self.outputs.push_back(Output::Persist { ready_number: 0, write });
    }
}

/// A Raft node over `storage`, which holds the log as recovered (or as Raft off left it), with
/// entries through `applied` already handed to the store.
fn new_raw_node(config: &PartitionConfig, storage: PartitionStorage, applied: u64) -> RawNode<PartitionStorage> {
    let raft_config = raft::Config {
        id: config.peer.0,
        election_tick: config.options.election_ticks,
        heartbeat_tick: config.options.heartbeat_ticks,
        // raft-rs draws its timeout from its own unseeded generator; we overwrite it from
        // `rng` whenever raft resets it (see `rejitter`).
        min_election_tick: config.options.election_ticks,
        max_election_tick: 2 * config.options.election_ticks,
        applied,
        max_size_per_msg: limits::RAFT_MESSAGE_ENTRIES_SIZE_BYTES_MAX,
        max_inflight_msgs: limits::RAFT_INFLIGHT_MESSAGES_MAX,
        max_uncommitted_size: limits::RAFT_UNCOMMITTED_SIZE_BYTES_MAX,
        max_committed_size_per_ready: limits::APPLY_BATCH_BYTES_MAX,
        check_quorum: true,
        pre_vote: true,
        // Followers learn that an entry committed from the next append or heartbeat, not from
        // an empty append of their own (as TiKV configures raft-rs). That message cost every
        // node a wakeup and, worse, set both followers applying the entry while the leader
        // applied it, on the same cores, before the leader could answer. At one client
        // (`cargo bench --bench vs_etcd`, A/B over five rounds) p50 went from 0.95 to 0.85 ms
        // and CPU per write down 10-15%; p99 rose from 2.3 to 3.1 ms: the followers' store
        // fsyncs, which stall every log fsync on the benchmark's one disk, no longer fall in
        // the same moment as the leader's. Membership changes still broadcast their commit.
        skip_bcast_commit: true,
        ..raft::Config::default()
    };
    raft_config.validate().expect("raft config is valid");
    let logger = raft_logger(config.node.0, config.partition.0);
    RawNode::new(&raft_config, storage, &logger).expect("raft node starts from recovered state")
}

/// Election timeouts a leader holds back a compaction for a follower just behind it.
const COMPACTION_WAIT_TICKS_PER_ELECTION: u64 = 4;

/// Ticks to wait after a failed snapshot save before trying again.
const SNAPSHOT_RETRY_TICKS: u64 = 50;

/// The term of a partition's bootstrap entries; elections start above it.
const BOOTSTRAP_TERM: u64 = 1;

/// A new partition's log starts with one committed membership change per initial voter, the
/// same on every initial replica, then the entry that switches it to `format` (none for the
/// original). A replica added later learns both by applying the log from its start, like any
/// other entry (or its store does from a snapshot, whose rows carry the format).
fn bootstrap_entries(voters: &[NodeId], format: Format) -> Vec<LogEntry> {
    use protobuf::Message as _;
    let mut sorted = voters.to_vec();
    sorted.sort();
    sorted.dedup();
    let mut entries: Vec<LogEntry> = sorted
        .iter()
        .enumerate()
        .map(|(i, voter)| {
            let mut change = raft::eraftpb::ConfChange::default();
            change.set_change_type(raft::eraftpb::ConfChangeType::AddNode);
            change.node_id = voter.0;
            LogEntry {
                index: i as u64 + 1,
                term: BOOTSTRAP_TERM,
                kind: EntryKind::ConfChange,
                data: change.write_to_bytes().expect("encoding a conf change cannot fail"),
                context: Vec::new(),
            }
        })
        .collect();
    if let Some(mark) = format::mark(format) {
        entries.push(LogEntry {
            index: entries.len() as u64 + 1,
            term: BOOTSTRAP_TERM,
            kind: EntryKind::Normal,
            data: Vec::new(),
            context: mark.to_vec(),
        });
    }
    entries
}

#[cfg(test)]
mod tests;
