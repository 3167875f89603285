//! Group commit driven by a single-threaded executor and a `Spawn` that runs blocking work
//! inline: batching, one fsync per batch, answers in order, failure of everything after a
//! failed sync, durability of what was acknowledged.

use cohort_core::env::{BoxFuture, Disk, Spawn};
use cohort_core::ids::PartitionId;
use cohort_core::persist::{HardState, LogPosition, LogWrite, PersistRequest};
use cohort_storage::conformance::{entries, LogModel};
use cohort_storage::log::segment::list_segments;
use cohort_storage::log::{run_group_commit, GroupCommitOptions, LogEngine, LogOptions};
use cohort_storage::SimDisk;
use futures::channel::mpsc;
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Runs blocking work on the spot: the simulated disk never blocks.
struct InlineSpawn;

impl Spawn for InlineSpawn {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        futures::executor::block_on(task);
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        work();
        Box::pin(futures::future::ready(()))
    }
}

type Answers = Arc<Mutex<Vec<(usize, Result<(), String>)>>>;

struct Setup {
    disk: Arc<SimDisk>,
    pool: LocalPool,
    requests: mpsc::Sender<PersistRequest>,
    answers: Answers,
}

fn dir() -> &'static Path {
    Path::new("wal")
}

fn log_options() -> LogOptions {
    LogOptions { segment_size_bytes: 2048, segments_max: 3 }
}

fn setup(options: GroupCommitOptions) -> Setup {
    let disk = Arc::new(SimDisk::new(11));
    let (engine, _) = LogEngine::open(Arc::clone(&disk) as Arc<dyn Disk>, dir(), log_options()).unwrap();
    let (requests, receiver) = mpsc::channel(1024);
    let pool = LocalPool::new();
    pool.spawner().spawn_local(run_group_commit(engine, receiver, Arc::new(InlineSpawn), options)).unwrap();
    Setup { disk, pool, requests, answers: Answers::default() }
}

fn request(answers: &Answers, tag: usize, write: LogWrite) -> PersistRequest {
    let answers = Arc::clone(answers);
    PersistRequest {
        write,
        done: Box::new(move |result| answers.lock().unwrap().push((tag, result.map_err(|e| e.to_string())))),
    }
}

/// Write number `tag`: one entry of its partition, the next after `model`'s, applied to it.
fn next_write(model: &mut LogModel, tag: usize, partitions: u64) -> LogWrite {
    let id = PartitionId(tag as u64 % partitions + 1);
    let next = model.last_index(id) + 1;
    let mut write = LogWrite::new(id);
    write.entries = entries(next..=next, 1, 100);
    write.hard_state = Some(HardState { term: 1, vote: 1, commit: next });
    if next > 2 {
        write.compact_through = Some(LogPosition { index: next - 2, term: 1 });
    }
    model.apply(&write);
    write
}

fn enqueue(setup: &mut Setup, model: &mut LogModel, tags: std::ops::Range<usize>) {
    for tag in tags {
        let write = next_write(model, tag, 3);
        setup.requests.try_send(request(&setup.answers, tag, write)).unwrap();
    }
}

fn answers(setup: &Setup) -> Vec<(usize, Result<(), String>)> {
    std::mem::take(&mut *setup.answers.lock().unwrap())
}

#[test]
fn queued_writes_share_one_fsync_and_are_answered_in_order() {
    let mut setup = setup(GroupCommitOptions::default());
    let mut model = LogModel::default();
    setup.pool.run_until_stalled();
    let syncs_before = setup.disk.stats().file_syncs;
    enqueue(&mut setup, &mut model, 0..10);
    setup.pool.run_until_stalled();
    let got = answers(&setup);
    assert_eq!(got.iter().map(|(tag, _)| *tag).collect::<Vec<_>>(), (0..10).collect::<Vec<_>>());
    assert!(got.iter().all(|(_, result)| result.is_ok()));
    assert_eq!(setup.disk.stats().file_syncs - syncs_before, 1, "ten writes, one fsync");
    enqueue(&mut setup, &mut model, 10..13);
    setup.pool.run_until_stalled();
    assert_eq!(answers(&setup).len(), 3);
    assert_eq!(setup.disk.stats().file_syncs - syncs_before, 2);
}

#[test]
fn batches_respect_the_write_limit() {
    let options = GroupCommitOptions { batch_writes_max: 4, ..GroupCommitOptions::default() };
    let mut setup = setup(options);
    let mut model = LogModel::default();
    setup.pool.run_until_stalled();
    let syncs_before = setup.disk.stats().file_syncs;
    enqueue(&mut setup, &mut model, 0..10);
    setup.pool.run_until_stalled();
    assert_eq!(answers(&setup).len(), 10);
    // Batches of 4, 4 and 2 (a rotation may add a sync of the old segment).
    let syncs = setup.disk.stats().file_syncs - syncs_before;
    assert!((3..=4).contains(&syncs), "{syncs} fsyncs");
}

#[test]
fn batches_respect_the_byte_limit() {
    let options = GroupCommitOptions { batch_bytes_max: 1, ..GroupCommitOptions::default() };
    let mut setup = setup(options);
    let mut model = LogModel::default();
    setup.pool.run_until_stalled();
    let syncs_before = setup.disk.stats().file_syncs;
    enqueue(&mut setup, &mut model, 0..5);
    setup.pool.run_until_stalled();
    assert_eq!(answers(&setup).len(), 5);
    assert!(setup.disk.stats().file_syncs - syncs_before >= 5, "every write is its own batch");
}

#[test]
fn a_failed_sync_fails_the_batch_and_everything_after() {
    let mut setup = setup(GroupCommitOptions::default());
    let mut model = LogModel::default();
    enqueue(&mut setup, &mut model, 0..2);
    setup.pool.run_until_stalled();
    assert!(answers(&setup).iter().all(|(_, result)| result.is_ok()));
    setup.disk.set_fail_syncs(true);
    enqueue(&mut setup, &mut model, 2..5);
    setup.pool.run_until_stalled();
    let failed = answers(&setup);
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|(_, result)| result.is_err()), "{failed:?}");
    setup.disk.set_fail_syncs(false);
    enqueue(&mut setup, &mut model, 5..7);
    setup.pool.run_until_stalled();
    let later = answers(&setup);
    assert_eq!(later.len(), 2);
    assert!(later.iter().all(|(_, result)| result.is_err()), "no write is acknowledged after a failed fsync");
}

#[test]
fn acknowledged_writes_survive_a_crash_and_compaction_bounds_segments() {
    let options = GroupCommitOptions { compact_every_batches: 2, batch_writes_max: 8, ..GroupCommitOptions::default() };
    let mut setup = setup(options);
    let mut model = LogModel::default();
    for round in 0..40 {
        enqueue(&mut setup, &mut model, round * 10..round * 10 + 10);
        setup.pool.run_until_stalled();
        assert!(answers(&setup).iter().all(|(_, result)| result.is_ok()));
        let segments = list_segments(&*setup.disk, dir()).unwrap().len();
        assert!(segments <= log_options().segments_max + 2, "round {round}: {segments} segments");
    }
    // Closing the channel ends the task, which drops the engine.
    drop(setup.requests);
    setup.pool.run();
    setup.disk.crash();
    let (_, recovered) = LogEngine::open(Arc::clone(&setup.disk) as Arc<dyn Disk>, dir(), log_options()).unwrap();
    assert_eq!(&recovered, model.partitions(), "every acknowledged write is durable");
}
