//! Answers to read queries, from one consistent view of a partition's rows.

use super::directory;
use super::keys;
use super::loose;
use super::tables::{self, Holders, LargeObjectRecord, ObjectAt, Rows, TableId, UploadRecord};
use super::StoreError;
use crate::ids::ClientId;
use crate::ids::PartitionId;
use crate::state_machine::{
    ObjectRange, Oid, PagedObject, ReadQuery, ReadResult, RefName, RefValue, Rejection, RepoId, UploadStatus,
    OBJECT_RANGE_BYTES_MAX, OBJECT_SIZE_BYTES_MAX,
};
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
                match large_object(rows, partition, oid)? {
                    Some(large) => ReadResult::Rejected(Rejection::ObjectTooLarge {
                        oid: *oid,
                        size_bytes: large.size_bytes,
                        size_bytes_max: OBJECT_SIZE_BYTES_MAX as u64,
                    }),
                    None => ReadResult::Object(Some(object(rows, partition, oid)?)),
                }
            }
            Ok(()) => ReadResult::Object(None),
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::ObjectRange { repo, oid, offset, len_max } => match check_repository(rows, partition, repo)? {
            Ok(()) if rows.contains(TableId::Held, &keys::held(partition, repo, oid))? => {
                let len_max = (*len_max).min(OBJECT_RANGE_BYTES_MAX);
                ReadResult::ObjectRange(Some(object_range(rows, partition, oid, *offset, len_max)?))
            }
            Ok(()) => ReadResult::ObjectRange(None),
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::Upload { repo, client, seq } => match check_repository(rows, partition, repo)? {
            Ok(()) => {
                let upload = upload(rows, partition, *client, *seq)?.filter(|u| &u.repo == repo);
                ReadResult::Upload(
                    upload.map(|u| UploadStatus { size_bytes: u.size_bytes, received_bytes: u.received_bytes }),
                )
            }
            Err(rejection) => ReadResult::Rejected(rejection),
        },
        ReadQuery::Uploads => ReadResult::Uploads(uploads(rows, partition)?),
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
        ReadQuery::Partitions { after, limit } => {
            let limit = (*limit as usize).min(crate::state_machine::PARTITIONS_PAGE_MAX);
            ReadResult::Partitions(directory::partitions_with_routes(rows, partition, *after, limit)?)
        }
        ReadQuery::Routes { after, limit } => {
            let limit = (*limit as usize).min(crate::state_machine::ROUTES_PAGE_MAX);
            ReadResult::Routes(directory::routes_after(rows, partition, after.as_ref(), limit)?)
        }
        ReadQuery::Partition { partition: about } => ReadResult::Partition(
            directory::partition_info(rows, partition, *about)?
                .map(|info| Ok::<_, StoreError>((info, directory::routed_to(rows, partition, *about)?)))
                .transpose()?,
        ),
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
type LoosePage = (Vec<(Oid, PagedObject)>, bool);

fn loose_objects(
    rows: &dyn Rows,
    partition: PartitionId,
    repo: &RepoId,
    after: Option<&Oid>,
    bytes_max: u64,
) -> Result<LoosePage, StoreError> {
    let prefix = keys::repo(partition, repo);
    let mut page: Vec<(Oid, PagedObject)> = Vec::new();
    let mut bytes = 0u64;
    let mut complete = true;
    let mut failure = None;
    let mut visit = |key: &[u8], _: &[u8]| -> Result<ControlFlow<()>, StoreError> {
        let oid = keys::KeyReader::new(&key[prefix.len()..]).take_oid()?;
        let object = match paged_object(rows, partition, &oid) {
            Ok(object) => object,
            Err(error) => {
                failure = Some(error);
                return Ok(ControlFlow::Break(()));
            }
        };
        let size_bytes = match &object {
            PagedObject::Loose(loose) => loose.len() as u64,
            PagedObject::Large { .. } => 0,
        };
        if !page.is_empty() && bytes + size_bytes > bytes_max {
            complete = false;
            return Ok(ControlFlow::Break(()));
        }
        bytes += size_bytes;
        page.push((oid, object));
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
        let name = keys::KeyReader::new(&key[prefix.len()..]).take_ref_name()?;
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
        out.push(keys::KeyReader::new(&key[prefix.len()..]).take_oid()?);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// A stored object's loose encoding (zlib), as Git keeps it in `objects/xx/yyyy…`.
pub fn loose_object(rows: &dyn Rows, partition: PartitionId, oid: &Oid) -> Result<Vec<u8>, StoreError> {
    let at = placed_at(rows, partition, oid)?;
    loose_object_placed(rows, partition, oid, at)
}

/// Where a whole object placed by index is (its `holders` row says); `None` for one placed by
/// id, stored in pieces, or not stored.
fn placed_at(rows: &dyn Rows, partition: PartitionId, oid: &Oid) -> Result<Option<ObjectAt>, StoreError> {
    Ok(Holders::of(rows, partition, oid)?.and_then(|holders| holders.at))
}

/// A whole object's loose encoding, from `objects_at` if it was placed `at` an index, else
/// from `objects`.
fn loose_object_placed(
    rows: &dyn Rows,
    partition: PartitionId,
    oid: &Oid,
    at: Option<ObjectAt>,
) -> Result<Vec<u8>, StoreError> {
    let stored = match at {
        Some(at) => rows.get(TableId::ObjectsAt, &keys::object_at(partition, at.index, at.number))?,
        None => rows.get(TableId::Objects, &keys::object(partition, oid))?,
    };
    stored.ok_or_else(|| StoreError::Corrupt { reason: format!("object {oid} is held but not stored") })
}

fn paged_object(rows: &dyn Rows, partition: PartitionId, oid: &Oid) -> Result<PagedObject, StoreError> {
    // An object placed by index is whole: one lookup in `holders` finds it, and none is spent
    // on `large_objects`.
    let at = placed_at(rows, partition, oid)?;
    if at.is_none() {
        if let Some(large) = large_object(rows, partition, oid)? {
            return Ok(PagedObject::Large { kind: large.kind, size_bytes: large.size_bytes });
        }
    }
    Ok(PagedObject::Loose(loose_object_placed(rows, partition, oid, at)?))
}

/// The record of an object stored in pieces, or `None` if it is stored whole (or not at all).
pub fn large_object(
    rows: &dyn Rows,
    partition: PartitionId,
    oid: &Oid,
) -> Result<Option<LargeObjectRecord>, StoreError> {
    match rows.get(TableId::LargeObjects, &keys::object(partition, oid))? {
        Some(bytes) => Ok(Some(tables::decode("large object", &bytes)?)),
        None => Ok(None),
    }
}

/// Up to `len_max` bytes of a stored object's content from `offset`, reading only the pieces
/// that hold them.
fn object_range(
    rows: &dyn Rows,
    partition: PartitionId,
    oid: &Oid,
    offset: u64,
    len_max: u64,
) -> Result<ObjectRange, StoreError> {
    let Some(large) = large_object(rows, partition, oid)? else {
        let (kind, data) = object(rows, partition, oid)?;
        let size_bytes = data.len() as u64;
        let start = offset.min(size_bytes) as usize;
        let end = offset.saturating_add(len_max).min(size_bytes) as usize;
        return Ok(ObjectRange { kind, size_bytes, data: data[start..end].to_vec() });
    };
    let end = offset.saturating_add(len_max).min(large.size_bytes);
    let chunk_bytes = u64::from(large.chunk_bytes);
    let mut data = Vec::with_capacity(end.saturating_sub(offset) as usize);
    let mut position = offset;
    while position < end {
        let number = position / chunk_bytes;
        let piece = rows
            .get(TableId::Chunks, &keys::chunk(partition, large.blob, number))?
            .ok_or_else(|| StoreError::Corrupt { reason: format!("object {oid} lacks piece {number}") })?;
        let piece_start = (position - number * chunk_bytes) as usize;
        let piece_end = ((end - number * chunk_bytes) as usize).min(piece.len());
        if piece_start >= piece_end {
            return Err(StoreError::Corrupt { reason: format!("object {oid}: piece {number} is short") });
        }
        data.extend_from_slice(&piece[piece_start..piece_end]);
        position += (piece_end - piece_start) as u64;
    }
    Ok(ObjectRange { kind: large.kind, size_bytes: large.size_bytes, data })
}

fn upload(
    rows: &dyn Rows,
    partition: PartitionId,
    client: ClientId,
    seq: u64,
) -> Result<Option<UploadRecord>, StoreError> {
    match rows.get(TableId::Uploads, &keys::upload(partition, client, seq))? {
        Some(bytes) => Ok(Some(tables::decode("upload", &bytes)?)),
        None => Ok(None),
    }
}

/// Every upload in progress, by client and sequence.
type UploadRow = (ClientId, u64, RepoId, UploadStatus);

fn uploads(rows: &dyn Rows, partition: PartitionId) -> Result<Vec<UploadRow>, StoreError> {
    let prefix = keys::partition_prefix(partition);
    let mut out = Vec::new();
    rows.scan(TableId::Uploads, &prefix, &mut |key, value| {
        let mut reader = keys::KeyReader::new(&key[prefix.len()..]);
        let client = reader.take_u64()?;
        let seq = reader.take_u64()?;
        let upload: UploadRecord = tables::decode("upload", value)?;
        let status = UploadStatus { size_bytes: upload.size_bytes, received_bytes: upload.received_bytes };
        out.push((ClientId(client), seq, upload.repo, status));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// The partitions with uploads in progress, by increasing id: one scan of the uploads rows of
/// every partition (there are few), so that finding idle uploads asks no replica.
pub fn partitions_with_uploads(rows: &dyn Rows) -> Result<Vec<PartitionId>, StoreError> {
    let mut out: Vec<PartitionId> = Vec::new();
    rows.scan(TableId::Uploads, &[], &mut |key, _| {
        let id = keys::KeyReader::new(key).take_u64()?;
        if out.last() != Some(&PartitionId(id)) {
            out.push(PartitionId(id));
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
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
    tables::scan_repositories(rows, TableId::Repositories, &keys::partition_prefix(partition))
}

/// What the directory records of one partition (a point read).
pub fn directory_partition(
    rows: &dyn Rows,
    directory: PartitionId,
    partition: PartitionId,
) -> Result<Option<crate::state_machine::PartitionInfo>, StoreError> {
    directory::partition_info(rows, directory, partition)
}

/// The repositories the directory routes to `partition`, sorted.
pub fn directory_routed_to(
    rows: &dyn Rows,
    directory: PartitionId,
    partition: PartitionId,
) -> Result<Vec<RepoId>, StoreError> {
    directory::routed_to(rows, directory, partition)
}

/// Every partition the directory records, by increasing id.
pub fn directory_partitions(
    rows: &dyn Rows,
    directory: PartitionId,
) -> Result<Vec<(PartitionId, crate::state_machine::PartitionInfo)>, StoreError> {
    directory::partitions(rows, directory)
}

/// The directory's partitions with ids above `after`, by increasing id.
pub fn directory_partitions_after(
    rows: &dyn Rows,
    directory: PartitionId,
    after: PartitionId,
) -> Result<Vec<(PartitionId, crate::state_machine::PartitionInfo)>, StoreError> {
    directory::partitions_after(rows, directory, Some(after), usize::MAX)
}
