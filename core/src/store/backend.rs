//! redb's storage backend over cohort's [`Disk`]: the state store's database file is a
//! [`PositionalFile`], so the simulator's crash model (`SimDisk`) reaches redb exactly as it
//! reaches the log.
//!
//! Every error is passed on as redb's I/O error; redb latches it (every later call fails with
//! `PreviousIo`) and the store must be reopened. A crash is a backend whose every call fails:
//! the simulated disk refuses handles opened before its crash, so dropping the database then
//! cannot commit what was not durable.

use crate::env::{DiskError, PositionalFile};
use std::fmt;
use std::io;

pub struct DiskBackend {
    file: Box<dyn PositionalFile>,
}

impl DiskBackend {
    pub fn new(file: Box<dyn PositionalFile>) -> DiskBackend {
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
        self.file.len().map_err(io_error)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read_at(offset, out).map_err(io_error)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.file.set_len(len).map_err(io_error)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.file.sync().map_err(io_error)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write_at(offset, data).map_err(io_error)
    }
}
