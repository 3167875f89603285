//! Key encodings of the store's tables. Every key starts with its partition's id (8 bytes,
//! big-endian), so each partition's rows are one contiguous range of every table: a snapshot
//! exports that range, a removal deletes it.
//!
//! A repository is `storage NUL path NUL`: neither part may contain NUL, so the encoding is
//! prefix-free (`a` never prefixes `a/b`), and byte order is the order of `RepoId` (storage,
//! then path). Reference names contain no NUL either and follow their repository's key.

use crate::ids::{ClientId, PartitionId};
use crate::state_machine::{Oid, RefName, RelativePath, RepoId};

pub const PARTITION_BYTES: usize = 8;
pub const OID_BYTES: usize = 20;

pub fn partition_prefix(partition: PartitionId) -> [u8; PARTITION_BYTES] {
    partition.0.to_be_bytes()
}

/// The first key after every key that starts with `prefix`, or `None` if there is none (a
/// prefix of only 0xFF bytes).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// `prefix` followed by `parts`.
fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(prefix);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// The key of a repository in `partition`; also the prefix of its references and objects.
pub fn repo(partition: PartitionId, repo: &RepoId) -> Vec<u8> {
    key(&partition_prefix(partition), &[repo.storage.as_bytes(), &[0], repo.relative_path.as_str().as_bytes(), &[0]])
}

pub fn reference(partition: PartitionId, repo_id: &RepoId, name: &RefName) -> Vec<u8> {
    key(&repo(partition, repo_id), &[name.as_str().as_bytes()])
}

/// A repository holds an object: its key in the `held` table.
pub fn held(partition: PartitionId, repo_id: &RepoId, oid: &Oid) -> Vec<u8> {
    key(&repo(partition, repo_id), &[&oid.0])
}

pub fn object(partition: PartitionId, oid: &Oid) -> Vec<u8> {
    key(&partition_prefix(partition), &[&oid.0])
}

/// An object placed by index: the entry that stored it, and its number among that entry's.
pub fn object_at(partition: PartitionId, index: u64, number: u32) -> Vec<u8> {
    key(&partition_prefix(partition), &[&index.to_be_bytes(), &number.to_be_bytes()])
}

pub fn client(partition: PartitionId, client: ClientId) -> Vec<u8> {
    key(&partition_prefix(partition), &[&client.0.to_be_bytes()])
}

pub fn client_result(partition: PartitionId, client_id: ClientId, seq: u64) -> Vec<u8> {
    key(&client(partition, client_id), &[&seq.to_be_bytes()])
}

pub fn index(partition: PartitionId, index: u64) -> Vec<u8> {
    key(&partition_prefix(partition), &[&index.to_be_bytes()])
}

/// An upload in progress, named by its client and sequence.
pub fn upload(partition: PartitionId, client_id: ClientId, seq: u64) -> Vec<u8> {
    client_result(partition, client_id, seq)
}

/// The pieces of one upload or large object (`blob`: the index that began its upload).
pub fn blob(partition: PartitionId, blob: u64) -> Vec<u8> {
    index(partition, blob)
}

/// One piece of a blob, by its number (offset / piece size).
pub fn chunk(partition: PartitionId, blob_id: u64, number: u64) -> Vec<u8> {
    key(&blob(partition, blob_id), &[&number.to_be_bytes()])
}

/// A directory row about partition `about`, kept in the directory's own range.
pub fn about(directory: PartitionId, about: PartitionId) -> Vec<u8> {
    key(&partition_prefix(directory), &[&about.0.to_be_bytes()])
}

/// Why a key of a table is not one this module writes.
#[derive(Debug, PartialEq, Eq)]
pub struct BadKey(pub String);

/// The directory's index of the repositories routed to `about`: the `about` key followed by
/// the repository, so that one partition's repositories are one prefix scan.
pub fn partition_route(directory: PartitionId, about_partition: PartitionId, repo_id: &RepoId) -> Vec<u8> {
    let repo_key = repo(directory, repo_id);
    key(&about(directory, about_partition), &[&repo_key[PARTITION_BYTES..]])
}

/// Reads keys back: each `take_*` consumes one part from the front.
pub struct KeyReader<'a> {
    rest: &'a [u8],
}

impl<'a> KeyReader<'a> {
    pub fn new(key: &'a [u8]) -> KeyReader<'a> {
        KeyReader { rest: key }
    }

    pub fn take_u64(&mut self) -> Result<u64, BadKey> {
        let (head, rest) = self.rest.split_first_chunk::<8>().ok_or_else(|| BadKey("a short number".into()))?;
        self.rest = rest;
        Ok(u64::from_be_bytes(*head))
    }

    pub fn take_u32(&mut self) -> Result<u32, BadKey> {
        let (head, rest) = self.rest.split_first_chunk::<4>().ok_or_else(|| BadKey("a short number".into()))?;
        self.rest = rest;
        Ok(u32::from_be_bytes(*head))
    }

    pub fn take_oid(&mut self) -> Result<Oid, BadKey> {
        let (head, rest) = self.rest.split_first_chunk::<OID_BYTES>().ok_or_else(|| BadKey("a short oid".into()))?;
        self.rest = rest;
        Ok(Oid(*head))
    }

    fn take_text(&mut self) -> Result<&'a str, BadKey> {
        let end = self.rest.iter().position(|&b| b == 0).ok_or_else(|| BadKey("an unterminated name".into()))?;
        let text = std::str::from_utf8(&self.rest[..end]).map_err(|_| BadKey("a name that is not UTF-8".into()))?;
        self.rest = &self.rest[end + 1..];
        Ok(text)
    }

    pub fn take_repo(&mut self) -> Result<RepoId, BadKey> {
        let storage = self.take_text()?.to_owned();
        let path = self.take_text()?;
        let relative_path = RelativePath::new(path).map_err(|e| BadKey(e.to_string()))?;
        let repo = RepoId { storage, relative_path };
        repo.validate().map_err(|e| BadKey(e.to_string()))?;
        Ok(repo)
    }

    /// The rest of the key as a reference name.
    pub fn take_ref_name(&mut self) -> Result<RefName, BadKey> {
        let text = std::str::from_utf8(self.rest).map_err(|_| BadKey("a reference name that is not UTF-8".into()))?;
        let name = RefName::new(text).map_err(|e| BadKey(e.to_string()))?;
        self.rest = &[];
        Ok(name)
    }

    /// Checks that the whole key was read.
    pub fn end(self) -> Result<(), BadKey> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(BadKey(format!("{} bytes left over", self.rest.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_id(storage: &str, path: &str) -> RepoId {
        RepoId::new(storage, path).unwrap()
    }

    #[test]
    fn repository_keys_sort_like_repo_ids_and_never_prefix_each_other() {
        let p = PartitionId(7);
        let mut ids = [
            repo_id("a", "x"),
            repo_id("a", "x/y"),
            repo_id("a", "x0"),
            repo_id("a", "x-"),
            repo_id("ab", "a"),
            repo_id("a-", "z"),
        ];
        ids.sort();
        let keys: Vec<Vec<u8>> = ids.iter().map(|r| repo(p, r)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "byte order of keys is the order of ids");
        for (i, a) in keys.iter().enumerate() {
            for (j, b) in keys.iter().enumerate() {
                assert!(i == j || !b.starts_with(a), "{:?} prefixes {:?}", ids[i], ids[j]);
            }
        }
    }

    #[test]
    fn keys_read_back() {
        let p = PartitionId(3);
        let r = repo_id("default", "team/app.git");
        let name = RefName::new("refs/heads/main").unwrap();
        let key = reference(p, &r, &name);
        let mut reader = KeyReader::new(&key);
        assert_eq!(reader.take_u64().unwrap(), 3);
        assert_eq!(reader.take_repo().unwrap(), r);
        assert_eq!(reader.take_ref_name().unwrap(), name);
        reader.end().unwrap();

        let oid = Oid([9; 20]);
        let key = held(p, &r, &oid);
        let mut reader = KeyReader::new(&key);
        reader.take_u64().unwrap();
        reader.take_repo().unwrap();
        assert_eq!(reader.take_oid().unwrap(), oid);
        reader.end().unwrap();
    }

    #[test]
    fn bad_keys_are_errors() {
        assert!(KeyReader::new(&[1, 2]).take_u64().is_err());
        assert!(KeyReader::new(b"default\0no-terminator").take_repo().is_err());
        assert!(KeyReader::new(b"bad storage\0x\0").take_repo().is_err());
        assert!(KeyReader::new(b"default\0../x\0").take_repo().is_err());
        assert!(KeyReader::new(b"refs/heads/a b").take_ref_name().is_err());
        assert!(KeyReader::new(&[0xff, 0xfe]).take_ref_name().is_err());
        assert!(KeyReader::new(&[1; 9]).end().is_err());
    }

    #[test]
    fn prefix_end_is_the_first_key_after_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
