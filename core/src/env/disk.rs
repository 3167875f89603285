use std::path::{Path, PathBuf};

/// An I/O failure, with the path it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct DiskError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl DiskError {
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> DiskError {
        DiskError { op, path: path.to_owned(), source }
    }

    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// A file opened for appending.
pub trait DiskFile: Send + 'static {
    /// Appends `bytes` at the end. Not durable until [`DiskFile::sync`] returns.
    fn append(&mut self, bytes: &[u8]) -> Result<(), DiskError>;
    /// Makes every byte appended so far durable (fdatasync).
    fn sync(&mut self) -> Result<(), DiskError>;
    /// Bytes in the file, durable or not.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file opened for reads and writes at any offset: the state store's database file. Methods
/// take `&self` (the store reads while it writes); implementations serialize what must be.
///
/// Crash contract (what the state store relies on): bytes are durable only after
/// [`PositionalFile::sync`]; at a crash each write since the last sync survives, vanishes or
/// tears independently and in any order, every byte ending as its old or its new value, and
/// never changes a byte outside its range; a [`PositionalFile::set_len`] since the last sync
/// survives whole or not at all.
#[allow(clippy::len_without_is_empty)] // `len` is an I/O call that can fail, not a container's size
pub trait PositionalFile: Send + Sync + 'static {
    /// Bytes in the file, durable or not.
    fn len(&self) -> Result<u64, DiskError>;
    /// Fills `out` from `offset`; an error if the file ends before `out` is full.
    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `bytes` at `offset`, within the file's length.
    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DiskError>;
    /// Cuts or extends the file to `len` bytes; new bytes read as zeros.
    fn set_len(&self, len: u64) -> Result<(), DiskError>;
    /// Makes every write and length change so far durable (fdatasync).
    fn sync(&self) -> Result<(), DiskError>;
}

/// A directory tree of files, rooted at a node's data directory; every path is relative to
/// that root. Creating, renaming or removing a file is durable only after [`Disk::sync_dir`]
/// on its parent directory, as on a real file system.
pub trait Disk: Send + Sync + 'static {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError>;
    /// Opens `path` for appending, creating it empty if it does not exist.
    fn open_append(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError>;
    /// Opens `path` for reads and writes at any offset, creating it empty if it does not
    /// exist. A file is used one way or the other (appended or written in place), never both.
    fn open_positional(&self, path: &Path) -> Result<Box<dyn PositionalFile>, DiskError>;
    /// Reads the whole file.
    fn read(&self, path: &Path) -> Result<Vec<u8>, DiskError>;
    /// Reads `len` bytes at `offset`; fewer only at the end of the file.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, DiskError>;
    /// Cuts the file to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> Result<(), DiskError>;
    /// Names of the entries of `dir`, sorted; empty if `dir` does not exist.
    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError>;
    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError>;
    fn remove_file(&self, path: &Path) -> Result<(), DiskError>;
    /// Removes `dir` and everything under it.
    fn remove_dir_all(&self, dir: &Path) -> Result<(), DiskError>;
    /// Makes the creations, renames and removals of entries in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError>;
    fn exists(&self, path: &Path) -> Result<bool, DiskError>;
    /// Bytes free for new data on the file system holding the root (what an unprivileged
    /// process may still write).
    fn available_bytes(&self) -> Result<u64, DiskError>;
}

/// Writes `bytes` to `path` so that after a crash the file holds either its old content or all
/// of `bytes`: write a temporary file, sync it, rename it over `path`, sync the directory.
pub fn write_file_atomic(disk: &dyn Disk, path: &Path, bytes: &[u8]) -> Result<(), DiskError> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut tmp_name = path.file_name().expect("a file path").to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    match disk.remove_file(&tmp) {
        Err(e) if !e.is_not_found() => return Err(e),
        _ => {}
    }
    let mut file = disk.open_append(&tmp)?;
    file.append(bytes)?;
    file.sync()?;
    drop(file);
    disk.rename(&tmp, path)?;
    disk.sync_dir(dir)
}
