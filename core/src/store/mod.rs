//! The state store: every hosted replica's state machine, on disk, in one redb database per
//! node (`state/store.redb`), reached through cohort's [`Disk`] so that the simulator's crashes
//! reach it. Each partition's rows are one key range of every table (see [`tables`]), with a
//! record of how far it has applied.
//!
//! - [`Store::write`] runs one write transaction (the node's applier batches every partition's
//!   committed entries into one); commits are cheap (`Durability::None`) unless made durable,
//!   and a durable commit makes every earlier one durable with it. A commit may also be
//!   written durably but its fsync left owed (`Commit::Written`) for [`Store::sync`] to make
//!   away from the writer, which goes on committing lazily meanwhile.
//! - [`Store::read`] opens an MVCC snapshot: reads, digests and snapshot exports see one
//!   consistent state while writes go on.
//! - [`apply`] changes a partition's rows for one committed command; [`read`] answers queries;
//!   [`snapshot`] exports and imports a partition's range; [`check`] verifies a range and
//!   digests it.
//!
//! Invariant: a partition's rows are exactly the effect of its log through the `applied`
//! position of its record, in the same transaction: the applied index is never committed
//! apart from the effects of the entries it counts.

pub mod apply;
mod backend;
pub mod check;
pub mod dedup;
pub mod dedup_ring;
mod directory;
pub mod keys;
pub mod loose;
pub mod read;
pub mod seal;
pub mod snapshot;
pub mod tables;
#[cfg(test)]
mod tests;

pub use apply::{apply_entries, Applied, AppliedOutcome, ApplyEntry, ApplyKind, DirectoryChange, PartitionWriter};
pub use dedup::DedupLimits;
pub use tables::{Counts, Format, PartitionRecord, Placement, ReadRows, Rows, TableId, WriteRows};

use crate::env::{Disk, DiskError};
use crate::ids::PartitionId;
use std::path::Path;
use std::sync::Arc;

/// Where the store lives in a node's data directory.
pub const STORE_DIR: &str = "state";
pub const STORE_FILE: &str = "state/store.redb";

/// Why the store could not do what it was asked. Any of these but `Corrupt` leaves redb unable
/// to go on (it latches I/O errors): the node stops, as for a failed fsync of the log.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("state store {op}: {source}")]
    Database { op: &'static str, source: redb::Error },
    /// Bytes in the store that are not what this code writes.
    #[error("state store holds bad data: {reason}")]
    Corrupt { reason: String },
}

impl From<keys::BadKey> for StoreError {
    /// A key that does not parse is bytes in the store this code did not write.
    fn from(bad: keys::BadKey) -> StoreError {
        StoreError::Corrupt { reason: bad.0 }
    }
}

/// How the store is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// redb's page cache (memory the store may use for pages read or written).
    pub cache_size_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions { cache_size_bytes: crate::limits::STORE_CACHE_BYTES_DEFAULT }
    }
}

/// How far a write transaction's commit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commit {
    /// Visible to readers at once, durable with the next durable commit.
    Lazy,
    /// Durable (with every lazy commit before it) when the commit returns.
    Durable,
    /// Written as a durable commit is, but durable (with every lazy commit before it) only
    /// once [`Store::sync`] returns: the commit does not wait for the fsync. Until then a
    /// crash finds the store as of the durable commit before it.
    Written,
}

pub struct Store {
    db: redb::Database,
    /// The database file; `None` in memory.
    file: Option<Arc<backend::StoreFile>>,
    /// Committed transactions that changed the `routes` table (see [`Store::routes_version`]).
    routes_version: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

/// redb writes this first; a file without it never held a committed database (a crash during
/// its very first creation), and is started afresh.
const REDB_MAGIC: &[u8] = b"redb";

impl Store {
    /// Opens the node's store on `disk`, creating it if missing.
    pub fn open(disk: &Arc<dyn Disk>, options: &StoreOptions) -> Result<Store, StoreError> {
        disk.create_dir_all(Path::new(STORE_DIR))?;
        disk.sync_dir(Path::new(""))?;
        let path = Path::new(STORE_FILE);
        let file = disk.open_positional(path)?;
        let len = file.len()?;
        let mut magic = [0u8; 4];
        if len > 0 && (len < magic.len() as u64 || file.read_at(0, &mut magic).is_err() || magic != REDB_MAGIC) {
            tracing::warn!(
                len,
                "the state store file holds no database (its creation was cut short); starting it afresh"
            );
            file.set_len(0)?;
            file.sync()?;
        }
        disk.sync_dir(Path::new(STORE_DIR))?;
        let file = backend::StoreFile::new(file);
        let db = redb::Builder::new()
            .set_cache_size(options.cache_size_bytes)
            .create_with_backend(backend::DiskBackend::new(file.clone()))
            .map_err(|e| StoreError::Database { op: "open", source: e.into() })?;
        let store = Store { db, file: Some(file), routes_version: Default::default() };
        store.write(Commit::Durable, |rows| rows.create_all())?;
        Ok(store)
    }

    /// Opens the store file on `disk` as it is and runs redb's integrity check over it (every
    /// checksum its trees reach, and its allocator state); `Ok(false)` if it had to repair
    /// the file. Opening and checking may write to the file: offline tools run it on a copy.
    pub fn check_integrity(disk: &Arc<dyn Disk>) -> Result<bool, StoreError> {
        let file = disk.open_positional(Path::new(STORE_FILE))?;
        let mut db = redb::Builder::new()
            .create_with_backend(backend::DiskBackend::new(backend::StoreFile::new(file)))
            .map_err(|e| StoreError::Database { op: "open", source: e.into() })?;
        db.check_integrity().map_err(|e| StoreError::Database { op: "check_integrity", source: e.into() })
    }

    /// A store in memory, for tests that need no disk.
    pub fn in_memory() -> Store {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("an in-memory database opens");
        let store = Store { db, file: None, routes_version: Default::default() };
        store.write(Commit::Durable, |rows| rows.create_all()).expect("an in-memory database takes a write");
        store
    }

    /// Runs `work` in one write transaction and commits it (`Commit::Durable`: durably). An
    /// error from `work` aborts the transaction: nothing it did is kept.
    pub fn write<T>(
        &self,
        commit: Commit,
        work: impl FnOnce(&mut WriteRows<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut txn = match self.db.try_begin_write() {
            Ok(txn) => txn,
            Err(redb::TransactionError::WouldBlock) => panic!("the state store has one writer at a time"),
            Err(e) => return Err(StoreError::Database { op: "begin write", source: e.into() }),
        };
        let durability = match commit {
            Commit::Lazy => redb::Durability::None,
            Commit::Durable | Commit::Written => redb::Durability::Immediate,
        };
        txn.set_durability(durability).map_err(|e| StoreError::Corrupt { reason: e.to_string() })?;
        let (out, routes_changed) = {
            let mut rows = WriteRows::open(&txn)?;
            let out = work(&mut rows)?;
            (out, rows.changed(TableId::Routes))
        };
        let owed = match (commit, &self.file) {
            (Commit::Written, Some(file)) => Some(file),
            _ => None,
        };
        if let Some(file) = owed {
            file.defer_next_sync(true);
        }
        let committed = txn.commit().map_err(|e| StoreError::Database { op: "commit", source: e.into() });
        if let Some(file) = owed {
            // redb asks for one sync, at the end of a commit; a commit that failed first never
            // asked.
            file.defer_next_sync(false);
        }
        committed?;
        if routes_changed {
            // After the commit: whoever sees the new version reads the new routes.
            self.routes_version.fetch_add(1, std::sync::atomic::Ordering::Release);
        }
        Ok(out)
    }

    /// How many committed transactions have changed the `routes` table (which repository
    /// lives in which partition) since the store opened. A route read in a transaction begun
    /// after this returned `v` is current for as long as this still returns `v`: the count
    /// goes up once such a transaction commits, before its `write` returns. What caches routes
    /// keeps them by it.
    pub fn routes_version(&self) -> u64 {
        self.routes_version.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Makes every `Commit::Written` commit so far durable. Safe beside a write transaction on
    /// another thread: whatever it writes to the file (a lazy commit writes only pages evicted
    /// from a full write buffer) waits for this fsync.
    pub fn sync(&self) -> Result<(), StoreError> {
        match &self.file {
            Some(file) => file.sync_owed().map_err(|e| StoreError::Database { op: "sync", source: e.into() }),
            None => Ok(()),
        }
    }

    /// A consistent view of the store as of now, unaffected by later writes.
    pub fn read(&self) -> Result<ReadRows, StoreError> {
        use redb::ReadableDatabase as _;
        let txn = self.db.begin_read().map_err(|e| StoreError::Database { op: "begin read", source: e.into() })?;
        Ok(ReadRows::open(txn))
    }

    /// Bytes in the page cache (at most `StoreOptions::cache_size_bytes`): pages read or
    /// written lately, shared by every partition. (redb counts them with its
    /// `cache_metrics` feature, which also counts hits and misses: an atomic add per page
    /// access.)
    pub fn cache_bytes(&self) -> usize {
        use redb::ReadableDatabase;
        self.db.cache_stats().used_bytes()
    }

    /// Uploads in progress in every hosted replica, and the content they hold so far: what
    /// abandoned uploads would cost until they are dropped.
    pub fn uploads_in_progress(&self) -> Result<(u64, u64), StoreError> {
        let rows = self.read()?;
        let (mut count, mut bytes) = (0u64, 0u64);
        rows.scan(TableId::Uploads, &[], &mut |_, value| {
            let upload: tables::UploadRecord = tables::decode("upload", value)?;
            count += 1;
            bytes += upload.received_bytes;
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        Ok((count, bytes))
    }

    /// Deletes every row of `partition` and its record, durably.
    pub fn remove_partition(&self, partition: PartitionId) -> Result<(), StoreError> {
        self.write(Commit::Durable, |rows| remove_rows(rows, partition))
    }
}

/// Deletes every row of `partition` and its record.
pub fn remove_rows(rows: &mut WriteRows<'_>, partition: PartitionId) -> Result<(), StoreError> {
    let prefix = keys::partition_prefix(partition);
    for table in TableId::ALL {
        rows.remove_prefix(table, &prefix)?;
    }
    rows.remove_partition_record(partition)
}
