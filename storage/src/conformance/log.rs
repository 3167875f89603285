//! The log engine's contract as named cases: [`log_suite`] on any disk, [`log_crash_suite`] on
//! the simulated disk; and [`LogModel`], the obviously-correct reference they compare with.

use crate::log::record::{decode_segment, Record};
use crate::log::segment::{list_segments, segment_path};
use crate::log::{LogEngine, LogError, LogOptions};
use crate::sim_disk::SimDisk;
use cohort_core::env::{write_file_atomic, Disk};
use cohort_core::ids::PartitionId;
use cohort_core::persist::{ConfState, EntryKind, HardState, LogEntry, LogPosition, LogWrite, RecoveredPartition};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What the log must give back, computed the simple way: every partition's entries in a
/// `Vec`, every write applied in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogModel {
    partitions: BTreeMap<PartitionId, RecoveredPartition>,
}

impl LogModel {
    /// Applies `write` with the reference meaning of a log write (`RecoveredPartition::apply`).
    pub fn apply(&mut self, write: &LogWrite) {
        if write.remove {
            self.partitions.remove(&write.partition);
            return;
        }
        self.partitions.entry(write.partition).or_default().apply(write);
    }

    pub fn partitions(&self) -> &BTreeMap<PartitionId, RecoveredPartition> {
        &self.partitions
    }

    pub fn partition(&self, id: PartitionId) -> Option<&RecoveredPartition> {
        self.partitions.get(&id)
    }

    /// Index of the partition's last entry, or its compacted index; 0 if unknown.
    pub fn last_index(&self, id: PartitionId) -> u64 {
        self.partitions.get(&id).map_or(0, |p| p.entries.last().map_or(p.compacted.index, |e| e.index))
    }

    /// Term of the entry at `index`, or of the compacted position if `index` is it.
    pub fn term_at(&self, id: PartitionId, index: u64) -> Option<u64> {
        let p = self.partitions.get(&id)?;
        if index == p.compacted.index {
            return Some(p.compacted.term);
        }
        p.entries.iter().find(|e| e.index == index).map(|e| e.term)
    }

    /// The `j` for which `self` followed by `unsynced[..j]` equals `recovered`, if any: a
    /// crash keeps every synced write and a prefix of the rest, never anything else.
    pub fn surviving_prefix(
        &self,
        unsynced: &[LogWrite],
        recovered: &BTreeMap<PartitionId, RecoveredPartition>,
    ) -> Option<usize> {
        let mut model = self.clone();
        if &model.partitions == recovered {
            return Some(0);
        }
        for (j, write) in unsynced.iter().enumerate() {
            model.apply(write);
            if &model.partitions == recovered {
                return Some(j + 1);
            }
        }
        None
    }
}

/// Entries `indexes` of `term`, with data derived from both so that a mix-up shows.
pub fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64, data_bytes: usize) -> Vec<LogEntry> {
    indexes
        .map(|index| LogEntry {
            index,
            term,
            kind: EntryKind::Normal,
            data: (0..data_bytes).map(|i| (index as usize * 31 + term as usize * 7 + i) as u8).collect(),
            context: if index % 3 == 0 { vec![term as u8] } else { Vec::new() },
        })
        .collect()
}

fn entries_write(partition: u64, indexes: std::ops::RangeInclusive<u64>, term: u64) -> LogWrite {
    let mut write = LogWrite::new(PartitionId(partition));
    write.entries = entries(indexes, term, 24);
    write
}

fn dir() -> &'static Path {
    Path::new("node/wal")
}

/// Small segments, few kept: rotation and compaction happen within a few writes.
fn small_options() -> LogOptions {
    LogOptions { segment_size_bytes: 1024, segments_max: 3 }
}

fn open(disk: &Arc<dyn Disk>) -> (LogEngine, BTreeMap<PartitionId, RecoveredPartition>) {
    LogEngine::open(Arc::clone(disk), dir(), small_options()).expect("the log opens")
}

/// Appends and syncs `writes`, and applies them to `model`.
fn commit(engine: &mut LogEngine, model: &mut LogModel, writes: &[LogWrite]) {
    engine.append(writes).unwrap();
    engine.sync().unwrap();
    for write in writes {
        model.apply(write);
    }
}

/// Reopens the log and checks it gives back exactly `model`.
fn reopen_and_check(disk: &Arc<dyn Disk>, model: &LogModel) -> LogEngine {
    let (engine, recovered) = open(disk);
    assert_eq!(&recovered, model.partitions(), "recovered state equals the model");
    check_engine(&engine, model);
    engine
}

/// The engine's view of every partition agrees with the model.
fn check_engine(engine: &LogEngine, model: &LogModel) {
    let ids: Vec<PartitionId> = engine.partitions().map(|(id, _)| id).collect();
    let model_ids: Vec<PartitionId> = model.partitions().keys().copied().collect();
    assert_eq!(ids, model_ids, "the engine knows the model's partitions");
    for (id, expected) in model.partitions() {
        let state = engine.partition(*id).unwrap();
        assert_eq!(state.hard_state(), expected.hard_state);
        assert_eq!(state.conf_state(), &expected.conf_state);
        assert_eq!(state.compacted(), expected.compacted);
        assert_eq!(state.snapshot(), expected.snapshot);
        assert_eq!(state.last_index(), model.last_index(*id));
        assert_eq!(engine.read_entries(*id).unwrap(), expected.entries, "entries read back of {id}");
    }
}

/// Writes that keep partition 2 busy, compacting behind itself, to fill segments.
fn busy_writes(engine: &mut LogEngine, model: &mut LogModel, partition: u64, count: u64) {
    for _ in 0..count {
        let next = model.last_index(PartitionId(partition)) + 1;
        let mut write = entries_write(partition, next..=next + 1, 1);
        if next > 1 {
            write.compact_through = Some(LogPosition { index: next - 1, term: 1 });
        }
        write.hard_state = Some(HardState { term: 1, vote: 1, commit: next + 1 });
        commit(engine, model, &[write]);
    }
}

type LogCase = (&'static str, fn(&Arc<dyn Disk>));

/// Runs every case of the log engine's contract, each on a fresh disk from `make`.
pub fn log_suite(make: impl Fn() -> Arc<dyn Disk>) {
    let cases: &[LogCase] = &[
        ("empty_log_opens_empty", empty_log_opens_empty),
        ("round_trip_across_restarts", round_trip_across_restarts),
        ("conflicting_entries_truncate", conflicting_entries_truncate),
        ("hard_state_only_writes", hard_state_only_writes),
        ("snapshot_restarts_the_log", snapshot_restarts_the_log),
        ("several_writes_of_one_partition_in_one_batch", several_writes_of_one_partition_in_one_batch),
        ("compaction_deletes_segments", compaction_deletes_segments),
        ("checkpoint_keeps_metadata_of_deleted_segments", checkpoint_keeps_metadata_of_deleted_segments),
        ("checkpoint_of_many_partitions_spans_records", checkpoint_of_many_partitions_spans_records),
        ("pinned_entries_are_rewritten", pinned_entries_are_rewritten),
        ("removed_partition_is_forgotten", removed_partition_is_forgotten),
        ("restarts_keep_segments_bounded", restarts_keep_segments_bounded),
        ("torn_tail_is_cut", torn_tail_is_cut),
        ("zeroed_tail_is_cut", zeroed_tail_is_cut),
        ("corruption_in_the_middle_is_an_error", corruption_in_the_middle_is_an_error),
        ("corruption_in_an_older_segment_is_an_error", corruption_in_an_older_segment_is_an_error),
        ("only_the_head_holds_zeros", only_the_head_holds_zeros),
        ("missing_segment_is_an_error", missing_segment_is_an_error),
        ("foreign_files_are_left_alone", foreign_files_are_left_alone),
    ];
    for (name, case) in cases {
        eprintln!("log_suite: {name}");
        case(&make());
    }
}

fn empty_log_opens_empty(disk: &Arc<dyn Disk>) {
    let (mut engine, recovered) = open(disk);
    assert!(recovered.is_empty());
    assert_eq!(engine.segments().len(), 1);
    engine.sync().unwrap();
    drop(engine);
    let (mut engine, recovered) = open(disk);
    assert!(recovered.is_empty());
    let stats = engine.compact().unwrap();
    assert_eq!(stats.segments_deleted, 1, "the old empty segment pins nothing");
    assert_eq!(engine.segments().len(), 1);
}

fn round_trip_across_restarts(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    let mut a = entries_write(1, 1..=3, 1);
    a.hard_state = Some(HardState { term: 1, vote: 1, commit: 2 });
    a.conf_state = Some(ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
    let b = entries_write(2, 1..=1, 4);
    let mut c = entries_write(3, 1..=5, 2);
    c.hard_state = Some(HardState { term: 2, vote: 3, commit: 0 });
    commit(&mut engine, &mut model, &[a, b, c]);
    commit(&mut engine, &mut model, &[entries_write(1, 4..=6, 1)]);
    check_engine(&engine, &model);
    drop(engine);
    let mut engine = reopen_and_check(disk, &model);
    commit(&mut engine, &mut model, &[entries_write(2, 2..=3, 4)]);
    drop(engine);
    let engine = reopen_and_check(disk, &model);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn conflicting_entries_truncate(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    commit(&mut engine, &mut model, &[entries_write(1, 1..=5, 1)]);
    commit(&mut engine, &mut model, &[entries_write(1, 3..=4, 2)]);
    assert_eq!(engine.partition(PartitionId(1)).unwrap().last_index(), 4);
    let expected: Vec<u64> = model.partition(PartitionId(1)).unwrap().entries.iter().map(|e| e.term).collect();
    assert_eq!(expected, vec![1, 1, 2, 2]);
    drop(engine);
    let mut engine = reopen_and_check(disk, &model);
    // A conflict right at the start of the log.
    commit(&mut engine, &mut model, &[entries_write(1, 1..=1, 3)]);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn hard_state_only_writes(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    for term in 1..=5 {
        let mut write = LogWrite::new(PartitionId(9));
        write.hard_state = Some(HardState { term, vote: term % 3, commit: 0 });
        commit(&mut engine, &mut model, &[write]);
    }
    drop(engine);
    reopen_and_check(disk, &model);
    let p = model.partition(PartitionId(9)).unwrap();
    assert_eq!(p.hard_state, HardState { term: 5, vote: 2, commit: 0 });
    assert!(p.entries.is_empty());
}

fn snapshot_restarts_the_log(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    commit(&mut engine, &mut model, &[entries_write(1, 1..=5, 1)]);
    let mut snapshot = LogWrite::new(PartitionId(1));
    let position = LogPosition { index: 10, term: 3 };
    snapshot.snapshot = Some((position, ConfState { voters: vec![1], learners: vec![4], ..ConfState::default() }));
    snapshot.hard_state = Some(HardState { term: 3, vote: 0, commit: 10 });
    commit(&mut engine, &mut model, &[snapshot]);
    let state = engine.partition(PartitionId(1)).unwrap();
    assert_eq!((state.compacted(), state.snapshot(), state.live_entries()), (position, Some(position), 0));
    assert_eq!(state.first_index(), 11);
    commit(&mut engine, &mut model, &[entries_write(1, 11..=12, 3)]);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn several_writes_of_one_partition_in_one_batch(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    let mut compact = LogWrite::new(PartitionId(1));
    compact.compact_through = Some(LogPosition { index: 2, term: 1 });
    let writes = [
        entries_write(1, 1..=4, 1),
        entries_write(2, 1..=2, 1),
        entries_write(1, 3..=6, 2),
        compact,
        entries_write(1, 7..=7, 2),
        entries_write(1, 5..=5, 3),
    ];
    commit(&mut engine, &mut model, &writes);
    check_engine(&engine, &model);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn compaction_deletes_segments(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    busy_writes(&mut engine, &mut model, 2, 60);
    let before = engine.segments().len();
    assert!(before > 3, "the writes filled several segments ({before})");
    let stats = engine.compact().unwrap();
    assert!(stats.segments_deleted >= before - 2, "{stats:?}");
    assert_eq!(stats.partitions_rewritten, 0, "nothing pinned the old segments");
    assert_eq!(engine.segments().len(), stats.segments_remaining);
    let seqs = list_segments(&**disk, dir()).unwrap();
    assert_eq!(seqs, engine.segments(), "deleted segments are gone from disk");
    check_engine(&engine, &model);
    drop(engine);
    let mut engine = reopen_and_check(disk, &model);
    busy_writes(&mut engine, &mut model, 2, 5);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn checkpoint_keeps_metadata_of_deleted_segments(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    // Partition 1 only ever writes metadata, in the first segment.
    let mut meta = LogWrite::new(PartitionId(1));
    meta.hard_state = Some(HardState { term: 7, vote: 1, commit: 0 });
    meta.conf_state = Some(ConfState { voters: vec![1, 2], ..ConfState::default() });
    meta.snapshot = Some((LogPosition { index: 20, term: 6 }, ConfState { voters: vec![1], ..ConfState::default() }));
    commit(&mut engine, &mut model, &[meta]);
    let first_segment = engine.segments()[0];
    busy_writes(&mut engine, &mut model, 2, 40);
    engine.compact().unwrap();
    assert!(!engine.segments().contains(&first_segment), "the first segment was deleted");
    drop(engine);
    reopen_and_check(disk, &model);
    assert_eq!(model.partition(PartitionId(1)).unwrap().hard_state.term, 7);
}

fn checkpoint_of_many_partitions_spans_records(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    let writes: Vec<LogWrite> = (1..=10_000u64)
        .map(|id| {
            let mut write = LogWrite::new(PartitionId(id));
            write.hard_state = Some(HardState { term: id % 7, vote: id % 3, commit: 0 });
            if id % 100 == 0 {
                write.conf_state = Some(ConfState { voters: vec![1, 2, 3], ..ConfState::default() });
            }
            write
        })
        .collect();
    commit(&mut engine, &mut model, &writes);
    let first_segment = engine.segments()[0];
    // The next append starts a segment, whose checkpoint lists all 10,000 partitions.
    commit(&mut engine, &mut model, &[entries_write(1, 1..=1, 1)]);
    let head = *engine.segments().last().unwrap();
    assert_ne!(head, first_segment);
    let decoded = decode_segment(&disk.read(&segment_path(dir(), head)).unwrap()).unwrap();
    let chunks: Vec<&crate::log::record::Checkpoint> = decoded
        .records
        .iter()
        .filter_map(|(_, record)| match record {
            Record::Checkpoint(checkpoint) => Some(checkpoint),
            _ => None,
        })
        .collect();
    assert!(chunks.len() >= 2, "a checkpoint this large spans records");
    assert_eq!(chunks.iter().map(|c| c.partitions.len()).sum::<usize>(), 10_000);
    assert!(chunks.last().unwrap().last_chunk && chunks.iter().rev().skip(1).all(|c| !c.last_chunk));
    engine.compact().unwrap();
    assert!(!engine.segments().contains(&first_segment));
    drop(engine);
    reopen_and_check(disk, &model);
}

fn pinned_entries_are_rewritten(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    // Partition 1's entries stay live (never compacted) and pin the first segment.
    commit(&mut engine, &mut model, &[entries_write(1, 1..=3, 1)]);
    let first_segment = engine.segments()[0];
    busy_writes(&mut engine, &mut model, 2, 60);
    assert!(engine.segments().len() > small_options().segments_max);
    let stats = engine.compact().unwrap();
    assert_eq!(stats.partitions_rewritten, 1, "{stats:?}");
    assert_eq!(stats.entries_rewritten, 3);
    assert!(stats.segments_remaining <= small_options().segments_max, "{stats:?}");
    assert!(!engine.segments().contains(&first_segment));
    let pinned = engine.partition(PartitionId(1)).unwrap().segments();
    assert!(pinned.iter().all(|seq| engine.segments().contains(seq)));
    check_engine(&engine, &model);
    // Partition 1 goes on after its rewrite, with a conflict into the rewritten entries.
    commit(&mut engine, &mut model, &[entries_write(1, 3..=4, 2)]);
    drop(engine);
    let mut engine = reopen_and_check(disk, &model);
    busy_writes(&mut engine, &mut model, 2, 60);
    engine.compact().unwrap();
    drop(engine);
    reopen_and_check(disk, &model);
}

fn removed_partition_is_forgotten(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    commit(&mut engine, &mut model, &[entries_write(1, 1..=3, 1), entries_write(3, 1..=1, 1)]);
    let first_segment = engine.segments()[0];
    busy_writes(&mut engine, &mut model, 2, 30);
    let mut remove = LogWrite::new(PartitionId(1));
    remove.remove = true;
    commit(&mut engine, &mut model, &[remove]);
    assert!(engine.partition(PartitionId(1)).is_none());
    // Partition 3 still pins the first segment; remove it too, then nothing does.
    let mut remove = LogWrite::new(PartitionId(3));
    remove.remove = true;
    commit(&mut engine, &mut model, &[remove]);
    let stats = engine.compact().unwrap();
    assert_eq!(stats.partitions_rewritten, 0, "removed partitions are never rewritten");
    assert!(!engine.segments().contains(&first_segment));
    drop(engine);
    let mut engine = reopen_and_check(disk, &model);
    // The same id can come back, starting afresh.
    commit(&mut engine, &mut model, &[entries_write(1, 1..=1, 5)]);
    drop(engine);
    reopen_and_check(disk, &model);
}

fn restarts_keep_segments_bounded(disk: &Arc<dyn Disk>) {
    let mut model = LogModel::default();
    for round in 0..8 {
        let mut engine = reopen_and_check(disk, &model);
        busy_writes(&mut engine, &mut model, 1, 2);
        let stats = engine.compact().unwrap();
        assert!(stats.segments_remaining <= 3, "round {round}: {stats:?}");
    }
}

/// The last segment's path and bytes, after writing a little and closing the log, cut to its
/// records (as the next open would cut the zeros the log prepared ahead of them).
fn last_segment(disk: &Arc<dyn Disk>, model: &mut LogModel) -> (PathBuf, Vec<u8>) {
    let (mut engine, _) = open(disk);
    commit(&mut engine, model, &[entries_write(1, 1..=3, 1)]);
    commit(&mut engine, model, &[entries_write(1, 4..=4, 1)]);
    let seq = *engine.segments().last().unwrap();
    drop(engine);
    let path = segment_path(dir(), seq);
    let mut bytes = disk.read(&path).unwrap();
    let zeros_from = decode_segment(&bytes).unwrap().zeros_from.expect("zeros ahead of the records");
    assert!(zeros_from < bytes.len() as u64);
    disk.truncate(&path, zeros_from).unwrap();
    bytes.truncate(zeros_from as usize);
    (path, bytes)
}

fn torn_tail_is_cut(disk: &Arc<dyn Disk>) {
    let mut model = LogModel::default();
    let (path, bytes) = last_segment(disk, &mut model);
    // Half of a record: a header promising more than follows.
    let mut file = disk.open_append(&path).unwrap();
    let mut torn = 500u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 20]);
    file.append(&torn).unwrap();
    file.sync().unwrap();
    drop(file);
    // An offline look reports the torn tail and leaves it: it writes nothing.
    let torn_len = disk.read(&path).unwrap().len();
    let look = crate::log::replay_read_only(&**disk, dir()).unwrap();
    let (torn_path, tail) = look.torn_tail.expect("the torn tail is reported");
    assert_eq!((torn_path, tail.offset), (path.clone(), bytes.len() as u64));
    assert_eq!(disk.read(&path).unwrap().len(), torn_len, "a read-only replay cuts nothing");
    assert_eq!(look.partitions.len(), 1);
    let engine = reopen_and_check(disk, &model);
    assert_eq!(disk.read(&path).unwrap(), bytes, "the torn bytes were cut off");
    drop(engine);
    reopen_and_check(disk, &model);
}

fn zeroed_tail_is_cut(disk: &Arc<dyn Disk>) {
    let mut model = LogModel::default();
    let (path, bytes) = last_segment(disk, &mut model);
    // The last record's end never reached the disk: zeros where its bytes should be.
    let decoded = decode_segment(&bytes).unwrap();
    let (last_offset, _) = decoded.records.last().unwrap();
    let mut torn = bytes.clone();
    let cut = *last_offset as usize + 12;
    torn[cut..].fill(0);
    torn.extend_from_slice(&[0; 64]);
    write_file_atomic(&**disk, &path, &torn).unwrap();
    let mut model_without_last = LogModel::default();
    model_without_last.apply(&entries_write(1, 1..=3, 1));
    reopen_and_check(disk, &model_without_last);
    assert_eq!(disk.read(&path).unwrap(), &bytes[..*last_offset as usize]);
}

/// The offset of the first `Writes` record of a segment.
fn first_writes_offset(bytes: &[u8]) -> u64 {
    decode_segment(bytes)
        .unwrap()
        .records
        .iter()
        .find(|(_, record)| matches!(record, Record::Writes(_)))
        .map(|(offset, _)| *offset)
        .expect("the segment holds writes")
}

fn expect_corrupt(disk: &Arc<dyn Disk>, path: &Path, offset: u64) {
    match LogEngine::open(Arc::clone(disk), dir(), small_options()) {
        Err(LogError::Corrupt { path: p, offset: o, reason }) => {
            assert_eq!((p.as_path(), o), (path, offset), "corruption names file and offset: {reason}");
        }
        Err(other) => panic!("expected Corrupt at {}:{offset}, got {other}", path.display()),
        Ok(_) => panic!("expected Corrupt at {}:{offset}, but the log opened", path.display()),
    }
}

fn corruption_in_the_middle_is_an_error(disk: &Arc<dyn Disk>) {
    let mut model = LogModel::default();
    let (path, mut bytes) = last_segment(disk, &mut model);
    let offset = first_writes_offset(&bytes);
    bytes[offset as usize + 20] ^= 0x40;
    write_file_atomic(&**disk, &path, &bytes).unwrap();
    expect_corrupt(disk, &path, offset);
    // Still refused the second time: nothing was cut.
    expect_corrupt(disk, &path, offset);
}

fn corruption_in_an_older_segment_is_an_error(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    commit(&mut engine, &mut model, &[entries_write(1, 1..=3, 1)]);
    busy_writes(&mut engine, &mut model, 1, 20);
    let seq = engine.segments()[0];
    drop(engine);
    let path = segment_path(dir(), seq);
    let mut bytes = disk.read(&path).unwrap();
    // Even the very last byte of an older segment is not a torn tail: it was synced.
    let offset = decode_segment(&bytes).unwrap().records.last().unwrap().0;
    *bytes.last_mut().unwrap() ^= 0xff;
    write_file_atomic(&**disk, &path, &bytes).unwrap();
    expect_corrupt(disk, &path, offset);
}

/// The head writes its records over zeros it prepared ahead of them; a rotation cuts them off
/// the old head, so only the last segment ever ends in zeros, and zeros after the records of
/// another are corruption (a synced record zeroed, or a rotation that did not cut them).
fn only_the_head_holds_zeros(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    busy_writes(&mut engine, &mut model, 1, 20);
    let seqs = engine.segments();
    assert!(seqs.len() >= 2, "the writes filled several segments ({seqs:?})");
    let (older, head) = (&seqs[..seqs.len() - 1], *seqs.last().unwrap());
    for &seq in older {
        let bytes = disk.read(&segment_path(dir(), seq)).unwrap();
        let decoded = decode_segment(&bytes).unwrap();
        assert_eq!((decoded.torn_tail, decoded.zeros_from), (None, None), "segment {seq} ends at its last record");
    }
    let head_bytes = disk.read(&segment_path(dir(), head)).unwrap();
    let zeros_from = decode_segment(&head_bytes).unwrap().zeros_from.expect("the head holds zeros ahead");
    drop(engine);
    let engine = reopen_and_check(disk, &model);
    assert_eq!(
        disk.read(&segment_path(dir(), head)).unwrap(),
        head_bytes[..zeros_from as usize],
        "recovery cut the zeros off the old head, and nothing else"
    );
    drop(engine);
    let path = segment_path(dir(), head);
    let mut bytes = disk.read(&path).unwrap();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 64]);
    write_file_atomic(&**disk, &path, &bytes).unwrap();
    expect_corrupt(disk, &path, end);
}

fn missing_segment_is_an_error(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    busy_writes(&mut engine, &mut model, 1, 30);
    let seqs = engine.segments();
    assert!(seqs.len() >= 3);
    drop(engine);
    disk.remove_file(&segment_path(dir(), seqs[1])).unwrap();
    expect_corrupt(disk, &segment_path(dir(), seqs[2]), 0);
}

fn foreign_files_are_left_alone(disk: &Arc<dyn Disk>) {
    let (mut engine, _) = open(disk);
    let mut model = LogModel::default();
    commit(&mut engine, &mut model, &[entries_write(1, 1..=2, 1)]);
    drop(engine);
    write_file_atomic(&**disk, &dir().join("notes.txt"), b"not a segment").unwrap();
    let mut engine = reopen_and_check(disk, &model);
    busy_writes(&mut engine, &mut model, 1, 20);
    engine.compact().unwrap();
    drop(engine);
    reopen_and_check(disk, &model);
    assert_eq!(disk.read(&dir().join("notes.txt")).unwrap(), b"not a segment");
}

type LogCrashCase = (&'static str, fn(&dyn Fn(u64) -> Arc<SimDisk>));

/// Runs the crash cases of the log engine on simulated disks from `make(seed)`.
pub fn log_crash_suite(make: impl Fn(u64) -> Arc<SimDisk>) {
    let cases: &[LogCrashCase] = &[
        ("synced_writes_survive_a_crash", synced_writes_survive_a_crash),
        ("failed_sync_poisons_the_log", failed_sync_poisons_the_log),
        ("failed_append_poisons_the_log", failed_append_poisons_the_log),
        ("crash_during_rotation_and_compaction", crash_during_rotation_and_compaction),
    ];
    for (name, case) in cases {
        eprintln!("log_crash_suite: {name}");
        case(&make);
    }
}

fn as_disk(disk: &Arc<SimDisk>) -> Arc<dyn Disk> {
    Arc::clone(disk) as Arc<dyn Disk>
}

/// Reopens after a crash and checks the log kept every synced write and a prefix of the rest;
/// returns the engine and the model of what it holds.
fn recover_after_crash(disk: &Arc<SimDisk>, synced: &LogModel, unsynced: &[LogWrite]) -> (LogEngine, LogModel) {
    let (engine, recovered) = open(&as_disk(disk));
    let Some(j) = synced.surviving_prefix(unsynced, &recovered) else {
        panic!("recovered state is not the synced writes plus a prefix of the rest: {recovered:#?}");
    };
    let mut model = synced.clone();
    for write in &unsynced[..j] {
        model.apply(write);
    }
    check_engine(&engine, &model);
    (engine, model)
}

fn synced_writes_survive_a_crash(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..40 {
        let disk = make(seed);
        let (mut engine, _) = open(&as_disk(&disk));
        let mut synced = LogModel::default();
        commit(&mut engine, &mut synced, &[entries_write(1, 1..=3, 1), entries_write(2, 1..=2, 1)]);
        let unsynced = vec![entries_write(1, 4..=5, 1), entries_write(2, 2..=3, 2), entries_write(3, 1..=1, 1)];
        engine.append(&unsynced[..2]).unwrap();
        engine.append(&unsynced[2..]).unwrap();
        drop(engine);
        disk.crash();
        let (engine, _) = recover_after_crash(&disk, &synced, &unsynced);
        drop(engine);
        disk.crash();
    }
}

fn failed_sync_poisons_the_log(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..20 {
        let disk = make(seed);
        let (mut engine, _) = open(&as_disk(&disk));
        let mut synced = LogModel::default();
        commit(&mut engine, &mut synced, &[entries_write(1, 1..=3, 1)]);
        disk.set_fail_syncs(true);
        let unsynced = vec![entries_write(1, 4..=4, 1)];
        engine.append(&unsynced).unwrap();
        assert!(matches!(engine.sync(), Err(LogError::Disk(_))));
        assert!(engine.poisoned().is_some());
        disk.set_fail_syncs(false);
        // Even with the disk healthy again, the log refuses: the failed fsync may have lost pages.
        assert!(matches!(engine.append(&[entries_write(1, 5..=5, 1)]), Err(LogError::Poisoned { .. })));
        assert!(matches!(engine.sync(), Err(LogError::Poisoned { .. })));
        assert!(matches!(engine.compact(), Err(LogError::Poisoned { .. })));
        drop(engine);
        disk.crash();
        recover_after_crash(&disk, &synced, &unsynced);
    }
}

fn failed_append_poisons_the_log(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    let disk = make(7);
    let (mut engine, _) = open(&as_disk(&disk));
    let mut synced = LogModel::default();
    commit(&mut engine, &mut synced, &[entries_write(1, 1..=3, 1)]);
    disk.set_fail_appends(true);
    assert!(matches!(engine.append(&[entries_write(1, 4..=4, 1)]), Err(LogError::Disk(_))));
    disk.set_fail_appends(false);
    assert!(matches!(engine.append(&[entries_write(1, 4..=4, 1)]), Err(LogError::Poisoned { .. })));
    assert_eq!(engine.partition(PartitionId(1)).unwrap().last_index(), 3, "a failed append changes nothing");
    drop(engine);
    disk.crash();
    recover_after_crash(&disk, &synced, &[]);
}

fn crash_during_rotation_and_compaction(make: &dyn Fn(u64) -> Arc<SimDisk>) {
    for seed in 0..30 {
        let disk = make(seed);
        let (mut engine, _) = open(&as_disk(&disk));
        let mut synced = LogModel::default();
        commit(&mut engine, &mut synced, &[entries_write(1, 1..=3, 1)]);
        busy_writes(&mut engine, &mut synced, 2, 25);
        engine.compact().unwrap();
        // Unsynced writes that cross segment boundaries (rotation syncs the old segment).
        let mut unsynced = Vec::new();
        let mut model = synced.clone();
        for _ in 0..(seed % 7) * 3 {
            let next = model.last_index(PartitionId(2)) + 1;
            let write = entries_write(2, next..=next, 1);
            model.apply(&write);
            engine.append(std::slice::from_ref(&write)).unwrap();
            unsynced.push(write);
        }
        drop(engine);
        disk.crash();
        let (mut engine, mut model) = recover_after_crash(&disk, &synced, &unsynced);
        busy_writes(&mut engine, &mut model, 2, 3);
        engine.compact().unwrap();
        drop(engine);
        disk.crash();
        reopen_and_check(&as_disk(&disk), &model);
    }
}
