//! A replica's snapshot files, in its own directory `partitions/<authority>/<partition>/`
//! (the authority is the storage the partition was created for), so that a node keeps the
//! replicas it hosts for other storages apart from its own.
//!
//! A snapshot file is, in order: the magic `COHSNAP2`; a u32 (LE) header length and the header
//! (the [`SnapshotMeta`], bincode); the partition's rows as the store streams them
//! (`crate::store::snapshot`); a trailer of the u64 (LE) length of everything before it and
//! the u32 (LE) CRC32C of everything before it. The trailer makes a cut or damaged file an
//! error, never a wrong state.
//!
//! Names: `snap-<index>-<term>` is a complete, durable snapshot; `*.tmp` is being written and
//! is deleted when the replica next opens. A file is renamed to its final name only after it
//! is synced, and the directory is synced after the rename, so a crash leaves either no file or
//! the whole file. Snapshot files only carry a state from one replica to another: the state
//! itself lives in the store, so a restart deletes them all.

use crate::codec::{self, DecodeError};
use crate::env::{write_file_atomic, Disk, DiskError, DiskFile};
use crate::ids::{PartitionId, PeerId};
use crate::limits::SNAPSHOT_WRITE_BUFFER_BYTES;
use crate::persist::{LogPosition, SnapshotMeta};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"COHSNAP2";
const TRAILER_BYTES: usize = 12;
/// A header is a position and a membership: far below this.
const HEADER_BYTES_MAX: u64 = 1024 * 1024;
const SNAPSHOT_PREFIX: &str = "snap-";
const TMP_SUFFIX: &str = ".tmp";
const INCOMING_NAME: &str = "incoming.tmp";
/// Holds the replica's Raft peer id, written before the replica says anything to its peers.
const PEER_NAME: &str = "peer";
const PARTITIONS_DIR: &str = "partitions";

/// The authority directory of the directory partition (partition 0), which belongs to the
/// cluster rather than to a storage.
pub const DIRECTORY_AUTHORITY: &str = "cluster";

/// Where a replica of `partition`, created for `authority`, keeps its files.
pub fn partition_dir(authority: &str, partition: PartitionId) -> PathBuf {
    Path::new(PARTITIONS_DIR).join(authority).join(partition.0.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("snapshot file {path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("writing snapshot {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("a snapshot of {size_bytes} bytes is refused: {reason}")]
    TooLarge { size_bytes: u64, reason: String },
}

/// One replica's snapshot files.
#[derive(Clone)]
pub struct SnapshotStore {
    disk: Arc<dyn Disk>,
    /// Shared by the replicas of one authority (see `Router::files`): a node keeps one of these
    /// for every replica it hosts, unloaded ones included, so it holds no path of its own.
    authority: Arc<AuthorityDir>,
    partition: PartitionId,
}

/// The directory of one authority's replicas, `partitions/<name>`, shared by their
/// [`SnapshotStore`]s.
#[derive(Debug)]
pub struct AuthorityDir {
    name: Box<str>,
    /// This process made the directory and its parents durable: creating a replica's
    /// directory in it then syncs only it (one fsync, not three, for every new replica).
    durable: AtomicBool,
}

impl AuthorityDir {
    pub fn new(name: &str) -> Arc<AuthorityDir> {
        Arc::new(AuthorityDir { name: name.into(), durable: AtomicBool::new(false) })
    }
}

impl SnapshotStore {
    pub fn new(disk: Arc<dyn Disk>, authority: &str, partition: PartitionId) -> SnapshotStore {
        SnapshotStore::in_authority(disk, AuthorityDir::new(authority), partition)
    }

    /// The files of `partition`'s replica in `authority`'s directory, which other replicas
    /// share.
    pub fn in_authority(disk: Arc<dyn Disk>, authority: Arc<AuthorityDir>, partition: PartitionId) -> SnapshotStore {
        SnapshotStore { disk, authority, partition }
    }

    /// Every replica directory on the disk: (authority, partition).
    pub fn all(disk: &dyn Disk) -> Result<Vec<(String, PartitionId)>, DiskError> {
        let mut out = Vec::new();
        for authority in disk.list(Path::new(PARTITIONS_DIR))? {
            for name in disk.list(&Path::new(PARTITIONS_DIR).join(&authority))? {
                if let Ok(id) = name.parse::<u64>() {
                    out.push((authority.clone(), PartitionId(id)));
                }
            }
        }
        Ok(out)
    }

    /// Creates the replica's directory durably, so that a restart finds it (and with it the
    /// replica's authority) before the directory partition has replayed.
    pub fn create_dir(&self) -> Result<(), DiskError> {
        let dir = self.dir();
        self.disk.create_dir_all(&dir)?;
        let authority_dir = dir.parent().expect("partitions/<authority>/<id>");
        self.disk.sync_dir(authority_dir)?;
        // Not skipped because the directories exist: a process that stopped before syncing
        // them leaves them in place, and not durable.
        if !self.authority.durable.load(Ordering::Acquire) {
            self.disk.sync_dir(Path::new(PARTITIONS_DIR))?;
            self.disk.sync_dir(Path::new(""))?;
            self.authority.durable.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// Records durably which incarnation this replica is. Written before the replica starts,
    /// so a restart knows it even when nothing else the replica holds names it: a replica
    /// that acknowledged entries under one peer id must never come back under another.
    pub fn write_peer(&self, peer: PeerId) -> Result<(), DiskError> {
        self.create_dir()?;
        write_file_atomic(&*self.disk, &self.dir().join(PEER_NAME), peer.0.to_string().as_bytes())
    }

    /// The peer id `write_peer` recorded, if any.
    pub fn read_peer(&self) -> Result<Option<PeerId>, SnapshotError> {
        let path = self.dir().join(PEER_NAME);
        if !self.disk.exists(&path)? {
            return Ok(None);
        }
        let bytes = self.disk.read(&path)?;
        let parsed = std::str::from_utf8(&bytes).ok().and_then(|text| text.parse::<u64>().ok());
        match parsed {
            Some(id) => Ok(Some(PeerId(id))),
            None => Err(SnapshotError::Corrupt { path, reason: "not a peer id".into() }),
        }
    }

    pub fn authority(&self) -> &Arc<AuthorityDir> {
        &self.authority
    }

    /// The replica's directory: `partitions/<authority>/<partition>`.
    pub fn dir(&self) -> PathBuf {
        partition_dir(&self.authority.name, self.partition)
    }

    pub fn path(&self, position: LogPosition) -> PathBuf {
        self.dir().join(format!("{SNAPSHOT_PREFIX}{}-{}", position.index, position.term))
    }

    /// Writes a snapshot durably: `write_state` streams the state machine's encoding into the
    /// file (no copy of it is held in memory). Returns the file's size.
    pub fn save(
        &self,
        meta: &SnapshotMeta,
        write_state: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
    ) -> Result<u64, SnapshotError> {
        self.create_dir()?;
        let path = self.path(meta.position);
        let mut tmp_name = path.file_name().expect("a file name").to_os_string();
        tmp_name.push(TMP_SUFFIX);
        let tmp = self.dir().join(tmp_name);
        self.remove_if_present(&tmp)?;
        let mut writer = FileWriter::new(self.disk.open_append(&tmp)?);
        let header = codec::encode(meta);
        let write_err = |source| SnapshotError::Write { path: tmp.clone(), source };
        writer.write_all(MAGIC).map_err(write_err)?;
        writer.write_all(&(header.len() as u32).to_le_bytes()).map_err(write_err)?;
        writer.write_all(&header).map_err(write_err)?;
        write_state(&mut writer).map_err(write_err)?;
        let size_bytes = writer.finish()?;
        self.disk.rename(&tmp, &path)?;
        self.disk.sync_dir(&self.dir())?;
        Ok(size_bytes)
    }

    /// The rows of the snapshot at `position` (checked whole when it was saved or received),
    /// as a stream for the store to import.
    pub fn open_rows(&self, position: LogPosition) -> Result<Box<dyn std::io::Read + Send>, SnapshotError> {
        let path = self.path(position);
        let mut reader = FileReader::open(self.disk.clone(), path.clone())?;
        let meta = reader.read_header()?;
        if meta.position != position {
            let reason = format!("holds position {:?}, named {:?}", meta.position, position);
            return Err(SnapshotError::Corrupt { path, reason });
        }
        Ok(Box::new(reader))
    }

    /// Size of the snapshot file at `position`.
    pub fn size(&self, position: LogPosition) -> Result<u64, SnapshotError> {
        let path = self.path(position);
        if !self.disk.exists(&path)? {
            let error = std::io::Error::new(std::io::ErrorKind::NotFound, "no such snapshot");
            return Err(DiskError::new("open", &path, error).into());
        }
        Ok(self.disk.open_append(&path)?.len())
    }

    pub fn read_chunk(&self, position: LogPosition, offset: u64, len: usize) -> Result<Vec<u8>, SnapshotError> {
        Ok(self.disk.read_at(&self.path(position), offset, len)?)
    }

    /// Starts receiving a snapshot: an empty temporary file, replacing any earlier one.
    pub fn begin_incoming(&self) -> Result<Box<dyn DiskFile>, SnapshotError> {
        self.create_dir()?;
        let path = self.dir().join(INCOMING_NAME);
        self.remove_if_present(&path)?;
        Ok(self.disk.open_append(&path)?)
    }

    /// Finishes receiving the snapshot the leader's Raft message `announced` (position and
    /// membership): syncs the file, checks it whole and that it is that snapshot, and renames
    /// it to its final name. A file that does not check out is deleted.
    pub fn install_incoming(
        &self,
        mut file: Box<dyn DiskFile>,
        announced: &SnapshotMeta,
    ) -> Result<SnapshotMeta, SnapshotError> {
        file.sync()?;
        drop(file);
        let incoming = self.dir().join(INCOMING_NAME);
        let checked = check_file(&self.disk, &incoming).and_then(|meta| {
            if meta == *announced {
                Ok(meta)
            } else {
                let reason = format!("holds {meta:?}, announced {announced:?}");
                Err(SnapshotError::Corrupt { path: incoming.clone(), reason })
            }
        });
        match checked {
            Ok(loaded) => {
                self.disk.rename(&incoming, &self.path(announced.position))?;
                self.disk.sync_dir(&self.dir())?;
                Ok(loaded)
            }
            Err(error) => {
                self.remove_if_present(&incoming)?;
                Err(error)
            }
        }
    }

    /// Free bytes on the disk holding these files.
    pub fn available_bytes(&self) -> Result<u64, SnapshotError> {
        Ok(self.disk.available_bytes()?)
    }

    /// Drops an unfinished incoming snapshot.
    pub fn abandon_incoming(&self) -> Result<(), SnapshotError> {
        Ok(self.remove_if_present(&self.dir().join(INCOMING_NAME))?)
    }

    /// The snapshot files held, by position, with their paths (other files are not listed).
    pub fn snapshots(&self) -> Result<Vec<(LogPosition, PathBuf)>, DiskError> {
        let dir = self.dir();
        let names = self.disk.list(&dir)?;
        Ok(names.into_iter().filter_map(|name| Some((parse_name(&name)?, dir.join(name)))).collect())
    }

    /// Deletes snapshots older than `index` (superseded by a durable newer one).
    pub fn remove_older_than(&self, index: u64) -> Result<(), SnapshotError> {
        let dir = self.dir();
        for name in self.disk.list(&dir)? {
            if parse_name(&name).is_some_and(|p| p.index < index) {
                self.disk.remove_file(&dir.join(name))?;
            }
        }
        Ok(())
    }

    /// Deletes every file but the snapshot at `keep` and the peer id (on open: temporary files, snapshots the
    /// log never made current, snapshots superseded before they could be deleted).
    pub fn retain_only(&self, keep: Option<LogPosition>) -> Result<(), SnapshotError> {
        let keep_name = keep.map(|p| self.path(p).file_name().expect("a file name").to_string_lossy().into_owned());
        let dir = self.dir();
        for name in self.disk.list(&dir)? {
            if Some(&name) != keep_name.as_ref() && name != PEER_NAME {
                self.disk.remove_file(&dir.join(name))?;
            }
        }
        Ok(())
    }

    /// Deletes the replica's directory (it left the partition).
    pub fn remove_all(&self) -> Result<(), SnapshotError> {
        Ok(self.disk.remove_dir_all(&self.dir())?)
    }

    fn remove_if_present(&self, path: &Path) -> Result<(), DiskError> {
        match self.disk.remove_file(path) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }
}

fn parse_name(name: &str) -> Option<LogPosition> {
    let rest = name.strip_prefix(SNAPSHOT_PREFIX)?;
    let (index, term) = rest.split_once('-')?;
    Some(LogPosition { index: index.parse().ok()?, term: term.parse().ok()? })
}

/// Checks the snapshot file at `path` whole (length, magic, header, checksum), streaming it:
/// memory holds one read buffer, never the file. Returns its header. Never panics on bad
/// bytes; the rows themselves are checked when the store imports them.
pub fn check_file(disk: &Arc<dyn Disk>, path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut reader = FileReader::open(disk.clone(), path.to_owned())?;
    let meta = reader.read_header()?;
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match std::io::Read::read(&mut reader, &mut buffer) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(reader.corrupt(e.to_string())),
        }
    }
    if reader.crc != reader.expected_crc {
        return Err(reader.corrupt("checksum mismatch".into()));
    }
    Ok(meta)
}

/// Reads a snapshot file's bytes up to its trailer through `Disk::read_at`, a buffer at a
/// time, keeping the CRC32C of everything read.
struct FileReader {
    disk: Arc<dyn Disk>,
    path: PathBuf,
    /// Where the next buffer is read from.
    offset: u64,
    end: u64,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out.
    at: usize,
    crc: u32,
    /// What the trailer says the CRC of everything before it is.
    expected_crc: u32,
}

impl FileReader {
    /// Opens `path`, checking its size against its trailer.
    fn open(disk: Arc<dyn Disk>, path: PathBuf) -> Result<FileReader, SnapshotError> {
        let corrupt = |reason: String| SnapshotError::Corrupt { path: path.clone(), reason };
        if !disk.exists(&path)? {
            let error = std::io::Error::new(std::io::ErrorKind::NotFound, "no such snapshot");
            return Err(DiskError::new("open", &path, error).into());
        }
        let size_bytes = disk.open_append(&path)?.len();
        let minimum = (MAGIC.len() + 4 + TRAILER_BYTES) as u64;
        if size_bytes < minimum {
            return Err(corrupt(format!("{size_bytes} bytes is too short")));
        }
        let body_bytes = size_bytes - TRAILER_BYTES as u64;
        let trailer = disk.read_at(&path, body_bytes, TRAILER_BYTES)?;
        if trailer.len() != TRAILER_BYTES {
            return Err(corrupt("the trailer is cut".into()));
        }
        let length = u64::from_le_bytes(trailer[..8].try_into().expect("8 bytes"));
        let expected_crc = u32::from_le_bytes(trailer[8..].try_into().expect("4 bytes"));
        if length != body_bytes {
            return Err(corrupt(format!("trailer says {length} bytes, {body_bytes} present")));
        }
        Ok(FileReader { disk, path, offset: 0, end: body_bytes, buffer: Vec::new(), at: 0, crc: 0, expected_crc })
    }

    fn corrupt(&self, reason: String) -> SnapshotError {
        SnapshotError::Corrupt { path: self.path.clone(), reason }
    }

    /// Reads the magic and the header.
    fn read_header(&mut self) -> Result<SnapshotMeta, SnapshotError> {
        use std::io::Read as _;
        let mut fixed = [0u8; MAGIC.len() + 4];
        self.read_exact(&mut fixed).map_err(|e| self.corrupt(e.to_string()))?;
        if &fixed[..MAGIC.len()] != MAGIC {
            return Err(self.corrupt("not a snapshot file (bad magic)".into()));
        }
        let header_len = u32::from_le_bytes(fixed[MAGIC.len()..].try_into().expect("4 bytes")) as u64;
        if header_len > HEADER_BYTES_MAX || header_len > self.end - fixed.len() as u64 {
            return Err(self.corrupt(format!("header of {header_len} bytes")));
        }
        let mut header = vec![0u8; header_len as usize];
        self.read_exact(&mut header).map_err(|e| self.corrupt(e.to_string()))?;
        codec::decode("snapshot header", &header).map_err(|e: DecodeError| self.corrupt(e.to_string()))
    }
}

impl std::io::Read for FileReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buffer.len() {
            let len = (self.end - self.offset).min(SNAPSHOT_WRITE_BUFFER_BYTES as u64) as usize;
            if len == 0 {
                return Ok(0);
            }
            self.buffer =
                self.disk.read_at(&self.path, self.offset, len).map_err(|e| std::io::Error::other(e.to_string()))?;
            if self.buffer.len() != len {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "snapshot file shrank"));
            }
            self.crc = crc32c::crc32c_append(self.crc, &self.buffer);
            self.offset += len as u64;
            self.at = 0;
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Buffers appends to a file and keeps the length and CRC32C of everything written.
struct FileWriter {
    file: Box<dyn DiskFile>,
    buffer: Vec<u8>,
    crc: u32,
    length: u64,
}

impl FileWriter {
    fn new(file: Box<dyn DiskFile>) -> FileWriter {
        FileWriter { file, buffer: Vec::with_capacity(SNAPSHOT_WRITE_BUFFER_BYTES), crc: 0, length: 0 }
    }

    fn flush_buffer(&mut self) -> Result<(), DiskError> {
        if !self.buffer.is_empty() {
            self.file.append(&self.buffer)?;
            self.buffer.clear();
        }
        Ok(())
    }

    /// Appends the trailer and syncs; returns the file's size.
    fn finish(mut self) -> Result<u64, DiskError> {
        let mut trailer = [0u8; TRAILER_BYTES];
        trailer[..8].copy_from_slice(&self.length.to_le_bytes());
        trailer[8..].copy_from_slice(&self.crc.to_le_bytes());
        self.buffer.extend_from_slice(&trailer);
        self.flush_buffer()?;
        self.file.sync()?;
        Ok(self.length + TRAILER_BYTES as u64)
    }
}

impl Write for FileWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.crc = crc32c::crc32c_append(self.crc, bytes);
        self.length += bytes.len() as u64;
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= SNAPSHOT_WRITE_BUFFER_BYTES {
            self.flush_buffer().map_err(|e| std::io::Error::other(e.to_string()))?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name("snap-12-3"), Some(LogPosition { index: 12, term: 3 }));
        assert_eq!(parse_name("snap-12-3.tmp"), None);
        assert_eq!(parse_name("incoming.tmp"), None);
    }
}
