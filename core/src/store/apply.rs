//! Applying committed entries to one partition's rows, inside the applier's write transaction.
//!
//! Deterministic: every replica applies the same commands in the same Raft order to the same
//! rows and reaches the same rows, so nothing here reads a clock or iterates anything but key
//! ranges. Checks that decide a command's fate run here, at apply time, against the rows as
//! of that index; a rejected command changes nothing but the dedup table.

use super::dedup::{self, DedupLimits, Lookup};
use super::dedup_ring;
use super::directory::DirectoryWriter;
use super::keys;
use super::tables::{
    self, Counts, Format, Holders, LargeObjectRecord, ObjectAt, PartitionRecord, Placement, RepoRecord, Rows, TableId,
    UploadRecord, WriteRows,
};
use super::StoreError;
use crate::ids::ClientId;
use crate::ids::PartitionId;
use crate::persist::{ConfState, LogPosition, RaftMode};
use crate::state_machine::{
    check_op, Command, Expected, NewObject, ObjectHasher, ObjectKind, Oid, RefUpdate, RefValue, Rejection,
    RelativePath, RepoId, WriteOk, WriteOp, WriteResult, PARTITION_REPOSITORIES_MAX, PARTITION_UPLOADS_MAX,
    REPOSITORY_REFS_MAX,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// One partition's rows, open for applying entries in order.
pub struct PartitionWriter<'a, 'txn> {
    rows: &'a mut WriteRows<'txn>,
    partition: PartitionId,
    record: PartitionRecord,
    /// How the partition's rows are laid out (its `placement` row): where new whole objects go,
    /// and how dedup results are kept.
    format: Format,
    /// Objects placed by index by the entry being applied: the next one's number.
    placed_in_entry: u32,
    limits: DedupLimits,
    /// Planted `apply-not-atomic` only: dedup results kept back for a later transaction.
    deferred_dedup: Option<Vec<DedupRecord>>,
}

/// A dedup result to record: (index, client, seq, result).
type DedupRecord = (u64, crate::ids::ClientId, u64, WriteResult);

impl<'a, 'txn> PartitionWriter<'a, 'txn> {
    pub fn open(rows: &'a mut WriteRows<'txn>, partition: PartitionId) -> Result<Self, StoreError> {
        PartitionWriter::with_limits(rows, partition, DedupLimits::DEFAULT)
    }

    pub fn with_limits(
        rows: &'a mut WriteRows<'txn>,
        partition: PartitionId,
        limits: DedupLimits,
    ) -> Result<Self, StoreError> {
        let record = rows.partition(partition)?.unwrap_or_default();
        let format = Format::of(rows, partition)?;
        Ok(PartitionWriter { rows, partition, record, format, placed_in_entry: 0, limits, deferred_dedup: None })
    }

    pub fn applied(&self) -> LogPosition {
        self.record.applied
    }

    pub fn record(&self) -> &PartitionRecord {
        &self.record
    }

    fn advance(&mut self, position: LogPosition) {
        assert_eq!(
            position.index,
            self.record.applied.index + 1,
            "partition {}: entries apply in order, once",
            self.partition
        );
        assert!(position.term >= self.record.applied.term, "applied terms never decrease");
        self.record.applied = position;
        self.placed_in_entry = 0;
    }

    /// Records that `position` was applied without a command (empty entries).
    pub fn apply_noop(&mut self, position: LogPosition) {
        self.advance(position);
    }

    /// Records that the membership change at `position` was applied: the partition's members
    /// are now `conf_state`.
    pub fn apply_membership(&mut self, position: LogPosition, conf_state: ConfState) {
        self.advance(position);
        self.record.conf_state = conf_state;
    }

    /// Records that the Raft mode switch at `position` was applied: the partition runs in `mode`
    /// from there.
    pub fn apply_raft_mode(&mut self, position: LogPosition, mode: RaftMode) {
        self.advance(position);
        self.record.raft = mode;
    }

    /// Applies the entry at `position` that switches the partition to `format`
    /// (`partition/format.rs`), if it has an earlier one: objects placed by id stay where they
    /// are, dedup rows are rewritten into rings. A switch to the format the partition has, or
    /// an earlier one, changes nothing.
    pub fn apply_format(&mut self, position: LogPosition, format: Format) -> Result<(), StoreError> {
        self.advance(position);
        if format <= self.format {
            return Ok(());
        }
        if format.dedup_ring() && !self.format.dedup_ring() {
            dedup_ring::convert(self.rows, self.partition, &mut self.record.counts, &self.limits)?;
        }
        self.format = format;
        let row = format.row().expect("every format but the original has a row");
        self.rows.insert(TableId::Placement, &keys::partition_prefix(self.partition), row)?;
        Ok(())
    }

    /// Applies a committed command at `position`. A `(client, seq)` already applied answers its
    /// first result without applying again.
    pub fn apply(&mut self, position: LogPosition, command: &Command) -> Result<WriteResult, StoreError> {
        self.advance(position);
        let lookup = dedup::lookup(self.rows, self.partition, self.format, &self.limits, command.client, command.seq)?;
        let fresh = match lookup {
            Lookup::Retry(result) => return Ok(result),
            Lookup::TooOld { oldest_kept } => {
                // Not recorded: the answer is about the table, and recording it would evict
                // a result that can still be asked for.
                return Ok(Err(Rejection::SequenceTooOld { client: command.client, seq: command.seq, oldest_kept }));
            }
            Lookup::New(fresh) => fresh,
        };
        let result = self.execute(position.index, command)?;
        if !command.op.is_recorded() {
            return Ok(result);
        }
        if let Some(deferred) = &mut self.deferred_dedup {
            deferred.push((position.index, command.client, command.seq, result.clone()));
            return Ok(result);
        }
        let recorded =
            dedup::Recorded { index: position.index, client: command.client, seq: command.seq, result: &result };
        dedup::record(self.rows, self.partition, &mut self.record.counts, &self.limits, recorded, fresh)?;
        Ok(result)
    }

    /// Writes the partition's record: what was applied becomes part of the transaction.
    pub fn finish(self) -> Result<PartitionRecord, StoreError> {
        self.rows.set_partition(self.partition, &self.record)?;
        Ok(self.record)
    }

    /// Runs one new command against the rows; on a rejection nothing has changed.
    fn execute(&mut self, index: u64, command: &Command) -> Result<WriteResult, StoreError> {
        let (op, client, seq) = (&command.op, command.client, command.seq);
        let ok = WriteOk { index, object_ids: Vec::new(), partition: None };
        if let Err(rejection) = check_op(op) {
            return Ok(Err(rejection));
        }
        let outcome = match op {
            WriteOp::CreateRepository { repo, fork_of } => self.create_repository(repo, fork_of.as_ref())?,
            WriteOp::DeleteRepository { repo } => self.delete_repository(repo)?,
            WriteOp::Transaction { repo, objects, refs } => {
                return Ok(self
                    .transaction(repo, objects, refs)?
                    .map(|()| WriteOk { object_ids: objects.iter().map(|object| object.oid).collect(), ..ok }));
            }
            WriteOp::AllocatePartition { repo, voters } => {
                return Ok(self
                    .directory()
                    .allocate_partition(repo, voters)?
                    .map(|partition| WriteOk { partition: Some(partition), ..ok }));
            }
            WriteOp::RouteRepository { repo, partition } => self.directory().route_repository(repo, *partition)?,
            WriteOp::UnrouteRepository { repo } => self.directory().unroute_repository(repo)?,
            WriteOp::SetPartitionMembers { partition, voters, learners, peers, as_of } => {
                self.directory().set_partition_members(*partition, voters, learners, peers, *as_of)?
            }
            WriteOp::BeginUpload { repo, kind, size_bytes, chunk_bytes } => {
                return Ok(self
                    .begin_upload(index, client, seq, repo, *kind, *size_bytes, *chunk_bytes)?
                    .map(|blob| WriteOk { index: blob, ..ok }));
            }
            WriteOp::UploadChunk { repo, offset, data } => self.upload_chunk(client, seq, repo, *offset, data)?,
            WriteOp::FinishUpload { repo, oid, refs } => {
                return Ok(self
                    .finish_upload(client, seq, repo, oid, refs)?
                    .map(|()| WriteOk { object_ids: vec![*oid], ..ok }));
            }
            WriteOp::AbortUpload { repo: _ } => {
                if let Some(upload) = self.upload(client, seq)? {
                    self.drop_upload(client, seq, &upload)?;
                }
                Ok(())
            }
        };
        Ok(outcome.map(|()| ok))
    }

    fn directory(&mut self) -> DirectoryWriter<'_, 'txn> {
        DirectoryWriter { rows: self.rows, directory: self.partition, counts: &mut self.record.counts }
    }

    fn repo_record(&self, repo: &RepoId) -> Result<Option<RepoRecord>, StoreError> {
        match self.rows.get(TableId::Repositories, &keys::repo(self.partition, repo))? {
            Some(bytes) => Ok(Some(tables::decode("repository", &bytes)?)),
            None => Ok(None),
        }
    }

    fn set_repo_record(&mut self, repo: &RepoId, record: &RepoRecord) -> Result<(), StoreError> {
        self.rows.insert(TableId::Repositories, &keys::repo(self.partition, repo), &tables::encode(record))?;
        Ok(())
    }

    fn create_repository(
        &mut self,
        repo: &RepoId,
        fork_of: Option<&RelativePath>,
    ) -> Result<Result<(), Rejection>, StoreError> {
        if self.repo_record(repo)?.is_some() {
            return Ok(Err(Rejection::RepositoryExists { repo: repo.clone() }));
        }
        if self.record.counts.repositories >= PARTITION_REPOSITORIES_MAX as u64 {
            return Ok(Err(Rejection::TooManyRepositories { count_max: PARTITION_REPOSITORIES_MAX as u64 }));
        }
        let record = match fork_of {
            None => RepoRecord::default(),
            Some(parent_path) => {
                let parent = RepoId { storage: repo.storage.clone(), relative_path: parent_path.clone() };
                let Some(parent_record) = self.repo_record(&parent)? else {
                    return Ok(Err(Rejection::RepositoryNotFound { repo: parent }));
                };
                self.copy_repository(&parent, repo)?;
                parent_record
            }
        };
        self.set_repo_record(repo, &record)?;
        self.record.counts.repositories += 1;
        Ok(Ok(()))
    }

    /// The fork `to` starts with `from`'s references and objects. Bounded by `from`'s rows.
    fn copy_repository(&mut self, from: &RepoId, to: &RepoId) -> Result<(), StoreError> {
        let (from_prefix, to_prefix) = (keys::repo(self.partition, from), keys::repo(self.partition, to));
        for table in [TableId::Refs, TableId::Held] {
            let mut copied = Vec::new();
            self.rows.scan(table, &from_prefix, &mut |key, value| {
                let mut new_key = to_prefix.clone();
                new_key.extend_from_slice(&key[from_prefix.len()..]);
                copied.push((new_key, value.to_vec()));
                Ok(ControlFlow::Continue(()))
            })?;
            for (key, value) in copied {
                self.rows.insert(table, &key, &value)?;
                if table == TableId::Held {
                    let oid = keys::KeyReader::new(&key[to_prefix.len()..]).take_oid()?;
                    self.hold_existing(&oid)?;
                }
            }
        }
        Ok(())
    }

    fn delete_repository(&mut self, repo: &RepoId) -> Result<Result<(), Rejection>, StoreError> {
        if self.repo_record(repo)?.is_none() {
            return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
        }
        let prefix = keys::repo(self.partition, repo);
        let mut held = Vec::new();
        self.rows.scan(TableId::Held, &prefix, &mut |key, _| {
            held.push(keys::KeyReader::new(&key[prefix.len()..]).take_oid()?);
            Ok(ControlFlow::Continue(()))
        })?;
        for oid in &held {
            self.release(oid)?;
        }
        // Uploads into it (at most `PARTITION_UPLOADS_MAX` to look through).
        let mut uploads = Vec::new();
        let partition_prefix = keys::partition_prefix(self.partition);
        self.rows.scan(TableId::Uploads, &partition_prefix, &mut |key, value| {
            let upload: UploadRecord = tables::decode("upload", value)?;
            if &upload.repo == repo {
                let mut reader = keys::KeyReader::new(&key[partition_prefix.len()..]);
                let client = reader.take_u64()?;
                let seq = reader.take_u64()?;
                uploads.push((ClientId(client), seq, upload));
            }
            Ok(ControlFlow::Continue(()))
        })?;
        for (client, seq, upload) in &uploads {
            self.drop_upload(*client, *seq, upload)?;
        }
        self.rows.remove_prefix(TableId::Held, &prefix)?;
        self.rows.remove_prefix(TableId::Refs, &prefix)?;
        self.rows.remove(TableId::Repositories, &prefix)?;
        self.record.counts.repositories -= 1;
        Ok(Ok(()))
    }

    fn holders(&self, oid: &Oid) -> Result<Option<Holders>, StoreError> {
        Holders::of(self.rows, self.partition, oid)
    }

    /// How many repositories hold `oid` (0 if it is not stored).
    fn holder_count(&self, oid: &Oid) -> Result<u64, StoreError> {
        Ok(self.holders(oid)?.map_or(0, |holders| holders.count))
    }

    /// One more repository holds `object`; the first stores it, where the partition's
    /// placement says.
    fn hold(&mut self, object: &NewObject) -> Result<(), StoreError> {
        let key = keys::object(self.partition, &object.oid);
        let at = match self.format.placement() {
            Placement::ById => None,
            Placement::ByIndex => Some(ObjectAt { index: self.record.applied.index, number: self.placed_in_entry }),
        };
        // Most objects written are new: one insert both counts their first holder and says
        // whether there was one, where a lookup first was one more descent of the tree.
        match self.rows.insert_replacing(TableId::Holders, &key, &Holders { count: 1, at }.encode())? {
            None => match at {
                None => {
                    self.rows.insert(TableId::Objects, &key, object.loose())?;
                }
                Some(at) => {
                    let at_key = keys::object_at(self.partition, at.index, at.number);
                    // The whole check refuses a state whose rows name a later index, so this
                    // is a store damaged since it was checked: an error, not a panic.
                    if self.rows.insert(TableId::ObjectsAt, &at_key, object.loose())? {
                        let reason = format!("object {} placed at {at:?}, where another is", object.oid);
                        return Err(StoreError::Corrupt { reason });
                    }
                    self.placed_in_entry += 1;
                }
            },
            Some(before) => {
                let holders = Holders::decode(&before)?;
                assert!(holders.count >= 1, "a holders row counts at least one holder of {}", object.oid);
                // The same leaf, written once already in this transaction: no copy this time.
                let holders = Holders { count: holders.count + 1, ..holders };
                self.rows.insert(TableId::Holders, &key, &holders.encode())?;
            }
        }
        Ok(())
    }

    /// One more repository holds `oid`, which must be stored (a fork copying its parent's set).
    fn hold_existing(&mut self, oid: &Oid) -> Result<(), StoreError> {
        let holders = self.holders(oid)?.filter(|holders| holders.count >= 1);
        let holders = holders.unwrap_or_else(|| panic!("object {oid} is held by a repository, so it is stored"));
        let holders = Holders { count: holders.count + 1, ..holders };
        self.rows.insert(TableId::Holders, &keys::object(self.partition, oid), &holders.encode())?;
        Ok(())
    }

    /// One repository stops holding `oid`; the object goes when no repository holds it.
    fn release(&mut self, oid: &Oid) -> Result<(), StoreError> {
        let key = keys::object(self.partition, oid);
        let holders = self.holders(oid)?.filter(|holders| holders.count >= 1);
        let holders = holders.unwrap_or_else(|| panic!("refcount of {oid} would go below zero"));
        if holders.count > 1 {
            let holders = Holders { count: holders.count - 1, ..holders };
            self.rows.insert(TableId::Holders, &key, &holders.encode())?;
            return Ok(());
        }
        self.rows.remove(TableId::Holders, &key)?;
        let not_stored = || StoreError::Corrupt { reason: format!("object {oid} is held but not stored") };
        if let Some(at) = holders.at {
            if !self.rows.remove(TableId::ObjectsAt, &keys::object_at(self.partition, at.index, at.number))? {
                return Err(not_stored());
            }
        } else if !self.rows.remove(TableId::Objects, &key)? {
            let large: LargeObjectRecord =
                tables::decode("large object", &self.rows.get(TableId::LargeObjects, &key)?.ok_or_else(not_stored)?)?;
            self.rows.remove(TableId::LargeObjects, &key)?;
            self.rows.remove_prefix(TableId::Chunks, &keys::blob(self.partition, large.blob))?;
        }
        Ok(())
    }

    fn upload(&self, client: ClientId, seq: u64) -> Result<Option<UploadRecord>, StoreError> {
        match self.rows.get(TableId::Uploads, &keys::upload(self.partition, client, seq))? {
            Some(bytes) => Ok(Some(tables::decode("upload", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Drops an upload and the pieces it stored.
    fn drop_upload(&mut self, client: ClientId, seq: u64, upload: &UploadRecord) -> Result<(), StoreError> {
        self.rows.remove(TableId::Uploads, &keys::upload(self.partition, client, seq))?;
        self.rows.remove_prefix(TableId::Chunks, &keys::blob(self.partition, upload.blob))?;
        assert!(self.record.counts.uploads > 0, "an upload in progress is counted");
        self.record.counts.uploads -= 1;
        Ok(())
    }

    /// Begins an upload, or finds the one this client and sequence began; answers where its
    /// pieces go (the index that began it).
    #[allow(clippy::too_many_arguments)] // One command's fields, named.
    fn begin_upload(
        &mut self,
        index: u64,
        client: ClientId,
        seq: u64,
        repo: &RepoId,
        kind: ObjectKind,
        size_bytes: u64,
        chunk_bytes: u32,
    ) -> Result<Result<u64, Rejection>, StoreError> {
        if let Some(upload) = self.upload(client, seq)? {
            if (&upload.repo, upload.kind, upload.size_bytes, upload.chunk_bytes)
                != (repo, kind, size_bytes, chunk_bytes)
            {
                let begun = format!(
                    "a {}-byte {} into {} in pieces of {} bytes",
                    upload.size_bytes, upload.kind, upload.repo, upload.chunk_bytes
                );
                return Ok(Err(Rejection::UploadMismatch { client, seq, begun }));
            }
            return Ok(Ok(upload.blob));
        }
        if self.repo_record(repo)?.is_none() {
            return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
        }
        if self.record.counts.uploads >= PARTITION_UPLOADS_MAX {
            return Ok(Err(Rejection::TooManyUploads { count_max: PARTITION_UPLOADS_MAX }));
        }
        let upload = UploadRecord { repo: repo.clone(), kind, size_bytes, chunk_bytes, received_bytes: 0, blob: index };
        self.rows.insert(TableId::Uploads, &keys::upload(self.partition, client, seq), &tables::encode(&upload))?;
        self.record.counts.uploads += 1;
        Ok(Ok(index))
    }

    /// Stores the next piece of an upload; a piece it already has is a retry, and changes
    /// nothing.
    fn upload_chunk(
        &mut self,
        client: ClientId,
        seq: u64,
        repo: &RepoId,
        offset: u64,
        data: &[u8],
    ) -> Result<Result<(), Rejection>, StoreError> {
        let Some(mut upload) = self.upload(client, seq)?.filter(|u| &u.repo == repo) else {
            return Ok(Err(Rejection::UploadNotFound { client, seq }));
        };
        let chunk_bytes = u64::from(upload.chunk_bytes);
        let expected_len = chunk_bytes.min(upload.size_bytes.saturating_sub(offset));
        if !offset.is_multiple_of(chunk_bytes) || offset >= upload.size_bytes || data.len() as u64 != expected_len {
            let reason = format!(
                "a piece of {} bytes at offset {offset} of a {}-byte object in pieces of {chunk_bytes} bytes",
                data.len(),
                upload.size_bytes
            );
            return Ok(Err(Rejection::InvalidUpload { reason }));
        }
        if offset > upload.received_bytes {
            return Ok(Err(Rejection::UploadOutOfOrder { offset, expected: upload.received_bytes }));
        }
        if offset < upload.received_bytes {
            return Ok(Ok(())); // Stored already: a retry.
        }
        self.rows.insert(TableId::Chunks, &keys::chunk(self.partition, upload.blob, offset / chunk_bytes), data)?;
        upload.received_bytes += data.len() as u64;
        self.rows.insert(TableId::Uploads, &keys::upload(self.partition, client, seq), &tables::encode(&upload))?;
        Ok(Ok(()))
    }

    /// Turns a complete upload into an object held by `repo` and applies `updates`; the upload
    /// is gone afterwards whatever the outcome.
    fn finish_upload(
        &mut self,
        client: ClientId,
        seq: u64,
        repo: &RepoId,
        oid: &Oid,
        updates: &[RefUpdate],
    ) -> Result<Result<(), Rejection>, StoreError> {
        let Some(upload) = self.upload(client, seq)?.filter(|u| &u.repo == repo) else {
            return Ok(Err(Rejection::UploadNotFound { client, seq }));
        };
        let outcome = self.check_finished_upload(&upload, repo, oid, updates)?;
        let keep_pieces = outcome.is_ok() && self.holder_count(oid)? == 0;
        if keep_pieces {
            // The pieces become the object's: only the upload's own row goes.
            self.rows.remove(TableId::Uploads, &keys::upload(self.partition, client, seq))?;
            self.record.counts.uploads -= 1;
        } else {
            self.drop_upload(client, seq, &upload)?;
        }
        if outcome.is_err() {
            return Ok(outcome);
        }
        let held_key = keys::held(self.partition, repo, oid);
        let held_before = self.rows.insert(TableId::Held, &held_key, &[])?;
        if !held_before {
            let key = keys::object(self.partition, oid);
            let holders = self.holders(oid)?.unwrap_or(Holders { count: 0, at: None });
            if holders.count == 0 {
                assert!(keep_pieces, "a new object keeps its upload's pieces");
                let large = LargeObjectRecord {
                    kind: upload.kind,
                    size_bytes: upload.size_bytes,
                    chunk_bytes: upload.chunk_bytes,
                    blob: upload.blob,
                };
                self.rows.insert(TableId::LargeObjects, &key, &tables::encode(&large))?;
            }
            // An object stored whole already keeps its place; one stored in pieces has none.
            let holders = Holders { count: holders.count + 1, ..holders };
            self.rows.insert(TableId::Holders, &key, &holders.encode())?;
        }
        self.update_refs(repo, updates)?;
        Ok(Ok(()))
    }

    /// Whether a finished upload may become object `oid` of `repo` with `updates`: it holds
    /// every piece, its content hashes to `oid`, and the references' preconditions hold.
    fn check_finished_upload(
        &self,
        upload: &UploadRecord,
        repo: &RepoId,
        oid: &Oid,
        updates: &[RefUpdate],
    ) -> Result<Result<(), Rejection>, StoreError> {
        if upload.received_bytes != upload.size_bytes {
            return Ok(Err(Rejection::UploadIncomplete {
                received_bytes: upload.received_bytes,
                size_bytes: upload.size_bytes,
            }));
        }
        let mut hasher = ObjectHasher::new(upload.kind, upload.size_bytes);
        let mut hashed_bytes = 0u64;
        self.rows.scan(TableId::Chunks, &keys::blob(self.partition, upload.blob), &mut |_, piece| {
            hashed_bytes += piece.len() as u64;
            if hashed_bytes > upload.size_bytes {
                return Err(StoreError::Corrupt { reason: format!("upload of {oid} holds more than its size") });
            }
            hasher.update(piece);
            Ok(ControlFlow::Continue(()))
        })?;
        if hashed_bytes != upload.size_bytes {
            return Err(StoreError::Corrupt { reason: format!("upload of {oid} counts pieces it does not hold") });
        }
        let actual = hasher.finish();
        if actual != *oid {
            return Ok(Err(Rejection::ObjectIdMismatch { claimed: *oid, actual }));
        }
        let written = BTreeSet::from([*oid]);
        self.check_ref_updates(repo, &written, updates)
    }

    fn reference(&self, repo: &RepoId, update: &RefUpdate) -> Result<Option<RefValue>, StoreError> {
        match self.rows.get(TableId::Refs, &keys::reference(self.partition, repo, &update.name))? {
            Some(bytes) => Ok(Some(tables::decode("reference", &bytes)?)),
            None => Ok(None),
        }
    }

    /// Checks everything first, then changes the rows: no check may fail after a change.
    /// Objects with an id already stored are the same object (ids are verified hashes).
    fn transaction(
        &mut self,
        repo: &RepoId,
        objects: &[NewObject],
        updates: &[RefUpdate],
    ) -> Result<Result<(), Rejection>, StoreError> {
        let written: BTreeSet<Oid> = objects.iter().map(|object| object.oid).collect();
        if let Err(rejection) = self.check_ref_updates(repo, &written, updates)? {
            return Ok(Err(rejection));
        }
        for object in objects {
            // A repository holds an object once, however often it is written.
            let held_key = keys::held(self.partition, repo, &object.oid);
            let held_before = self.rows.insert(TableId::Held, &held_key, &[])?;
            if !held_before {
                self.hold(object)?;
            }
        }
        self.update_refs(repo, updates)?;
        Ok(Ok(()))
    }

    /// Checks reference updates of `repo` against its rows, where `written` are the objects
    /// the same write adds.
    fn check_ref_updates(
        &self,
        repo: &RepoId,
        written: &BTreeSet<Oid>,
        updates: &[RefUpdate],
    ) -> Result<Result<(), Rejection>, StoreError> {
        let Some(record) = self.repo_record(repo)? else {
            return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
        };
        // With room for every update to add a reference, the reference count cannot go over
        // its bound, and an unconditional update (`Expected::Any`) is then decided by nothing
        // its reference holds: it is not read (one B-tree lookup less for a plain "put").
        let room_for_all = record.refs + updates.len() as u64 <= REPOSITORY_REFS_MAX as u64;
        let mut refs_count = record.refs;
        for update in updates {
            if !(room_for_all && matches!(update.expected, Expected::Any)) {
                let current = self.reference(repo, update)?;
                if !update.expected.matches(current.as_ref()) {
                    return Ok(Err(Rejection::PreconditionFailed {
                        name: update.name.clone(),
                        expected: update.expected.clone(),
                        current,
                    }));
                }
                match (current.is_some(), update.new.is_some()) {
                    (false, true) => refs_count += 1,
                    (true, false) => refs_count -= 1,
                    _ => {}
                }
            }
            if let Some(RefValue::Direct(oid)) = &update.new {
                let written_or_held = written.contains(oid)
                    || self.rows.contains(TableId::Held, &keys::held(self.partition, repo, oid))?;
                if !written_or_held {
                    return Ok(Err(Rejection::ObjectNotFound { oid: *oid }));
                }
            }
        }
        // Exact unless `room_for_all`, when it cannot be over.
        if refs_count > REPOSITORY_REFS_MAX as u64 {
            return Ok(Err(Rejection::TooManyRefs {
                repo: repo.clone(),
                count: refs_count,
                count_max: REPOSITORY_REFS_MAX as u64,
            }));
        }
        Ok(Ok(()))
    }

    /// Applies reference updates already checked by `check_ref_updates`. The repository's
    /// record (its reference count) is rewritten only when the count changes: most writes move
    /// references that exist.
    fn update_refs(&mut self, repo: &RepoId, updates: &[RefUpdate]) -> Result<(), StoreError> {
        let (mut added, mut removed) = (0u64, 0u64);
        for update in updates {
            let key = keys::reference(self.partition, repo, &update.name);
            let existed = match &update.new {
                Some(value) => self.rows.insert(TableId::Refs, &key, &tables::encode(value))?,
                None => self.rows.remove(TableId::Refs, &key)?,
            };
            match (existed, update.new.is_some()) {
                (false, true) => added += 1,
                (true, false) => removed += 1,
                _ => {}
            }
        }
        if added == removed {
            return Ok(());
        }
        let mut record = self.repo_record(repo)?.expect("checked: the repository exists");
        record.refs = (record.refs + added).checked_sub(removed).expect("a repository holds the references it removes");
        assert!(record.refs <= REPOSITORY_REFS_MAX as u64, "checked: the reference count stays bounded");
        self.set_repo_record(repo, &record)
    }
}

/// One committed entry, as a replica hands it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyEntry {
    pub position: LogPosition,
    pub kind: ApplyKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApplyKind {
    /// An empty entry (a new leader's), or one that changes nothing here.
    Noop,
    /// A client command, encoded as replicated.
    Command(Vec<u8>),
    /// A membership change, already applied to Raft: the members after it, or why Raft refused
    /// it (then the membership stays as it was).
    Membership(Result<ConfState, String>),
    /// The partition switches Raft on or off here (`partition::raft_mode`).
    RaftMode(RaftMode),
    /// The partition's rows take this format from here (`partition/format.rs`).
    Format(Format),
}

/// What applying one entry did, in the order applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub position: LogPosition,
    pub outcome: AppliedOutcome,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AppliedOutcome {
    Noop,
    Command {
        client: crate::ids::ClientId,
        seq: u64,
        result: WriteResult,
        /// A directory command that succeeded, with the partition's members after it (the node
        /// reacts to these).
        directory: Option<DirectoryChange>,
    },
    /// Committed bytes that do not decode as a command: applied as a no-op on every replica
    /// alike. Our own leader encoded them, so this means a version skew or a bug.
    Undecodable(String),
    Membership(Result<ConfState, String>),
    RaftMode(RaftMode),
}

/// A change of the directory that the node acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirectoryChange {
    Allocated { partition: PartitionId, info: crate::state_machine::PartitionInfo },
    MembersChanged { partition: PartitionId, info: crate::state_machine::PartitionInfo },
}

/// Applies `entries` (the next ones, in order) to `partition`'s rows and records the new
/// applied position: one part of the applier's transaction.
pub fn apply_entries(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    entries: &[ApplyEntry],
) -> Result<Vec<Applied>, StoreError> {
    Ok(apply_entry_batches(rows, partition, [entries])?.pop().expect("one batch in, one out"))
}

/// [`apply_entries`] for several batches of one partition in a row (a busy partition hands the
/// applier a batch per Raft ready), reading and writing the partition's record once.
pub fn apply_entry_batches<'e>(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    batches: impl IntoIterator<Item = &'e [ApplyEntry]>,
) -> Result<Vec<Vec<Applied>>, StoreError> {
    let mut writer = PartitionWriter::open(rows, partition)?;
    let applied = batches
        .into_iter()
        .map(|entries| entries.iter().map(|entry| apply_one(&mut writer, entry)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<Vec<_>, _>>()?;
    writer.finish()?;
    Ok(applied)
}

/// Applies one entry with `writer`.
fn apply_one(writer: &mut PartitionWriter<'_, '_>, entry: &ApplyEntry) -> Result<Applied, StoreError> {
    {
        let outcome = match &entry.kind {
            ApplyKind::Noop => {
                writer.apply_noop(entry.position);
                AppliedOutcome::Noop
            }
            ApplyKind::Membership(outcome) => {
                match outcome {
                    Ok(conf_state) => writer.apply_membership(entry.position, conf_state.clone()),
                    Err(_) => writer.apply_noop(entry.position),
                }
                AppliedOutcome::Membership(outcome.clone())
            }
            ApplyKind::RaftMode(mode) => {
                writer.apply_raft_mode(entry.position, *mode);
                AppliedOutcome::RaftMode(*mode)
            }
            ApplyKind::Format(format) => {
                writer.apply_format(entry.position, *format)?;
                // Nobody waits for it: a bootstrap log holds it, or a leader proposed it unasked.
                AppliedOutcome::Noop
            }
            ApplyKind::Command(bytes) => match Command::decode(bytes) {
                Ok(command) => {
                    let result = writer.apply(entry.position, &command)?;
                    let directory = writer.directory_change(&command.op, &result)?;
                    AppliedOutcome::Command { client: command.client, seq: command.seq, result, directory }
                }
                Err(error) => {
                    writer.apply_noop(entry.position);
                    AppliedOutcome::Undecodable(error.to_string())
                }
            },
        };
        Ok(Applied { position: entry.position, outcome })
    }
}

impl PartitionWriter<'_, '_> {
    /// The directory change a successful directory command made, for the node to act on.
    fn directory_change(&self, op: &WriteOp, result: &WriteResult) -> Result<Option<DirectoryChange>, StoreError> {
        let Ok(ok) = result else { return Ok(None) };
        let info = |partition| -> Result<_, StoreError> {
            super::directory::partition_info(self.rows, self.partition, partition)?
                .ok_or_else(|| StoreError::Corrupt { reason: format!("partition {partition} was just recorded") })
        };
        Ok(match op {
            WriteOp::AllocatePartition { .. } => {
                let partition = ok.partition.expect("an allocation names its partition");
                Some(DirectoryChange::Allocated { partition, info: info(partition)? })
            }
            WriteOp::SetPartitionMembers { partition, .. } => {
                Some(DirectoryChange::MembersChanged { partition: *partition, info: info(*partition)? })
            }
            _ => None,
        })
    }
}

/// What the planted `apply-not-atomic` bug commits after a batch's effects: the partition's
/// record (its applied index) and the dedup results.
pub struct Deferred {
    partition: PartitionId,
    record: PartitionRecord,
    dedup: Vec<DedupRecord>,
}

/// Planted `apply-not-atomic` only: applies `entries`' effects, keeping their dedup results and
/// the new applied position for [`commit_deferred`] in a later transaction. `pending` holds
/// what earlier calls in the same transaction deferred, per partition.
pub fn apply_entries_deferred(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    entries: &[ApplyEntry],
    pending: &mut std::collections::BTreeMap<PartitionId, Deferred>,
) -> Result<Vec<Applied>, StoreError> {
    let stored = rows.partition(partition)?.unwrap_or_default();
    let (record, mut dedup) = match pending.remove(&partition) {
        Some(earlier) => (earlier.record, earlier.dedup),
        None => (stored.clone(), Vec::new()),
    };
    let format = Format::of(rows, partition)?;
    let mut writer = PartitionWriter {
        rows,
        partition,
        record,
        format,
        placed_in_entry: 0,
        limits: DedupLimits::DEFAULT,
        deferred_dedup: Some(Vec::new()),
    };
    let mut applied = Vec::with_capacity(entries.len());
    for entry in entries {
        applied.push(apply_one(&mut writer, entry)?);
    }
    dedup.extend(writer.deferred_dedup.take().expect("set above"));
    let record = writer.record.clone();
    // The effects' transaction keeps the stored position and dedup counts.
    let kept = Counts {
        dedup_clients: stored.counts.dedup_clients,
        dedup_results_bytes: stored.counts.dedup_results_bytes,
        ..record.counts
    };
    rows.set_partition(partition, &PartitionRecord { counts: kept, ..stored })?;
    pending.insert(partition, Deferred { partition, record, dedup });
    Ok(applied)
}

/// Planted `apply-not-atomic` only: the second half of [`apply_entries_deferred`].
pub fn commit_deferred(rows: &mut WriteRows<'_>, deferred: Deferred) -> Result<(), StoreError> {
    let Deferred { partition, mut record, dedup } = deferred;
    let stored = rows.partition(partition)?.unwrap_or_default();
    record.counts.dedup_clients = stored.counts.dedup_clients;
    record.counts.dedup_results_bytes = stored.counts.dedup_results_bytes;
    let format = Format::of(rows, partition)?;
    for (index, client, seq, result) in dedup {
        if let Lookup::New(fresh) = dedup::lookup(rows, partition, format, &DedupLimits::DEFAULT, client, seq)? {
            let counts = &mut record.counts;
            let recorded = dedup::Recorded { index, client, seq, result: &result };
            dedup::record(rows, partition, counts, &DedupLimits::DEFAULT, recorded, fresh)?;
        }
    }
    rows.set_partition(partition, &record)
}
