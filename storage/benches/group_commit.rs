//! Group commit against one fsync per append, on the real file system (`FsDisk` in a
//! temporary directory under the target directory, or `$COHORT_BENCH_DIR`).
//!
//! (a) one writer, one 1 KiB entry per append, each followed by its own fsync;
//! (b) 64 writer threads over 1,000 partitions, 1 KiB entries, through `run_group_commit`.
//! Prints both rates and their ratio in one run. `cargo bench -p cohort-storage --bench
//! group_commit` runs each for about 5 s; without `--bench` (as `cargo test --all-targets`
//! runs it) each runs for a moment, as a smoke test.

use cohort_core::env::{BoxFuture, Disk, Spawn};
use cohort_core::ids::PartitionId;
use cohort_core::limits::PERSIST_QUEUE_WRITES_MAX;
use cohort_core::persist::{EntryKind, HardState, LogEntry, LogPosition, LogWrite, PersistRequest};
use cohort_storage::log::{run_group_commit, GroupCommitOptions, LogEngine, LogOptions};
use cohort_storage::FsDisk;
use futures::channel::mpsc;
use futures::SinkExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRY_BYTES: usize = 1024;
const WRITERS: usize = 64;
const PARTITIONS: u64 = 1000;

/// Runs blocking work on the calling thread: the group commit task has its own thread here.
struct InlineSpawn;

impl Spawn for InlineSpawn {
    fn spawn(&self, _name: &'static str, task: BoxFuture<()>) {
        std::thread::spawn(move || futures::executor::block_on(task));
    }

    fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> BoxFuture<()> {
        work();
        Box::pin(futures::future::ready(()))
    }
}

/// The write appending entry `index` of `partition`, compacting all but the last few entries
/// behind it as a partition applying its log would.
fn write(partition: u64, index: u64) -> LogWrite {
    let mut write = LogWrite::new(PartitionId(partition));
    write.entries = vec![LogEntry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: vec![(index % 251) as u8; ENTRY_BYTES],
        context: Vec::new(),
    }];
    write.hard_state = Some(HardState { term: 1, vote: 1, commit: index });
    if index > 4 {
        write.compact_through = Some(LogPosition { index: index - 4, term: 1 });
    }
    write
}

fn open(base: &Path) -> (tempfile::TempDir, LogEngine) {
    let dir = tempfile::tempdir_in(base).expect("a temporary directory");
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(dir.path()).expect("the disk opens"));
    let (engine, _) = LogEngine::open(disk, Path::new("wal"), LogOptions::default()).expect("the log opens");
    (dir, engine)
}

/// Appends per second with one fsync each.
fn one_sync_per_append(base: &Path, duration: Duration) -> f64 {
    let (_dir, mut engine) = open(base);
    let mut next_index = vec![1u64; PARTITIONS as usize];
    let start = Instant::now();
    let mut appends = 0u64;
    while start.elapsed() < duration {
        let partition = appends % PARTITIONS;
        let index = next_index[partition as usize];
        next_index[partition as usize] += 1;
        engine.append(&[write(partition + 1, index)]).unwrap();
        engine.sync().unwrap();
        appends += 1;
        if appends.is_multiple_of(1024) {
            engine.compact().unwrap();
        }
    }
    appends as f64 / start.elapsed().as_secs_f64()
}

/// Appends per second through group commit with `writers` threads, each waiting for its write
/// to be durable before the next.
fn group_commit(base: &Path, duration: Duration) -> f64 {
    let (_dir, engine) = open(base);
    let (sender, receiver) = mpsc::channel::<PersistRequest>(PERSIST_QUEUE_WRITES_MAX);
    let committer = std::thread::spawn(move || {
        futures::executor::block_on(run_group_commit(
            engine,
            receiver,
            Arc::new(InlineSpawn),
            GroupCommitOptions::default(),
        ))
    });
    let stop = Arc::new(AtomicBool::new(false));
    let done_total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let mut sender = sender.clone();
            let stop = Arc::clone(&stop);
            let done_total = Arc::clone(&done_total);
            std::thread::spawn(move || {
                // Writer w owns partitions w+1, w+1+WRITERS, ...: each partition has one writer,
                // so its entries stay contiguous.
                let mine: Vec<u64> = (0..PARTITIONS).filter(|p| *p as usize % WRITERS == w).map(|p| p + 1).collect();
                let mut next_index = vec![1u64; mine.len()];
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let slot = turn % mine.len();
                    turn += 1;
                    let index = next_index[slot];
                    next_index[slot] += 1;
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    let request = PersistRequest {
                        write: write(mine[slot], index),
                        done: Box::new(move |result| {
                            let _ = tx.send(result);
                        }),
                    };
                    futures::executor::block_on(sender.send(request)).expect("the committer runs");
                    rx.recv().expect("every request is answered").expect("the write is durable");
                    done_total.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().unwrap();
    }
    let elapsed = start.elapsed();
    drop(sender);
    committer.join().unwrap();
    done_total.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let duration = if full { Duration::from_secs(5) } else { Duration::from_millis(200) };
    let base = std::env::var_os("COHORT_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("the benchmark directory");
    let sequential = one_sync_per_append(&base, duration);
    let grouped = group_commit(&base, duration);
    println!(
        "one-sync-per-append: {sequential:.0} appends/s; group-commit({WRITERS} writers, {PARTITIONS} partitions): \
         {grouped:.0} appends/s; ratio: {:.1}x",
        grouped / sequential
    );
}
