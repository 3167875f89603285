//! What a partition asks the log to make durable, and what the log gives back after a restart.
//!
//! These are cohort's own serde types, not raft-rs's protobuf ones, so that the on-disk format
//! is ours to version and every decode of it goes through [`crate::codec`].

use crate::ids::PartitionId;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub index: u64,
    pub term: u64,
    pub kind: EntryKind,
    // Bytes as one run, not one element at a time (the same encoding, far faster).
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub context: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Normal,
    ConfChange,
    ConfChangeV2,
}

/// Whether a partition runs Raft. Decided by its log, like its membership: the last mode
/// switch entry (see `partition::raft_mode`), or the store's record of it as of the applied
/// position when the log holds none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RaftMode {
    /// A Raft group (of one or more voters).
    #[default]
    On,
    /// One replica, no Raft: a write is committed once its log append is durable.
    Off,
}

impl RaftMode {
    pub fn name(self) -> &'static str {
        match self {
            RaftMode::On => "on",
            RaftMode::Off => "off",
        }
    }
}

/// Raft's vote and commit state, persisted before any message that depends on it is sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: u64,
    pub vote: u64,
    pub commit: u64,
}

/// A partition's membership, as Raft's conf state.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfState {
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub voters_outgoing: Vec<u64>,
    pub learners_next: Vec<u64>,
    pub auto_leave: bool,
}

impl ConfState {
    /// The nodes of the voters (whose ids are peer ids), sorted.
    pub fn voter_nodes(&self) -> Vec<crate::ids::NodeId> {
        nodes_of(&self.voters)
    }

    /// The nodes of the learners, sorted.
    pub fn learner_nodes(&self) -> Vec<crate::ids::NodeId> {
        nodes_of(&self.learners)
    }

    /// Every member's peer id (voters and learners), sorted.
    pub fn members(&self) -> Vec<u64> {
        let mut members: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        members.sort_unstable();
        members
    }
}

/// Equal memberships held once. Most partitions of a cluster have the same members (initial
/// members' peer ids are their node ids), so what keeps a membership for every partition a node
/// hosts (the log's index, unloaded replicas) keeps a pointer per partition and one copy per
/// distinct membership: 8 bytes instead of about 130.
///
/// Bounded: whenever it reaches `max(PRUNE_AT_MIN, twice what was held elsewhere at the last
/// prune)` entries, it drops those nobody else holds; so it never holds more than twice the
/// most memberships ever held elsewhere at once, or `PRUNE_AT_MIN`.
#[derive(Debug, Default)]
pub struct ConfStatePool {
    shared: std::collections::BTreeSet<Arc<ConfState>>,
    prune_at: usize,
}

impl ConfStatePool {
    const PRUNE_AT_MIN: usize = 64;

    /// `conf_state`, shared with every equal one this pool handed out.
    pub fn share(&mut self, conf_state: &ConfState) -> Arc<ConfState> {
        if let Some(shared) = self.shared.get(conf_state) {
            return Arc::clone(shared);
        }
        if self.shared.len() >= self.prune_at.max(Self::PRUNE_AT_MIN) {
            self.shared.retain(|shared| Arc::strong_count(shared) > 1);
            self.prune_at = 2 * self.shared.len();
        }
        let shared = Arc::new(conf_state.clone());
        self.shared.insert(Arc::clone(&shared));
        shared
    }

    /// Distinct memberships held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shared.len()
    }
}

fn nodes_of(peers: &[u64]) -> Vec<crate::ids::NodeId> {
    let mut nodes: Vec<_> = peers.iter().map(|&p| crate::ids::PeerId(p).node()).collect();
    nodes.sort_unstable();
    nodes
}

/// A position in a Raft log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogPosition {
    pub index: u64,
    pub term: u64,
}

/// What a snapshot covers: the state after applying every entry through `position`, with
/// the membership as of then.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub position: LogPosition,
    pub conf_state: ConfState,
}

/// The durable changes of one partition, handed to the log engine as one unit. The engine
/// applies them in field order: `snapshot`, `compact_through`, `entries`, `hard_state`,
/// `conf_state`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogWrite {
    pub partition: PartitionId,
    /// A snapshot was installed at this position: every entry is dropped, the log restarts
    /// after it, and `conf_state` becomes the snapshot's.
    pub snapshot: Option<(LogPosition, ConfState)>,
    /// Entries up to and including this position are no longer needed (log compaction).
    pub compact_through: Option<LogPosition>,
    /// Contiguous entries; the first one replaces any entry at or after its index.
    pub entries: Vec<LogEntry>,
    pub hard_state: Option<HardState>,
    pub conf_state: Option<ConfState>,
    /// The partition left this node: forget everything about it.
    pub remove: bool,
}

impl LogWrite {
    pub fn new(partition: PartitionId) -> LogWrite {
        LogWrite { partition, ..LogWrite::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none()
            && self.compact_through.is_none()
            && self.entries.is_empty()
            && self.hard_state.is_none()
            && self.conf_state.is_none()
            && !self.remove
    }

    /// Asserts the shape every producer must respect.
    pub fn assert_well_formed(&self) {
        for pair in self.entries.windows(2) {
            assert_eq!(pair[0].index + 1, pair[1].index, "log write entries are contiguous");
            assert!(pair[0].term <= pair[1].term, "log write entry terms never decrease");
        }
        if let (Some((snap, _)), Some(first)) = (&self.snapshot, self.entries.first()) {
            assert!(first.index > snap.index, "entries in a write start after its snapshot");
        }
    }
}

/// What the log engine knows of one partition after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredPartition {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The last position folded into a snapshot or compacted away; the first entry held is
    /// `compacted.index + 1`.
    pub compacted: LogPosition,
    /// The last snapshot installed, if any (it may be older than `compacted`).
    pub snapshot: Option<LogPosition>,
    /// Contiguous entries from `compacted.index + 1`.
    pub entries: Vec<LogEntry>,
}

impl RecoveredPartition {
    /// Applies one durable write, with the semantics the log engine gives it on replay. This is
    /// the reference for what a sequence of writes means.
    pub fn apply(&mut self, write: &LogWrite) {
        write.assert_well_formed();
        if let Some((position, conf_state)) = &write.snapshot {
            self.entries.clear();
            self.compacted = *position;
            self.snapshot = Some(*position);
            self.conf_state = conf_state.clone();
        }
        if let Some(position) = write.compact_through {
            if position.index > self.compacted.index {
                let drop = (position.index - self.compacted.index) as usize;
                self.entries.drain(..drop.min(self.entries.len()));
                self.compacted = position;
            }
        }
        if let Some(first) = write.entries.first() {
            assert!(first.index > self.compacted.index, "entries never overwrite compacted ones");
            let last_index = self.compacted.index + self.entries.len() as u64;
            assert!(first.index <= last_index + 1, "entries leave no gap");
            self.entries.truncate((first.index - self.compacted.index - 1) as usize);
            self.entries.extend(write.entries.iter().cloned());
        }
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(conf_state) = &write.conf_state {
            self.conf_state = conf_state.clone();
        }
    }

    pub fn last_index(&self) -> u64 {
        self.compacted.index + self.entries.len() as u64
    }
}

/// Why a log write could not be made durable. The partition that asked must not acknowledge
/// anything that depended on it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("log write failed: {0}")]
pub struct PersistError(pub Arc<dyn std::error::Error + Send + Sync>);

impl PartialEq for PersistError {
    fn eq(&self, other: &PersistError) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.to_string() == other.0.to_string()
    }
}

/// A log write and whom to tell once it is durable (or failed).
pub struct PersistRequest {
    pub write: LogWrite,
    pub done: Box<dyn FnOnce(Result<(), PersistError>) + Send>,
}

impl std::fmt::Debug for PersistRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistRequest").field("write", &self.write).finish_non_exhaustive()
    }
}

// Conversions to and from raft-rs's protobuf types.

impl From<&raft::eraftpb::Entry> for LogEntry {
    fn from(e: &raft::eraftpb::Entry) -> LogEntry {
        use raft::eraftpb::EntryType;
        LogEntry {
            index: e.index,
            term: e.term,
            kind: match e.get_entry_type() {
                EntryType::EntryNormal => EntryKind::Normal,
                EntryType::EntryConfChange => EntryKind::ConfChange,
                EntryType::EntryConfChangeV2 => EntryKind::ConfChangeV2,
            },
            data: e.data.to_vec(),
            context: e.context.to_vec(),
        }
    }
}

impl From<&LogEntry> for raft::eraftpb::Entry {
    fn from(e: &LogEntry) -> raft::eraftpb::Entry {
        use raft::eraftpb::EntryType;
        let mut out = raft::eraftpb::Entry { index: e.index, term: e.term, ..Default::default() };
        out.set_entry_type(match e.kind {
            EntryKind::Normal => EntryType::EntryNormal,
            EntryKind::ConfChange => EntryType::EntryConfChange,
            EntryKind::ConfChangeV2 => EntryType::EntryConfChangeV2,
        });
        out.data = e.data.clone().into();
        out.context = e.context.clone().into();
        out
    }
}

impl From<&raft::eraftpb::HardState> for HardState {
    fn from(hs: &raft::eraftpb::HardState) -> HardState {
        HardState { term: hs.term, vote: hs.vote, commit: hs.commit }
    }
}

impl From<HardState> for raft::eraftpb::HardState {
    fn from(hs: HardState) -> raft::eraftpb::HardState {
        raft::eraftpb::HardState { term: hs.term, vote: hs.vote, commit: hs.commit, ..Default::default() }
    }
}

impl From<&raft::eraftpb::ConfState> for ConfState {
    /// Sorts every list: raft-rs builds them from hash sets, and their order must not reach
    /// disk, messages or answers.
    fn from(cs: &raft::eraftpb::ConfState) -> ConfState {
        let sorted = |ids: &[u64]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        ConfState {
            voters: sorted(&cs.voters),
            learners: sorted(&cs.learners),
            voters_outgoing: sorted(&cs.voters_outgoing),
            learners_next: sorted(&cs.learners_next),
            auto_leave: cs.auto_leave,
        }
    }
}

impl From<&ConfState> for raft::eraftpb::ConfState {
    fn from(cs: &ConfState) -> raft::eraftpb::ConfState {
        raft::eraftpb::ConfState {
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            voters_outgoing: cs.voters_outgoing.clone(),
            learners_next: cs.learners_next.clone(),
            auto_leave: cs.auto_leave,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_round_trips_through_raft_types() {
        let e =
            LogEntry { index: 5, term: 2, kind: EntryKind::ConfChangeV2, data: b"d".to_vec(), context: b"c".to_vec() };
        let pb: raft::eraftpb::Entry = (&e).into();
        assert_eq!(LogEntry::from(&pb), e);
    }

    fn voters(voters: &[u64]) -> ConfState {
        ConfState { voters: voters.to_vec(), ..Default::default() }
    }

    #[test]
    fn a_pool_hands_out_one_copy_of_equal_memberships_and_drops_those_nobody_holds() {
        let mut pool = ConfStatePool::default();
        let a = pool.share(&voters(&[1, 2, 3]));
        let b = pool.share(&voters(&[1, 2, 3]));
        assert!(Arc::ptr_eq(&a, &b), "equal memberships are one copy");
        assert_eq!(*a, voters(&[1, 2, 3]));
        let c = pool.share(&voters(&[1, 2, 4]));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(pool.len(), 2);

        // Memberships handed out and then dropped are forgotten once the pool fills.
        for peer in 10..10 + ConfStatePool::PRUNE_AT_MIN as u64 {
            drop(pool.share(&voters(&[peer])));
        }
        assert!(pool.len() <= ConfStatePool::PRUNE_AT_MIN, "the pool stays bounded: {}", pool.len());
        let still = pool.share(&voters(&[1, 2, 3]));
        assert!(Arc::ptr_eq(&a, &still), "a membership still held is kept");
        for peer in 1000..1000 + 10 * ConfStatePool::PRUNE_AT_MIN as u64 {
            drop(pool.share(&voters(&[peer])));
        }
        assert!(pool.len() <= ConfStatePool::PRUNE_AT_MIN, "the pool stays bounded: {}", pool.len());
        assert!(Arc::ptr_eq(&a, &pool.share(&voters(&[1, 2, 3]))));
    }
}
