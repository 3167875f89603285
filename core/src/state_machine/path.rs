//! Names of repositories: storage names and untrusted relative paths, validated before use.

use super::{echo, Rejection};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest relative path accepted, in bytes.
pub const RELATIVE_PATH_BYTES_MAX: usize = 1024;
/// Longest storage name accepted, in bytes.
pub const STORAGE_NAME_BYTES_MAX: usize = 255;

/// A repository's path inside its storage. Untrusted input, so it is validated on every
/// construction, deserialization included: relative, no `.`/`..`/empty components, no NUL, no
/// backslash (a separator on some systems), bounded length.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String")]
pub struct RelativePath(String);

impl RelativePath {
    pub fn new(path: impl Into<String>) -> Result<RelativePath, Rejection> {
        let path = path.into();
        match relative_path_problem(&path) {
            None => Ok(RelativePath(path)),
            Some(reason) => Err(Rejection::InvalidPath { path: echo(&path), reason: reason.to_string() }),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RelativePath {
    type Error = Rejection;
    fn try_from(path: String) -> Result<RelativePath, Rejection> {
        RelativePath::new(path)
    }
}

impl fmt::Display for RelativePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn relative_path_problem(path: &str) -> Option<&'static str> {
    if path.is_empty() {
        return Some("empty");
    }
    if path.len() > RELATIVE_PATH_BYTES_MAX {
        return Some("longer than 1024 bytes");
    }
    if path.contains('\0') {
        return Some("contains NUL");
    }
    if path.contains('\\') {
        return Some("contains a backslash");
    }
    if path.starts_with('/') {
        return Some("absolute");
    }
    // Bounded: the path is at most RELATIVE_PATH_BYTES_MAX bytes.
    for component in path.split('/') {
        match component {
            "" => return Some("empty component"),
            "." => return Some("`.` component"),
            ".." => return Some("`..` component"),
            _ => {}
        }
    }
    None
}

/// Checks a storage name: it becomes a directory name and a config key, so it is restricted
/// to a conservative alphabet.
pub fn validate_storage_name(storage: &str) -> Result<(), Rejection> {
    let problem = if storage.is_empty() {
        Some("empty")
    } else if storage.len() > STORAGE_NAME_BYTES_MAX {
        Some("longer than 255 bytes")
    } else if storage == "." || storage == ".." {
        Some("`.` and `..` are not names")
    } else if !storage.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-') {
        Some("only A-Z, a-z, 0-9, `.`, `_` and `-` are allowed")
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(reason) => Err(Rejection::InvalidStorageName { storage: echo(storage), reason: reason.to_string() }),
    }
}

/// A repository: the storage holding it and its path there.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RepoId {
    /// Not checked by the type (the field is public): [`RepoId::validate`] checks it, and the
    /// state machine calls it on every command and query.
    pub storage: String,
    pub relative_path: RelativePath,
}

impl RepoId {
    /// Builds a validated repository id.
    pub fn new(storage: impl Into<String>, relative_path: impl Into<String>) -> Result<RepoId, Rejection> {
        let storage = storage.into();
        validate_storage_name(&storage)?;
        Ok(RepoId { storage, relative_path: RelativePath::new(relative_path)? })
    }

    /// Checks the parts the type does not guarantee (the storage name).
    pub fn validate(&self) -> Result<(), Rejection> {
        validate_storage_name(&self.storage)
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.storage, self.relative_path)
    }
}
