//! The simulated [`Disk`]: in memory, deterministic from a seed, with a real file system's
//! crash semantics and injectable faults.
//!
//! What survives [`SimDisk::crash`]:
//! - of an appended file, its bytes up to its last successful sync; of the bytes appended
//!   after it, a random prefix, whose last bytes may be torn (zero-filled or garbled, at most
//!   [`SIM_TORN_BYTES_MAX`]), as when a machine loses power in the middle of a write-back;
//! - of a file written in place ([`Disk::open_positional`]), its bytes as of its last
//!   successful sync, then each write and length change made since, in order, each decided
//!   on its own: a length change survives whole or not at all; a write survives, vanishes or
//!   tears, and a torn write leaves every byte of its range either old or new (the contract
//!   redb relies on: it checksums its pages and needs no atomic sector);
//! - a directory's entries as of its last successful [`Disk::sync_dir`]: creations, renames
//!   and removals not followed by one are undone.
//!
//! Faults: failing syncs, failing appends (a full disk), and a power loss scheduled after a
//! number of operations, which freezes the disk in the middle of whatever the code was doing.
//!
//! Files and directories are inodes, as on a real file system, so a renamed directory takes
//! its whole subtree along. No real I/O, no threads, no clock: only the seed decides.

use crate::limits::SIM_TORN_BYTES_MAX;
use cohort_core::env::{Disk, DiskError, DiskFile, PositionalFile};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

type NodeId = u64;
const ROOT: NodeId = 0;

/// Counters of what the disk was asked to do, for tests that count fsyncs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    pub appends: u64,
    pub appended_bytes: u64,
    pub file_syncs: u64,
    pub dir_syncs: u64,
    pub truncates: u64,
    pub crashes: u64,
}

/// An in-memory [`Disk`] that loses and tears unsynced data at [`SimDisk::crash`].
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

struct SimState {
    nodes: BTreeMap<NodeId, Node>,
    next_node: NodeId,
    rng: StdRng,
    /// Bumped at every crash: handles opened before it fail, as the process that held them died.
    generation: u64,
    fail_syncs: bool,
    fail_appends: bool,
    /// Mutating operations left before the power goes out (see `set_power_loss_after_ops`).
    power_loss_after_ops: Option<u64>,
    /// The power went out: every operation fails until the next crash.
    powered_off: bool,
    /// Chance that a crash tears the end of a file's surviving unsynced bytes.
    torn_write_probability: f64,
    /// What `available_bytes` reports.
    available_bytes: u64,
    stats: SimDiskStats,
}

enum Node {
    File(FileNode),
    Dir(DirNode),
}

struct FileNode {
    /// Every byte of the file, durable or not.
    data: Vec<u8>,
    /// `data[..synced_len]` survives a crash intact (appended files).
    synced_len: usize,
    /// In-place changes since the last sync, oldest first, each with what it replaced, so that
    /// a crash can rebuild the synced bytes and decide each change on its own.
    unsynced: Vec<InPlace>,
}

/// One in-place change not yet synced.
enum InPlace {
    Write { offset: usize, old: Vec<u8>, new: Vec<u8> },
    SetLen { old_len: usize, new_len: usize, cut: Vec<u8> },
}

impl FileNode {
    fn new() -> FileNode {
        FileNode { data: Vec::new(), synced_len: 0, unsynced: Vec::new() }
    }

    fn sync(&mut self) {
        self.synced_len = self.data.len();
        self.unsynced.clear();
    }

    /// The bytes as of the last sync, from the current ones and the undo records.
    fn synced_image(&self) -> Vec<u8> {
        let mut image = self.data.clone();
        for change in self.unsynced.iter().rev() {
            match change {
                InPlace::Write { offset, old, .. } => image[*offset..offset + old.len()].copy_from_slice(old),
                InPlace::SetLen { old_len, cut, .. } => {
                    image.truncate(*old_len.min(&image.len()));
                    image.extend_from_slice(cut);
                    image.resize(*old_len, 0);
                }
            }
        }
        image
    }

    /// What an in-place file holds after a crash (see the module docs).
    fn crash_in_place(&mut self, rng: &mut StdRng) {
        let mut image = self.synced_image();
        for change in &self.unsynced {
            match change {
                InPlace::SetLen { new_len, .. } => {
                    if rng.gen_bool(0.5) {
                        image.resize(*new_len, 0);
                    }
                }
                InPlace::Write { offset, new, .. } => {
                    // Bytes past a length change that did not survive are gone with it.
                    let end = (offset + new.len()).min(image.len());
                    if *offset >= end {
                        continue;
                    }
                    let range = *offset..end;
                    match rng.gen_range(0..3) {
                        0 => image[range.clone()].copy_from_slice(&new[..range.len()]),
                        1 => {} // vanished
                        _ => {
                            for (i, byte) in range.enumerate() {
                                if rng.gen_bool(0.5) {
                                    image[byte] = new[i];
                                }
                            }
                        }
                    }
                }
            }
        }
        self.data = image;
    }
}

#[derive(Default)]
struct DirNode {
    entries: BTreeMap<String, NodeId>,
    /// The entries as of the last `sync_dir`: what a crash leaves.
    durable: BTreeMap<String, NodeId>,
}

fn error(op: &'static str, path: &Path, kind: io::ErrorKind, what: &str) -> DiskError {
    DiskError::new(op, path, io::Error::new(kind, what.to_owned()))
}

fn not_found(op: &'static str, path: &Path) -> DiskError {
    error(op, path, io::ErrorKind::NotFound, "no such file or directory")
}

/// The names along `path`. Paths come from our own code, so one that escapes the root is a bug.
fn names(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => out.push(name.to_str().expect("simulated disk paths are UTF-8").to_owned()),
            Component::CurDir => {}
            other => panic!("disk paths are relative and stay under the root: {} has {other:?}", path.display()),
        }
    }
    out
}

impl SimState {
    /// Fails every operation while the power is out, and counts mutating ones down to a
    /// scheduled power loss.
    fn power(&mut self, op: &'static str, path: &Path, mutating: bool) -> Result<(), DiskError> {
        if !self.powered_off && mutating {
            match &mut self.power_loss_after_ops {
                Some(0) => {
                    self.powered_off = true;
                    self.power_loss_after_ops = None;
                }
                Some(left) => *left -= 1,
                None => {}
            }
        }
        if self.powered_off {
            return Err(error(op, path, io::ErrorKind::Other, "power lost (simulated)"));
        }
        Ok(())
    }

    fn dir(&self, id: NodeId) -> Option<&DirNode> {
        match self.nodes.get(&id) {
            Some(Node::Dir(dir)) => Some(dir),
            _ => None,
        }
    }

    fn dir_mut(&mut self, id: NodeId) -> &mut DirNode {
        match self.nodes.get_mut(&id) {
            Some(Node::Dir(dir)) => dir,
            _ => panic!("node {id} is a directory"),
        }
    }

    fn file_mut(&mut self, id: NodeId) -> Option<&mut FileNode> {
        match self.nodes.get_mut(&id) {
            Some(Node::File(file)) => Some(file),
            _ => None,
        }
    }

    /// The node at `names`, following current (not durable) entries.
    fn lookup(&self, names: &[String]) -> Option<NodeId> {
        let mut id = ROOT;
        for name in names {
            id = *self.dir(id)?.entries.get(name)?;
        }
        Some(id)
    }

    /// The directory holding the last of `names`, and that last name.
    fn parent<'n>(&self, op: &'static str, path: &Path, names: &'n [String]) -> Result<(NodeId, &'n str), DiskError> {
        let (last, dirs) =
            names.split_last().ok_or_else(|| error(op, path, io::ErrorKind::InvalidInput, "the root has no parent"))?;
        let parent = self.lookup(dirs).ok_or_else(|| not_found(op, path))?;
        if self.dir(parent).is_none() {
            return Err(error(op, path, io::ErrorKind::Other, "not a directory"));
        }
        Ok((parent, last))
    }

    fn new_node(&mut self, node: Node) -> NodeId {
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(id, node);
        id
    }

    fn crash(&mut self) {
        self.generation += 1;
        self.powered_off = false;
        self.power_loss_after_ops = None;
        self.stats.crashes += 1;
        let torn_probability = self.torn_write_probability;
        // Iterate ids in order so that the rng is consumed the same way for the same seed.
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let rng = &mut self.rng;
            match self.nodes.get_mut(&id).expect("listed node") {
                Node::Dir(dir) => dir.entries = dir.durable.clone(),
                Node::File(file) if !file.unsynced.is_empty() => {
                    file.crash_in_place(rng);
                    file.sync();
                }
                Node::File(file) => {
                    let unsynced = file.data.len() - file.synced_len;
                    let kept = rng.gen_range(0..=unsynced);
                    let len = file.synced_len + kept;
                    file.data.truncate(len);
                    if kept > 0 && rng.gen_bool(torn_probability) {
                        // Tear only bytes that were never synced: synced bytes are sacred.
                        let torn = rng.gen_range(1..=kept.min(SIM_TORN_BYTES_MAX));
                        let tail = &mut file.data[len - torn..];
                        if rng.gen_bool(0.5) {
                            tail.fill(0);
                        } else {
                            rng.fill(tail);
                        }
                    }
                    // What the disk holds after a crash is all there is: it is durable now.
                    file.synced_len = file.data.len();
                }
            }
        }
        // Forget nodes no surviving directory entry reaches.
        let mut reachable = BTreeSet::from([ROOT]);
        let mut stack = vec![ROOT];
        while let Some(id) = stack.pop() {
            if let Some(dir) = self.dir(id) {
                for &child in dir.entries.values() {
                    if reachable.insert(child) {
                        stack.push(child);
                    }
                }
            }
        }
        self.nodes.retain(|id, _| reachable.contains(id));
    }
}

impl SimDisk {
    /// An empty disk whose crash outcomes are decided by `seed`.
    pub fn new(seed: u64) -> SimDisk {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(DirNode::default()));
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                nodes,
                next_node: ROOT + 1,
                rng: StdRng::seed_from_u64(seed),
                generation: 0,
                fail_syncs: false,
                fail_appends: false,
                power_loss_after_ops: None,
                powered_off: false,
                torn_write_probability: 0.25,
                available_bytes: u64::MAX,
                stats: SimDiskStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves the state consistent enough to inspect: every
        // mutation is a single step.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loses what a power cut would lose (see the module docs). Handles opened before the crash
    /// fail from now on; open the files again.
    pub fn crash(&self) {
        self.lock().crash();
    }

    /// The disk is lost or wiped: everything on it is gone, synced or not, and handles opened
    /// before fail from now on. (A crash first, so that the node's last writes are lost too.)
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.crash();
        state.nodes.clear();
        state.nodes.insert(ROOT, Node::Dir(DirNode::default()));
    }

    /// While set, file and directory syncs (and `truncate`, which syncs) fail and make nothing
    /// durable.
    pub fn set_fail_syncs(&self, fail: bool) {
        self.lock().fail_syncs = fail;
    }

    /// What `available_bytes` reports from now on (`u64::MAX` at first). Appends do not
    /// consume it; see `set_fail_appends` for a disk that is full.
    pub fn set_available_bytes(&self, bytes: u64) {
        self.lock().available_bytes = bytes;
    }

    /// While set, appends fail and write nothing, as on a full disk.
    pub fn set_fail_appends(&self, fail: bool) {
        self.lock().fail_appends = fail;
    }

    /// Cuts the power after `ops` more mutating operations (appends, syncs, creations,
    /// renames, removals, truncations) succeed: from then on every operation fails, as if the
    /// machine died right there, until [`SimDisk::crash`] turns the power back on. `None`
    /// cancels a scheduled loss (not one that happened).
    pub fn set_power_loss_after_ops(&self, ops: Option<u64>) {
        self.lock().power_loss_after_ops = ops;
    }

    /// Whether a scheduled power loss happened (and no crash since).
    pub fn is_powered_off(&self) -> bool {
        self.lock().powered_off
    }

    /// Chance (0.0 to 1.0) that a crash tears the end of a file's surviving unsynced bytes.
    pub fn set_torn_write_probability(&self, probability: f64) {
        assert!((0.0..=1.0).contains(&probability), "a probability is within 0..=1");
        self.lock().torn_write_probability = probability;
    }

    pub fn stats(&self) -> SimDiskStats {
        self.lock().stats
    }

    /// Bytes of `path` that would survive a crash now, for tests; `None` if it is no file.
    pub fn synced_len(&self, path: &Path) -> Option<usize> {
        let mut state = self.lock();
        let id = state.lookup(&names(path))?;
        state.file_mut(id).map(|file| file.synced_len)
    }
}

impl SimDisk {
    /// A handle on the file at `path`, created empty if missing.
    fn open_file(&self, op: &'static str, path: &Path) -> Result<SimFile, DiskError> {
        let mut state = self.lock();
        state.power(op, path, true)?;
        let names = names(path);
        let (parent, name) = state.parent(op, path, &names)?;
        let id = match state.dir(parent).expect("parent is a directory").entries.get(name) {
            Some(&id) => {
                if state.file_mut(id).is_none() {
                    return Err(error(op, path, io::ErrorKind::Other, "is a directory"));
                }
                id
            }
            None => {
                let id = state.new_node(Node::File(FileNode::new()));
                state.dir_mut(parent).entries.insert(name.to_owned(), id);
                id
            }
        };
        Ok(SimFile { state: Arc::clone(&self.state), node: id, generation: state.generation, path: path.to_owned() })
    }
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SimDisk")
            .field("nodes", &state.nodes.len())
            .field("stats", &state.stats)
            .finish_non_exhaustive()
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("create_dir_all", dir, true)?;
        let mut id = ROOT;
        for name in names(dir) {
            let next = match state.dir(id) {
                Some(d) => d.entries.get(&name).copied(),
                None => return Err(error("create_dir_all", dir, io::ErrorKind::Other, "not a directory")),
            };
            id = match next {
                Some(next) => next,
                None => {
                    let new = state.new_node(Node::Dir(DirNode::default()));
                    state.dir_mut(id).entries.insert(name, new);
                    new
                }
            };
        }
        if state.dir(id).is_none() {
            return Err(error("create_dir_all", dir, io::ErrorKind::AlreadyExists, "a file is in the way"));
        }
        Ok(())
    }

    fn open_append(&self, path: &Path) -> Result<Box<dyn DiskFile>, DiskError> {
        Ok(Box::new(self.open_file("open_append", path)?))
    }

    fn open_positional(&self, path: &Path) -> Result<Box<dyn PositionalFile>, DiskError> {
        Ok(Box::new(self.open_file("open_positional", path)?))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, DiskError> {
        let mut state = self.lock();
        state.power("read", path, false)?;
        let id = state.lookup(&names(path)).ok_or_else(|| not_found("read", path))?;
        let file = state.file_mut(id).ok_or_else(|| error("read", path, io::ErrorKind::Other, "is a directory"))?;
        Ok(file.data.clone())
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, DiskError> {
        let mut state = self.lock();
        state.power("read_at", path, false)?;
        let id = state.lookup(&names(path)).ok_or_else(|| not_found("read_at", path))?;
        let file = state.file_mut(id).ok_or_else(|| error("read_at", path, io::ErrorKind::Other, "is a directory"))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(file.data.len());
        let end = start.saturating_add(len).min(file.data.len());
        Ok(file.data[start..end].to_vec())
    }

    fn truncate(&self, path: &Path, len: u64) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("truncate", path, true)?;
        if state.fail_syncs {
            return Err(error("truncate", path, io::ErrorKind::Other, "injected sync failure"));
        }
        let id = state.lookup(&names(path)).ok_or_else(|| not_found("truncate", path))?;
        let file = state.file_mut(id).ok_or_else(|| error("truncate", path, io::ErrorKind::Other, "is a directory"))?;
        let len = usize::try_from(len).expect("simulated files fit in memory");
        file.data.resize(len, 0);
        file.sync();
        state.stats.truncates += 1;
        Ok(())
    }

    fn list(&self, dir: &Path) -> Result<Vec<String>, DiskError> {
        let mut state = self.lock();
        state.power("list", dir, false)?;
        let Some(id) = state.lookup(&names(dir)) else {
            return Ok(Vec::new());
        };
        let dir_node = state.dir(id).ok_or_else(|| error("list", dir, io::ErrorKind::Other, "not a directory"))?;
        // BTreeMap keys are already sorted.
        Ok(dir_node.entries.keys().cloned().collect())
    }

    fn rename(&self, from: &Path, to: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("rename", from, true)?;
        let from_names = names(from);
        let to_names = names(to);
        let (from_parent, from_name) = state.parent("rename", from, &from_names)?;
        let (to_parent, to_name) = state.parent("rename", to, &to_names)?;
        let id = *state
            .dir(from_parent)
            .expect("parent is a directory")
            .entries
            .get(from_name)
            .ok_or_else(|| not_found("rename", from))?;
        if to_names.starts_with(&from_names) && to_names != from_names {
            return Err(error("rename", from, io::ErrorKind::InvalidInput, "cannot move a directory into itself"));
        }
        if let Some(&existing) = state.dir(to_parent).expect("parent is a directory").entries.get(to_name) {
            if state.dir(existing).is_some() {
                return Err(error("rename", to, io::ErrorKind::Other, "a directory is in the way"));
            }
        }
        state.dir_mut(from_parent).entries.remove(from_name);
        state.dir_mut(to_parent).entries.insert(to_name.to_owned(), id);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("remove_file", path, true)?;
        let names = names(path);
        let (parent, name) = state.parent("remove_file", path, &names)?;
        let id = *state
            .dir(parent)
            .expect("parent is a directory")
            .entries
            .get(name)
            .ok_or_else(|| not_found("remove_file", path))?;
        if state.file_mut(id).is_none() {
            return Err(error("remove_file", path, io::ErrorKind::Other, "is a directory"));
        }
        state.dir_mut(parent).entries.remove(name);
        Ok(())
    }

    fn remove_dir_all(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("remove_dir_all", dir, true)?;
        let names = names(dir);
        assert!(!names.is_empty(), "remove_dir_all never removes the disk's root");
        let (parent, name) = state.parent("remove_dir_all", dir, &names)?;
        let id = *state
            .dir(parent)
            .expect("parent is a directory")
            .entries
            .get(name)
            .ok_or_else(|| not_found("remove_dir_all", dir))?;
        if state.dir(id).is_none() {
            return Err(error("remove_dir_all", dir, io::ErrorKind::Other, "not a directory"));
        }
        // Unlinking the directory makes its subtree unreachable; a crash before the parent's
        // sync brings it back whole, as its inodes stay until then.
        state.dir_mut(parent).entries.remove(name);
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> Result<(), DiskError> {
        let mut state = self.lock();
        state.power("sync_dir", dir, true)?;
        if state.fail_syncs {
            return Err(error("sync_dir", dir, io::ErrorKind::Other, "injected sync failure"));
        }
        let id = state.lookup(&names(dir)).ok_or_else(|| not_found("sync_dir", dir))?;
        if state.dir(id).is_none() {
            return Err(error("sync_dir", dir, io::ErrorKind::Other, "not a directory"));
        }
        let node = state.dir_mut(id);
        node.durable = node.entries.clone();
        state.stats.dir_syncs += 1;
        Ok(())
    }

    fn exists(&self, path: &Path) -> Result<bool, DiskError> {
        let mut state = self.lock();
        state.power("exists", path, false)?;
        Ok(state.lookup(&names(path)).is_some())
    }

    fn available_bytes(&self) -> Result<u64, DiskError> {
        let mut state = self.lock();
        state.power("available_bytes", Path::new(""), false)?;
        Ok(state.available_bytes)
    }
}

/// A file of [`SimDisk`] opened for appending.
struct SimFile {
    state: Arc<Mutex<SimState>>,
    node: NodeId,
    generation: u64,
    path: PathBuf,
}

impl SimFile {
    fn lock(&self, op: &'static str) -> Result<MutexGuard<'_, SimState>, DiskError> {
        let state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if state.generation != self.generation {
            return Err(error(op, &self.path, io::ErrorKind::Other, "handle opened before a crash"));
        }
        Ok(state)
    }
}

impl DiskFile for SimFile {
    fn append(&mut self, bytes: &[u8]) -> Result<(), DiskError> {
        let mut state = self.lock("append")?;
        state.power("append", &self.path, true)?;
        if state.fail_appends {
            return Err(error("append", &self.path, io::ErrorKind::Other, "no space left on device (injected)"));
        }
        state.stats.appends += 1;
        state.stats.appended_bytes += bytes.len() as u64;
        let file = state.file_mut(self.node).expect("an open file's inode lives until a crash");
        assert!(file.unsynced.is_empty(), "{}: appended while written in place and unsynced", self.path.display());
        file.data.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self) -> Result<(), DiskError> {
        let mut state = self.lock("sync")?;
        state.power("sync", &self.path, true)?;
        if state.fail_syncs {
            return Err(error("sync", &self.path, io::ErrorKind::Other, "injected sync failure"));
        }
        state.stats.file_syncs += 1;
        state.file_mut(self.node).expect("an open file's inode lives until a crash").sync();
        Ok(())
    }

    fn len(&self) -> u64 {
        match self.lock("len") {
            Ok(mut state) => state.file_mut(self.node).map_or(0, |file| file.data.len() as u64),
            // A stale handle's file is gone as far as its owner can tell.
            Err(_) => 0,
        }
    }
}

impl PositionalFile for SimFile {
    fn len(&self) -> Result<u64, DiskError> {
        let mut state = self.lock("len")?;
        state.power("len", &self.path, false)?;
        Ok(state.file_mut(self.node).expect("an open file's inode lives until a crash").data.len() as u64)
    }

    fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DiskError> {
        let mut state = self.lock("read_at")?;
        state.power("read_at", &self.path, false)?;
        let file = state.file_mut(self.node).expect("an open file's inode lives until a crash");
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start.checked_add(out.len()).filter(|&end| end <= file.data.len()) {
            Some(end) => {
                out.copy_from_slice(&file.data[start..end]);
                Ok(())
            }
            None => Err(error("read_at", &self.path, io::ErrorKind::UnexpectedEof, "read past the end of the file")),
        }
    }

    fn write_at(&self, offset: u64, bytes: &[u8]) -> Result<(), DiskError> {
        let mut state = self.lock("write_at")?;
        state.power("write_at", &self.path, true)?;
        if state.fail_appends {
            return Err(error("write_at", &self.path, io::ErrorKind::Other, "no space left on device (injected)"));
        }
        state.stats.appends += 1;
        state.stats.appended_bytes += bytes.len() as u64;
        let file = state.file_mut(self.node).expect("an open file's inode lives until a crash");
        assert_eq!(file.synced_len, file.data.len(), "{}: written in place with unsynced appends", self.path.display());
        let start = usize::try_from(offset).expect("simulated files fit in memory");
        let end = start.checked_add(bytes.len()).expect("simulated files fit in memory");
        if end > file.data.len() {
            // redb sizes its file with set_len before writing into it; a write past the end
            // would extend it, which the crash model does not cover.
            return Err(error("write_at", &self.path, io::ErrorKind::InvalidInput, "write past the end of the file"));
        }
        let old = file.data[start..end].to_vec();
        file.data[start..end].copy_from_slice(bytes);
        file.unsynced.push(InPlace::Write { offset: start, old, new: bytes.to_vec() });
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), DiskError> {
        let mut state = self.lock("set_len")?;
        state.power("set_len", &self.path, true)?;
        let file = state.file_mut(self.node).expect("an open file's inode lives until a crash");
        let new_len = usize::try_from(len).expect("simulated files fit in memory");
        let old_len = file.data.len();
        if new_len > old_len && state.fail_appends {
            return Err(error("set_len", &self.path, io::ErrorKind::Other, "no space left on device (injected)"));
        }
        let file = state.file_mut(self.node).expect("an open file's inode lives until a crash");
        assert_eq!(file.synced_len, file.data.len(), "{}: resized with unsynced appends", self.path.display());
        let cut = file.data.get(new_len..).map(<[u8]>::to_vec).unwrap_or_default();
        file.data.resize(new_len, 0);
        file.unsynced.push(InPlace::SetLen { old_len, new_len, cut });
        // Appends' durable prefix follows the length: an in-place file has no unsynced tail.
        file.synced_len = new_len;
        Ok(())
    }

    fn sync(&self) -> Result<(), DiskError> {
        let mut state = self.lock("sync")?;
        state.power("sync", &self.path, true)?;
        if state.fail_syncs {
            return Err(error("sync", &self.path, io::ErrorKind::Other, "injected sync failure"));
        }
        state.stats.file_syncs += 1;
        state.file_mut(self.node).expect("an open file's inode lives until a crash").sync();
        Ok(())
    }
}
