//! Answers to read queries, from one consistent view of a partition's rows.

use super::directory;
use super::keys;
use super::loose;
use super::tables::{self, Rows, TableId};
use super::StoreError;
use crate::ids::PartitionId;
use crate::state_machine::{Oid, ReadQuery, ReadResult, RefName, RefValue, Rejection, RepoId};
use std::ops::ControlFlow;

/// The answer to `query` in `partition`'s rows.
pub fn read(rows: &dyn Rows, partition: PartitionId, query: &ReadQuery) -> Result<ReadResult, StoreError> {
    Ok(match query {
        ReadQuery::ListRefs { repo } => match check_repository(rows, partition, repo)? {
            Ok(()) => ReadResult::Refs(refs(rows, partition, repo)?),
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::GetObject { repo, oid } => match check_repository(rows, partition, repo)? {
            Ok(()) if rows.contains(TableId::Held, &keys::held(partition, repo, oid))? => {
                ReadResult::Object(Some(object(rows, partition, oid)?))
            }
            Ok(()) => ReadResult::Object(None),
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::ListRepositories => ReadResult::Repositories(repositories(rows, partition)?),
        ReadQuery::RepositoryExists { repo } => match repo.validate() {
            Ok(()) => ReadResult::Exists(rows.contains(TableId::Repositories, &keys::repo(partition, repo))?),
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::Route { repo } => match repo.validate() {
            Ok(()) => match directory::route(rows, partition, repo)? {
                Some(routed) => {
                    let info = directory::partition_info(rows, partition, routed)?.ok_or_else(|| {
                        StoreError::Corrupt { reason: format!("{repo} is routed to unrecorded partition {routed}") }
                    })?;
                    ReadResult::Route(Some((routed, info)))
                }
                None => ReadResult::Route(None),
            },
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::Partitions => ReadResult::Partitions(directory::partitions_with_routes(rows, partition)?),
        ReadQuery::LooseObjects { repo, after, bytes_max } => match check_repository(rows, partition, repo)? {
            Ok(()) => {
                let (objects, complete) = loose_objects(rows, partition, repo, after.as_ref(), *bytes_max)?;
                ReadResult::LooseObjects { objects, complete }
            }
            Err(rejection) => ReadResult::Rejected(rejection),
        },
    })
}

/// A page of a repository's objects in their loose encoding, by id after `after`: at least
/// one, then while they fit in `bytes_max`. `true` with the last page.
type LoosePage = (Vec<(Oid, Vec<u8>)>, bool);

fn loose_objects(
    rows: &dyn Rows,
    partition: PartitionId,
    repo: &RepoId,
    after: Option<&Oid>,
    bytes_max: u64,
) -> Result<LoosePage, StoreError> {
    let prefix = keys::repo(partition, repo);
    let mut page: Vec<(Oid, Vec<u8>)> = Vec::new();
    let mut bytes = 0u64;
    let mut complete = true;
    let mut failure = None;
    let mut visit = |key: &[u8], _: &[u8]| -> Result<ControlFlow<()>, StoreError> {
        let oid =
            keys::KeyReader::new(&key[prefix.len()..]).take_oid().map_err(|e| StoreError::Corrupt { reason: e.0 })?;
        let loose = match loose_object(rows, partition, &oid) {
            Ok(loose) => loose,
            Err(error) => {
                failure = Some(error);
                return Ok(ControlFlow::Break(()));
            }
        };
        if !page.is_empty() && bytes + loose.len() as u64 > bytes_max {
            complete = false;
            return Ok(ControlFlow::Break(()));
        }
        bytes += loose.len() as u64;
        page.push((oid, loose));
        Ok(ControlFlow::Continue(()))
    };
    match after {
        Some(after) => rows.scan_after(TableId::Held, &prefix, &keys::held(partition, repo, after), &mut visit)?,
        None => rows.scan(TableId::Held, &prefix, &mut visit)?,
    }
    match failure {
        Some(error) => Err(error),
        None => Ok((page, complete)),
    }
}

fn check_repository(
    rows: &dyn Rows,
    partition: PartitionId,
    repo: &RepoId,
) -> Result<Result<(), Rejection>, StoreError> {
    if let Err(rejection) = repo.validate() {
        return Ok(Err(rejection));
    }
    if !rows.contains(TableId::Repositories, &keys::repo(partition, repo))? {
        return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
    }
    Ok(Ok(()))
}

/// A repository's references, sorted by name.
pub fn refs(rows: &dyn Rows, partition: PartitionId, repo: &RepoId) -> Result<Vec<(RefName, RefValue)>, StoreError> {
    let prefix = keys::repo(partition, repo);
    let mut out = Vec::new();
    rows.scan(TableId::Refs, &prefix, &mut |key, value| {
        let name = keys::KeyReader::new(&key[prefix.len()..])
            .take_ref_name()
            .map_err(|e| StoreError::Corrupt { reason: e.0 })?;
        out.push((name, tables::decode("reference", value)?));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// The objects a repository holds, by id.
pub fn held_objects(rows: &dyn Rows, partition: PartitionId, repo: &RepoId) -> Result<Vec<Oid>, StoreError> {
    let prefix = keys::repo(partition, repo);
    let mut out = Vec::new();
    rows.scan(TableId::Held, &prefix, &mut |key, _| {
        out.push(
            keys::KeyReader::new(&key[prefix.len()..]).take_oid().map_err(|e| StoreError::Corrupt { reason: e.0 })?,
        );
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// A stored object's loose encoding (zlib), as Git keeps it in `objects/xx/yyyy…`.
pub fn loose_object(rows: &dyn Rows, partition: PartitionId, oid: &Oid) -> Result<Vec<u8>, StoreError> {
    rows.get(TableId::Objects, &keys::object(partition, oid))?
        .ok_or_else(|| StoreError::Corrupt { reason: format!("object {oid} is held but not stored") })
}

/// A stored object's kind and content, checked against its id.
pub fn object(
    rows: &dyn Rows,
    partition: PartitionId,
    oid: &Oid,
) -> Result<(crate::state_machine::ObjectKind, Vec<u8>), StoreError> {
    let bytes = loose_object(rows, partition, oid)?;
    loose::decode(oid, &bytes).map_err(|reason| StoreError::Corrupt { reason })
}

/// The repositories of a partition, sorted.
pub fn repositories(rows: &dyn Rows, partition: PartitionId) -> Result<Vec<RepoId>, StoreError> {
    let prefix = keys::partition_prefix(partition);
    let mut out = Vec::new();
    rows.scan(TableId::Repositories, &prefix, &mut |key, _| {
        out.push(
            keys::KeyReader::new(&key[prefix.len()..]).take_repo().map_err(|e| StoreError::Corrupt { reason: e.0 })?,
        );
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Every partition the directory records, by increasing id.
pub fn directory_partitions(
    rows: &dyn Rows,
    directory: PartitionId,
) -> Result<Vec<(PartitionId, crate::state_machine::PartitionInfo)>, StoreError> {
    directory::partitions(rows, directory)
}
