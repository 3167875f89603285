//! The state store (redb) on the simulated disk and the real file system: power loss at every
//! disk operation of a commit leaves the store at the previous or the new applied index, never
//! between, with exactly the state of that index, also when commits leave their fsync owed;
//! lazy commits are lost to a crash unless a durable one followed, written ones unless synced
//! or followed by another commit, and after an owed fsync fails nothing more is written; a
//! store whose first creation was cut short starts afresh.

use cohort_core::env::Disk;
use cohort_core::ids::{ClientId, PartitionId};
use cohort_core::persist::LogPosition;
use cohort_core::state_machine::{
    Command, Expected, NewObject, ObjectKind, RefName, RefUpdate, RefValue, RepoId, WriteOp,
};
use cohort_core::store::check::{check_partition, digest};
use cohort_core::store::{Commit, DedupLimits, PartitionWriter, Rows, Store, StoreOptions};
use cohort_storage::{FsDisk, SimDisk};
use std::collections::BTreeMap;
use std::sync::Arc;

const P: PartitionId = PartitionId(3);

fn options() -> StoreOptions {
    StoreOptions { cache_size_bytes: 1024 * 1024 }
}

fn repo() -> RepoId {
    RepoId::new("default", "crash.git").unwrap()
}

/// Batch `batch` of the workload: a few entries, each writing an object and moving a ref.
fn batch_commands(batch: u64) -> Vec<Command> {
    if batch == 1 {
        return vec![Command {
            client: ClientId(1),
            seq: 1,
            op: WriteOp::CreateRepository { repo: repo(), fork_of: None },
        }];
    }
    (0..3)
        .map(|i| {
            let object =
                NewObject::new(ObjectKind::Blob, format!("batch {batch} entry {i} {}", "x".repeat(300)).into_bytes());
            let update = RefUpdate {
                name: RefName::new(format!("refs/heads/b{}", i % 2)).unwrap(),
                expected: Expected::Any,
                new: Some(RefValue::Direct(object.oid)),
            };
            Command {
                client: ClientId(1),
                seq: batch * 10 + i,
                op: WriteOp::Transaction { repo: repo(), objects: vec![object], refs: vec![update] },
            }
        })
        .collect()
}

/// The batch that follows the one that ended at `index` (batch 1 is one entry, the others three).
fn after(index: u64) -> u64 {
    assert!(index >= 1 && (index - 1).is_multiple_of(3), "{index} ends no batch");
    (index - 1) / 3 + 2
}

/// Applies batch `batch` (entries after `applied`) in one transaction; returns the new index.
fn apply_batch(store: &Store, batch: u64, applied: u64, commit: Commit) -> Result<u64, String> {
    store
        .write(commit, |rows| {
            let mut writer = PartitionWriter::open(rows, P)?;
            assert_eq!(writer.applied().index, applied, "batches apply in order");
            let mut index = applied;
            for command in batch_commands(batch) {
                index += 1;
                writer.apply(LogPosition { index, term: 1 }, &command)?.expect("the workload's writes succeed");
            }
            writer.finish()?;
            Ok(index)
        })
        .map_err(|e| e.to_string())
}

/// (applied index, digest) of the store's partition, after checking its rows whole.
fn state_of(store: &Store) -> (u64, String) {
    let rows = store.read().unwrap();
    let Some(record) = rows.partition(P).unwrap() else { return (0, String::new()) };
    let counts =
        check_partition(&rows, P, record.applied.index, &DedupLimits::DEFAULT).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(counts, record.counts);
    (record.applied.index, digest(&rows, P).unwrap().to_string())
}

/// A new store on a simulated disk whose crashes `seed` decides.
fn fresh_store(seed: u64) -> (Arc<SimDisk>, Arc<dyn Disk>, Store) {
    let sim = Arc::new(SimDisk::new(seed));
    let disk: Arc<dyn Disk> = sim.clone();
    let store = Store::open(&disk, &options()).unwrap();
    (sim, disk, store)
}

/// Cuts the power, then reopens the store and returns its applied index. The power goes first:
/// dropping the store then cannot make what was not durable durable (a clean close would).
fn crash_and_reopen(sim: &SimDisk, disk: &Arc<dyn Disk>, store: Store) -> (Store, u64) {
    sim.crash();
    drop(store);
    let store = Store::open(disk, &options()).unwrap();
    let (index, _) = state_of(&store);
    (store, index)
}

const BATCHES: u64 = 6;

/// The digest after each batch, from a run without faults.
fn reference() -> BTreeMap<u64, String> {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(0));
    let store = Store::open(&disk, &options()).unwrap();
    let mut states = BTreeMap::from([(0, String::new())]);
    let mut applied = 0;
    for batch in 1..=BATCHES {
        applied = apply_batch(&store, batch, applied, Commit::Durable).unwrap();
        let (index, digest) = state_of(&store);
        assert_eq!(index, applied);
        states.insert(index, digest);
    }
    states
}

/// How the power-loss runs commit each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Durability {
    /// `Commit::Durable`.
    Durable,
    /// `Commit::Written`; every other batch then `Store::sync`s, and the others leave their
    /// fsync owed to the next commit's writes.
    Written,
}

/// Cuts the power after each disk operation in turn of a run of `BATCHES` commits, until a
/// run completes; after each cut the store reopens exactly at the last commit known durable,
/// at a written one whose fsync was owed, or at the one in flight.
fn power_loss_at_every_operation(durability: Durability) {
    let states = reference();
    let (mut cut_short, mut survived_in_flight, mut lost_in_flight) = (0, 0, 0);
    for ops in 0.. {
        let sim = Arc::new(SimDisk::new(ops));
        let disk: Arc<dyn Disk> = sim.clone();
        sim.set_power_loss_after_ops(Some(ops));
        // The newest commit known durable, and the newest written one whose fsync is owed.
        let (mut durable, mut owed) = (0, None);
        let mut in_flight = None;
        let completed = match Store::open(&disk, &options()) {
            Err(_) => false,
            Ok(store) => {
                let mut completed = true;
                for batch in 1..=BATCHES {
                    let applied = owed.unwrap_or(durable);
                    let next = applied + batch_commands(batch).len() as u64;
                    let outcome = match durability {
                        Durability::Durable => apply_batch(&store, batch, applied, Commit::Durable),
                        Durability::Written => apply_batch(&store, batch, applied, Commit::Written).and_then(|index| {
                            // This commit's writes made the owed fsync before them.
                            durable = applied;
                            owed = Some(index);
                            if batch % 2 == 0 {
                                store.sync().map_err(|e| e.to_string())?;
                            }
                            Ok(index)
                        }),
                    };
                    match outcome {
                        Ok(index) if durability == Durability::Durable || batch % 2 == 0 => {
                            durable = index;
                            owed = None;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            in_flight = Some(next);
                            completed = false;
                            break;
                        }
                    }
                }
                completed
            }
        };
        if completed {
            assert!(ops > 10, "a run of {BATCHES} durable commits takes more than {ops} disk operations");
            break;
        }
        cut_short += 1;
        sim.crash();
        let store =
            Store::open(&disk, &options()).unwrap_or_else(|e| panic!("ops {ops}: reopening after a crash: {e}"));
        let (index, digest) = state_of(&store);
        assert!(
            index == durable || Some(index) == owed || Some(index) == in_flight,
            "ops {ops}: the store is at index {index}, neither the last durable {durable}, the owed {owed:?} \
             nor the one in flight {in_flight:?}"
        );
        assert_eq!(Some(&digest), states.get(&index), "ops {ops}: the state is exactly that of index {index}");
        if in_flight.is_some() {
            if Some(index) == in_flight {
                survived_in_flight += 1;
            } else {
                lost_in_flight += 1;
            }
        }
        // The store goes on from there.
        let next_batch = states.keys().position(|&i| i == index).unwrap() as u64 + 1;
        if next_batch <= BATCHES {
            apply_batch(&store, next_batch, index, Commit::Durable).unwrap();
        }
    }
    assert!(cut_short > 20, "power was cut at {cut_short} points");
    assert!(lost_in_flight > 0, "some commits in flight were lost ({survived_in_flight} survived)");
}

#[test]
fn power_loss_at_every_operation_leaves_a_committed_state() {
    power_loss_at_every_operation(Durability::Durable);
}

#[test]
fn power_loss_at_every_operation_with_fsyncs_owed_leaves_a_committed_state() {
    power_loss_at_every_operation(Durability::Written);
}

#[test]
fn a_written_commit_is_durable_once_synced_or_once_a_later_commit_writes() {
    let mut lost = 0;
    for seed in 0..40 {
        let (sim, disk, store) = fresh_store(seed);
        let durable = apply_batch(&store, 1, 0, Commit::Durable).unwrap();
        let written = apply_batch(&store, 2, durable, Commit::Written).unwrap();
        // A lazy commit writes nothing to the file: the fsync is still owed.
        let lazy = apply_batch(&store, 3, written, Commit::Lazy).unwrap();
        assert_eq!(state_of(&store).0, lazy, "readers see every commit at once");
        let (store, index) = crash_and_reopen(&sim, &disk, store);
        assert!(index == durable || index == written, "seed {seed}: a crash before the sync left index {index}");
        lost += u64::from(index == durable);

        let written = apply_batch(&store, after(index), index, Commit::Written).unwrap();
        store.sync().unwrap();
        let (store, index) = crash_and_reopen(&sim, &disk, store);
        assert_eq!(index, written, "seed {seed}: a synced commit survives");

        let owed = apply_batch(&store, after(written), written, Commit::Written).unwrap();
        let lazy = apply_batch(&store, after(owed), owed, Commit::Lazy).unwrap();
        let durable = apply_batch(&store, after(lazy), lazy, Commit::Durable).unwrap();
        let (_, index) = crash_and_reopen(&sim, &disk, store);
        assert_eq!(index, durable, "seed {seed}: a durable commit carries the owed one before it");
    }
    assert!(lost > 0, "a crash before the sync lost the written commit in some seeds (0 of 40)");
}

#[test]
fn after_an_owed_fsync_fails_the_store_takes_nothing_more() {
    let (sim, _disk, store) = fresh_store(0);
    let durable = apply_batch(&store, 1, 0, Commit::Durable).unwrap();
    let written = apply_batch(&store, 2, durable, Commit::Written).unwrap();
    sim.set_fail_syncs(true);
    assert!(store.sync().is_err(), "the fsync failed");
    sim.set_fail_syncs(false);
    // What the failed fsync covered may or may not be on the disk, and no later fsync can
    // tell: nothing more may be written over it, not even once fsyncs work again.
    assert!(store.sync().is_err(), "a later sync fails too");
    assert!(apply_batch(&store, after(written), written, Commit::Durable).is_err(), "a later commit fails");
}

#[test]
fn lazy_commits_are_durable_only_with_a_later_durable_one() {
    for seed in 0..20 {
        let (sim, disk, store) = fresh_store(seed);
        let durable = apply_batch(&store, 1, 0, Commit::Durable).unwrap();
        let lazy = apply_batch(&store, 2, durable, Commit::Lazy).unwrap();
        assert_eq!(state_of(&store).0, lazy, "readers see a lazy commit at once");
        let (store, index) = crash_and_reopen(&sim, &disk, store);
        assert_eq!(index, durable, "seed {seed}: the lazy commit is lost");

        let lazy = apply_batch(&store, 2, durable, Commit::Lazy).unwrap();
        let again = apply_batch(&store, 3, lazy, Commit::Durable).unwrap();
        let (_, index) = crash_and_reopen(&sim, &disk, store);
        assert_eq!(index, again, "seed {seed}: a durable commit carries the lazy one before it");
    }
}

#[test]
fn a_store_cut_short_at_creation_starts_afresh() {
    for ops in 0..8 {
        let sim = Arc::new(SimDisk::new(ops));
        let disk: Arc<dyn Disk> = sim.clone();
        sim.set_power_loss_after_ops(Some(ops));
        let _ = Store::open(&disk, &options());
        sim.crash();
        let store = Store::open(&disk, &options()).unwrap_or_else(|e| panic!("ops {ops}: {e}"));
        assert_eq!(state_of(&store).0, 0);
        apply_batch(&store, 1, 0, Commit::Durable).unwrap();
    }
}

#[test]
fn the_store_works_on_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(dir.path()).unwrap());
    let mut applied = 0;
    {
        let store = Store::open(&disk, &options()).unwrap();
        for batch in 1..=3 {
            applied = apply_batch(&store, batch, applied, Commit::Durable).unwrap();
        }
    }
    let store = Store::open(&disk, &options()).unwrap();
    assert_eq!(state_of(&store), (applied, reference()[&applied].clone()));
    assert!(dir.path().join("state/store.redb").exists());
}

/// The entries of a replay test: compare-and-sets whose second application would be rejected
/// (a reference that must not exist yet), so applying any entry twice shows.
fn replay_entries() -> Vec<cohort_core::store::ApplyEntry> {
    use cohort_core::store::{ApplyEntry, ApplyKind};
    let mut entries = vec![ApplyEntry {
        position: LogPosition { index: 1, term: 1 },
        kind: ApplyKind::Command(batch_commands(1)[0].encode()),
    }];
    for i in 0..40u64 {
        let object = NewObject::new(ObjectKind::Blob, format!("replay {i}").into_bytes());
        let update = RefUpdate {
            name: RefName::new(format!("refs/heads/r{i}")).unwrap(),
            expected: Expected::MustNotExist,
            new: Some(RefValue::Direct(object.oid)),
        };
        let op = WriteOp::Transaction { repo: repo(), objects: vec![object], refs: vec![update] };
        let command = Command { client: ClientId(2), seq: i + 1, op };
        entries.push(ApplyEntry {
            position: LogPosition { index: i + 2, term: 1 },
            kind: ApplyKind::Command(command.encode()),
        });
    }
    entries
}

/// Applies `entries` in batches of 5 (every other batch durable), crashing after `crash_after`
/// batches; then replays, as a restarted replica does, every entry after the store's durable
/// applied index. With `atomic` false, each batch commits its effects first and its applied
/// index and dedup results in a transaction of their own, and the crash strikes between them.
/// Returns the digest at the end.
fn apply_crash_replay(seed: u64, crash_after: usize, atomic: bool) -> String {
    use cohort_core::store::apply::apply_entries_deferred;
    use cohort_core::store::apply_entries;
    let entries = replay_entries();
    let sim = Arc::new(SimDisk::new(seed));
    let disk: Arc<dyn Disk> = sim.clone();
    let store = Store::open(&disk, &options()).unwrap();
    for (n, batch) in entries.chunks(5).enumerate() {
        let commit = if n % 2 == 0 { Commit::Durable } else { Commit::Lazy };
        if atomic || n != crash_after {
            store.write(commit, |rows| apply_entries(rows, P, batch)).unwrap();
        } else {
            let mut pending = BTreeMap::new();
            store.write(Commit::Durable, |rows| apply_entries_deferred(rows, P, batch, &mut pending)).unwrap();
            // Its second half (`commit_deferred`) never comes: the power goes first.
            sim.crash();
            drop(store);
            break;
        }
        if n == crash_after {
            sim.crash();
            drop(store);
            break;
        }
    }
    let store = Store::open(&disk, &options()).unwrap();
    let durable = store.read().unwrap().partition(P).unwrap().map_or(0, |r| r.applied.index);
    let rest: Vec<_> = entries.into_iter().filter(|e| e.position.index > durable).collect();
    if !rest.is_empty() {
        store.write(Commit::Durable, |rows| apply_entries(rows, P, &rest)).unwrap();
    }
    state_of(&store).1
}

#[test]
fn a_crash_then_replaying_after_the_durable_applied_index_ends_as_if_nothing_happened() {
    let never_crashed = apply_crash_replay(0, usize::MAX, true);
    let batches = replay_entries().len().div_ceil(5);
    let mut diverged = 0;
    for seed in 0..10 {
        for crash_after in 0..batches {
            assert_eq!(
                apply_crash_replay(seed, crash_after, true),
                never_crashed,
                "seed {seed}, crash after batch {crash_after}: replay ends where no crash would have"
            );
            // The applied index committed apart from the data: a crash between the two makes
            // the replay apply entries again on top of their own effects.
            if apply_crash_replay(seed, crash_after, false) != never_crashed {
                diverged += 1;
            }
        }
    }
    assert!(diverged > 0, "committing the applied index apart from the data is caught");
}
