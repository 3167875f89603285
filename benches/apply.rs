//! Apply benchmark: the state store's cost per committed write, without Raft, the network or
//! the log. One node's store on the real file system (`FsDisk` in a temporary directory, as a
//! node opens it), fed the write the `vs_etcd` benchmark makes: one transaction storing a
//! 1 KiB blob (random, so it compresses as little as a real one might) and pointing one of
//! 1,000 references at it, from 64 clients in turn (each with its own sequence numbers, so the
//! dedup table works as under load).
//!
//! Prints microseconds per applied write, of wall-clock time and of the applying thread's CPU,
//! with one write per store transaction (a lone client: every commit pays for itself) and
//! with 16 and 64 per transaction (group apply under load), and the ratio of batched to
//! single; every replica pays this for every write. Commits are lazy, as the applier's are,
//! with a durable one at the end of each pass (its page writes and fsync counted in the wall
//! time, which a node's applier mostly does not wait for). It does so for a partition of each
//! store format (`store::Format`): objects placed by id, by index, and by index with dedup
//! rings (as new partitions are), taking turns in one run, and prints the ratio of each
//! format's cost to the one before.
//!
//! First it prices what the node that receives a write does per byte before proposing it
//! (`NewObject::prepare`: hashing and compressing), for random objects of a few sizes, which
//! decides where that work runs (`NodeService::write`).
//!
//! `cargo bench --bench apply` applies 40,000 writes a pass after 20,000 to warm the store
//! (`COHORT_BENCH_APPLY_WRITES` overrides); without `--bench` (as `cargo test --all-targets`
//! runs it) it makes a small smoke run that asserts every write applied.

use cohort_core::env::Disk;
use cohort_core::ids::{ClientId, PartitionId};
use cohort_core::persist::LogPosition;
use cohort_core::state_machine::{
    Command, Expected, NewObject, ObjectKind, RefName, RefUpdate, RefValue, RepoId, WriteOp,
};
use cohort_core::store::{Commit, Format, PartitionWriter, Store, StoreOptions};
use cohort_storage::FsDisk;
use rand::{RngCore as _, SeedableRng as _};
use std::sync::Arc;
use std::time::Instant;

const PARTITION: PartitionId = PartitionId(1);
const CLIENTS: u64 = 64;
const REFS: u64 = 1_000;
const OBJECT_BYTES: usize = 1024;
const ROUNDS: u64 = 4;
/// The formats compared, each after the one it changed.
const FORMATS: [(Format, &str); 3] = [
    (Format::Original, "objects placed by id"),
    (Format::PlacedByIndex, "objects placed by index"),
    (Format::DedupRing, "and dedup rings"),
];

/// The store and the next index to apply at.
struct Bench {
    store: Store,
    index: u64,
}

impl Bench {
    /// A store of its own in `dir`, its partition of `format`, with repository `repo`.
    fn new(dir: &std::path::Path, format: Format, repo: &RepoId) -> Bench {
        let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(dir).expect("a disk"));
        let store = Store::open(&disk, &StoreOptions::default()).expect("the store opens");
        let mut bench = Bench { store, index: 0 };
        if format != Format::Original {
            bench.index += 1;
            let position = LogPosition { index: bench.index, term: 1 };
            bench
                .store
                .write(Commit::Lazy, |rows| {
                    let mut writer = PartitionWriter::open(rows, PARTITION)?;
                    writer.apply_format(position, format)?;
                    writer.finish().map(|_| ())
                })
                .expect("the store takes the write");
        }
        let create = Command {
            client: ClientId(CLIENTS + 1),
            seq: 1,
            op: WriteOp::CreateRepository { repo: repo.clone(), fork_of: None },
        };
        bench.apply(&[create], 1);
        bench
    }

    /// Applies `commands`, `per_transaction` to a lazy commit, then commits durably; answers
    /// the microseconds per command.
    fn apply(&mut self, commands: &[Command], per_transaction: usize) -> Cost {
        let started = Instant::now();
        let cpu_started = thread_cpu_seconds();
        for batch in commands.chunks(per_transaction) {
            let index = &mut self.index;
            self.store
                .write(Commit::Lazy, |rows| {
                    let mut writer = PartitionWriter::open(rows, PARTITION)?;
                    for command in batch {
                        *index += 1;
                        let result = writer.apply(LogPosition { index: *index, term: 1 }, command)?;
                        assert!(result.is_ok(), "write {index} applies: {result:?}");
                    }
                    writer.finish().map(|_| ())
                })
                .expect("the store takes the write");
        }
        self.store.write(Commit::Durable, |_| Ok(())).expect("the store commits durably");
        let per_command = |seconds: f64| seconds * 1e6 / commands.len() as f64;
        Cost {
            wall_us: per_command(started.elapsed().as_secs_f64()),
            cpu_us: per_command(thread_cpu_seconds() - cpu_started),
        }
    }
}

/// Microseconds per write.
#[derive(Clone, Copy, Default)]
struct Cost {
    wall_us: f64,
    cpu_us: f64,
}

impl Cost {
    fn add_share(&mut self, cost: Cost, share: f64) {
        self.wall_us += cost.wall_us * share;
        self.cpu_us += cost.cpu_us * share;
    }

    fn ratio(self, base: Cost) -> String {
        format!("{:.2}x wall, {:.2}x CPU", self.wall_us / base.wall_us, self.cpu_us / base.cpu_us)
    }
}

/// The calling thread's CPU time so far, in seconds.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock id is a constant.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "the thread's CPU clock reads");
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}

/// Prints the CPU time `NewObject::prepare` takes for random objects of a few sizes.
fn price_prepare(rng: &mut rand::rngs::StdRng, full: bool) {
    println!("hashing and compressing a random object (NewObject::prepare):");
    for size_bytes in [4usize << 10, 64 << 10, 1 << 20, 4 << 20] {
        let repeats = if full { (64 << 20) / size_bytes } else { 1 };
        let objects: Vec<NewObject> = (0..repeats)
            .map(|_| {
                let mut data = vec![0u8; size_bytes];
                rng.fill_bytes(&mut data);
                NewObject::claimed(ObjectKind::Blob, data, cohort_core::state_machine::Oid([0; 20]))
            })
            .collect();
        let started = thread_cpu_seconds();
        objects.iter().for_each(NewObject::prepare);
        let cpu_us = (thread_cpu_seconds() - started) * 1e6 / repeats as f64;
        let mib_per_s = size_bytes as f64 / (1 << 20) as f64 / (cpu_us * 1e-6);
        println!("  {:>5} KiB: {cpu_us:9.1} us of CPU ({mib_per_s:.0} MiB/s)", size_bytes >> 10);
        assert!(objects.iter().all(NewObject::is_prepared));
    }
}

/// `count` writes like `vs_etcd`'s, the n-th from client `n % CLIENTS`, sequenced from `seq`.
fn writes(rng: &mut rand::rngs::StdRng, repo: &RepoId, count: u64, seq: u64) -> Vec<Command> {
    (0..count)
        .map(|n| {
            let mut data = vec![0u8; OBJECT_BYTES];
            rng.fill_bytes(&mut data);
            let object = NewObject::new(ObjectKind::Blob, data);
            // As a replica decodes it: compressed once, by the leader.
            let _ = object.loose();
            let update = RefUpdate {
                name: RefName::new(format!("refs/heads/k{}", n % REFS)).expect("a valid name"),
                expected: Expected::Any,
                new: Some(RefValue::Direct(object.oid)),
            };
            let op = WriteOp::Transaction { repo: repo.clone(), objects: vec![object], refs: vec![update] };
            Command { client: ClientId(1 + n % CLIENTS), seq: seq + n / CLIENTS, op }
        })
        .collect()
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    let count: u64 = match std::env::var("COHORT_BENCH_APPLY_WRITES").ok().and_then(|s| s.parse().ok()) {
        Some(count) => count,
        None if full => 40_000,
        None => 640,
    };
    let repo = RepoId::new("default", "bench.git").expect("a valid repository id");
    let dirs = FORMATS.map(|_| tempfile::tempdir().expect("a temporary directory"));
    let mut benches = [0, 1, 2].map(|n| Bench::new(dirs[n].path(), FORMATS[n].0, &repo));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    price_prepare(&mut rng, full);
    // Warm: each store holds as many objects again as a pass writes, and every client's dedup
    // window is full.
    let warm = writes(&mut rng, &repo, count / 2, 1);
    for bench in &mut benches {
        bench.apply(&warm, 64);
    }
    // The modes and formats take turns, a quarter of the writes at a time, so that each
    // meets a store of about the same size (it grows as they go) and the machine's drift falls
    // on all alike.
    let modes = [1usize, 16, 64];
    let mut costs = [[Cost::default(); 3]; FORMATS.len()];
    let mut seq = 1 + count;
    for _ in 0..ROUNDS {
        for (mode, per_transaction) in modes.iter().enumerate() {
            let commands = writes(&mut rng, &repo, count / ROUNDS, seq);
            seq += count;
            for (format, bench) in benches.iter_mut().enumerate() {
                costs[format][mode].add_share(bench.apply(&commands, *per_transaction), 1.0 / ROUNDS as f64);
            }
        }
    }
    for ((_, name), costs) in FORMATS.iter().zip(costs) {
        println!("{name}:");
        for (per_transaction, cost) in modes.iter().zip(costs) {
            println!(
                "  {per_transaction:>3} writes per transaction: {:6.1} us per write, {:6.1} us of CPU ({count} writes of 1 KiB)",
                cost.wall_us, cost.cpu_us
            );
        }
        println!(
            "  batched/single: 16 per transaction {}, 64 per transaction {} of one write per transaction's cost",
            costs[1].ratio(costs[0]),
            costs[2].ratio(costs[0])
        );
    }
    for later in 1..FORMATS.len() {
        let ratios: Vec<String> = modes
            .iter()
            .enumerate()
            .map(|(mode, n)| format!("{n} per transaction {}", costs[later][mode].ratio(costs[later - 1][mode])))
            .collect();
        println!("{}/{}: {}", FORMATS[later].1, FORMATS[later - 1].1, ratios.join("; "));
    }
    for (format, bench) in FORMATS.iter().zip(&benches) {
        let switch = u64::from(format.0 != Format::Original);
        assert_eq!(bench.index, switch + 1 + count / 2 + 3 * (count / ROUNDS) * ROUNDS, "every write applied");
    }
}
