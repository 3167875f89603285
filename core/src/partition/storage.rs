//! The Raft log as raft-rs reads it: an in-memory copy of what this replica has handed to the
//! log engine. Entries are added here when a Ready hands them to the log (raft-rs reads them
//! from its own unstable log until `on_persist_ready`, and from here after), and dropped when
//! compacted.

use crate::persist::{ConfState, HardState, LogEntry, LogPosition, RecoveredPartition, SnapshotMeta};
use raft::eraftpb::{self, Entry};
use raft::{GetEntriesContext, RaftState, StorageError};
use std::collections::VecDeque;

pub struct PartitionStorage {
    hard_state: eraftpb::HardState,
    conf_state: eraftpb::ConfState,
    /// The last entry no longer held; its term is kept for Raft's log matching.
    compacted: LogPosition,
    /// Entries from `compacted.index + 1`, contiguous.
    entries: VecDeque<Entry>,
    /// The newest snapshot file this replica saved or received: what raft-rs sends a follower
    /// that needs entries compacted away, while it is not older than `compacted`.
    snapshot: Option<SnapshotMeta>,
    /// raft-rs asked for a snapshot that `snapshot` cannot serve (none yet, too old, or from
    /// before the receiver was a member): the partition saves a fresh one.
    snapshot_wanted: std::cell::Cell<bool>,
}

impl PartitionStorage {
    pub fn new(recovered: &RecoveredPartition) -> PartitionStorage {
        let storage = PartitionStorage {
            hard_state: recovered.hard_state.into(),
            conf_state: (&recovered.conf_state).into(),
            compacted: recovered.compacted,
            entries: recovered.entries.iter().map(Entry::from).collect(),
            snapshot: None,
            snapshot_wanted: std::cell::Cell::new(false),
        };
        storage.assert_contiguous();
        storage
    }

    fn assert_contiguous(&self) {
        if let Some(first) = self.entries.front() {
            assert_eq!(first.index, self.compacted.index + 1, "entries start after compaction");
        }
        debug_assert!(self.entries.iter().zip(self.entries.iter().skip(1)).all(|(a, b)| a.index + 1 == b.index));
    }

    pub fn hard_state(&self) -> HardState {
        (&self.hard_state).into()
    }

    pub fn conf_state(&self) -> ConfState {
        (&self.conf_state).into()
    }

    pub fn set_hard_state(&mut self, hard_state: &eraftpb::HardState) {
        self.hard_state = hard_state.clone();
    }

    pub fn set_conf_state(&mut self, conf_state: eraftpb::ConfState) {
        self.conf_state = conf_state;
    }

    pub fn compacted(&self) -> LogPosition {
        self.compacted
    }

    pub fn snapshot_meta(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref()
    }

    /// Whether raft-rs asked for a snapshot newer than the one held; clears the request.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// A snapshot file through `meta.position` is saved: it is what followers that need one get.
    pub fn set_snapshot(&mut self, meta: SnapshotMeta) {
        let newer = self.snapshot.as_ref().is_none_or(|held| meta.position.index > held.position.index);
        assert!(newer, "snapshots move forward");
        self.snapshot = Some(meta);
    }

    /// Forgets the snapshot file held (its owner deletes it): raft-rs then asks for a fresh
    /// one the next time a follower needs one.
    pub fn forget_snapshot(&mut self) -> Option<SnapshotMeta> {
        self.snapshot.take()
    }

    /// Drops the entries through `position`, which the store holds durably.
    pub fn compact_to(&mut self, position: LogPosition) {
        assert!(position.index > self.compacted.index, "compaction moves forward");
        assert!(position.index <= self.last_index_held(), "compaction covers only held entries");
        let drop = (position.index - self.compacted.index) as usize;
        let dropped_last = self.entries.drain(..drop).last().expect("at least one entry dropped");
        assert_eq!(dropped_last.term, position.term, "the compaction's term is its last entry's");
        self.compacted = position;
        self.release_spare_capacity();
        self.assert_contiguous();
    }

    /// A snapshot from the leader replaces the whole log.
    pub fn apply_snapshot(&mut self, meta: SnapshotMeta) {
        assert!(meta.position.index > self.compacted.index, "a received snapshot is newer");
        self.entries.clear();
        self.compacted = meta.position;
        self.conf_state = (&meta.conf_state).into();
        self.snapshot = Some(meta);
    }

    /// Gives back memory a burst of entries left behind: an idle replica should hold only the
    /// few entries it has.
    fn release_spare_capacity(&mut self) {
        if self.entries.capacity() > 4 * self.entries.len().max(4) {
            self.entries.shrink_to_fit();
        }
    }

    /// Gives back every byte of spare capacity (a replica going quiet).
    pub fn release_all_capacity(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// The index of the first held entry of `term`, if any is held.
    pub fn first_index_of_term(&self, term: u64) -> Option<u64> {
        // Terms never decrease along the log.
        let at = self.entries.partition_point(|e| e.term < term);
        self.entries.get(at).filter(|e| e.term == term).map(|e| e.index)
    }

    /// Bytes of the held entries after `after` (their data and context).
    pub fn size_bytes_after(&self, after: u64) -> usize {
        let skip = after.saturating_sub(self.compacted.index) as usize;
        self.entries.iter().skip(skip).map(|e| e.data.len() + e.context.len()).sum()
    }

    fn last_index_held(&self) -> u64 {
        self.compacted.index + self.entries.len() as u64
    }

    /// Appends `entries`, replacing any held entry at or after the first one's index (a new
    /// leader overwrote them). Returns them in cohort's log format.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<LogEntry> {
        let Some(first) = entries.first() else { return Vec::new() };
        assert!(first.index > self.compacted.index, "never append over compacted entries");
        assert!(first.index <= self.last_index_held() + 1, "appended entries leave no gap");
        let keep = (first.index - self.compacted.index - 1) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.iter().cloned());
        self.assert_contiguous();
        entries.iter().map(LogEntry::from).collect()
    }
}

impl raft::Storage for PartitionStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.compacted.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        assert!(high <= self.last_index_held() + 1, "raft asks only for entries it knows exist");
        let offset = self.compacted.index + 1;
        let mut out: Vec<Entry> =
            self.entries.range((low - offset) as usize..(high - offset) as usize).cloned().collect();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if index < self.compacted.index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        match self.entries.get((index - self.compacted.index - 1) as usize) {
            Some(entry) => Ok(entry.term),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.compacted.index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index_held())
    }

    /// The snapshot's description only; its file is streamed beside Raft (`crate::snapshot`).
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<eraftpb::Snapshot> {
        let serves = |meta: &SnapshotMeta| {
            let cs = &meta.conf_state;
            // One older than the log's start would need entries that are gone.
            meta.position.index >= request_index
                && meta.position.index >= self.compacted.index
                && [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next]
                    .iter()
                    .any(|ids| ids.contains(&to))
        };
        match &self.snapshot {
            Some(meta) if serves(meta) => {
                let mut snapshot = eraftpb::Snapshot::default();
                let metadata = snapshot.mut_metadata();
                metadata.index = meta.position.index;
                metadata.term = meta.position.term;
                metadata.set_conf_state((&meta.conf_state).into());
                Ok(snapshot)
            }
            _ => {
                self.snapshot_wanted.set(true);
                Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
            }
        }
    }
}
