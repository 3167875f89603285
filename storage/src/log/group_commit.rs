//! Group commit: the one task that owns the [`LogEngine`], turning the writes of every
//! partition that are waiting at once into one append and one fsync.
//!
//! Loop: wait for a request; take every other request already queued, up to the batch
//! limits, without waiting for more; append them all, sync once and answer each request in
//! order, inside `Spawn::run_blocking`. A failure answers the batch with
//! the error and every later request too: the engine is poisoned and nothing after it can be
//! made durable. Runtime-agnostic: only `futures` and core's [`Spawn`], so it runs on tokio and
//! on madsim alike.

use super::{LogEngine, LogError};
use crate::limits::{GROUP_COMMIT_BATCH_BYTES_MAX, GROUP_COMMIT_BATCH_WRITES_MAX, GROUP_COMMIT_COMPACT_EVERY_BATCHES};
use cohort_core::env::Spawn;
use cohort_core::persist::{LogWrite, PersistError, PersistRequest};
use futures::channel::{mpsc, oneshot};
use futures::StreamExt;
use std::sync::Arc;

/// Batch bounds of group commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupCommitOptions {
    /// Writes in one batch (one fsync).
    pub batch_writes_max: usize,
    /// Estimated bytes of writes in one batch; exceeded by at most the write that crossed it.
    pub batch_bytes_max: usize,
    /// Batches between two compactions of the log.
    pub compact_every_batches: u64,
}

impl Default for GroupCommitOptions {
    fn default() -> GroupCommitOptions {
        GroupCommitOptions {
            batch_writes_max: GROUP_COMMIT_BATCH_WRITES_MAX,
            batch_bytes_max: GROUP_COMMIT_BATCH_BYTES_MAX,
            compact_every_batches: GROUP_COMMIT_COMPACT_EVERY_BATCHES,
        }
    }
}

/// Cheap estimate of a write's encoded size, for the batch byte bound.
pub(crate) fn write_size_bytes_estimate(write: &LogWrite) -> usize {
    const WRITE_FIXED_BYTES: usize = 64;
    const ENTRY_FIXED_BYTES: usize = 36;
    WRITE_FIXED_BYTES + write.entries.iter().map(|e| ENTRY_FIXED_BYTES + e.data.len() + e.context.len()).sum::<usize>()
}

/// When a batch is synced relative to its append. Only `AfterAppend` is correct; the others
/// exist for the planted bugs of simulation builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncOrder {
    AfterAppend,
    /// Planted `lagging-fsync`: sync the previous batch, then append this one unsynced.
    BeforeAppend,
    /// Planted `ack-before-fsync`: never sync.
    Never,
}

fn planted_sync_order(writes: &[LogWrite], batches: u64) -> SyncOrder {
    use cohort_core::bugs::{is_active, Bug};
    if is_active(Bug::AckBeforeFsync) {
        return SyncOrder::Never;
    }
    let moves_snapshots = writes.iter().any(|w| w.snapshot.is_some() || w.compact_through.is_some() || w.remove);
    if is_active(Bug::LaggingFsync) && !moves_snapshots {
        return if batches % 8 == 7 { SyncOrder::AfterAppend } else { SyncOrder::Never };
    }
    SyncOrder::AfterAppend
}

/// Appends one batch and syncs it, in `sync`'s order.
fn append_and_sync(engine: &mut LogEngine, writes: &[LogWrite], sync: SyncOrder) -> Result<(), LogError> {
    if sync == SyncOrder::BeforeAppend {
        engine.sync()?;
    }
    engine.append(writes)?;
    if sync == SyncOrder::AfterAppend {
        engine.sync()?;
    }
    Ok(())
}

/// Runs `work` on the engine inside `spawn.run_blocking`, moving the engine there and back.
/// `None` if the work never came back (it panicked): the engine is lost with it.
async fn on_engine<T: Send + 'static>(
    spawn: &dyn Spawn,
    engine: LogEngine,
    work: impl FnOnce(&mut LogEngine) -> T + Send + 'static,
) -> Option<(LogEngine, T)> {
    let (done, result) = oneshot::channel();
    spawn
        .run_blocking(Box::new(move || {
            let mut engine = engine;
            let out = work(&mut engine);
            // The receiver is only gone if the group commit task itself was dropped.
            let _ = done.send((engine, out));
        }))
        .await;
    result.await.ok()
}

/// Group commit over `engine` until `requests` closes (see the module docs).
pub async fn run_group_commit(
    engine: LogEngine,
    mut requests: mpsc::Receiver<PersistRequest>,
    spawn: Arc<dyn Spawn>,
    options: GroupCommitOptions,
) {
    assert!(options.batch_writes_max >= 1, "a batch holds at least one write");
    assert!(options.batch_bytes_max >= 1, "a batch holds at least one byte");
    assert!(options.compact_every_batches >= 1, "compaction runs every so many batches");
    let mut engine = Some(engine);
    let mut failure: Option<PersistError> = None;
    let mut batches: u64 = 0;
    while let Some(first) = requests.next().await {
        if let Some(error) = &failure {
            (first.done)(Err(error.clone()));
            continue;
        }
        let mut bytes = write_size_bytes_estimate(&first.write);
        let mut batch = vec![first];
        while batch.len() < options.batch_writes_max && bytes < options.batch_bytes_max {
            match requests.try_recv() {
                Ok(request) => {
                    bytes += write_size_bytes_estimate(&request.write);
                    batch.push(request);
                }
                // Nothing ready, or closed: commit what we have.
                Err(_) => break,
            }
        }
        let (writes, dones): (Vec<LogWrite>, Vec<_>) = batch.into_iter().map(|r| (r.write, r.done)).unzip();
        let writes_count = writes.len();
        let current = engine.take().expect("the engine is home between batches");
        let sync = planted_sync_order(&writes, batches);
        // The writers are told on the blocking thread, as soon as the batch is durable (or
        // failed): waking each partition from there saves a hop through this task, which is
        // on every write's path.
        let outcome = on_engine(&*spawn, current, move |engine| -> Result<(), PersistError> {
            let result = append_and_sync(engine, &writes, sync).map_err(|e| PersistError(Arc::new(e)));
            match &result {
                Ok(()) => tracing::trace!(writes = writes_count, bytes, "group commit batch durable"),
                Err(error) => {
                    tracing::error!(error = %error, writes = writes_count, "group commit failed; failing every later write")
                }
            }
            for done in dones {
                done(result.clone());
            }
            result
        })
        .await;
        match outcome {
            Some((back, Ok(()))) => engine = Some(back),
            Some((_, Err(error))) => {
                failure = Some(error);
                continue;
            }
            None => {
                // The work panicked before or while answering its writers; those it did not
                // answer see their completion dropped.
                failure =
                    Some(PersistError(Arc::new(LogError::Poisoned { reason: "the log writer panicked".to_owned() })));
                continue;
            }
        }
        batches += 1;
        if batches.is_multiple_of(options.compact_every_batches) {
            let current = engine.take().expect("the engine is home between batches");
            match on_engine(&*spawn, current, |engine| engine.compact()).await {
                Some((back, Ok(stats))) => {
                    engine = Some(back);
                    tracing::debug!(?stats, "log compacted");
                }
                Some((_, Err(e))) => {
                    tracing::error!(error = %e, "log compaction failed; failing every later write");
                    failure = Some(PersistError(Arc::new(e)));
                }
                None => {
                    failure = Some(PersistError(Arc::new(LogError::Poisoned {
                        reason: "log compaction panicked".to_owned(),
                    })));
                }
            }
        }
    }
}
