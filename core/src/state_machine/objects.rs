//! Git object ids and kinds, Git's object hashing, and the partition's content-addressed pool
//! of objects counted by the repositories holding them.

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A Git object id (SHA-1). Displayed and parsed as 40 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Oid(pub [u8; 20]);

impl Oid {
    /// Git's object id: SHA-1 of `"<kind> <len>\0"` followed by the content, so that
    /// `git hash-object -t <kind>` agrees.
    pub fn hash_object(kind: ObjectKind, data: &[u8]) -> Oid {
        let mut hasher = Sha1::new();
        hasher.update(kind.as_str().as_bytes());
        hasher.update(b" ");
        hasher.update(data.len().to_string().as_bytes());
        hasher.update([0u8]);
        hasher.update(data);
        let mut oid = [0u8; 20];
        oid.copy_from_slice(&hasher.finalize());
        Oid(oid)
    }
}

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Text that is not 40 lowercase hex digits.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an object id (40 lowercase hex digits): {text:?}")]
pub struct OidParseError {
    /// The offending text, cut to 64 bytes.
    pub text: String,
}

impl FromStr for Oid {
    type Err = OidParseError;
    fn from_str(text: &str) -> Result<Oid, OidParseError> {
        let lowercase_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        if text.len() != 40 || !text.bytes().all(lowercase_hex) {
            return Err(OidParseError { text: super::echo_bytes_max(text, 64) });
        }
        let mut oid = [0u8; 20];
        hex::decode_to_slice(text, &mut oid).map_err(|_| OidParseError { text: text.to_string() })?;
        Ok(Oid(oid))
    }
}

/// The four Git object types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjectKind {
    Blob,
    Tree,
    Commit,
    Tag,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 4] = [ObjectKind::Blob, ObjectKind::Tree, ObjectKind::Commit, ObjectKind::Tag];

    /// Git's name of the type, as hashed in the object header.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
            ObjectKind::Commit => "commit",
            ObjectKind::Tag => "tag",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not one of `blob`, `tree`, `commit`, `tag`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown object kind {text:?} (expected blob, tree, commit or tag)")]
pub struct ObjectKindParseError {
    /// The offending text, cut to 64 bytes.
    pub text: String,
}

impl FromStr for ObjectKind {
    type Err = ObjectKindParseError;
    fn from_str(text: &str) -> Result<ObjectKind, ObjectKindParseError> {
        ObjectKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| ObjectKindParseError { text: super::echo_bytes_max(text, 64) })
    }
}

/// One stored object and how many repositories hold it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PooledObject {
    pub kind: ObjectKind,
    /// Shared, so that a copy of the state for a snapshot costs no copy of the objects. Encodes
    /// as a byte sequence, like a `Vec<u8>`.
    #[serde(serialize_with = "serialize_shared_bytes", deserialize_with = "deserialize_shared_bytes")]
    pub data: Arc<[u8]>,
    /// Repositories whose object set contains this oid; the object is dropped at zero.
    pub holders: u64,
}

/// Object content as one run of bytes (the encoding of a byte sequence, written at once).
fn serialize_shared_bytes<S: serde::Serializer>(data: &Arc<[u8]>, serializer: S) -> Result<S::Ok, S::Error> {
    serde_bytes::serialize(&**data, serializer)
}

fn deserialize_shared_bytes<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Arc<[u8]>, D::Error> {
    let data: Vec<u8> = serde_bytes::deserialize(deserializer)?;
    Ok(data.into())
}

impl fmt::Debug for PooledObject {
    // The content would drown everything else in a dump of the state.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PooledObject")
            .field("kind", &self.kind)
            .field("size_bytes", &self.data.len())
            .field("holders", &self.holders)
            .finish()
    }
}

/// Objects stored once per partition, shared by the repositories (and forks) holding them.
///
/// Invariant: every pooled object has `holders >= 1`, and `holders` equals the number of
/// repositories whose object set contains its oid (checked by `StateMachine::invariant_violation`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct ObjectPool {
    objects: BTreeMap<Oid, PooledObject>,
}

impl ObjectPool {
    pub fn get(&self, oid: &Oid) -> Option<&PooledObject> {
        self.objects.get(oid)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Oid, &PooledObject)> {
        self.objects.iter()
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// One more repository holds `oid`, whose verified content is given (it may be pooled
    /// already, then the content is the same: the caller rejected collisions).
    pub fn hold(&mut self, oid: Oid, kind: ObjectKind, data: &[u8]) {
        match self.objects.get_mut(&oid) {
            Some(object) => {
                assert!(object.kind == kind && *object.data == *data, "pooled object {oid} has other content");
                object.holders += 1;
            }
            None => {
                self.objects.insert(oid, PooledObject { kind, data: data.into(), holders: 1 });
            }
        }
    }

    /// One more repository holds `oid`, which must be pooled (a fork copying its parent's set).
    pub fn hold_existing(&mut self, oid: &Oid) {
        let object = self.objects.get_mut(oid).expect("a held oid is pooled");
        assert!(object.holders >= 1, "pooled object {oid} with no holders");
        object.holders += 1;
    }

    /// One repository stops holding `oid`; the object is dropped when no repository holds it.
    pub fn release(&mut self, oid: &Oid) {
        let object = self.objects.get_mut(oid).expect("a released oid is pooled");
        assert!(object.holders >= 1, "refcount of {oid} would go below zero");
        object.holders -= 1;
        if object.holders == 0 {
            self.objects.remove(oid);
        }
    }
}
