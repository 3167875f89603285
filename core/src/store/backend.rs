//! redb's storage backend over cohort's [`Disk`]: the state store's database file is a
//! [`PositionalFile`], so the simulator's crash model (`SimDisk`) reaches redb exactly as it
//! reaches the log.
//!
//! Every error is passed on as redb's I/O error; redb latches it (every later call fails with
//! `PreviousIo`) and the store must be reopened. A crash is a backend whose every call fails:
//! the simulated disk refuses handles opened before its crash, so dropping the database then
//! cannot commit what was not durable.
//!
//! **Owed syncs.** A durable commit's fsync of several MiB of pages written at once takes tens
//! of milliseconds, and redb makes it while it holds the store's one write transaction. So the
//! store may tell the backend to owe the fsync of a commit ([`StoreFile::defer_next_sync`]):
//! redb's commit then returns once its pages and header are written, and the store makes the
//! fsync later ([`StoreFile::sync_owed`]), on another thread, while lazy commits go on in
//! memory. Until it is made, the commit is not durable, and every write to the file and change
//! of its length makes the owed fsync first. That keeps the only order redb's crash recovery
//! needs: nothing written after a commit reaches the disk before the commit itself is durable,
//! as if its fsync had simply taken longer (a crash before it returns finds the previous durable
//! commit, whose pages nothing has overwritten).

use crate::env::{DiskError, PositionalFile};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Whether the file's writes so far are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SyncState {
    /// Durable, or to be made durable by redb's next sync.
    Synced,
    /// A commit's fsync that redb was told was made.
    Owed,
    /// An fsync failed: what it covered may be lost, and nothing later may be written.
    Failed,
}

/// The store's database file, shared by redb's backend and the [`Store`](super::Store).
pub(crate) struct StoreFile {
    file: Box<dyn PositionalFile>,
    /// Set by the store just before a commit whose fsync it will make itself.
    defer_next_sync: AtomicBool,
    /// Every write, length change and sync holds this lock, so an owed fsync is made before
    /// anything after it reaches the file.
    state: Mutex<SyncState>,
}

fn failed_before() -> io::Error {
    io::Error::other("an earlier fsync of the state store failed")
}

impl StoreFile {
    pub(crate) fn new(file: Box<dyn PositionalFile>) -> Arc<StoreFile> {
        Arc::new(StoreFile { file, defer_next_sync: AtomicBool::new(false), state: Mutex::new(SyncState::Synced) })
    }

    /// The next sync redb asks for is owed instead of made (see the module docs); `false`
    /// takes the request back if the commit did not ask.
    pub(crate) fn defer_next_sync(&self, defer: bool) {
        self.defer_next_sync.store(defer, Ordering::Release);
    }

    /// Makes the owed fsync, if any: every commit that returned before this call is durable
    /// when it returns `Ok`.
    pub(crate) fn sync_owed(&self) -> Result<(), io::Error> {
        let mut state = self.state.lock().expect("not poisoned");
        self.settle(&mut state)
    }

    /// Makes an owed fsync before the caller touches the file, under `state`'s lock.
    fn settle(&self, state: &mut SyncState) -> Result<(), io::Error> {
        match *state {
            SyncState::Synced => Ok(()),
            SyncState::Failed => Err(failed_before()),
            SyncState::Owed => self.sync_now(state),
        }
    }

    fn sync_now(&self, state: &mut SyncState) -> Result<(), io::Error> {
        match self.file.sync() {
            Ok(()) => {
                *state = SyncState::Synced;
                Ok(())
            }
            Err(error) => {
                // What the failed fsync covered may be lost or may not (fsyncgate): no later
                // fsync can say, so the file takes nothing more.
                *state = SyncState::Failed;
                Err(io_error(error))
            }
        }
    }
}

/// redb's handle on the [`StoreFile`].
pub struct DiskBackend {
    file: Arc<StoreFile>,
}

impl DiskBackend {
    pub(crate) fn new(file: Arc<StoreFile>) -> DiskBackend {
        DiskBackend { file }
    }
}

impl fmt::Debug for DiskBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DiskBackend")
    }
}

fn io_error(error: DiskError) -> io::Error {
    let kind = error.source.kind();
    io::Error::new(kind, error)
}

impl redb::StorageBackend for DiskBackend {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.file.len().map_err(io_error)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        // Reads need no order against an owed fsync: the file system serves written pages.
        self.file.file.read_at(offset, out).map_err(io_error)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.file.state.lock().expect("not poisoned");
        self.file.settle(&mut state)?;
        self.file.file.set_len(len).map_err(io_error)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.file.state.lock().expect("not poisoned");
        if *state == SyncState::Failed {
            return Err(failed_before());
        }
        if self.file.defer_next_sync.swap(false, Ordering::AcqRel) {
            *state = SyncState::Owed;
            return Ok(());
        }
        self.file.sync_now(&mut state)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.file.state.lock().expect("not poisoned");
        self.file.settle(&mut state)?;
        self.file.file.write_at(offset, data).map_err(io_error)
    }
}
