//! Git object ids and kinds, and Git's object hashing.

use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};
use std::fmt;
use std::str::FromStr;

/// A Git object id (SHA-1). Displayed and parsed as 40 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Oid(pub [u8; 20]);

impl Oid {
    /// Git's object id: SHA-1 of `"<kind> <len>\0"` followed by the content, so that
    /// `git hash-object -t <kind>` agrees.
    pub fn hash_object(kind: ObjectKind, data: &[u8]) -> Oid {
        let mut hasher = ObjectHasher::new(kind, data.len() as u64);
        hasher.update(data);
        hasher.finish()
    }
}

/// Git's object id computed piece by piece, for objects too large to hold at once.
pub struct ObjectHasher {
    sha1: Sha1,
    size_bytes: u64,
    hashed_bytes: u64,
}

impl ObjectHasher {
    /// Starts the id of a `kind` object of `size_bytes` bytes (Git hashes the size first).
    pub fn new(kind: ObjectKind, size_bytes: u64) -> ObjectHasher {
        let mut sha1 = Sha1::new();
        sha1.update(kind.as_str().as_bytes());
        sha1.update(b" ");
        sha1.update(size_bytes.to_string().as_bytes());
        sha1.update([0u8]);
        ObjectHasher { sha1, size_bytes, hashed_bytes: 0 }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hashed_bytes += data.len() as u64;
        assert!(self.hashed_bytes <= self.size_bytes, "more content than the announced size");
        self.sha1.update(data);
    }

    pub fn finish(self) -> Oid {
        assert_eq!(self.hashed_bytes, self.size_bytes, "the whole content is hashed");
        let mut oid = [0u8; 20];
        oid.copy_from_slice(&self.sha1.finalize());
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
