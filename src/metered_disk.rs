//! A `Disk` wrapper that records how long each fsync takes, for the fsync latency histograms:
//! the state store file's apart from the rest (the log's, mostly), since no write waits for
//! the store's. Production only: it reads the wall clock, which core and storage never do.

use cohort_core::env::{Disk, DiskError, DiskFile, PositionalFile};
use cohort_core::store::STORE_FILE;
use prometheus_client::metrics::histogram::Histogram;
use std::path::Path;
use std::time::Instant;

pub struct MeteredDisk<D> {
    inner: D,
    fsync_latency_seconds: Histogram,
    /// For the state store's file ([`STORE_FILE`]).
    store_fsync_latency_seconds: Histogram,
}

impl<D: Disk> MeteredDisk<D> {
    pub fn new(inner: D, fsync_latency_seconds: Histogram, store_fsync_latency_seconds: Histogram) -> MeteredDisk<D> {
        MeteredDisk { inner, fsync_latency_seconds, store_fsync_latency_seconds }
    }
}

struct MeteredFile {
    inner: Box<dyn DiskFile>,
    fsync_latency_seconds: Histogram,
}

impl DiskFile for MeteredFile {
    fn append(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        self.inner.append(bytes)
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        let started = Instant::now();
        let result = self.inner.sync();
        self.fsync_latency_seconds.observe(started.elapsed().as_secs_f64());
        result
    }

    fn len(&self) -> u64 {
        self.inner.len()
    }
}

struct MeteredPositionalFile {
    inner: Box<dyn PositionalFile>,
    fsync_latency_seconds: Histogram,
}

impl PositionalFile for MeteredPositionalFile {
    fn len(&self) -> Result<u64, DiskError> {
        self.inner.len()
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DiskError> {
        self.inner.read_at(offset, out)
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        self.inner.write_at(offset, bytes)
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.inner.set_len(len)
    }

    fn sync(&self) -> Result<(), DiskError> {
        let started = Instant::now();
        let result = self.inner.sync();
        self.fsync_latency_seconds.observe(started.elapsed().as_secs_f64());
        result
    }
}

impl<D: Disk> Disk for MeteredDisk<D> {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.create_dir_all(dir)
    }

    fn open_append(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let inner = self.inner.open_append(path)?;
        Ok(Box::new(MeteredFile { inner, fsync_latency_seconds: self.fsync_latency_seconds.clone() }))
    }

    fn open_positional(&self, path: &Path) -> Result<Box<dyn PositionalFile>, DiskError> {
        let inner = self.inner.open_positional(path)?;
        let histogram =
            if path == Path::new(STORE_FILE) { &self.store_fsync_latency_seconds } else { &self.fsync_latency_seconds };
        Ok(Box::new(MeteredPositionalFile { inner, fsync_latency_seconds: histogram.clone() }))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, DiskError> {
        self.inner.read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        self.inner.read_at(path, offset, len)
    }

    fn truncate(&self, path: &Path, len: u64) -> Result<(), DiskError> {
        self.inner.truncate(path, len)
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        self.inner.list(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        self.inner.rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> Result<(), DiskError> {
        self.inner.remove_file(path)
    }

    fn remove_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.remove_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        self.inner.sync_dir(dir)
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        self.inner.exists(path)
    }

    fn available_bytes(&self) -> Result<u64, DiskError> {
        self.inner.available_bytes()
    }
}
