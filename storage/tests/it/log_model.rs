//! Property test of the log engine against `LogModel`: random appends over several partitions
//! (entries, conflicts, hard states, compactions, snapshots, removals), syncs, compactions,
//! clean restarts, failed syncs and appends, and crashes of the simulated disk at any point.
//! After every reopen the log holds exactly the synced writes plus a prefix of the unsynced
//! ones, and recovery never fails on what a crash left.

use cohort_core::env::Disk;
use cohort_core::ids::PartitionId;
use cohort_core::persist::{ConfState, HardState, LogPosition, LogWrite};
use cohort_storage::conformance::{entries, LogModel};
use cohort_storage::log::record::decode_segment;
use cohort_storage::log::segment::{list_segments, segment_path};
use cohort_storage::log::{LogEngine, LogError, LogOptions};
use cohort_storage::SimDisk;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

const PARTITIONS: u64 = 5;

#[derive(Clone, Debug)]
enum Action {
    Entries { back: u8, count: u8, data_bytes: u8, new_term: bool },
    Compact { fraction: u8 },
    Snapshot { ahead: u8, voters: u8 },
    MetadataOnly,
    Remove,
}

#[derive(Clone, Debug)]
struct WriteSpec {
    partition: u64,
    action: Action,
    hard_state: Option<(u8, u8)>,
    conf_voters: Option<u8>,
}

#[derive(Clone, Debug)]
enum Op {
    Append(Vec<WriteSpec>),
    Sync,
    Compact,
    Crash,
    Restart,
    FailedSync,
    FailedAppend(Vec<WriteSpec>),
    /// The power goes out after `after_ops` disk operations of `during`; then the machine
    /// restarts.
    PowerLoss {
        after_ops: u8,
        during: Box<Op>,
    },
    /// A crash, then the power goes out after `after_ops` disk operations of the recovery;
    /// then the machine restarts again.
    PowerLossDuringRecovery {
        after_ops: u8,
    },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (0u8..4, 1u8..5, 0u8..200, prop::bool::weighted(0.2))
            .prop_map(|(back, count, data_bytes, new_term)| Action::Entries { back, count, data_bytes, new_term }),
        2 => any::<u8>().prop_map(|fraction| Action::Compact { fraction }),
        1 => (0u8..3, 1u8..4).prop_map(|(ahead, voters)| Action::Snapshot { ahead, voters }),
        2 => Just(Action::MetadataOnly),
        1 => Just(Action::Remove),
    ]
}

fn write_spec() -> impl Strategy<Value = WriteSpec> {
    (1..=PARTITIONS, action(), prop::option::weighted(0.4, (any::<u8>(), 0u8..4)), prop::option::weighted(0.1, 1u8..5))
        .prop_map(|(partition, action, hard_state, conf_voters)| WriteSpec {
            partition,
            action,
            hard_state,
            conf_voters,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => prop::collection::vec(write_spec(), 1..5).prop_map(Op::Append),
        4 => Just(Op::Sync),
        2 => Just(Op::Compact),
        2 => Just(Op::Crash),
        1 => Just(Op::Restart),
        1 => Just(Op::FailedSync),
        1 => prop::collection::vec(write_spec(), 1..3).prop_map(Op::FailedAppend),
        2 => (0u8..16, interruptible_op()).prop_map(|(after_ops, during)| Op::PowerLoss { after_ops, during: Box::new(during) }),
        1 => (0u8..16).prop_map(|after_ops| Op::PowerLossDuringRecovery { after_ops }),
    ]
}

/// Operations a power loss can interrupt.
fn interruptible_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => prop::collection::vec(write_spec(), 1..5).prop_map(Op::Append),
        2 => Just(Op::Sync),
        2 => Just(Op::Compact),
    ]
}

fn dir() -> &'static Path {
    Path::new("wal")
}

fn options() -> LogOptions {
    LogOptions { segment_size_bytes: 2048, segments_max: 3 }
}

struct Harness {
    disk: Arc<SimDisk>,
    engine: Option<LogEngine>,
    /// What is durable for sure.
    synced: LogModel,
    /// Appended since, in order: a crash keeps a prefix of them.
    unsynced: Vec<LogWrite>,
    /// `synced` followed by every write of `unsynced`: what the engine holds.
    live: LogModel,
    /// Highest term used per partition, so that new entries never go back in time.
    terms: BTreeMap<u64, u64>,
    coverage: Coverage,
}

/// What a run exercised, to show the property test reaches the paths it is meant to.
#[derive(Clone, Copy, Debug, Default)]
struct Coverage {
    crashes: u64,
    /// Crashes after which some unsynced write was lost.
    crashes_losing_writes: u64,
    /// Crashes after which some, not all, unsynced writes survived.
    crashes_keeping_some: u64,
    torn_tails_cut: u64,
    segments_deleted: u64,
    partitions_rewritten: u64,
    failed_syncs: u64,
    power_losses: u64,
    interrupted_recoveries: u64,
}

impl Coverage {
    fn add(&mut self, other: Coverage) {
        self.crashes += other.crashes;
        self.crashes_losing_writes += other.crashes_losing_writes;
        self.crashes_keeping_some += other.crashes_keeping_some;
        self.torn_tails_cut += other.torn_tails_cut;
        self.segments_deleted += other.segments_deleted;
        self.partitions_rewritten += other.partitions_rewritten;
        self.failed_syncs += other.failed_syncs;
        self.power_losses += other.power_losses;
        self.interrupted_recoveries += other.interrupted_recoveries;
    }
}

impl Harness {
    fn new(seed: u64) -> Harness {
        let disk = Arc::new(SimDisk::new(seed));
        disk.set_torn_write_probability(0.5);
        let (engine, recovered) = LogEngine::open(Arc::clone(&disk) as Arc<dyn Disk>, dir(), options()).unwrap();
        assert!(recovered.is_empty());
        Harness {
            disk,
            engine: Some(engine),
            synced: LogModel::default(),
            unsynced: Vec::new(),
            live: LogModel::default(),
            terms: BTreeMap::new(),
            coverage: Coverage::default(),
        }
    }

    fn engine(&mut self) -> &mut LogEngine {
        self.engine.as_mut().expect("the log is open")
    }

    /// Turns specs into writes that fit the live log, applying each to `model` as it goes.
    fn writes(&mut self, specs: &[WriteSpec], model: &mut LogModel) -> Vec<LogWrite> {
        let mut out = Vec::new();
        for spec in specs {
            let id = PartitionId(spec.partition);
            let mut write = LogWrite::new(id);
            let term = self.terms.entry(spec.partition).or_insert(1);
            let last = model.last_index(id);
            let compacted = model.partition(id).map_or(0, |p| p.compacted.index);
            match spec.action {
                Action::Entries { back, count, data_bytes, new_term } => {
                    let first = (last + 1).saturating_sub(back as u64).max(compacted + 1);
                    // Replacing entries means a new leader: a new term.
                    if new_term || first <= last {
                        *term += 1;
                    }
                    let mut new = entries(first..=first + count as u64 - 1, *term, data_bytes as usize);
                    if first.is_multiple_of(4) {
                        new[0].kind = cohort_core::persist::EntryKind::ConfChange;
                    }
                    write.entries = new;
                }
                Action::Compact { fraction } => {
                    if last > compacted {
                        let index = compacted + 1 + fraction as u64 % (last - compacted);
                        let term = model.term_at(id, index).expect("a live entry has a term");
                        write.compact_through = Some(LogPosition { index, term });
                    }
                }
                Action::Snapshot { ahead, voters } => {
                    *term += 1;
                    let position = LogPosition { index: last + ahead as u64, term: *term };
                    let conf = ConfState { voters: (1..=voters as u64).collect(), ..ConfState::default() };
                    write.snapshot = Some((position, conf));
                }
                Action::MetadataOnly => {}
                Action::Remove => write.remove = true,
            }
            if let Some((commit, vote)) = spec.hard_state {
                let last_after = write.entries.last().map_or(last, |e| e.index);
                write.hard_state =
                    Some(HardState { term: *term, vote: vote as u64, commit: commit as u64 % (last_after + 1) });
            }
            if let Some(voters) = spec.conf_voters {
                write.conf_state = Some(ConfState {
                    voters: (1..=voters as u64).collect(),
                    learners: vec![9],
                    ..ConfState::default()
                });
            }
            model.apply(&write);
            out.push(write);
        }
        out
    }

    fn append(&mut self, specs: &[WriteSpec]) {
        let mut live = self.live.clone();
        let writes = self.writes(specs, &mut live);
        self.engine().append(&writes).unwrap();
        self.live = live;
        self.unsynced.extend(writes);
    }

    fn all_synced(&mut self) {
        self.synced = self.live.clone();
        self.unsynced.clear();
    }

    /// The engine agrees with the live model.
    fn check_engine(&mut self) {
        let engine = self.engine.as_ref().expect("the log is open");
        let ids: Vec<PartitionId> = engine.partitions().map(|(id, _)| id).collect();
        let model_ids: Vec<PartitionId> = self.live.partitions().keys().copied().collect();
        assert_eq!(ids, model_ids);
        for (&id, expected) in self.live.partitions() {
            let state = engine.partition(id).unwrap();
            assert_eq!(state.last_index(), self.live.last_index(id), "last index of {id}");
            assert_eq!(state.compacted(), expected.compacted, "compacted of {id}");
            assert_eq!(state.hard_state(), expected.hard_state, "hard state of {id}");
            assert_eq!(state.live_entries(), expected.entries.len() as u64, "live entries of {id}");
        }
    }

    /// Every partition's entries read back from the segments equal the model's.
    fn check_entries_on_disk(&mut self) {
        let engine = self.engine.as_ref().expect("the log is open");
        for (&id, expected) in self.live.partitions() {
            assert_eq!(engine.read_entries(id).unwrap(), expected.entries, "entries of {id} on disk");
        }
    }

    fn reopen(&mut self, crash: bool) {
        self.reopen_with_power_loss(crash, None);
    }

    /// Whether the log's last segment ends in a torn record (which the next open cuts).
    fn last_segment_is_torn(&self) -> bool {
        let seqs = list_segments(&*self.disk, dir()).expect("the log's segments list");
        seqs.last().is_some_and(|&seq| {
            let bytes = self.disk.read(&segment_path(dir(), seq)).expect("a segment reads");
            decode_segment(&bytes).is_ok_and(|decoded| decoded.torn_tail.is_some())
        })
    }

    /// Reopens the log, after a crash if `crash`; if `power_loss_after_ops`, the power goes
    /// out that many operations into the recovery, and recovery starts over after a crash.
    fn reopen_with_power_loss(&mut self, crash: bool, power_loss_after_ops: Option<u64>) {
        self.engine = None;
        if crash {
            self.disk.crash();
            self.coverage.crashes += 1;
        }
        // Recovery also cuts the zeros the log prepares ahead of its records: count only tails
        // a crash tore.
        let torn = self.last_segment_is_torn();
        let open = || LogEngine::open(Arc::clone(&self.disk) as Arc<dyn Disk>, dir(), options());
        self.disk.set_power_loss_after_ops(power_loss_after_ops);
        let first_attempt = open();
        self.disk.set_power_loss_after_ops(None);
        let (engine, recovered) = match first_attempt {
            Ok(opened) => opened,
            Err(e) => {
                assert!(self.disk.is_powered_off(), "recovery fails only for lack of power: {e}");
                self.coverage.interrupted_recoveries += 1;
                self.disk.crash();
                open().unwrap_or_else(|e| panic!("recovery after an interrupted recovery fails: {e}"))
            }
        };
        let j = self.synced.surviving_prefix(&self.unsynced, &recovered).unwrap_or_else(|| {
            panic!(
                "recovered state is not the synced writes plus a prefix of the {} unsynced ones\n\
                 recovered: {recovered:#?}\nsynced: {:#?}",
                self.unsynced.len(),
                self.synced.partitions()
            )
        });
        if !crash {
            assert_eq!(&recovered, self.live.partitions(), "a clean restart keeps every appended write");
        }
        self.coverage.torn_tails_cut += u64::from(torn);
        if j < self.unsynced.len() {
            self.coverage.crashes_losing_writes += 1;
            if j > 0 {
                self.coverage.crashes_keeping_some += 1;
            }
        }
        let mut live = self.synced.clone();
        for write in &self.unsynced[..j] {
            live.apply(write);
        }
        self.live = live;
        self.engine = Some(engine);
        self.all_synced();
        self.check_engine();
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Append(specs) => self.append(specs),
            Op::Sync => {
                self.engine().sync().unwrap();
                self.all_synced();
            }
            Op::Compact => {
                let stats = self.engine().compact().unwrap();
                self.coverage.segments_deleted += stats.segments_deleted as u64;
                self.coverage.partitions_rewritten += stats.partitions_rewritten as u64;
                self.all_synced();
                self.check_entries_on_disk();
            }
            Op::Crash => self.reopen(true),
            Op::Restart => self.reopen(false),
            Op::FailedSync => {
                self.disk.set_fail_syncs(true);
                let nothing_to_sync = self.unsynced.is_empty();
                let result = self.engine().sync();
                self.disk.set_fail_syncs(false);
                if nothing_to_sync {
                    // Nothing to make durable: no fsync, no failure.
                    result.unwrap();
                } else {
                    assert!(matches!(result, Err(LogError::Disk(_))), "{result:?}");
                    self.coverage.failed_syncs += 1;
                    let again = self.engine().append(&[]);
                    assert!(matches!(again, Err(LogError::Poisoned { .. })), "{again:?}");
                    self.reopen(true);
                }
            }
            Op::PowerLoss { after_ops, during } => {
                self.disk.set_power_loss_after_ops(Some(*after_ops as u64));
                match &**during {
                    Op::Append(specs) => {
                        let mut live = self.live.clone();
                        let writes = self.writes(specs, &mut live);
                        if self.engine().append(&writes).is_ok() {
                            self.live = live;
                            self.unsynced.extend(writes);
                        }
                    }
                    Op::Sync => {
                        if self.engine().sync().is_ok() {
                            self.all_synced();
                        }
                    }
                    Op::Compact => {
                        if self.engine().compact().is_ok() {
                            self.all_synced();
                        }
                    }
                    other => unreachable!("not an interruptible op: {other:?}"),
                }
                self.disk.set_power_loss_after_ops(None);
                if self.disk.is_powered_off() {
                    self.coverage.power_losses += 1;
                }
                self.reopen(true);
            }
            Op::PowerLossDuringRecovery { after_ops } => {
                self.reopen_with_power_loss(true, Some(*after_ops as u64));
            }
            Op::FailedAppend(specs) => {
                let mut scratch = self.live.clone();
                let writes = self.writes(specs, &mut scratch);
                self.disk.set_fail_appends(true);
                let result = self.engine().append(&writes);
                self.disk.set_fail_appends(false);
                assert!(result.is_err(), "an append on a full disk fails");
                self.reopen(true);
            }
        }
        if self.engine.is_some() {
            self.check_engine();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn log_matches_model_across_crashes(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..64)) {
        let mut harness = Harness::new(seed);
        for op in &ops {
            harness.run(op);
        }
        harness.reopen(true);
        harness.check_entries_on_disk();
    }
}

/// The property test's inputs reach every path it is meant to test: crashes that lose some
/// unsynced writes and keep others, torn tails cut, segments deleted, partitions rewritten.
#[test]
fn property_test_inputs_cover_the_crash_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Coverage::default();
    for _ in 0..48 {
        let seed = any::<u64>().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec(op(), 24..48).new_tree(&mut runner).unwrap().current();
        let mut harness = Harness::new(seed);
        for op in &ops {
            harness.run(op);
        }
        harness.reopen(true);
        total.add(harness.coverage);
    }
    eprintln!("{total:?}");
    assert!(total.crashes_losing_writes > 0, "{total:?}");
    assert!(total.crashes_keeping_some > 0, "{total:?}");
    assert!(total.torn_tails_cut > 0, "{total:?}");
    assert!(total.segments_deleted > 0, "{total:?}");
    assert!(total.partitions_rewritten > 0, "{total:?}");
    assert!(total.failed_syncs > 0, "{total:?}");
    assert!(total.power_losses > 0, "{total:?}");
    assert!(total.interrupted_recoveries > 0, "{total:?}");
}
