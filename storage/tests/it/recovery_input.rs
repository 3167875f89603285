//! Recovery on well-framed nonsense: segments of records with valid checksums but arbitrary
//! content (wrong headers, checkpoints that disagree, writes that do not fit, huge indexes).
//! Recovery must answer `Ok` or `Corrupt`, never panic, and a log it accepts must work.

use cohort_core::codec;
use cohort_core::env::Disk;
use cohort_core::ids::PartitionId;
use cohort_core::persist::{ConfState, EntryKind, HardState, LogEntry, LogPosition, LogWrite};
use cohort_storage::log::record::{encode_frame, Checkpoint, CheckpointPartition, Record, SegmentHeader};
use cohort_storage::log::segment::segment_path;
use cohort_storage::log::{LogEngine, LogError, LogOptions};
use cohort_storage::SimDisk;
use proptest::prelude::*;
use std::path::Path;
use std::sync::Arc;

/// Small numbers mostly, sometimes the extremes.
fn index() -> impl Strategy<Value = u64> {
    prop_oneof![40 => 1u64..6, 2 => Just(0), 1 => Just(u64::MAX), 1 => Just(u64::MAX / 4 + 1)]
}

fn position() -> impl Strategy<Value = LogPosition> {
    (index(), 0u64..4).prop_map(|(index, term)| LogPosition { index, term })
}

fn log_write() -> impl Strategy<Value = LogWrite> {
    (
        1u64..4,
        prop::option::weighted(0.05, position()),
        prop::option::weighted(0.1, position()),
        (prop_oneof![6 => Just(1u64), 4 => index()], 0u8..4),
        prop::option::weighted(0.3, 0u64..5),
        prop::bool::weighted(0.05),
    )
        .prop_map(|(partition, snapshot, compact_through, (first, count), term, remove)| {
            let mut write = LogWrite::new(PartitionId(partition));
            write.snapshot = snapshot.map(|position| (position, ConfState::default()));
            write.compact_through = compact_through;
            write.entries = (0..count as u64)
                .map(|i| LogEntry {
                    index: first.wrapping_add(i),
                    term: 1,
                    kind: EntryKind::Normal,
                    data: vec![i as u8],
                    context: Vec::new(),
                })
                .collect();
            write.hard_state = term.map(|term| HardState { term, vote: 1, commit: 0 });
            write.remove = remove;
            write
        })
}

fn checkpoint_partition() -> impl Strategy<Value = CheckpointPartition> {
    (1u64..4, position(), index()).prop_map(|(partition, compacted, last_index)| CheckpointPartition {
        partition: PartitionId(partition),
        hard_state: HardState::default(),
        conf_state: ConfState::default(),
        compacted,
        snapshot: None,
        last_index,
    })
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        1 => (prop_oneof![9 => Just(1u32), 1 => any::<u32>()], 0u64..4)
            .prop_map(|(format_version, seq)| Record::SegmentHeader(SegmentHeader { format_version, seq })),
        1 => (prop::collection::vec(checkpoint_partition(), 0..4), prop::bool::weighted(0.7))
            .prop_map(|(partitions, last_chunk)| Record::Checkpoint(Checkpoint { partitions, last_chunk })),
        20 => prop::collection::vec(log_write(), 1..4).prop_map(Record::Writes),
    ]
}

/// A segment that usually starts like a real one (header, complete empty checkpoint).
fn segment() -> impl Strategy<Value = (bool, Vec<Record>)> {
    (prop::bool::weighted(0.9), prop::collection::vec(record(), 0..8))
}

fn write_segments(disk: &SimDisk, dir: &Path, segments: &[(bool, Vec<Record>)]) {
    disk.create_dir_all(dir).unwrap();
    for (i, (proper_start, records)) in segments.iter().enumerate() {
        let seq = i as u64 + 1;
        let mut bytes = Vec::new();
        let mut all = Vec::new();
        if *proper_start {
            all.push(Record::SegmentHeader(SegmentHeader { format_version: 1, seq }));
            all.push(Record::Checkpoint(Checkpoint { partitions: Vec::new(), last_chunk: true }));
        }
        all.extend(records.iter().cloned());
        for record in &all {
            encode_frame(&codec::encode(record), &mut bytes);
        }
        let mut file = disk.open_append(&segment_path(dir, seq)).unwrap();
        file.append(&bytes).unwrap();
        file.sync().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn recovery_answers_ok_or_corrupt(segments in prop::collection::vec(segment(), 1..4)) {
        let disk = Arc::new(SimDisk::new(1));
        let dir = Path::new("wal");
        write_segments(&disk, dir, &segments);
        let options = LogOptions { segment_size_bytes: 1024, segments_max: 2 };
        match LogEngine::open(Arc::clone(&disk) as Arc<dyn Disk>, dir, options.clone()) {
            Ok((mut engine, recovered)) => {
                for (id, partition) in &recovered {
                    let state = engine.partition(*id).unwrap();
                    prop_assert_eq!(state.last_index(), partition.entries.last().map_or(partition.compacted.index, |e| e.index));
                    prop_assert_eq!(&engine.read_entries(*id).unwrap(), &partition.entries);
                }
                engine.compact().unwrap();
                drop(engine);
                let (_, again) = LogEngine::open(Arc::clone(&disk) as Arc<dyn Disk>, dir, options).unwrap();
                prop_assert_eq!(again, recovered);
            }
            Err(LogError::Corrupt { .. }) => {}
            Err(other) => prop_assert!(false, "recovery fails only with Corrupt, got {}", other),
        }
    }
}
