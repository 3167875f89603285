//! What a partition's replicated state machine is asked to do, and what it answers: commands
//! (`Command`, `WriteOp`), their results and rejections, queries, and the names they use
//! (object ids, reference names, repository paths), each validated on construction.
//!
//! The state itself lives in the node's store and is changed there (`crate::store`), by
//! committed commands only. Checks that decide a command's fate run at apply time (on every
//! replica, against the state at that index); [`validate`] repeats the stateless ones before
//! proposing only so that garbage is not replicated.
//!
//! Files: `objects.rs` (object ids and Git's hashing), `refs.rs` (reference names and
//! compare-and-set), `path.rs` (repository ids), `directory.rs` (partition members).

mod directory;
mod new_object;
mod objects;
mod path;
mod refs;
#[cfg(test)]
mod tests;

pub use directory::{
    check_members, check_peers, PartitionInfo, DIRECTORY_PARTITIONS_MAX, DIRECTORY_ROUTES_MAX, PAGE_ROUTES_MAX,
    PARTITIONS_PAGE_MAX, PARTITION_LEARNERS_MAX, PARTITION_VOTERS_MAX, ROUTES_PAGE_MAX,
};
pub use new_object::NewObject;
pub use objects::{ObjectHasher, ObjectKind, ObjectKindParseError, Oid, OidParseError};
pub use path::{validate_storage_name, RelativePath, RepoId, RELATIVE_PATH_BYTES_MAX, STORAGE_NAME_BYTES_MAX};
pub use refs::{Expected, RefName, RefUpdate, RefValue, REF_NAME_BYTES_MAX};

use crate::codec::{self, DecodeError};
use crate::ids::{ClientId, NodeId, PartitionId, PeerId};
use crate::limits::COMMAND_SIZE_BYTES_MAX;
use directory::Nodes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Largest object content a `Transaction` carries whole, in bytes; larger objects are
/// uploaded in pieces (`BeginUpload`).
pub const OBJECT_SIZE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest object an upload may hold, whatever a node's configured limit (which is lower).
pub const UPLOAD_SIZE_BYTES_MAX: u64 = 1 << 40;
/// Bounds of an upload's piece size: small pieces for tests and the simulator, large ones to
/// keep the per-entry overhead low; one piece must fit in a command with room to spare.
pub const UPLOAD_CHUNK_BYTES_MIN: u32 = 1024;
pub const UPLOAD_CHUNK_BYTES_MAX: u32 = 1024 * 1024;
/// Uploads in progress in one partition (each holds its pieces until it finishes or aborts).
pub const PARTITION_UPLOADS_MAX: u64 = 1024;
/// Longest piece of an object one range read answers.
pub const OBJECT_RANGE_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Objects in one transaction.
pub const TRANSACTION_OBJECTS_MAX: usize = 4096;
/// Reference updates in one transaction.
pub const TRANSACTION_REF_UPDATES_MAX: usize = 4096;
/// References one repository holds.
pub const REPOSITORY_REFS_MAX: usize = 1024 * 1024;
/// Repositories one partition holds.
pub const PARTITION_REPOSITORIES_MAX: usize = 64 * 1024;
/// Untrusted text echoed in a rejection is cut to this many bytes, so that remembered
/// rejections (the dedup table) stay small.
pub const REJECTION_ECHO_BYTES_MAX: usize = 256;

// An object must fit in a command, and so must an upload's piece.
const _: () = assert!(OBJECT_SIZE_BYTES_MAX < COMMAND_SIZE_BYTES_MAX);
const _: () = assert!((UPLOAD_CHUNK_BYTES_MAX as usize) < COMMAND_SIZE_BYTES_MAX / 2);
// A fork copies its parent's references, which must fit in the fork.
const _: () = assert!(TRANSACTION_REF_UPDATES_MAX <= REPOSITORY_REFS_MAX);

/// A client's write, as proposed and replicated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub client: ClientId,
    /// With `client`, names the write across retries: a retry carries the same pair.
    pub seq: u64,
    pub op: WriteOp,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a command; bytes beyond `COMMAND_SIZE_BYTES_MAX` or invalid names are errors.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        if bytes.len() > COMMAND_SIZE_BYTES_MAX {
            return Err(DecodeError {
                what: "command",
                reason: format!("{} bytes, more than {COMMAND_SIZE_BYTES_MAX}", bytes.len()),
            });
        }
        codec::decode("command", bytes)
    }
}

/// What a command changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// Creates an empty repository, or a fork of `fork_of` (same storage, same partition): the
    /// fork starts with the parent's references and holds the objects the parent holds at
    /// that index. Objects written to the parent later are not shared.
    CreateRepository { repo: RepoId, fork_of: Option<RelativePath> },
    /// Deletes a repository; objects no other repository holds are dropped.
    DeleteRepository { repo: RepoId },
    /// Adds objects and updates references atomically: all or nothing.
    Transaction {
        repo: RepoId,
        #[serde(deserialize_with = "new_object::deserialize_objects")]
        objects: Vec<NewObject>,
        refs: Vec<RefUpdate>,
    },
    /// Directory (partition 0): allocates the next partition id, created on `repo.storage`
    /// with `voters` and no learners, and routes `repo` to it. The result names the id.
    AllocatePartition { repo: RepoId, voters: Vec<NodeId> },
    /// Directory: routes `repo` to an existing partition (a fork placed in its parent's).
    RouteRepository { repo: RepoId, partition: PartitionId },
    /// Directory: removes the route of `repo`.
    UnrouteRepository { repo: RepoId },
    /// Directory: records a partition's membership, as its leader knew it through the
    /// partition's log index `as_of` (ignored if the directory records a later one).
    SetPartitionMembers {
        partition: PartitionId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        peers: Vec<PeerId>,
        as_of: u64,
    },
    /// Starts the upload of one object of `size_bytes` into `repo`, sent in pieces of
    /// `chunk_bytes` (the last one may be shorter). The upload is named by the command's client
    /// and sequence: the same pair finds the same upload again, and the write that finishes it
    /// carries that pair too. Not recorded in the dedup table (its `FinishUpload` is); once the
    /// upload has finished, the pair answers the finished write's result. The result's index
    /// names the upload's pieces.
    BeginUpload { repo: RepoId, kind: ObjectKind, size_bytes: u64, chunk_bytes: u32 },
    /// Stores the piece at `offset` of the upload named by the command's client and sequence.
    /// Pieces arrive in order; one already stored is not stored again (a retry), so this is
    /// idempotent and not recorded in the dedup table.
    UploadChunk {
        repo: RepoId,
        offset: u64,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Ends the upload named by the command's client and sequence: checks it holds every piece
    /// and that its content is object `oid`, then adds the object to `repo` and applies `refs`,
    /// atomically, as a `Transaction` would. Unlike other writes, a rejected one also drops the
    /// upload: its space is never kept for a write that cannot succeed.
    FinishUpload { repo: RepoId, oid: Oid, refs: Vec<RefUpdate> },
    /// Drops the upload named by the command's client and sequence, and its pieces (an upload
    /// its client abandoned). Not recorded in the dedup table; nothing if there is none.
    AbortUpload { repo: RepoId },
}

impl WriteOp {
    /// Whether applying this operation records its result in the dedup table. Upload pieces
    /// are idempotent by offset; beginning and aborting share their pair with the finishing
    /// write, whose result is the one to remember.
    pub fn is_recorded(&self) -> bool {
        !matches!(self, WriteOp::BeginUpload { .. } | WriteOp::UploadChunk { .. } | WriteOp::AbortUpload { .. })
    }

    /// The object bytes it carries: all but a few hundred bytes of a large command, which is
    /// what queues bound it by without encoding it.
    pub fn data_bytes(&self) -> usize {
        match self {
            WriteOp::Transaction { objects, .. } => objects.iter().map(|object| object.data.len()).sum(),
            WriteOp::UploadChunk { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Does the work per byte that proposing this operation takes (`NewObject::prepare`).
    pub fn prepare(&self) {
        if let WriteOp::Transaction { objects, .. } = self {
            objects.iter().for_each(NewObject::prepare);
        }
    }
}

/// A committed write's answer (the same on every replica and for every retry).
pub type WriteResult = Result<WriteOk, Rejection>;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOk {
    /// Raft index at which the write was applied (a retry answers the original index).
    pub index: u64,
    /// Ids of the transaction's objects, in its order; empty for other operations.
    pub object_ids: Vec<Oid>,
    /// The partition an `AllocatePartition` allocated; `None` for other operations.
    pub partition: Option<PartitionId>,
}

/// Where an upload stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadStatus {
    pub size_bytes: u64,
    /// Content stored so far, from the start: the next piece goes at this offset.
    pub received_bytes: u64,
}

/// One piece of an object's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRange {
    pub kind: ObjectKind,
    /// The whole object's size.
    pub size_bytes: u64,
    /// The content from the requested offset: up to the requested length, less at the end.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
}

/// An object of a page of a repository's objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PagedObject {
    /// Git's loose encoding (zlib), whole.
    Loose(#[serde(with = "serde_bytes")] Vec<u8>),
    /// An object too large for a page: read it by ranges.
    Large { kind: ObjectKind, size_bytes: u64 },
}

/// Why a write or read was refused. Deterministic: decided from the command and the state at
/// its index, so every replica reaches the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("repository {repo} already exists")]
    RepositoryExists { repo: RepoId },
    #[error("repository {repo} not found")]
    RepositoryNotFound { repo: RepoId },
    #[error("partition holds {count_max} repositories, its limit")]
    TooManyRepositories { count_max: u64 },
    #[error("invalid storage name {storage:?}: {reason}")]
    InvalidStorageName { storage: String, reason: String },
    #[error("invalid relative path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    #[error("invalid reference name {name:?}: {reason}")]
    InvalidRefName { name: String, reason: String },
    #[error("symbolic reference {name} must point under refs/, not to {target}")]
    InvalidSymbolicTarget { name: RefName, target: RefName },
    #[error("object id mismatch: claimed {claimed}, content hashes to {actual}")]
    ObjectIdMismatch { claimed: Oid, actual: Oid },
    #[error("object {oid} not found in the repository or the transaction")]
    ObjectNotFound { oid: Oid },
    #[error("object {oid} is {size_bytes} bytes, more than the limit of {size_bytes_max}")]
    ObjectTooLarge { oid: Oid, size_bytes: u64, size_bytes_max: u64 },
    #[error("object {oid} has the id of a different object (SHA-1 collision)")]
    ObjectHashCollision { oid: Oid },
    #[error("transaction has {count} objects, more than {count_max}")]
    TooManyObjects { count: u64, count_max: u64 },
    #[error("transaction has {count} reference updates, more than {count_max}")]
    TooManyRefUpdates { count: u64, count_max: u64 },
    #[error("reference {name} is updated twice in one transaction")]
    DuplicateRefUpdate { name: RefName },
    #[error("repository {repo} would hold {count} references, more than {count_max}")]
    TooManyRefs { repo: RepoId, count: u64, count_max: u64 },
    #[error("precondition failed on {name}: expected {expected}, current value is {}", display_current(.current))]
    PreconditionFailed { name: RefName, expected: Expected, current: Option<RefValue> },
    #[error("command encodes to {size_bytes} bytes, more than {size_bytes_max}")]
    CommandTooLarge { size_bytes: u64, size_bytes_max: u64 },
    #[error("no upload of client {client} sequence {seq} is in progress (it finished, was abandoned, or never began)")]
    UploadNotFound { client: ClientId, seq: u64 },
    #[error("upload of client {client} sequence {seq} was begun with other parameters ({begun})")]
    UploadMismatch { client: ClientId, seq: u64, begun: String },
    #[error("upload piece at offset {offset} is out of order: the next piece goes at {expected}")]
    UploadOutOfOrder { offset: u64, expected: u64 },
    #[error("upload holds {received_bytes} of {size_bytes} bytes: not complete")]
    UploadIncomplete { received_bytes: u64, size_bytes: u64 },
    #[error("invalid upload: {reason}")]
    InvalidUpload { reason: String },
    #[error("partition has {count_max} uploads in progress, its limit")]
    TooManyUploads { count_max: u64 },
    #[error("sequence {seq} of client {client} is older than the oldest result kept ({oldest_kept}): it may have been applied, its result is forgotten")]
    SequenceTooOld { client: ClientId, seq: u64, oldest_kept: u64 },
    #[error("partition {partition} not found")]
    PartitionNotFound { partition: PartitionId },
    #[error("invalid partition members: {reason}")]
    InvalidMembers { reason: String },
    #[error("the directory holds {count_max} partitions, its limit")]
    TooManyPartitions { count_max: u64 },
    #[error("the directory routes {count_max} repositories, its limit")]
    TooManyRoutes { count_max: u64 },
}

fn display_current(current: &Option<RefValue>) -> String {
    match current {
        Some(value) => value.to_string(),
        None => "absent".to_string(),
    }
}

/// `text` cut to `REJECTION_ECHO_BYTES_MAX` bytes (at a character boundary).
pub(crate) fn echo(text: &str) -> String {
    echo_bytes_max(text, REJECTION_ECHO_BYTES_MAX)
}

pub(crate) fn echo_bytes_max(text: &str, bytes_max: usize) -> String {
    if text.len() <= bytes_max {
        return text.to_string();
    }
    let mut end = bytes_max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A read of the state at the replica's applied index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadQuery {
    ListRefs {
        repo: RepoId,
    },
    /// An object whole: objects over `OBJECT_SIZE_BYTES_MAX` are rejected (read them by range).
    GetObject {
        repo: RepoId,
        oid: Oid,
    },
    /// Up to `len_max` bytes (at most `OBJECT_RANGE_BYTES_MAX`) of an object's content from
    /// `offset`.
    ObjectRange {
        repo: RepoId,
        oid: Oid,
        offset: u64,
        len_max: u64,
    },
    /// The upload of `client` and `seq` into `repo`, if one is in progress.
    Upload {
        repo: RepoId,
        client: ClientId,
        seq: u64,
    },
    /// Every upload in progress in the partition, by client and sequence.
    Uploads,
    ListRepositories,
    RepositoryExists {
        repo: RepoId,
    },
    // Directory (partition 0): the partition `repo` is routed to; a page of the partitions
    // (ids above `after`, at most `limit` of them and `PARTITIONS_PAGE_MAX`); one partition.
    Route {
        repo: RepoId,
    },
    Partitions {
        after: Option<PartitionId>,
        limit: u32,
    },
    Partition {
        partition: PartitionId,
    },
    /// A page of the routes, by repository after `after` (at most `limit` and
    /// `ROUTES_PAGE_MAX`).
    Routes {
        after: Option<RepoId>,
        limit: u32,
    },
    /// The objects a repository holds, by id, in Git's loose encoding: those after `after`,
    /// about `bytes_max` bytes of them (at least one), for exporting a repository page by page.
    LooseObjects {
        repo: RepoId,
        after: Option<Oid>,
        bytes_max: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadResult {
    /// Sorted by name.
    Refs(Vec<(RefName, RefValue)>),
    /// `None`: the repository does not hold this object.
    Object(Option<(ObjectKind, Vec<u8>)>),
    /// `None`: the repository does not hold this object.
    ObjectRange(Option<ObjectRange>),
    /// `None`: no such upload is in progress.
    Upload(Option<UploadStatus>),
    /// By client and sequence, with the repository each goes to.
    Uploads(Vec<(ClientId, u64, RepoId, UploadStatus)>),
    /// Sorted.
    Repositories(Vec<RepoId>),
    Exists(bool),
    Rejected(Rejection),
    /// `None`: the repository is not routed.
    Route(Option<(PartitionId, PartitionInfo)>),
    /// By increasing id, each with the repositories routed to it (sorted); an empty page is
    /// the last.
    Partitions(Vec<(PartitionId, PartitionInfo, Vec<RepoId>)>),
    /// `None`: the directory records no such partition.
    Partition(Option<(PartitionInfo, Vec<RepoId>)>),
    /// By repository; an empty page is the last.
    Routes(Vec<(RepoId, PartitionId)>),
    /// By id; `complete`: no object comes after the last one.
    LooseObjects {
        objects: Vec<(Oid, PagedObject)>,
        complete: bool,
    },
}

/// SHA-1 over a partition's state (see `crate::store::check::digest`): replicas with the same
/// state have the same digest, whatever their applied index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 20]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Cheap checks done before proposing, so that garbage is not replicated. `apply` repeats
/// them (and every check that depends on the state) at apply time.
pub fn validate(command: &Command) -> Result<(), Rejection> {
    // Objects travel compressed, so the encoding alone does not bound what a command
    // inflates to on every replica (see `new_object`): its content is bounded as well.
    let data_bytes = command.op.data_bytes();
    if data_bytes > COMMAND_SIZE_BYTES_MAX {
        return Err(Rejection::CommandTooLarge {
            size_bytes: data_bytes as u64,
            size_bytes_max: COMMAND_SIZE_BYTES_MAX as u64,
        });
    }
    let size_bytes = codec::encoded_size_bytes(command);
    if size_bytes > COMMAND_SIZE_BYTES_MAX {
        // `Command::decode` refuses such bytes, so they must not be proposed.
        return Err(Rejection::CommandTooLarge {
            size_bytes: size_bytes as u64,
            size_bytes_max: COMMAND_SIZE_BYTES_MAX as u64,
        });
    }
    check_op(&command.op)
}

/// The checks that depend on the operation alone, in a fixed order so that every replica
/// reports the same first problem.
pub fn check_op(op: &WriteOp) -> Result<(), Rejection> {
    match op {
        WriteOp::CreateRepository { repo, fork_of: _ } => repo.validate(),
        WriteOp::DeleteRepository { repo } => repo.validate(),
        WriteOp::Transaction { repo, objects, refs } => {
            repo.validate()?;
            if objects.len() > TRANSACTION_OBJECTS_MAX {
                return Err(Rejection::TooManyObjects {
                    count: objects.len() as u64,
                    count_max: TRANSACTION_OBJECTS_MAX as u64,
                });
            }
            if refs.len() > TRANSACTION_REF_UPDATES_MAX {
                return Err(Rejection::TooManyRefUpdates {
                    count: refs.len() as u64,
                    count_max: TRANSACTION_REF_UPDATES_MAX as u64,
                });
            }
            let mut seen: BTreeMap<Oid, &NewObject> = BTreeMap::new();
            for object in objects {
                if object.data.len() > OBJECT_SIZE_BYTES_MAX {
                    return Err(Rejection::ObjectTooLarge {
                        oid: object.oid,
                        size_bytes: object.data.len() as u64,
                        size_bytes_max: OBJECT_SIZE_BYTES_MAX as u64,
                    });
                }
                let actual = object.content_oid();
                if actual != object.oid {
                    return Err(Rejection::ObjectIdMismatch { claimed: object.oid, actual });
                }
                if let Some(earlier) = seen.insert(object.oid, object) {
                    if earlier.kind != object.kind || earlier.data != object.data {
                        return Err(Rejection::ObjectHashCollision { oid: object.oid });
                    }
                }
            }
            refs::check_update_shapes(refs)
        }
        WriteOp::AllocatePartition { repo, voters } => {
            repo.validate()?;
            directory::check_members(voters, &[])
        }
        WriteOp::RouteRepository { repo, partition: _ } => repo.validate(),
        WriteOp::UnrouteRepository { repo } => repo.validate(),
        WriteOp::SetPartitionMembers { partition: _, voters, learners, peers, as_of: _ } => {
            directory::check_members(voters, learners).and_then(|_| directory::check_peers(voters, learners, peers))
        }
        WriteOp::BeginUpload { repo, kind: _, size_bytes, chunk_bytes } => {
            repo.validate()?;
            if *size_bytes == 0 {
                return Err(Rejection::InvalidUpload { reason: "an empty object: write it in a transaction".into() });
            }
            if *size_bytes > UPLOAD_SIZE_BYTES_MAX {
                return Err(Rejection::InvalidUpload {
                    reason: format!("{size_bytes} bytes, more than {UPLOAD_SIZE_BYTES_MAX}"),
                });
            }
            if !(UPLOAD_CHUNK_BYTES_MIN..=UPLOAD_CHUNK_BYTES_MAX).contains(chunk_bytes) {
                return Err(Rejection::InvalidUpload {
                    reason: format!(
                        "pieces of {chunk_bytes} bytes, not between {UPLOAD_CHUNK_BYTES_MIN} and {UPLOAD_CHUNK_BYTES_MAX}"
                    ),
                });
            }
            Ok(())
        }
        WriteOp::UploadChunk { repo, offset: _, data } => {
            repo.validate()?;
            if data.is_empty() || data.len() > UPLOAD_CHUNK_BYTES_MAX as usize {
                return Err(Rejection::InvalidUpload { reason: format!("a piece of {} bytes", data.len()) });
            }
            Ok(())
        }
        WriteOp::FinishUpload { repo, oid: _, refs } => {
            repo.validate()?;
            if refs.len() > TRANSACTION_REF_UPDATES_MAX {
                return Err(Rejection::TooManyRefUpdates {
                    count: refs.len() as u64,
                    count_max: TRANSACTION_REF_UPDATES_MAX as u64,
                });
            }
            refs::check_update_shapes(refs)
        }
        WriteOp::AbortUpload { repo } => repo.validate(),
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match &self.op {
            WriteOp::CreateRepository { repo, fork_of: None } => format!("create {repo}"),
            WriteOp::CreateRepository { repo, fork_of: Some(parent) } => format!("fork {repo} of {parent}"),
            WriteOp::DeleteRepository { repo } => format!("delete {repo}"),
            WriteOp::Transaction { repo, objects, refs } => {
                format!("transaction on {repo}: {} objects, {} ref updates", objects.len(), refs.len())
            }
            WriteOp::AllocatePartition { repo, voters } => {
                format!("allocate a partition for {repo} on voters {}", Nodes(voters))
            }
            WriteOp::RouteRepository { repo, partition } => {
                format!("route {repo} to partition {partition}")
            }
            WriteOp::UnrouteRepository { repo } => format!("unroute {repo}"),
            WriteOp::SetPartitionMembers { partition, voters, learners, as_of, .. } => {
                format!(
                    "set members of partition {partition} as of index {as_of}: voters {}, learners {}",
                    Nodes(voters),
                    Nodes(learners)
                )
            }
            WriteOp::BeginUpload { repo, kind, size_bytes, chunk_bytes } => {
                format!("begin upload of a {size_bytes}-byte {kind} into {repo} in pieces of {chunk_bytes} bytes")
            }
            WriteOp::UploadChunk { repo, offset, data } => {
                format!("upload {} bytes at offset {offset} into {repo}", data.len())
            }
            WriteOp::FinishUpload { repo, oid, refs } => {
                format!("finish upload of {oid} into {repo} with {} ref updates", refs.len())
            }
            WriteOp::AbortUpload { repo } => format!("abort upload into {repo}"),
        };
        write!(f, "client {} seq {}: {op}", self.client, self.seq)
    }
}
