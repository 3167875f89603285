//! cohort's write-ahead log on the real file system, timed per batch as group commit runs it
//! (append, then sync): what the `log` and `vs_etcd` benchmarks time. A file of its own, taken
//! in with `#[path]`, so that a benchmark without a cluster need not build `common`'s.

use cohort_core::env::Disk;
use cohort_core::ids::PartitionId;
use cohort_core::persist::{EntryKind, LogEntry, LogWrite, RecoveredPartition};
use cohort_storage::log::{LogEngine, LogOptions};
use cohort_storage::FsDisk;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of each entry a probe writes.
pub const ENTRY_BYTES: usize = 1024;

/// A `LogEngine` under a directory of its own, and the index its next batch writes.
pub struct LogProbe {
    engine: LogEngine,
    next_index: u64,
}

impl LogProbe {
    /// A log in `root` (created if missing).
    pub fn open(root: &Path) -> LogProbe {
        let (engine, _) = open_engine(root);
        LogProbe { engine, next_index: 1 }
    }

    /// Appends one batch, an entry of `ENTRY_BYTES` for each of `partitions` partitions (as
    /// many partitions' writes in one group commit), and syncs it; answers how long that took.
    pub fn append_sync(&mut self, partitions: u64) -> Duration {
        let index = self.next_index;
        self.next_index += 1;
        let writes: Vec<LogWrite> = (1..=partitions)
            .map(|partition| {
                let mut write = LogWrite::new(PartitionId(partition));
                let data = vec![0x5a; ENTRY_BYTES];
                write.entries = vec![LogEntry { index, term: 1, kind: EntryKind::Normal, data, context: vec![] }];
                write
            })
            .collect();
        let started = Instant::now();
        self.engine.append(&writes).unwrap();
        self.engine.sync().unwrap();
        started.elapsed()
    }

    /// What the log in `root` recovers when it opens (the probe writing it closed).
    pub fn recover(root: &Path) -> BTreeMap<PartitionId, RecoveredPartition> {
        open_engine(root).1
    }
}

fn open_engine(root: &Path) -> (LogEngine, BTreeMap<PartitionId, RecoveredPartition>) {
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(root).expect("a disk"));
    LogEngine::open(disk, Path::new("wal"), LogOptions::default()).expect("the log opens")
}
