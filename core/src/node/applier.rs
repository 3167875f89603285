//! The applier: the one writer of the node's state store, turning the committed entries of
//! every partition that are waiting at once into one write transaction (group apply).
//!
//! Loop: wait for a request (or, while lazy commits are pending, for the durable interval to
//! pass); take every other request already queued, up to the batch bounds; carry them out in
//! order inside `Spawn::run_blocking`, or `Spawn::run_brief` for a few small entries committed
//! lazily (consecutive `Entries` share one transaction; an install or a removal is a durable
//! transaction of its own), and answer each request in order from there. While the node
//! runs, every write to the store is the applier's, one at a time.
//!
//! Commits are lazy (`Commit::Lazy`: visible at once, durable later) until `durable_bytes`
//! were applied or `durable_interval` passed since the last durable commit; then one commit is
//! written durably with its fsync owed (`Commit::Written`), and the fsync ([`Store::sync`]) is
//! made on the blocking pool while the applier goes on committing lazily: that fsync of every
//! page written since the last one took tens of milliseconds under load, and every write on the
//! node waited for it. Once it returns, every partition applied before that commit learns
//! through its [`DurableSignal`] how far its state is durable, which is how far it may compact
//! its log. A partition's log therefore never drops an entry the store could lose. One fsync
//! is owed at a time: no commit is made durable while one is.
//!
//! A failure answers the batch with the error and every later request too: redb latches I/O
//! errors, and nothing after may be made durable.

use crate::env::{Clock, Spawn};
use crate::ids::PartitionId;
use crate::limits::APPLY_QUEUE_REQUESTS_MAX;
use crate::metrics::NodeMetrics;
use crate::persist::{LogPosition, PersistError, RaftMode, SnapshotMeta};
use crate::snapshot::SnapshotStore;
use crate::store::{self, Applied, ApplyEntry, Commit, Format, Store, StoreError};
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use futures::task::AtomicWaker;
use futures::{FutureExt, StreamExt};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

/// When the applier makes its commits durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplierOptions {
    /// Bytes of entries applied lazily before a durable commit.
    pub durable_bytes: u64,
    /// Time after the last durable commit before pending lazy commits are made durable.
    pub durable_interval: Duration,
    /// Requests taken into one batch.
    pub batch_requests_max: usize,
}

impl Default for ApplierOptions {
    fn default() -> ApplierOptions {
        ApplierOptions {
            durable_bytes: 16 * 1024 * 1024,
            durable_interval: Duration::from_secs(1),
            batch_requests_max: APPLY_QUEUE_REQUESTS_MAX,
        }
    }
}

/// What a partition asks of the store.
pub enum ApplyWork {
    /// Apply the next committed entries.
    Entries(Vec<ApplyEntry>),
    /// Replace the partition's state with the snapshot file at `meta.position` in `files`.
    Install { meta: SnapshotMeta, files: SnapshotStore },
    /// Delete the partition's state (the replica left).
    Remove,
}

pub enum ApplyDone {
    Applied(Vec<Applied>),
    /// The installed rows' format.
    Installed(Format),
    Removed,
}

/// What the work came to: done, the work itself failed (a bad snapshot; the store is fine),
/// or the store failed (it takes no more work).
pub type ApplyResult = Result<Result<ApplyDone, String>, PersistError>;

pub struct ApplyRequest {
    pub partition: PartitionId,
    pub work: ApplyWork,
    pub durable: DurableSignal,
    pub done: oneshot::Sender<ApplyResult>,
}

/// How the applier tells a partition that its state is durable through a position: a
/// watermark and a waker, so no queue can fill.
#[derive(Clone, Default)]
pub struct DurableSignal {
    inner: Arc<(Mutex<Option<LogPosition>>, AtomicWaker)>,
}

impl DurableSignal {
    pub fn durable(&self, position: LogPosition) {
        let mut held = self.inner.0.lock().expect("not poisoned");
        if held.is_none_or(|p| p.index < position.index) {
            *held = Some(position);
        }
        drop(held);
        self.inner.1.wake();
    }

    /// Ready with a position newer than `seen`.
    pub fn poll_durable(&self, seen: &mut u64, cx: &mut Context<'_>) -> Poll<LogPosition> {
        self.inner.1.register(cx.waker());
        match *self.inner.0.lock().expect("not poisoned") {
            Some(position) if position.index > *seen => {
                *seen = position.index;
                Poll::Ready(position)
            }
            _ => Poll::Pending,
        }
    }
}

/// Bytes an entry batch counts for against `durable_bytes`.
fn work_bytes(work: &ApplyWork) -> u64 {
    match work {
        ApplyWork::Entries(entries) => entries
            .iter()
            .map(|e| 32 + if let store::ApplyKind::Command(bytes) = &e.kind { bytes.len() as u64 } else { 0 })
            .sum(),
        ApplyWork::Install { .. } | ApplyWork::Remove => 0,
    }
}

/// Where a batch runs: on the blocking pool, or where the applier is (`Spawn::run_brief`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    Blocking,
    Brief,
}

/// A batch this small, committed lazily, is brief: one or a few writes' rows, tens of
/// microseconds (`cargo bench --bench apply`), where the hop to the blocking pool and back cost
/// a lone write more than its apply. The bound is on encoded bytes: a command of very
/// compressible objects can inflate to the command bound (8 MiB), some milliseconds of
/// inflating and hashing on the applier's task, which is rare and bounded.
const BRIEF_BATCH_ENTRIES_MAX: usize = 4;
const BRIEF_BATCH_BYTES_MAX: u64 = 16 * 1024;

/// How a batch of `requests` carrying `batch_bytes` runs.
fn run_for(requests: &[ApplyRequest], batch_bytes: u64, durable: bool) -> Run {
    let mut entries = 0;
    for request in requests {
        match &request.work {
            ApplyWork::Entries(batch) => entries += batch.len(),
            ApplyWork::Install { .. } | ApplyWork::Remove => return Run::Blocking,
        }
    }
    if durable || entries > BRIEF_BATCH_ENTRIES_MAX || batch_bytes > BRIEF_BATCH_BYTES_MAX {
        Run::Blocking
    } else {
        Run::Brief
    }
}

/// The applier's own state between batches.
struct Applier {
    store: Arc<Store>,
    options: ApplierOptions,
    clock: Arc<dyn Clock>,
    /// Partitions applied lazily since the last durable commit: their newest position.
    dirty: BTreeMap<PartitionId, (LogPosition, DurableSignal)>,
    bytes_since_durable: u64,
    last_durable: crate::env::Instant,
    failure: Option<PersistError>,
}

/// A [`Store::sync`] on the blocking pool, for the partitions a durable commit covered. Kept
/// apart from [`Applier`], which the applier's work borrows across its awaits (its future is
/// `Send`, not `Sync`).
struct Syncing {
    sync: BoxFuture<'static, Option<Result<(), StoreError>>>,
    covered: BTreeMap<PartitionId, (LogPosition, DurableSignal)>,
}

/// What the applier wakes for.
enum Wake {
    Request(Option<ApplyRequest>),
    /// Idle with lazy commits pending for `durable_interval`.
    DurableDue,
    /// The owed fsync returned (`None`: it panicked).
    Synced(Option<Result<(), StoreError>>),
}

/// What one batch did besides its results, computed away from the async task.
struct BatchOutcome {
    /// Whether the batch ended with a durable commit (its fsync owed, if `Commit::Written`).
    durable: bool,
    /// Planted `apply-not-atomic` only: what the batch's second transaction commits, apart.
    deferred: BTreeMap<PartitionId, store::apply::Deferred>,
    /// Transactions that applied entries, and the entries they applied.
    transactions: u64,
    entries: u64,
}

fn store_failure(error: StoreError) -> PersistError {
    PersistError(Arc::new(error))
}

/// The failure of work on the blocking pool that panicked.
fn panicked(what: &str) -> PersistError {
    store_failure(StoreError::Corrupt { reason: format!("{what} panicked") })
}

fn signal_durable(partitions: BTreeMap<PartitionId, (LogPosition, DurableSignal)>) {
    for (_, (position, signal)) in partitions {
        signal.durable(position);
    }
}

/// Carries out `works` in order: consecutive entry batches in one transaction (the last one
/// written durably, its fsync owed, if `durable`), installs and removals each in a durable
/// transaction of their own. Answers one result per work, in order.
fn run_batch(store: &Store, works: Vec<(PartitionId, ApplyWork)>, durable: bool) -> (Vec<ApplyResult>, BatchOutcome) {
    let mut results: Vec<ApplyResult> = Vec::with_capacity(works.len());
    let mut works = works.into_iter().peekable();
    let mut ended_durable = false;
    let mut failed: Option<PersistError> = None;
    let mut deferred = BTreeMap::new();
    let (mut transactions, mut entries) = (0u64, 0u64);
    while let Some((partition, work)) = works.next() {
        if let Some(error) = &failed {
            results.push(Err(error.clone()));
            continue;
        }
        match work {
            ApplyWork::Entries(first) => {
                let mut group = vec![(partition, first)];
                while let Some((_, ApplyWork::Entries(_))) = works.peek() {
                    let Some((p, ApplyWork::Entries(entries))) = works.next() else { unreachable!("peeked") };
                    group.push((p, entries));
                }
                let last_of_batch = works.peek().is_none();
                transactions += 1;
                entries += group.iter().map(|(_, entries)| entries.len() as u64).sum::<u64>();
                let commit = if durable && last_of_batch { Commit::Written } else { Commit::Lazy };
                match apply_group(store, &group, commit, &mut deferred) {
                    Ok(applied) => {
                        ended_durable = commit == Commit::Written;
                        results.extend(applied.into_iter().map(|a| Ok(Ok(ApplyDone::Applied(a)))));
                    }
                    Err(error) => {
                        let error = store_failure(error);
                        results.extend(group.iter().map(|_| Err(error.clone())));
                        failed = Some(error);
                    }
                }
            }
            ApplyWork::Install { meta, files } => {
                let outcome = install(store, partition, &meta, &files);
                ended_durable = outcome.is_ok();
                match outcome {
                    Ok(Ok(format)) => results.push(Ok(Ok(ApplyDone::Installed(format)))),
                    Ok(Err(reason)) => results.push(Ok(Err(reason))),
                    Err(error) => {
                        let error = store_failure(error);
                        results.push(Err(error.clone()));
                        failed = Some(error);
                    }
                }
            }
            ApplyWork::Remove => match store.remove_partition(partition) {
                Ok(()) => {
                    ended_durable = true;
                    results.push(Ok(Ok(ApplyDone::Removed)));
                }
                Err(error) => {
                    let error = store_failure(error);
                    results.push(Err(error.clone()));
                    failed = Some(error);
                }
            },
        }
    }
    (results, BatchOutcome { durable: ended_durable && failed.is_none(), deferred, transactions, entries })
}

/// One transaction applying every partition's entries of `group`.
fn apply_group(
    store: &Store,
    group: &[(PartitionId, Vec<ApplyEntry>)],
    commit: Commit,
    deferred: &mut BTreeMap<PartitionId, store::apply::Deferred>,
) -> Result<Vec<Vec<Applied>>, StoreError> {
    if crate::bugs::is_active(crate::bugs::Bug::ApplyNotAtomic) && commit != Commit::Lazy {
        // Planted: the effects durably first; the applied index and dedup results follow in a
        // transaction of their own (see `BatchOutcome::deferred`).
        return store.write(Commit::Durable, |rows| {
            group
                .iter()
                .map(|(partition, entries)| store::apply::apply_entries_deferred(rows, *partition, entries, deferred))
                .collect()
        });
    }
    store.write(commit, |rows| {
        let mut applied = Vec::with_capacity(group.len());
        // A partition's batches in a row share one read and write of its record.
        for same in group.chunk_by(|(a, _), (b, _)| a == b) {
            let batches = same.iter().map(|(_, entries)| entries.as_slice());
            applied.extend(store::apply::apply_entry_batches(rows, same[0].0, batches)?);
        }
        Ok(applied)
    })
}

/// Imports the snapshot file into the partition's range, durably; `Ok(Err)` if its rows do
/// not check out (nothing is kept then).
fn install(
    store: &Store,
    partition: PartitionId,
    meta: &SnapshotMeta,
    files: &SnapshotStore,
) -> Result<Result<Format, String>, StoreError> {
    let mut reader = match files.open_rows(meta.position) {
        Ok(reader) => reader,
        Err(error) => return Ok(Err(error.to_string())),
    };
    let outcome = store.write(Commit::Durable, |rows| {
        match store::snapshot::import(rows, partition, meta.position.index, &mut reader, &store::DedupLimits::DEFAULT) {
            Ok(counts) => {
                let record = store::PartitionRecord {
                    applied: meta.position,
                    conf_state: meta.conf_state.clone(),
                    counts,
                    raft: RaftMode::On,
                };
                rows.set_partition(partition, &record)?;
                Ok(Ok(Format::of(rows, partition)?))
            }
            Err(store::snapshot::ImportError::Store(error)) => Err(error),
            // Aborts the transaction: nothing of the file is kept.
            Err(bad) => Err(StoreError::Corrupt { reason: format!("snapshot {:?}: {bad}", meta.position) }),
        }
    });
    match outcome {
        Ok(inner) => Ok(inner),
        Err(StoreError::Corrupt { reason }) => Ok(Err(reason)),
        Err(error) => Err(error),
    }
}

impl Applier {
    fn durable_due(&self, batch_bytes: u64) -> bool {
        self.bytes_since_durable + batch_bytes >= self.options.durable_bytes
            || self.clock.now().saturating_duration_since(self.last_durable) >= self.options.durable_interval
    }

    /// Tells every partition applied since the last durable commit how far it is durable.
    fn made_durable(&mut self) {
        signal_durable(std::mem::take(&mut self.dirty));
        self.bytes_since_durable = 0;
        self.last_durable = self.clock.now();
    }

    /// After a durable commit whose fsync may be owed: makes the fsync on the blocking pool,
    /// for every partition applied since the last durable commit.
    fn start_sync(&mut self, spawn: &dyn Spawn) -> Syncing {
        let mut covered = std::mem::take(&mut self.dirty);
        if crate::bugs::is_active(crate::bugs::Bug::DurableBeforeStoreSync) {
            signal_durable(std::mem::take(&mut covered));
        }
        let store = self.store.clone();
        let (done, result) = oneshot::channel();
        let run = spawn.run_blocking(Box::new(move || {
            let _ = done.send(store.sync());
        }));
        let sync = async move {
            run.await;
            result.await.ok()
        };
        self.bytes_since_durable = 0;
        self.last_durable = self.clock.now();
        Syncing { sync: sync.boxed(), covered }
    }

    /// The owed fsync returned.
    fn synced(&mut self, Syncing { covered, .. }: Syncing, outcome: Option<Result<(), StoreError>>) {
        if self.succeeded(outcome, "the store's sync") {
            signal_durable(covered);
        }
    }

    /// Whether a store call on the blocking pool succeeded (`None`: `what` panicked); if not,
    /// the applier takes no more work.
    fn succeeded(&mut self, outcome: Option<Result<(), StoreError>>, what: &str) -> bool {
        match outcome {
            Some(Ok(())) => true,
            Some(Err(error)) => {
                self.failure = Some(store_failure(error));
                false
            }
            None => {
                self.failure = Some(panicked(what));
                false
            }
        }
    }

    /// Waits for a request, the owed fsync, or (idle with lazy commits pending and no fsync
    /// under way) the durable interval's end. The fsync is looked at first, so a queue that is
    /// never empty cannot keep partitions from hearing that their state is durable.
    async fn next_wake(&self, requests: &mut mpsc::Receiver<ApplyRequest>, syncing: &mut Option<Syncing>) -> Wake {
        let mut idle_deadline = (!self.dirty.is_empty() && self.failure.is_none() && syncing.is_none())
            .then(|| self.clock.sleep_until(self.last_durable + self.options.durable_interval));
        std::future::poll_fn(|cx| {
            if let Some(syncing) = syncing {
                if let Poll::Ready(outcome) = syncing.sync.as_mut().poll(cx) {
                    return Poll::Ready(Wake::Synced(outcome));
                }
            }
            if let Poll::Ready(request) = requests.poll_next_unpin(cx) {
                return Poll::Ready(Wake::Request(request));
            }
            match idle_deadline.as_mut().map(|deadline| deadline.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Wake::DurableDue),
                _ => Poll::Pending,
            }
        })
        .await
    }

    async fn run_on_store<T: Send + 'static>(
        &self,
        spawn: &dyn Spawn,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        self.run_on_store_as(spawn, Run::Blocking, work).await
    }

    async fn run_on_store_as<T: Send + 'static>(
        &self,
        spawn: &dyn Spawn,
        run: Run,
        work: impl FnOnce(&Store) -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = oneshot::channel();
        let store = self.store.clone();
        let work: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = done.send(work(&store));
        });
        match run {
            Run::Blocking => spawn.run_blocking(work).await,
            Run::Brief => spawn.run_brief(work).await,
        }
        result.await.ok()
    }
}

/// What a batch came to once its requests were answered.
struct Answered {
    outcome: BatchOutcome,
    /// The error the batch met, if any: the applier takes no more work.
    failure: Option<PersistError>,
    /// Planted `apply-not-atomic` only: answers kept until its second transaction.
    unanswered: Vec<(oneshot::Sender<ApplyResult>, ApplyResult)>,
}

/// Answers each request of a batch in order, from the thread that applied it: a partition
/// hears at once, not after a hop through the applier's task (that hop was on every write's
/// path). Under the planted `apply-not-atomic`, the answers wait for its second transaction.
fn answer(results: Vec<ApplyResult>, outcome: BatchOutcome, replies: Vec<oneshot::Sender<ApplyResult>>) -> Answered {
    assert_eq!(results.len(), replies.len(), "one result per request");
    let failure = results.iter().find_map(|result| result.as_ref().err().cloned());
    let mut unanswered = Vec::new();
    for (reply, result) in replies.into_iter().zip(results) {
        if outcome.deferred.is_empty() {
            // The partition may have stopped waiting; that is its business.
            let _ = reply.send(result);
        } else {
            unanswered.push((reply, result));
        }
    }
    Answered { outcome, failure, unanswered }
}

/// The applier over `store` until `requests` closes (see the module docs).
pub async fn run_applier(
    store: Arc<Store>,
    mut requests: mpsc::Receiver<ApplyRequest>,
    spawn: Arc<dyn Spawn>,
    clock: Arc<dyn Clock>,
    options: ApplierOptions,
    metrics: Arc<NodeMetrics>,
) {
    assert!(options.batch_requests_max >= 1, "a batch holds at least one request");
    let last_durable = clock.now();
    let mut applier =
        Applier { store, options, clock, dirty: BTreeMap::new(), bytes_since_durable: 0, last_durable, failure: None };
    // The owed fsync under way: one at a time, so no commit is made durable while it is.
    let mut syncing: Option<Syncing> = None;
    loop {
        let first = match applier.next_wake(&mut requests, &mut syncing).await {
            Wake::Request(request) => request,
            Wake::Synced(outcome) => {
                applier.synced(syncing.take().expect("a sync was under way"), outcome);
                continue;
            }
            Wake::DurableDue => {
                // Idle with lazy commits pending: make them durable. Idle for a moment only,
                // under load, so the fsync is owed and made apart as after a batch.
                let outcome = applier.run_on_store(&*spawn, |store| store.write(Commit::Written, |_| Ok(()))).await;
                if applier.succeeded(outcome, "the applier") {
                    syncing = Some(applier.start_sync(&*spawn));
                }
                continue;
            }
        };
        let Some(first) = first else {
            // Every partition stopped: make what was applied durable, and end.
            if let Some(mut under_way) = syncing.take() {
                let outcome = under_way.sync.as_mut().await;
                applier.synced(under_way, outcome);
            }
            if !applier.dirty.is_empty() && applier.failure.is_none() {
                let outcome = applier.run_on_store(&*spawn, |store| store.write(Commit::Durable, |_| Ok(()))).await;
                if let Some(Ok(())) = outcome {
                    applier.made_durable();
                }
            }
            return;
        };
        if let Some(error) = &applier.failure {
            let _ = first.done.send(Err(error.clone()));
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < applier.options.batch_requests_max {
            match requests.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let batch_bytes: u64 = batch.iter().map(|r| work_bytes(&r.work)).sum();
        let durable = syncing.is_none() && applier.durable_due(batch_bytes);
        let run = run_for(&batch, batch_bytes, durable);
        let mut works = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for request in batch {
            if let ApplyWork::Entries(entries) = &request.work {
                if let Some(last) = entries.last() {
                    applier.dirty.insert(request.partition, (last.position, request.durable.clone()));
                }
            }
            if matches!(request.work, ApplyWork::Remove) {
                applier.dirty.remove(&request.partition);
            }
            works.push((request.partition, request.work));
            replies.push(request.done);
        }
        let outcome = applier
            .run_on_store_as(&*spawn, run, move |store| {
                let (results, outcome) = run_batch(store, works, durable);
                answer(results, outcome, replies)
            })
            .await;
        let Some(Answered { outcome: BatchOutcome { durable, deferred, transactions, entries }, failure, unanswered }) =
            outcome
        else {
            // The work panicked, dropping the replies: each partition hears that the applier
            // is gone.
            applier.failure = Some(panicked("the applier"));
            continue;
        };
        metrics.apply_transactions.inc_by(transactions);
        metrics.applied_entries.inc_by(entries);
        if failure.is_some() {
            applier.failure = failure;
        }
        if !deferred.is_empty() {
            // Planted `apply-not-atomic`: a crash can strike between the two transactions.
            let second = applier
                .run_on_store(&*spawn, move |store| {
                    store.write(Commit::Durable, |rows| {
                        deferred.into_values().try_for_each(|d| store::apply::commit_deferred(rows, d))
                    })
                })
                .await;
            if !matches!(second, Some(Ok(()))) {
                applier.failure =
                    Some(store_failure(StoreError::Corrupt { reason: "the second commit failed".into() }));
            }
        }
        for (reply, result) in unanswered {
            // The partition may have stopped waiting; that is its business.
            let _ = reply.send(result);
        }
        applier.bytes_since_durable += batch_bytes;
        if durable && applier.failure.is_none() {
            syncing = Some(applier.start_sync(&*spawn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(work: ApplyWork) -> ApplyRequest {
        let (done, _) = oneshot::channel();
        ApplyRequest { partition: PartitionId(1), work, durable: DurableSignal::default(), done }
    }

    fn entries(count: u64, command_bytes: usize) -> ApplyWork {
        ApplyWork::Entries(
            (1..=count)
                .map(|index| store::ApplyEntry {
                    position: LogPosition { index, term: 1 },
                    kind: store::ApplyKind::Command(vec![0; command_bytes]),
                })
                .collect(),
        )
    }

    fn run(works: Vec<ApplyWork>, durable: bool) -> Run {
        let requests: Vec<ApplyRequest> = works.into_iter().map(request).collect();
        let bytes = requests.iter().map(|r| work_bytes(&r.work)).sum();
        run_for(&requests, bytes, durable)
    }

    #[test]
    fn only_a_few_small_entries_committed_lazily_run_where_the_applier_is() {
        assert_eq!(run(vec![entries(1, 1024)], false), Run::Brief, "a lone write");
        assert_eq!(run(vec![entries(2, 1024), entries(2, 1024)], false), Run::Brief, "four, from two partitions");
        assert_eq!(
            run(vec![entries(1, 1024)], true),
            Run::Blocking,
            "a durable commit writes every page since the last one"
        );
        assert_eq!(run(vec![entries(5, 100)], false), Run::Blocking, "more entries than brief");
        assert_eq!(run(vec![entries(3, 2), entries(2, 2)], false), Run::Blocking, "more entries, together");
        assert_eq!(run(vec![entries(1, 20 * 1024)], false), Run::Blocking, "more bytes than brief");
        assert_eq!(run(vec![entries(1, 10), ApplyWork::Remove], false), Run::Blocking, "a removal");
    }
}
