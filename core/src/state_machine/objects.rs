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
