//! The whole state as bytes: snapshots, their restore with every invariant checked, and the
//! digest replicas compare.

use super::dedup::DedupTable;
use super::directory::Directory;
use super::objects::{ObjectPool, Oid};
use super::refs::RefValue;
use super::{
    validate_storage_name, RepoId, Repository, StateMachine, OBJECT_SIZE_BYTES_MAX, PARTITION_REPOSITORIES_MAX,
    REPOSITORY_REFS_MAX,
};
use crate::codec::{self, DecodeError};
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};
use std::collections::BTreeMap;
use std::fmt;

/// Bumped on any change to the encoding of the state, so old bytes fail to restore loudly.
const SNAPSHOT_FORMAT_VERSION: u32 = 3;

/// SHA-1 of the canonical encoding of a state (applied index excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Digest(pub [u8; 20]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The state by reference, to encode without copying. Encodes exactly as [`StateOwned`]
/// decodes; its encoding is canonical because every collection is ordered.
#[derive(Serialize)]
struct StateRef<'a> {
    repositories: &'a BTreeMap<RepoId, Repository>,
    objects: &'a ObjectPool,
    dedup: &'a DedupTable,
    directory: &'a Directory,
}

#[derive(Deserialize)]
struct StateOwned {
    repositories: BTreeMap<RepoId, Repository>,
    objects: ObjectPool,
    dedup: DedupTable,
    directory: Directory,
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    format_version: u32,
    applied_index: u64,
    state: StateRef<'a>,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    format_version: u32,
    applied_index: u64,
    state: StateOwned,
}

const SNAPSHOT_WHAT: &str = "state machine snapshot";

impl StateMachine {
    fn state_ref(&self) -> StateRef<'_> {
        StateRef {
            repositories: &self.repositories,
            objects: &self.objects,
            dedup: &self.dedup,
            directory: &self.directory,
        }
    }

    /// SHA-1 over a canonical encoding of repositories, objects, references, the dedup table
    /// and the directory; the applied index is left out so that replicas can be compared at any index
    /// with the same contents.
    pub fn digest(&self) -> Digest {
        let mut hasher = Sha1::new();
        hasher.update(codec::encode(&self.state_ref()));
        let mut digest = [0u8; 20];
        digest.copy_from_slice(&hasher.finalize());
        Digest(digest)
    }

    /// The full state, applied index included (for snapshots and restart).
    pub fn to_snapshot_bytes(&self) -> Vec<u8> {
        codec::encode(&SnapshotRef {
            format_version: SNAPSHOT_FORMAT_VERSION,
            applied_index: self.applied_index,
            state: self.state_ref(),
        })
    }

    /// Streams the same bytes as `to_snapshot_bytes` into `out`.
    pub fn write_snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        codec::encode_into_writer(
            &SnapshotRef {
                format_version: SNAPSHOT_FORMAT_VERSION,
                applied_index: self.applied_index,
                state: self.state_ref(),
            },
            out,
        )
    }

    /// Restores a state from `to_snapshot_bytes`. Bad bytes, including well-formed bytes of an
    /// inconsistent state (which would trip an assert later), are a `DecodeError`.
    pub fn from_snapshot_bytes(bytes: &[u8]) -> Result<StateMachine, DecodeError> {
        StateMachine::from_snapshot(codec::decode(SNAPSHOT_WHAT, bytes)?)
    }

    /// Restores a state streamed from `reader` (what `write_snapshot` wrote), never holding
    /// its encoding in memory. The caller checks that `reader` is then at its end.
    pub fn read_snapshot(reader: &mut dyn std::io::Read) -> Result<StateMachine, DecodeError> {
        StateMachine::from_snapshot(codec::decode_from_reader(SNAPSHOT_WHAT, reader)?)
    }

    fn from_snapshot(snapshot: SnapshotOwned) -> Result<StateMachine, DecodeError> {
        if snapshot.format_version != SNAPSHOT_FORMAT_VERSION {
            return Err(DecodeError {
                what: SNAPSHOT_WHAT,
                reason: format!("format version {}, expected {SNAPSHOT_FORMAT_VERSION}", snapshot.format_version),
            });
        }
        let state = StateMachine {
            applied_index: snapshot.applied_index,
            repositories: snapshot.state.repositories,
            objects: snapshot.state.objects,
            dedup: snapshot.state.dedup,
            directory: snapshot.state.directory,
        };
        match state.invariant_violation() {
            None => Ok(state),
            Some(reason) => Err(DecodeError { what: SNAPSHOT_WHAT, reason }),
        }
    }

    /// The first broken invariant of the state, if any. Linear in the state's size (it hashes
    /// every object): for restores and tests, not for every apply.
    pub(crate) fn invariant_violation(&self) -> Option<String> {
        if self.repositories.len() > PARTITION_REPOSITORIES_MAX {
            return Some(format!("{} repositories, more than {PARTITION_REPOSITORIES_MAX}", self.repositories.len()));
        }
        let mut holders: BTreeMap<Oid, u64> = BTreeMap::new();
        for (repo, repository) in &self.repositories {
            if let Err(rejection) = validate_storage_name(&repo.storage) {
                return Some(rejection.to_string());
            }
            if repository.refs.len() > REPOSITORY_REFS_MAX {
                return Some(format!("{repo} holds {} references", repository.refs.len()));
            }
            for (name, value) in &repository.refs {
                match value {
                    RefValue::Direct(oid) if !repository.objects.contains(oid) => {
                        return Some(format!("{repo}: {name} points to {oid}, which it does not hold"));
                    }
                    RefValue::Symbolic(target) if !target.is_under_refs() => {
                        return Some(format!("{repo}: {name} points to {target}, outside refs/"));
                    }
                    _ => {}
                }
            }
            for oid in &repository.objects {
                *holders.entry(*oid).or_insert(0) += 1;
            }
        }
        if holders.len() != self.objects.len() {
            return Some(format!("{} objects pooled, {} held", self.objects.len(), holders.len()));
        }
        for (oid, object) in self.objects.iter() {
            let held = holders.get(oid).copied().unwrap_or(0);
            if object.holders != held || held == 0 {
                return Some(format!("object {oid} counts {} holders, {held} hold it", object.holders));
            }
            if object.data.len() > OBJECT_SIZE_BYTES_MAX {
                return Some(format!("object {oid} is {} bytes", object.data.len()));
            }
            let actual = Oid::hash_object(object.kind, &object.data);
            if actual != *oid {
                return Some(format!("object {oid} hashes to {actual}"));
            }
        }
        if let Some(problem) = self.dedup.invariant_violation() {
            return Some(problem);
        }
        // Routes name recorded partitions, ids are below the next one, members are valid.
        if let Some(problem) = self.directory.invariant_violation() {
            return Some(problem);
        }
        if self.dedup.last_index_max() > self.applied_index {
            return Some(format!(
                "dedup remembers index {}, after the applied index {}",
                self.dedup.last_index_max(),
                self.applied_index
            ));
        }
        None
    }
}
