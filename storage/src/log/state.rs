//! What the log knows of one partition, and the one place where a `LogWrite` changes it: the
//! live engine and recovery's replay both go through [`PartitionLogState::apply`], so they
//! cannot disagree on what a write means.
//!
//! The engine keeps no entries in memory, only where each live entry is: runs of entries that
//! one write put into one record. An idle partition with no live entries costs its metadata
//! and an empty run list.

use super::record::CheckpointPartition;
use crate::limits::LOG_INDEX_MAX;
use cohort_core::ids::{PartitionId, PartitionMap};
use cohort_core::persist::{ConfState, ConfStatePool, HardState, LogEntry, LogPosition, LogWrite};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use thin_vec::ThinVec;

/// Where a write is stored: segment, offset of its record's frame, position in the record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordLocation {
    pub seq: u64,
    pub offset: u64,
    pub write: u32,
}

/// Entries `first..=last` of one partition, stored by the write at `location`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryRun {
    pub location: RecordLocation,
    pub first: u64,
    pub last: u64,
}

/// Every partition's log state, in one table (see `PartitionMap`): the log keeps one for
/// every partition the node hosts, most of them idle.
pub(crate) type PartitionStates = PartitionMap<PartitionLogState>;

/// One partition's durable metadata and the whereabouts of its live entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionLogState {
    hard_state: HardState,
    /// Shared with every partition of the same membership (see `ConfStatePool`): the log
    /// keeps this state for every partition the node hosts.
    conf_state: Arc<ConfState>,
    compacted: LogPosition,
    snapshot: Option<LogPosition>,
    last_index: u64,
    /// Contiguous runs covering `held_from()..=last_index`, oldest first. Outside recovery
    /// they cover every live entry: `held_from() == compacted.index + 1`. A `ThinVec` (one
    /// pointer; length and capacity live in its buffer, and an empty one has none): most
    /// partitions are idle and hold no run, and a `VecDeque` would add 24 bytes to each of
    /// their states (`PartitionStates`).
    runs: ThinVec<EntryRun>,
}

/// Which partitions have live entries in which segment: a segment is needed while it pins
/// any partition. Counts runs per (segment, partition).
#[derive(Debug, Default)]
pub(crate) struct Pins {
    by_segment: BTreeMap<u64, BTreeMap<PartitionId, u32>>,
}

impl Pins {
    fn pin(&mut self, seq: u64, partition: PartitionId) {
        *self.by_segment.entry(seq).or_default().entry(partition).or_default() += 1;
    }

    fn unpin(&mut self, seq: u64, partition: PartitionId) {
        let partitions = self.by_segment.get_mut(&seq).expect("an unpinned segment was pinned");
        let runs = partitions.get_mut(&partition).expect("an unpinned partition pinned the segment");
        assert!(*runs > 0, "pin counts never go below zero");
        *runs -= 1;
        if *runs == 0 {
            partitions.remove(&partition);
            if partitions.is_empty() {
                self.by_segment.remove(&seq);
            }
        }
    }

    /// The oldest segment holding a live entry.
    pub fn oldest_pinned(&self) -> Option<u64> {
        self.by_segment.keys().next().copied()
    }

    /// Partitions with a live entry in a segment older than `seq`.
    pub fn pinning_before(&self, seq: u64) -> BTreeSet<PartitionId> {
        self.by_segment.range(..seq).flat_map(|(_, partitions)| partitions.keys().copied()).collect()
    }
}

/// The two numbers a write is checked against: the last compacted index and the last index.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Shape {
    pub compacted_index: u64,
    pub last_index: u64,
}

impl Shape {
    /// The shape after `write`, or why `write` does not fit this shape. The engine asserts on
    /// the error (its caller broke the contract); recovery reports it as corruption.
    pub fn after(self, write: &LogWrite) -> Result<Shape, String> {
        let indexes = write
            .snapshot
            .iter()
            .map(|(position, _)| position.index)
            .chain(write.compact_through.iter().map(|position| position.index))
            .chain(write.entries.last().map(|entry| entry.index));
        for index in indexes {
            if index > LOG_INDEX_MAX {
                return Err(format!("index {index} is over LOG_INDEX_MAX ({LOG_INDEX_MAX})"));
            }
        }
        let mut shape = self;
        if let Some((position, _)) = &write.snapshot {
            shape = Shape { compacted_index: position.index, last_index: position.index };
        }
        if let Some(position) = write.compact_through {
            if position.index > shape.compacted_index {
                shape.compacted_index = position.index;
                shape.last_index = shape.last_index.max(position.index);
            }
        }
        if let Some(first) = write.entries.first() {
            for pair in write.entries.windows(2) {
                if pair[0].index.checked_add(1) != Some(pair[1].index) {
                    return Err(format!("entries are not contiguous: {} then {}", pair[0].index, pair[1].index));
                }
            }
            if first.index <= shape.compacted_index {
                return Err(format!(
                    "entries start at {}, inside the compacted log (through {})",
                    first.index, shape.compacted_index
                ));
            }
            if first.index > shape.last_index + 1 {
                return Err(format!(
                    "entries start at {}, leaving a gap after the last entry {}",
                    first.index, shape.last_index
                ));
            }
            shape.last_index = write.entries.last().expect("non-empty").index;
        }
        if write.remove {
            shape = Shape::default();
        }
        Ok(shape)
    }
}

impl PartitionLogState {
    pub fn hard_state(&self) -> HardState {
        self.hard_state
    }

    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The last position compacted away or folded into a snapshot.
    pub fn compacted(&self) -> LogPosition {
        self.compacted
    }

    pub fn snapshot(&self) -> Option<LogPosition> {
        self.snapshot
    }

    /// Index of the first live entry (there may be none: then `first_index == last_index + 1`).
    pub fn first_index(&self) -> u64 {
        self.compacted.index + 1
    }

    /// Index of the last entry, or `compacted().index` if there is none.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// Live entries held.
    pub fn live_entries(&self) -> u64 {
        self.runs.iter().map(|run| run.last - run.first + 1).sum()
    }

    /// Segments holding this partition's live entries, oldest first, without repeats.
    pub fn segments(&self) -> Vec<u64> {
        let mut seqs: Vec<u64> = self.runs.iter().map(|run| run.location.seq).collect();
        seqs.dedup();
        seqs
    }

    pub(crate) fn shape(&self) -> Shape {
        Shape { compacted_index: self.compacted.index, last_index: self.last_index }
    }

    pub(crate) fn runs(&self) -> impl Iterator<Item = &EntryRun> {
        self.runs.iter()
    }

    /// First index whose entry is held; above `first_index()` only during recovery, while the
    /// entries before it were in segments already deleted (they must be compacted by the end).
    pub(crate) fn held_from(&self) -> u64 {
        self.runs.first().map_or(self.last_index + 1, |run| run.first)
    }

    /// Applies `write`, stored at `location`, to this state; `held` mirrors the runs with the
    /// entries themselves (recovery only). The write must fit: see [`Shape::after`].
    pub(crate) fn apply(
        &mut self,
        id: PartitionId,
        write: &LogWrite,
        location: RecordLocation,
        pins: &mut Pins,
        conf_states: &mut ConfStatePool,
        mut held: Option<&mut VecDeque<LogEntry>>,
    ) {
        assert_eq!(write.partition, id, "a write is applied to its own partition");
        let expected = self.shape().after(write).expect("writes are checked before they are applied");
        if let Some((position, conf_state)) = &write.snapshot {
            self.drop_runs_through(id, u64::MAX, pins);
            if let Some(held) = held.as_deref_mut() {
                held.clear();
            }
            self.compacted = *position;
            self.last_index = position.index;
            self.conf_state = conf_states.share(conf_state);
            self.snapshot = Some(*position);
        }
        if let Some(position) = write.compact_through {
            if position.index > self.compacted.index {
                self.drop_runs_through(id, position.index, pins);
                if let Some(held) = held.as_deref_mut() {
                    while held.front().is_some_and(|e| e.index <= position.index) {
                        held.pop_front();
                    }
                }
                self.compacted = position;
                self.last_index = self.last_index.max(position.index);
            }
        }
        if let (Some(first), Some(last)) = (write.entries.first(), write.entries.last()) {
            // The new entries replace every entry at or after their first index.
            while let Some(run) = self.runs.last_mut() {
                if run.first >= first.index {
                    let seq = run.location.seq;
                    self.runs.pop();
                    pins.unpin(seq, id);
                } else {
                    run.last = run.last.min(first.index - 1);
                    break;
                }
            }
            if let Some(held) = held.as_deref_mut() {
                let keep = held.front().map_or(0, |e| first.index.saturating_sub(e.index)) as usize;
                held.truncate(keep);
                held.extend(write.entries.iter().cloned());
            }
            self.runs.push(EntryRun { location, first: first.index, last: last.index });
            pins.pin(location.seq, id);
            self.last_index = last.index;
        }
        if let Some(hard_state) = write.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(conf_state) = &write.conf_state {
            self.conf_state = conf_states.share(conf_state);
        }
        if !write.remove {
            assert_eq!(self.shape(), expected, "applying a write agrees with its checked shape");
        }
        self.assert_runs_cover_the_tail(held.as_deref());
    }

    /// Drops every run entry with index `<= index`.
    fn drop_runs_through(&mut self, id: PartitionId, index: u64, pins: &mut Pins) {
        // Runs are dropped from the front together: one move of the rest, not one per run.
        let dropped = self.runs.iter().take_while(|run| run.last <= index).count();
        for run in self.runs.drain(..dropped) {
            pins.unpin(run.location.seq, id);
        }
        if let Some(run) = self.runs.first_mut() {
            run.first = run.first.max(index.saturating_add(1));
        } else {
            // Compacted through its last entry: an idle partition, likely to stay so. Its
            // state is kept for every partition the node hosts, so it keeps no spare room.
            self.runs = ThinVec::new();
        }
    }

    /// Forgets the partition's runs (it is being removed).
    pub(crate) fn unpin_all(&mut self, id: PartitionId, pins: &mut Pins) {
        self.drop_runs_through(id, u64::MAX, pins);
    }

    /// Checks the runs after a write: the ends always, every run in debug builds (the
    /// simulator's). Walking every run on every append cost two percent of a node's CPU under
    /// load: a busy partition holds a run per log write until the log is compacted.
    fn assert_runs_cover_the_tail(&self, held: Option<&VecDeque<LogEntry>>) {
        if let Some(back) = self.runs.last() {
            assert_eq!(back.last, self.last_index, "entry runs end at the last index");
            assert!(back.first <= back.last, "entry runs are never empty");
        }
        assert!(self.held_from() > self.compacted.index, "no run holds a compacted entry");
        if cfg!(debug_assertions) {
            let mut next = self.held_from();
            for run in &self.runs {
                assert_eq!(run.first, next, "entry runs are contiguous");
                assert!(run.first <= run.last, "entry runs are never empty");
                next = run.last + 1;
            }
            assert_eq!(next, self.last_index + 1, "entry runs end at the last index");
            if let Some(held) = held {
                assert_eq!(held.len() as u64, self.live_entries(), "held entries mirror the runs");
                assert!(held.front().is_none_or(|e| e.index == self.held_from()));
            }
        }
    }

    /// The checkpoint entry of this partition.
    pub(crate) fn checkpoint(&self, id: PartitionId) -> CheckpointPartition {
        CheckpointPartition {
            partition: id,
            hard_state: self.hard_state,
            conf_state: ConfState::clone(&self.conf_state),
            compacted: self.compacted,
            snapshot: self.snapshot,
            last_index: self.last_index,
        }
    }

    /// A partition known only from a checkpoint: its entries, if any, are in segments before
    /// the checkpoint's and are not held (recovery of a log whose older segments were deleted).
    /// `Err` if the checkpoint entry is not a possible state.
    pub(crate) fn from_checkpoint(
        checkpoint: &CheckpointPartition,
        conf_states: &mut ConfStatePool,
    ) -> Result<PartitionLogState, String> {
        if checkpoint.last_index < checkpoint.compacted.index || checkpoint.last_index > LOG_INDEX_MAX {
            return Err(format!(
                "checkpoint of partition {} has last index {} against compacted index {}",
                checkpoint.partition, checkpoint.last_index, checkpoint.compacted.index
            ));
        }
        Ok(PartitionLogState {
            hard_state: checkpoint.hard_state,
            conf_state: conf_states.share(&checkpoint.conf_state),
            compacted: checkpoint.compacted,
            snapshot: checkpoint.snapshot,
            last_index: checkpoint.last_index,
            runs: ThinVec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::persist::EntryKind;

    /// What the log keeps per idle partition, counted from the types: its entry in
    /// `PartitionStates`, state inline, with the table's spare room. An idle partition's
    /// state allocates nothing of its own: no runs, its membership shared. With the router's
    /// record (bounded the same way in `cohort-core`), an unloaded replica's records stay
    /// within the 512 bytes an unloaded replica may cost.
    #[test]
    fn an_idle_partition_costs_the_log_at_most_256_bytes() {
        let worst = cohort_core::ids::partition_map_entry_bytes_max::<PartitionLogState>();
        assert!(worst <= 256, "an idle partition costs the log up to {worst} bytes");
    }

    /// A partition compacted through its last entry gives its runs' buffer back.
    #[test]
    fn compacting_every_entry_frees_the_runs() {
        let id = PartitionId(7);
        let (mut state, mut pins, mut conf_states) =
            (PartitionLogState::default(), Pins::default(), ConfStatePool::default());
        for (seq, index) in [(1, 1), (1, 2), (2, 3)] {
            let entry = LogEntry { index, term: 1, kind: EntryKind::Normal, data: vec![1], context: Vec::new() };
            let write = LogWrite { entries: vec![entry], ..LogWrite::new(id) };
            let location = RecordLocation { seq, offset: index * 100, write: 0 };
            state.apply(id, &write, location, &mut pins, &mut conf_states, None);
        }
        assert_eq!((state.live_entries(), state.segments()), (3, vec![1, 2]));
        let compact = |index| LogWrite { compact_through: Some(LogPosition { index, term: 1 }), ..LogWrite::new(id) };
        let location = RecordLocation { seq: 2, offset: 400, write: 0 };
        state.apply(id, &compact(2), location, &mut pins, &mut conf_states, None);
        assert_eq!((state.live_entries(), state.held_from()), (1, 3));
        assert!(state.runs.capacity() > 0);
        assert_eq!(pins.oldest_pinned(), Some(2), "segment 1 holds no live entry any more");
        state.apply(id, &compact(3), location, &mut pins, &mut conf_states, None);
        assert_eq!(state.live_entries(), 0);
        assert_eq!(state.runs.capacity(), 0, "an idle partition keeps no room for runs");
        assert_eq!(pins.oldest_pinned(), None);
    }
}
