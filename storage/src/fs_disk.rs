//! The production [`Disk`]: the real file system under one root directory, with real fsyncs.

use cohort_core::env::{Disk, DiskError, DiskFile, PositionalFile};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// A [`Disk`] over the real file system; every path is relative to `root`.
#[derive(Debug)]
pub struct FsDisk {
    root: PathBuf,
}

impl FsDisk {
    /// A disk rooted at `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<FsDisk, DiskError> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(|e| DiskError::new("create_dir_all", &root, e))?;
        Ok(FsDisk { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The real path of `path`. Paths come from our own code, never from a client, so one that
    /// escapes the root is a bug.
    fn full(&self, path: &Path) -> PathBuf {
        assert!(
            path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "disk paths are relative and stay under the root: {}",
            path.display()
        );
        self.root.join(path)
    }
}

impl Disk for FsDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let full = self.full(dir);
        fs::create_dir_all(&full).map_err(|e| DiskError::new("create_dir_all", &full, e))
    }

    fn open_append(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        let full = self.full(path);
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&full)
            .map_err(|e| DiskError::new("open_append", &full, e))?;
        let len = file.metadata().map_err(|e| DiskError::new("metadata", &full, e))?.len();
        Ok(Box::new(FsFile { file, path: full, len }))
    }

    fn open_positional(&self, path: &Path) -> Result<Box<dyn PositionalFile>, DiskError> {
        let full = self.full(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&full)
            .map_err(|e| DiskError::new("open_positional", &full, e))?;
        Ok(Box::new(FsPositionalFile { file, path: full }))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, DiskError> {
        let full = self.full(path);
        fs::read(&full).map_err(|e| DiskError::new("read", &full, e))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let full = self.full(path);
        let io = || -> io::Result<Vec<u8>> {
            let mut file = File::open(&full)?;
            file.seek(SeekFrom::Start(offset))?;
            let mut out = Vec::with_capacity(len.min(1024 * 1024));
            file.take(len as u64).read_to_end(&mut out)?;
            Ok(out)
        };
        io().map_err(|e| DiskError::new("read_at", &full, e))
    }

    fn truncate(&self, path: &Path, len: u64) -> Result<(), DiskError> {
        let full = self.full(path);
        let io = || -> io::Result<()> {
            let file = OpenOptions::new().write(true).open(&full)?;
            file.set_len(len)?;
            // sync_all, not sync_data: the new length is metadata, and it must be durable.
            file.sync_all()
        };
        io().map_err(|e| DiskError::new("truncate", &full, e))
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let full = self.full(dir);
        let entries = match fs::read_dir(&full) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(DiskError::new("list", &full, e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DiskError::new("list", &full, e))?;
            let name = entry.file_name().into_string().map_err(|name| {
                let reason = format!("file name {name:?} is not UTF-8");
                DiskError::new("list", &full, io::Error::new(io::ErrorKind::InvalidData, reason))
            })?;
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        let (full_from, full_to) = (self.full(from), self.full(to));
        fs::rename(&full_from, &full_to).map_err(|e| DiskError::new("rename", &full_from, e))
    }

    fn remove_file(&self, path: &Path) -> Result<(), DiskError> {
        let full = self.full(path);
        fs::remove_file(&full).map_err(|e| DiskError::new("remove_file", &full, e))
    }

    fn remove_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let full = self.full(dir);
        assert!(full != self.root, "remove_dir_all never removes the disk's root");
        fs::remove_dir_all(&full).map_err(|e| DiskError::new("remove_dir_all", &full, e))
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let full = self.full(dir);
        // Opening a directory read-only and fsyncing it is how POSIX makes its entries durable.
        let io = || File::open(&full)?.sync_all();
        io().map_err(|e| DiskError::new("sync_dir", &full, e))
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        let full = self.full(path);
        full.try_exists().map_err(|e| DiskError::new("exists", &full, e))
    }

    fn available_bytes(&self) -> Result<u64, DiskError> {
        space(&self.root).map(|space| space.available_bytes).map_err(|e| DiskError::new("statvfs", &self.root, e))
    }
}

/// The size of the file system holding a path, and what of it an unprivileged writer may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    pub total_bytes: u64,
    pub available_bytes: u64,
}

/// [`DiskSpace`] of the file system holding `path` (statvfs).
pub fn space(path: &Path) -> io::Result<DiskSpace> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stats` a buffer of the type statvfs
    // fills; it is read only if the call succeeded.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so it initialised `stats`.
    let stats = unsafe { stats.assume_init() };
    // statvfs's field types vary by target (32 bits on some): widen them wherever they are not u64.
    #[allow(clippy::useless_conversion)]
    let (blocks, available, block_bytes) =
        (u64::from(stats.f_blocks), u64::from(stats.f_bavail), u64::from(stats.f_frsize));
    Ok(DiskSpace {
        total_bytes: blocks.saturating_mul(block_bytes),
        available_bytes: available.saturating_mul(block_bytes),
    })
}

/// A file of [`FsDisk`] opened for appending. Every append is one `write_all` on an `O_APPEND`
/// descriptor, unbuffered, so that `Disk::read_at` sees it at once.
struct FsFile {
    file: File,
    path: PathBuf,
    len: u64,
}

impl DiskFile for FsFile {
    fn append(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        match self.file.write_all(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Part of `bytes` may have been written: learn the real length again.
                if let Ok(meta) = self.file.metadata() {
                    self.len = meta.len();
                }
                Err(DiskError::new("append", &self.path, e))
            }
        }
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        self.file.sync_data().map_err(|e| DiskError::new("sync", &self.path, e))
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// A file of [`FsDisk`] opened for positional reads and writes (`pread`/`pwrite`, unbuffered).
struct FsPositionalFile {
    file: File,
    path: PathBuf,
}

impl PositionalFile for FsPositionalFile {
    fn len(&self) -> Result<u64, DiskError> {
        Ok(self.file.metadata().map_err(|e| DiskError::new("metadata", &self.path, e))?.len())
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DiskError> {
        self.file.read_exact_at(out, offset).map_err(|e| DiskError::new("read_at", &self.path, e))
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        self.file.write_all_at(bytes, offset).map_err(|e| DiskError::new("write_at", &self.path, e))
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.file.set_len(len).map_err(|e| DiskError::new("set_len", &self.path, e))
    }

    fn sync(&self) -> Result<(), DiskError> {
        // fdatasync also flushes a changed length: it is needed to read the data back.
        self.file.sync_data().map_err(|e| DiskError::new("sync", &self.path, e))
    }
}
