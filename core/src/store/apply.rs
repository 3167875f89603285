//! Applying committed entries to one partition's rows, inside the applier's write transaction.
//!
//! Deterministic: every replica applies the same commands in the same Raft order to the same
//! rows and reaches the same rows, so nothing here reads a clock or iterates anything but key
//! ranges. Checks that decide a command's fate run here, at apply time, against the rows as
//! of that index; a rejected command changes nothing but the dedup table.

use super::dedup::{self, DedupLimits, Lookup};
use super::directory::DirectoryWriter;
use super::keys;
use super::loose;
use super::tables::{self, PartitionRecord, RepoRecord, Rows, TableId, WriteRows};
use super::StoreError;
use crate::ids::PartitionId;
use crate::persist::{ConfState, LogPosition};
use crate::state_machine::{
    check_op, Command, NewObject, Oid, RefUpdate, RefValue, Rejection, RelativePath, RepoId, WriteOk,
    WriteOp, WriteResult, PARTITION_REPOSITORIES_MAX, REPOSITORY_REFS_MAX,
};
use std::collections::BTreeSet;
use std::ops::ControlFlow;

/// One partition's rows, open for applying entries in order.
pub struct PartitionWriter<'a, 'txn> {
    rows: &'a mut WriteRows<'txn>,
    partition: PartitionId,
    record: PartitionRecord,
    limits: DedupLimits,
}

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
        Ok(PartitionWriter { rows, partition, record, limits })
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

    /// Applies a committed command at `position`. A `(client, seq)` already applied answers its
    /// first result without applying again.
    pub fn apply(&mut self, position: LogPosition, command: &Command) -> Result<WriteResult, StoreError> {
        self.advance(position);
        match dedup::lookup(self.rows, self.partition, &self.limits, command.client, command.seq)? {
            Lookup::Retry(result) => return Ok(result),
            Lookup::TooOld { oldest_kept } => {
                // Not recorded: the answer is about the table, and recording it would evict
                // a result that can still be asked for.
                return Ok(Err(Rejection::SequenceTooOld { client: command.client, seq: command.seq, oldest_kept }));
            }
            Lookup::New => {}
        }
        let result = self.execute(position.index, &command.op)?;
        let (partition, limits) = (self.partition, self.limits);
        let counts = &mut self.record.counts;
        dedup::record(self.rows, partition, counts, &limits, position.index, command.client, command.seq, &result)?;
        Ok(result)
    }

    /// Writes the partition's record: what was applied becomes part of the transaction.
    pub fn finish(self) -> Result<PartitionRecord, StoreError> {
        self.rows.set_partition(self.partition, &self.record)?;
        Ok(self.record)
    }

    /// Runs one new command against the rows; on a rejection nothing has changed.
    fn execute(&mut self, index: u64, op: &WriteOp) -> Result<WriteResult, StoreError> {
        let ok = WriteOk { index, object_ids: Vec::new(), partition: None };
        if let Err(rejection) = check_op(op) {
            return Ok(Err(rejection));
        }
        let outcome = match op {
            WriteOp::CreateRepository { repo, fork_of } => self.create_repository(repo, fork_of.as_ref())?,
            WriteOp::DeleteRepository { repo } => self.delete_repository(repo)?,
            WriteOp::Transaction { repo, objects, refs } => {
                return Ok(self.transaction(repo, objects, refs)?.map(|()| WriteOk {
                    object_ids: objects.iter().map(|object| object.oid).collect(),
                    ..ok
                }));
            }
            WriteOp::AllocatePartition { repo, voters } => {
                return Ok(self.directory().allocate_partition(repo, voters)?.map(|partition| WriteOk {
                    partition: Some(partition),
                    ..ok
                }));
            }
            WriteOp::RouteRepository { repo, partition } => self.directory().route_repository(repo, *partition)?,
            WriteOp::UnrouteRepository { repo } => self.directory().unroute_repository(repo)?,
            WriteOp::SetPartitionMembers { partition, voters, learners, peers } => {
                self.directory().set_partition_members(*partition, voters, learners, peers)?
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
        self.rows.insert(TableId::Repositories, &keys::repo(self.partition, repo), &tables::encode(record))
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
                    let oid = keys::KeyReader::new(&key[to_prefix.len()..])
                        .take_oid()
                        .map_err(|e| StoreError::Corrupt { reason: e.0 })?;
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
            held.push(keys::KeyReader::new(&key[prefix.len()..]).take_oid().map_err(|e| StoreError::Corrupt { reason: e.0 })?);
            Ok(ControlFlow::Continue(()))
        })?;
        for oid in &held {
            self.release(oid)?;
        }
        self.rows.remove_prefix(TableId::Held, &prefix)?;
        self.rows.remove_prefix(TableId::Refs, &prefix)?;
        self.rows.remove(TableId::Repositories, &prefix)?;
        self.record.counts.repositories -= 1;
        Ok(Ok(()))
    }

    fn holders(&self, oid: &Oid) -> Result<u64, StoreError> {
        match self.rows.get(TableId::Holders, &keys::object(self.partition, oid))? {
            Some(bytes) => tables::decode_u64("holders", &bytes),
            None => Ok(0),
        }
    }

    /// One more repository holds `object`; the first stores it.
    fn hold(&mut self, object: &NewObject) -> Result<(), StoreError> {
        let key = keys::object(self.partition, &object.oid);
        let holders = self.holders(&object.oid)?;
        if holders == 0 {
            self.rows.insert(TableId::Objects, &key, &loose::encode(object.kind, &object.data))?;
        }
        self.rows.insert(TableId::Holders, &key, &tables::encode_u64(holders + 1))
    }

    /// One more repository holds `oid`, which must be stored (a fork copying its parent's set).
    fn hold_existing(&mut self, oid: &Oid) -> Result<(), StoreError> {
        let holders = self.holders(oid)?;
        assert!(holders >= 1, "object {oid} is held by a repository, so it is stored");
        self.rows.insert(TableId::Holders, &keys::object(self.partition, oid), &tables::encode_u64(holders + 1))
    }

    /// One repository stops holding `oid`; the object goes when no repository holds it.
    fn release(&mut self, oid: &Oid) -> Result<(), StoreError> {
        let key = keys::object(self.partition, oid);
        let holders = self.holders(oid)?;
        assert!(holders >= 1, "refcount of {oid} would go below zero");
        if holders == 1 {
            self.rows.remove(TableId::Holders, &key)?;
            self.rows.remove(TableId::Objects, &key)?;
            Ok(())
        } else {
            self.rows.insert(TableId::Holders, &key, &tables::encode_u64(holders - 1))
        }
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
        let Some(mut record) = self.repo_record(repo)? else {
            return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
        };
        let written: BTreeSet<Oid> = objects.iter().map(|object| object.oid).collect();
        let mut refs_count = record.refs;
        for update in updates {
            let current = self.reference(repo, update)?;
            if !update.expected.matches(current.as_ref()) {
                return Ok(Err(Rejection::PreconditionFailed {
                    name: update.name.clone(),
                    expected: update.expected.clone(),
                    current,
                }));
            }
            if let Some(RefValue::Direct(oid)) = &update.new {
                let held = self.rows.contains(TableId::Held, &keys::held(self.partition, repo, oid))?;
                if !held && !written.contains(oid) {
                    return Ok(Err(Rejection::ObjectNotFound { oid: *oid }));
                }
            }
            match (current.is_some(), update.new.is_some()) {
                (false, true) => refs_count += 1,
                (true, false) => refs_count -= 1,
                _ => {}
            }
        }
        if refs_count > REPOSITORY_REFS_MAX as u64 {
            return Ok(Err(Rejection::TooManyRefs {
                repo: repo.clone(),
                count: refs_count,
                count_max: REPOSITORY_REFS_MAX as u64,
            }));
        }

        for object in objects {
            // A repository holds an object once, however often it is written.
            let held_key = keys::held(self.partition, repo, &object.oid);
            if !self.rows.contains(TableId::Held, &held_key)? {
                self.rows.insert(TableId::Held, &held_key, &[])?;
                self.hold(object)?;
            }
        }
        for update in updates {
            let key = keys::reference(self.partition, repo, &update.name);
            match &update.new {
                Some(value) => self.rows.insert(TableId::Refs, &key, &tables::encode(value))?,
                None => {
                    self.rows.remove(TableId::Refs, &key)?;
                }
            }
        }
        record.refs = refs_count;
        self.set_repo_record(repo, &record)?;
        Ok(Ok(()))
    }
}
