//! Crash recovery: replays every segment in order to rebuild each partition's state, cuts a
//! torn tail (or the zeros the writer prepared ahead of its records) off the last segment, and
//! stops at any other corruption with the file and offset.
//!
//! Replay starts at the oldest segment still on disk. Segments are only ever deleted oldest
//! first, and each starts with a checkpoint of every partition's metadata, so the first
//! checkpoint replayed stands in for everything deleted before it. A partition's entries from
//! deleted segments are not held; they must all be compacted by the end of the replay, or the
//! log lost entries and recovery says so.

use super::record::{Checkpoint, Record, RecordReader, TornTail, FORMAT_VERSION};
use super::segment::{list_segments, segment_path};
use super::state::{PartitionLogState, PartitionStates, Pins, RecordLocation};
use super::LogError;
use cohort_core::env::Disk;
use cohort_core::ids::{sorted_entries, PartitionId};
use cohort_core::persist::{ConfStatePool, LogEntry, LogWrite, RecoveredPartition};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

/// The log's state after replay: what the engine continues from, and what partitions get back.
pub(crate) struct Recovered {
    pub partitions: PartitionStates,
    pub pins: Pins,
    /// The memberships `partitions` share.
    pub conf_states: ConfStatePool,
    /// Every segment on disk and its length after any torn tail was cut.
    pub segments: BTreeMap<u64, u64>,
    pub recovered: BTreeMap<PartitionId, RecoveredPartition>,
}

/// Where replay is inside the current segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Header,
    Checkpoint,
    Writes,
}

#[derive(Default)]
struct Replay {
    partitions: PartitionStates,
    held: BTreeMap<PartitionId, VecDeque<LogEntry>>,
    pins: Pins,
    conf_states: ConfStatePool,
    phase: Option<Phase>,
    /// Partitions listed so far by the current segment's checkpoint.
    checkpointed: BTreeSet<PartitionId>,
}

impl Replay {
    fn begin_segment(&mut self) {
        self.phase = Some(Phase::Header);
        self.checkpointed.clear();
    }

    fn apply(&mut self, seq: u64, offset: u64, record: &Record) -> Result<(), String> {
        let phase = self.phase.expect("a segment was begun");
        match (phase, record) {
            (Phase::Header, Record::SegmentHeader(header)) => {
                if header.format_version != FORMAT_VERSION {
                    return Err(format!(
                        "segment format version {} (this build reads {FORMAT_VERSION})",
                        header.format_version
                    ));
                }
                if header.seq != seq {
                    return Err(format!("segment header says seq {}, its file name {seq}", header.seq));
                }
                self.phase = Some(Phase::Checkpoint);
                Ok(())
            }
            (Phase::Header, _) => Err("segment does not start with its header".to_owned()),
            (Phase::Checkpoint, Record::Checkpoint(checkpoint)) => self.apply_checkpoint(checkpoint),
            (Phase::Checkpoint, _) => Err("record before the segment's checkpoint is complete".to_owned()),
            (Phase::Writes, Record::Writes(writes)) => self.apply_writes(seq, offset, writes),
            (Phase::Writes, Record::SegmentHeader(_)) => Err("second segment header".to_owned()),
            (Phase::Writes, Record::Checkpoint(_)) => Err("checkpoint after the segment's writes began".to_owned()),
        }
    }

    fn apply_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        for entry in &checkpoint.partitions {
            let id = entry.partition;
            if !self.checkpointed.insert(id) {
                return Err(format!("checkpoint lists partition {id} twice"));
            }
            match self.partitions.get(&id) {
                // Replay already knows the partition: the checkpoint must agree with it, which
                // checks the writer's bookkeeping at every segment boundary.
                Some(state) => {
                    let replayed = state.checkpoint(id);
                    if &replayed != entry {
                        return Err(format!(
                            "checkpoint disagrees with the replayed log for partition {id}: \
                             checkpoint {entry:?}, replayed {replayed:?}"
                        ));
                    }
                }
                // First heard of here: its older records were in deleted segments.
                None => {
                    self.partitions.insert(id, PartitionLogState::from_checkpoint(entry, &mut self.conf_states)?);
                    self.held.insert(id, VecDeque::new());
                }
            }
        }
        if checkpoint.last_chunk {
            if let Some(missing) = self.partitions.keys().filter(|id| !self.checkpointed.contains(id)).min() {
                return Err(format!("checkpoint omits partition {missing}, which the replayed log holds"));
            }
            self.phase = Some(Phase::Writes);
        }
        Ok(())
    }

    fn apply_writes(&mut self, seq: u64, offset: u64, writes: &[LogWrite]) -> Result<(), String> {
        for (i, write) in writes.iter().enumerate() {
            let id = write.partition;
            let state = self.partitions.entry(id).or_default();
            state
                .shape()
                .after(write)
                .map_err(|reason| format!("write {i} (partition {id}) does not fit the log: {reason}"))?;
            let write_index = u32::try_from(i).expect("a record holds fewer than 2^32 writes");
            let location = RecordLocation { seq, offset, write: write_index };
            let held = self.held.entry(id).or_default();
            state.apply(id, write, location, &mut self.pins, &mut self.conf_states, Some(held));
            if write.remove {
                state.unpin_all(id, &mut self.pins);
                self.partitions.remove(&id);
                self.held.remove(&id);
            }
        }
        Ok(())
    }

    /// The recovered partitions, or the first partition missing entries and which.
    fn finish(&mut self) -> Result<BTreeMap<PartitionId, RecoveredPartition>, String> {
        let mut out = BTreeMap::new();
        for (id, state) in sorted_entries(&self.partitions) {
            if state.held_from() != state.first_index() {
                return Err(format!(
                    "partition {id} lacks entries {}..{}: they were in deleted segments but were \
                     never compacted",
                    state.first_index(),
                    state.held_from()
                ));
            }
            let entries: Vec<LogEntry> = self.held.remove(&id).unwrap_or_default().into();
            assert_eq!(
                entries.len() as u64,
                state.last_index() - state.compacted().index,
                "recovered entries run from the compacted index to the last index"
            );
            out.insert(
                id,
                RecoveredPartition {
                    hard_state: state.hard_state(),
                    conf_state: state.conf_state().clone(),
                    compacted: state.compacted(),
                    snapshot: state.snapshot(),
                    entries,
                },
            );
        }
        Ok(out)
    }
}

/// Replays the log in `dir`. Cuts a torn tail off the last segment (durably, with a warning);
/// every other inconsistency is [`LogError::Corrupt`].
pub(crate) fn recover(disk: &dyn Disk, dir: &Path) -> Result<Recovered, LogError> {
    replay(disk, dir, true).map(|(recovered, _)| recovered)
}

/// What [`replay_read_only`] found.
#[derive(Debug)]
pub struct ReadOnlyReplay {
    /// Every partition as a start would recover it.
    pub partitions: BTreeMap<PartitionId, RecoveredPartition>,
    /// Every segment and the length of its valid records.
    pub segments: BTreeMap<u64, u64>,
    /// The last segment's torn tail, left in place: its file and where it starts.
    pub torn_tail: Option<(PathBuf, TornTail)>,
}

/// Replays the log in `dir` as a start would, writing nothing: a torn tail is reported, not
/// cut. For offline inspection of a stopped node's data directory.
pub fn replay_read_only(disk: &dyn Disk, dir: &Path) -> Result<ReadOnlyReplay, LogError> {
    let (recovered, torn_tail) = replay(disk, dir, false)?;
    Ok(ReadOnlyReplay { partitions: recovered.recovered, segments: recovered.segments, torn_tail })
}

/// Replays; `cut` says whether a torn tail is cut off (a start) or left and returned.
fn replay(disk: &dyn Disk, dir: &Path, cut: bool) -> Result<(Recovered, Option<(PathBuf, TornTail)>), LogError> {
    let seqs = list_segments(disk, dir)?;
    for pair in seqs.windows(2) {
        if pair[0].checked_add(1) != Some(pair[1]) {
            return Err(LogError::Corrupt {
                path: segment_path(dir, pair[1]),
                offset: 0,
                reason: format!("segments {}..{} are missing before this one", pair[0] + 1, pair[1] - 1),
            });
        }
    }
    let mut replay = Replay::default();
    let mut segments = BTreeMap::new();
    let mut left_torn = None;
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = segment_path(dir, seq);
        let bytes = disk.read(&path)?;
        replay.begin_segment();
        let mut reader = RecordReader::new(&bytes);
        loop {
            let next = reader.next_record().map_err(|e| LogError::Corrupt {
                path: path.clone(),
                offset: e.offset,
                reason: e.reason,
            })?;
            let Some((offset, record)) = next else { break };
            replay.apply(seq, offset, &record).map_err(|reason| LogError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            })?;
        }
        let mut len = bytes.len() as u64;
        if let Some(torn) = reader.torn_tail() {
            if !is_last {
                return Err(LogError::Corrupt {
                    path,
                    offset: torn.offset,
                    reason: format!("{} in a segment that is not the last", torn.reason),
                });
            }
            if cut {
                tracing::warn!(
                    path = %path.display(),
                    offset = torn.offset,
                    bytes_cut = len - torn.offset,
                    reason = %torn.reason,
                    "cutting a torn tail off the log"
                );
                disk.truncate(&path, torn.offset)?;
            } else {
                left_torn = Some((path.clone(), torn.clone()));
            }
            len = torn.offset;
        } else if let Some(zeros_from) = reader.zeros_from() {
            // The zeros the writer prepared ahead of its records (or a record a crash left
            // wholly unwritten). A segment is cut to its last record before the next one exists.
            if !is_last {
                return Err(LogError::Corrupt {
                    path,
                    offset: zeros_from,
                    reason: "zeros after the records of a segment that is not the last".to_owned(),
                });
            }
            if cut {
                tracing::debug!(path = %path.display(), offset = zeros_from, "cutting the zeros after the log's records");
                disk.truncate(&path, zeros_from)?;
            }
            len = zeros_from;
        }
        assert_eq!(len, reader.valid_len(), "the kept length is that of the valid records");
        if len == 0 && !is_last {
            return Err(LogError::Corrupt { path, offset: 0, reason: "empty segment before the last".to_owned() });
        }
        segments.insert(seq, len);
    }
    let recovered = replay.finish().map_err(|reason| LogError::Corrupt {
        path: seqs.first().map_or_else(|| dir.to_owned(), |&seq| segment_path(dir, seq)),
        offset: 0,
        reason,
    })?;
    let Replay { partitions, pins, conf_states, .. } = replay;
    Ok((Recovered { partitions, pins, conf_states, segments, recovered }, left_torn))
}
