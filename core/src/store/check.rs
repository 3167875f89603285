//! Verifying a partition's rows whole, and digesting them.
//!
//! [`check_partition`] is the store's fsck for one partition: every key and value decodes,
//! every object hashes to its id, every reference points to an object its repository holds,
//! every count is what the rows say. It runs on every snapshot a replica installs (rows from
//! another node are untrusted bytes) and in tests after every change; it is linear in the
//! partition's size, so never on the apply path. It returns the counts the record must hold.
//!
//! [`digest`] hashes a partition's rows in key order, table by table: replicas with the same
//! rows have the same digest, whatever their applied index.

use super::dedup_ring;
use super::keys::{self, KeyReader};
use super::loose;
use super::tables::{
    self, ClientRecord, Counts, Format, Holders, LargeObjectRecord, ObjectAt, Placement, RepoRecord, RingClient, Rows,
    TableId, UploadRecord,
};
use super::StoreError;
use crate::ids::{ClientId, PartitionId};
use crate::state_machine::{
    check_members, check_peers, validate_storage_name, Digest, ObjectHasher, Oid, PartitionInfo, RefValue, Rejection,
    RepoId, WriteResult, DIRECTORY_PARTITIONS_MAX, DIRECTORY_ROUTES_MAX, PARTITION_REPOSITORIES_MAX,
    PARTITION_UPLOADS_MAX, REPOSITORY_REFS_MAX, UPLOAD_CHUNK_BYTES_MAX, UPLOAD_CHUNK_BYTES_MIN,
};
use sha1::{Digest as _, Sha1};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

/// SHA-1 over every row of `partition` (its record excluded), table by table in key order,
/// keys without the partition's prefix: the same rows digest the same under any partition id.
pub fn digest(rows: &dyn Rows, partition: PartitionId) -> Result<Digest, StoreError> {
    let prefix = keys::partition_prefix(partition);
    let mut hasher = Sha1::new();
    for table in TableId::ALL {
        rows.scan(table, &prefix, &mut |key, value| {
            let key = &key[prefix.len()..];
            hasher.update([table as u8]);
            hasher.update((key.len() as u64).to_le_bytes());
            hasher.update(key);
            hasher.update((value.len() as u64).to_le_bytes());
            hasher.update(value);
            Ok(ControlFlow::Continue(()))
        })?;
    }
    let mut digest = [0u8; 20];
    digest.copy_from_slice(&hasher.finalize());
    Ok(Digest(digest))
}

/// Checks every row of `partition`, a state applied through index `applied` (no row names a
/// later index); returns the counts its record must hold, or the first problem found.
pub fn check_partition(
    rows: &dyn Rows,
    partition: PartitionId,
    applied: u64,
    limits: &super::DedupLimits,
) -> Result<Counts, String> {
    let prefix = keys::partition_prefix(partition);
    let mut checker = Checker { rows, partition, prefix, applied, counts: Counts::default() };
    checker.run(limits).map_err(|problem| format!("partition {partition}: {problem}"))?;
    Ok(checker.counts)
}

struct Checker<'a> {
    rows: &'a dyn Rows,
    partition: PartitionId,
    prefix: [u8; keys::PARTITION_BYTES],
    /// The index the state was applied through.
    applied: u64,
    counts: Counts,
}

/// Runs `visit` on every row of `table` in the partition, with the key after the prefix.
fn each(
    rows: &dyn Rows,
    table: TableId,
    prefix: &[u8],
    mut visit: impl FnMut(KeyReader<'_>, &[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let mut problem = None;
    rows.scan(table, prefix, &mut |key, value| match visit(KeyReader::new(&key[prefix.len()..]), value) {
        Ok(()) => Ok(ControlFlow::Continue(())),
        Err(p) => {
            problem = Some(format!("{}: {p}", table.name()));
            Ok(ControlFlow::Break(()))
        }
    })
    .map_err(|e| e.to_string())?;
    problem.map_or(Ok(()), Err)
}

fn bad(e: keys::BadKey) -> String {
    e.0
}

fn decode<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, String> {
    tables::decode(what, bytes).map_err(|e| e.to_string())
}

fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, String> {
    tables::decode_u64(what, bytes).map_err(|e| e.to_string())
}

impl Checker<'_> {
    fn run(&mut self, limits: &super::DedupLimits) -> Result<(), String> {
        let (rows, prefix) = (self.rows, self.prefix);
        // Repositories and their reference counts.
        let mut repos: BTreeMap<RepoId, RepoRecord> = BTreeMap::new();
        each(rows, TableId::Repositories, &prefix, |mut key, value| {
            let repo = key.take_repo().map_err(bad)?;
            key.end().map_err(bad)?;
            repos.insert(repo, decode("repository", value)?);
            Ok(())
        })?;
        if repos.len() > PARTITION_REPOSITORIES_MAX {
            return Err(format!("{} repositories, more than {PARTITION_REPOSITORIES_MAX}", repos.len()));
        }
        self.counts.repositories = repos.len() as u64;

        // Objects held by each repository, and holders per object.
        let mut held: BTreeMap<(RepoId, Oid), ()> = BTreeMap::new();
        let mut holders: BTreeMap<Oid, u64> = BTreeMap::new();
        each(rows, TableId::Held, &prefix, |mut key, value| {
            let repo = key.take_repo().map_err(bad)?;
            let oid = key.take_oid().map_err(bad)?;
            key.end().map_err(bad)?;
            if !value.is_empty() {
                return Err(format!("{repo} holds {oid} with a value"));
            }
            if !repos.contains_key(&repo) {
                return Err(format!("{repo} holds {oid} but does not exist"));
            }
            *holders.entry(oid).or_default() += 1;
            held.insert((repo, oid), ());
            Ok(())
        })?;

        let mut refs_per_repo: BTreeMap<RepoId, u64> = BTreeMap::new();
        each(rows, TableId::Refs, &prefix, |mut key, value| {
            let repo = key.take_repo().map_err(bad)?;
            let name = key.take_ref_name().map_err(bad)?;
            let value: RefValue = decode("reference", value)?;
            match &value {
                RefValue::Direct(oid) if !held.contains_key(&(repo.clone(), *oid)) => {
                    return Err(format!("{repo}: {name} points to {oid}, which it does not hold"));
                }
                RefValue::Symbolic(target) if !target.is_under_refs() => {
                    return Err(format!("{repo}: {name} points to {target}, outside refs/"));
                }
                _ => {}
            }
            if !repos.contains_key(&repo) {
                return Err(format!("{repo} has references but does not exist"));
            }
            *refs_per_repo.entry(repo).or_default() += 1;
            Ok(())
        })?;
        for (repo, record) in &repos {
            let counted = refs_per_repo.get(repo).copied().unwrap_or(0);
            if record.refs != counted || counted > REPOSITORY_REFS_MAX as u64 {
                return Err(format!("{repo} counts {} references, holds {counted}", record.refs));
            }
        }

        let mut stored: BTreeMap<Oid, ()> = BTreeMap::new();
        each(rows, TableId::Objects, &prefix, |mut key, value| {
            let oid = key.take_oid().map_err(bad)?;
            key.end().map_err(bad)?;
            loose::decode(&oid, value)?;
            stored.insert(oid, ());
            Ok(())
        })?;
        self.check_pieces(&repos, &mut stored)?;
        let format = self.format()?;
        let mut counted_holders = 0usize;
        // Objects placed by index, by where their holders rows say they are.
        let mut placed: BTreeMap<ObjectAt, Oid> = BTreeMap::new();
        each(rows, TableId::Holders, &prefix, |mut key, value| {
            let oid = key.take_oid().map_err(bad)?;
            key.end().map_err(bad)?;
            let row = Holders::decode(value).map_err(|e| e.to_string())?;
            let held_by = holders.get(&oid).copied().unwrap_or(0);
            if row.count != held_by || row.count == 0 {
                return Err(format!("object {oid} counts {} holders, {held_by} hold it", row.count));
            }
            match row.at {
                Some(at) if stored.contains_key(&oid) => {
                    return Err(format!("object {oid} is placed at {at:?} and stored by id or in pieces"));
                }
                Some(at) if at.index > self.applied => {
                    return Err(format!("object {oid} is placed at {at:?}, past the state's index {}", self.applied));
                }
                Some(at) => {
                    if let Some(other) = placed.insert(at, oid) {
                        return Err(format!("objects {other} and {oid} are both placed at {at:?}"));
                    }
                }
                None if !stored.contains_key(&oid) => return Err(format!("object {oid} is held but not stored")),
                None => {}
            }
            counted_holders += 1;
            Ok(())
        })?;
        let placed_count = placed.len();
        if placed_count > 0 && format.placement() != Placement::ByIndex {
            return Err(format!("{placed_count} objects are placed by index in a partition that places them by id"));
        }
        each(rows, TableId::ObjectsAt, &prefix, |mut key, value| {
            let at = ObjectAt { index: key.take_u64().map_err(bad)?, number: key.take_u32().map_err(bad)? };
            key.end().map_err(bad)?;
            let oid = placed.remove(&at).ok_or_else(|| format!("the object at {at:?} is held by nobody"))?;
            loose::decode(&oid, value)?;
            Ok(())
        })?;
        if let Some((at, oid)) = placed.first_key_value() {
            return Err(format!("object {oid} is placed at {at:?}, where nothing is stored"));
        }
        if counted_holders != holders.len() || stored.len() + placed_count != holders.len() {
            return Err(format!(
                "{} objects stored by id or in pieces, {placed_count} by index, {} counted, {} held",
                stored.len(),
                counted_holders,
                holders.len()
            ));
        }

        self.check_dedup(limits, format)?;
        self.check_directory()
    }

    /// The partition's format: its one `placement` row, if any.
    fn format(&self) -> Result<Format, String> {
        let mut format = Format::Original;
        each(self.rows, TableId::Placement, &self.prefix, |key, value| {
            key.end().map_err(bad)?;
            format = Format::decode(Some(value)).map_err(|e| e.to_string())?;
            Ok(())
        })?;
        Ok(format)
    }

    /// Objects stored in pieces and uploads in progress: each blob belongs to one of them, its
    /// pieces are numbered from 0 without gaps, all full but the last, and a large object's
    /// content hashes to its id. Adds large objects to `stored`.
    fn check_pieces(
        &mut self,
        repos: &BTreeMap<RepoId, RepoRecord>,
        stored: &mut BTreeMap<Oid, ()>,
    ) -> Result<(), String> {
        let (rows, prefix) = (self.rows, self.prefix);
        // blob -> (piece size, bytes it must hold, the object it is, if finished)
        type Blob = (u32, u64, Option<(Oid, LargeObjectRecord)>);
        let mut blobs: BTreeMap<u64, Blob> = BTreeMap::new();
        let piece_size_ok = |bytes: u32| (UPLOAD_CHUNK_BYTES_MIN..=UPLOAD_CHUNK_BYTES_MAX).contains(&bytes);
        each(rows, TableId::LargeObjects, &prefix, |mut key, value| {
            let oid = key.take_oid().map_err(bad)?;
            key.end().map_err(bad)?;
            let large: LargeObjectRecord = decode("large object", value)?;
            if !piece_size_ok(large.chunk_bytes) {
                return Err(format!("object {oid} has pieces of {} bytes", large.chunk_bytes));
            }
            if stored.insert(oid, ()).is_some() {
                return Err(format!("object {oid} is stored whole and in pieces"));
            }
            if blobs.insert(large.blob, (large.chunk_bytes, large.size_bytes, Some((oid, large)))).is_some() {
                return Err(format!("blob {} belongs to two objects", large.blob));
            }
            Ok(())
        })?;
        each(rows, TableId::Uploads, &prefix, |mut key, value| {
            let client = key.take_u64().map_err(bad)?;
            let seq = key.take_u64().map_err(bad)?;
            key.end().map_err(bad)?;
            let upload: UploadRecord = decode("upload", value)?;
            if !repos.contains_key(&upload.repo) || !piece_size_ok(upload.chunk_bytes) {
                return Err(format!("upload of client {client} seq {seq}: bad repository or piece size"));
            }
            if upload.received_bytes > upload.size_bytes {
                return Err(format!("upload of client {client} seq {seq} holds more than its size"));
            }
            if blobs.insert(upload.blob, (upload.chunk_bytes, upload.received_bytes, None)).is_some() {
                return Err(format!("blob {} belongs to two uploads or objects", upload.blob));
            }
            self.counts.uploads += 1;
            Ok(())
        })?;
        if self.counts.uploads > PARTITION_UPLOADS_MAX {
            return Err(format!("{} uploads, more than {PARTITION_UPLOADS_MAX}", self.counts.uploads));
        }
        // The blob being read: its id, next piece number, bytes so far, and hasher if an object.
        let mut current: Option<(u64, u64, u64, Option<ObjectHasher>)> = None;
        let mut finished: BTreeMap<u64, ()> = BTreeMap::new();
        let mut finish = |blob: u64, bytes: u64, hasher: Option<ObjectHasher>| -> Result<(), String> {
            let (_, expected, object) = &blobs[&blob];
            if bytes != *expected {
                return Err(format!("blob {blob} holds {bytes} bytes, not {expected}"));
            }
            if let (Some(hasher), Some((oid, _))) = (hasher, object) {
                let actual = hasher.finish();
                if actual != *oid {
                    return Err(format!("object {oid} in pieces hashes to {actual}"));
                }
            }
            finished.insert(blob, ());
            Ok(())
        };
        each(rows, TableId::Chunks, &prefix, |mut key, piece| {
            let blob = key.take_u64().map_err(bad)?;
            let number = key.take_u64().map_err(bad)?;
            key.end().map_err(bad)?;
            let Some((chunk_bytes, expected, object)) = blobs.get(&blob) else {
                return Err(format!("piece {number} of blob {blob}, which nothing holds"));
            };
            if current.as_ref().is_some_and(|(b, ..)| *b != blob) {
                let (done, _, bytes, hasher) = current.take().expect("checked: some");
                finish(done, bytes, hasher)?;
            }
            let (_, next, bytes, hasher) = current.get_or_insert_with(|| {
                let hasher = object.as_ref().map(|(_, large)| ObjectHasher::new(large.kind, large.size_bytes));
                (blob, 0, 0, hasher)
            });
            let full = piece.len() as u64 == u64::from(*chunk_bytes);
            let last = *bytes + piece.len() as u64 == *expected;
            if number != *next || piece.is_empty() || !(full || last) || *bytes + piece.len() as u64 > *expected {
                return Err(format!("blob {blob}: piece {number} of {} bytes is out of place", piece.len()));
            }
            if let Some(hasher) = hasher {
                hasher.update(piece);
            }
            *next += 1;
            *bytes += piece.len() as u64;
            Ok(())
        })?;
        if let Some((blob, _, bytes, hasher)) = current {
            finish(blob, bytes, hasher)?;
        }
        for (blob, (_, expected, _)) in &blobs {
            if *expected > 0 && !finished.contains_key(blob) {
                return Err(format!("blob {blob} holds no pieces, not {expected} bytes"));
            }
        }
        Ok(())
    }

    fn check_dedup(&mut self, limits: &super::DedupLimits, format: Format) -> Result<(), String> {
        /// A client's record, in either format.
        struct Client {
            last_index: u64,
            /// Rings only: the highest sequence recorded.
            highest_seq: Option<u64>,
            results: u64,
            results_bytes: u64,
        }
        let (rows, prefix) = (self.rows, self.prefix);
        let mut clients: BTreeMap<ClientId, Client> = BTreeMap::new();
        let applied = self.applied;
        each(rows, TableId::DedupClients, &prefix, |mut key, value| {
            let client = ClientId(key.take_u64().map_err(bad)?);
            key.end().map_err(bad)?;
            let record = match format.dedup_ring() {
                true => {
                    let ring: RingClient = decode("dedup ring client", value)?;
                    let RingClient { last_index, highest_seq, results, results_bytes } = ring;
                    Client { last_index, highest_seq: Some(highest_seq), results, results_bytes }
                }
                false => {
                    let ClientRecord { last_index, results, results_bytes } = decode("dedup client", value)?;
                    Client { last_index, highest_seq: None, results, results_bytes }
                }
            };
            if record.last_index > applied {
                return Err(format!("client {client}'s last write is past the state's index {applied}"));
            }
            clients.insert(client, record);
            Ok(())
        })?;
        let mut results: BTreeMap<ClientId, (u64, u64)> = BTreeMap::new();
        let mut bytes_total = 0u64;
        each(rows, TableId::DedupResults, &prefix, |mut key, value| {
            let client = ClientId(key.take_u64().map_err(bad)?);
            let seq_or_slot = key.take_u64().map_err(bad)?;
            key.end().map_err(bad)?;
            let Some(record) = clients.get(&client) else {
                return Err(format!("a result of unknown client {client}"));
            };
            let (seq, result) = match record.highest_seq {
                Some(highest) => {
                    let (seq, result) = dedup_ring::decode_slot(value).map_err(|e| e.to_string())?;
                    if seq_or_slot >= limits.window_max || seq % limits.window_max != seq_or_slot || seq > highest {
                        return Err(format!(
                            "client {client}'s slot {seq_or_slot} holds seq {seq} (highest {highest})"
                        ));
                    }
                    (seq, result)
                }
                None => (seq_or_slot, value),
            };
            let result: WriteResult = decode("dedup result", result)?;
            match &result {
                Ok(ok) if ok.index > record.last_index => {
                    return Err(format!("client {client} seq {seq} has a result from after its last write"));
                }
                Err(Rejection::SequenceTooOld { .. }) => {
                    return Err(format!("client {client} has a recorded SequenceTooOld"));
                }
                _ => {}
            }
            let entry = results.entry(client).or_default();
            entry.0 += 1;
            entry.1 += value.len() as u64;
            bytes_total += value.len() as u64;
            Ok(())
        })?;
        let mut ordered = 0u64;
        each(rows, TableId::DedupOrder, &prefix, |mut key, value| {
            let index = key.take_u64().map_err(bad)?;
            key.end().map_err(bad)?;
            let client = ClientId(u64::from_be_bytes(value.try_into().map_err(|_| "a bad client id".to_string())?));
            match clients.get(&client) {
                Some(record) if record.last_index == index && record.highest_seq.is_none() => {
                    ordered += 1;
                    Ok(())
                }
                _ => Err(format!("index {index} names client {client}, whose last write is elsewhere")),
            }
        })?;
        for (client, record) in &clients {
            let (count, bytes) = results.get(client).copied().unwrap_or((0, 0));
            if record.results != count || record.results_bytes != bytes || count == 0 || count > limits.window_max {
                return Err(format!(
                    "dedup client {client} counts {} results of {} bytes, holds {count} of {bytes}",
                    record.results, record.results_bytes
                ));
            }
        }
        // Rings keep no order: `ordered` is 0 then, as the order check above made sure.
        if !format.dedup_ring() && ordered != clients.len() as u64 {
            return Err(format!("{} dedup clients, {ordered} in order", clients.len()));
        }
        if clients.len() as u64 > limits.clients_max || (bytes_total > limits.results_bytes_max && clients.len() > 1) {
            return Err(format!("dedup holds {} clients and {bytes_total} bytes, over its bounds", clients.len()));
        }
        self.counts.dedup_clients = clients.len() as u64;
        self.counts.dedup_results_bytes = bytes_total;
        Ok(())
    }

    fn check_directory(&mut self) -> Result<(), String> {
        let (rows, prefix) = (self.rows, self.prefix);
        let mut partitions: BTreeMap<PartitionId, ()> = BTreeMap::new();
        let mut next_partition = 1u64;
        each(rows, TableId::Members, &prefix, |mut key, value| {
            let id = PartitionId(key.take_u64().map_err(bad)?);
            key.end().map_err(bad)?;
            if id.0 == 0 {
                return Err("partition 0 is recorded".into());
            }
            let info: PartitionInfo = decode("partition members", value)?;
            validate_storage_name(&info.authority).map_err(|e| format!("partition {id}: {e}"))?;
            check_members(&info.voters, &info.learners)
                .and_then(|_| check_peers(&info.voters, &info.learners, &info.peers))
                .map_err(|e| format!("partition {id}: {e}"))?;
            let ascending = |ids: &[u64]| ids.windows(2).all(|pair| pair[0] < pair[1]);
            let nodes = |list: &[crate::ids::NodeId]| list.iter().map(|n| n.0).collect::<Vec<_>>();
            let peers: Vec<u64> = info.peers.iter().map(|p| p.0).collect();
            if !ascending(&nodes(&info.voters)) || !ascending(&nodes(&info.learners)) || !ascending(&peers) {
                return Err(format!("partition {id}: member lists are not sorted"));
            }
            next_partition = id.0 + 1;
            partitions.insert(id, ());
            Ok(())
        })?;
        if partitions.len() > DIRECTORY_PARTITIONS_MAX {
            return Err(format!("{} partitions recorded", partitions.len()));
        }
        let mut routes_per_partition: BTreeMap<PartitionId, u64> = BTreeMap::new();
        let mut routes = 0u64;
        let mut routed: BTreeSet<(PartitionId, RepoId)> = BTreeSet::new();
        each(rows, TableId::Routes, &prefix, |mut key, value| {
            let repo = key.take_repo().map_err(bad)?;
            key.end().map_err(bad)?;
            let partition = PartitionId(decode_u64("route", value)?);
            if !partitions.contains_key(&partition) {
                return Err(format!("{repo} is routed to unknown partition {partition}"));
            }
            *routes_per_partition.entry(partition).or_default() += 1;
            routes += 1;
            routed.insert((partition, repo));
            Ok(())
        })?;
        // The index of routes by partition holds exactly the routes.
        let mut indexed = 0u64;
        each(rows, TableId::PartitionRoutes, &prefix, |mut key, value| {
            let partition = PartitionId(key.take_u64().map_err(bad)?);
            let repo = key.take_repo().map_err(bad)?;
            key.end().map_err(bad)?;
            if !value.is_empty() || !routed.contains(&(partition, repo.clone())) {
                return Err(format!("{repo} is indexed under partition {partition} but not routed there"));
            }
            indexed += 1;
            Ok(())
        })?;
        if indexed != routes {
            return Err(format!("{routes} routes, {indexed} indexed by partition"));
        }
        let mut counted = 0usize;
        each(rows, TableId::RouteCounts, &prefix, |mut key, value| {
            let id = PartitionId(key.take_u64().map_err(bad)?);
            key.end().map_err(bad)?;
            let count = decode_u64("route count", value)?;
            if routes_per_partition.get(&id).copied() != Some(count) || count > PARTITION_REPOSITORIES_MAX as u64 {
                return Err(format!("partition {id} counts {count} routes"));
            }
            counted += 1;
            Ok(())
        })?;
        if counted != routes_per_partition.len() || routes > DIRECTORY_ROUTES_MAX as u64 {
            return Err(format!("{routes} routes, {counted} partitions counting them"));
        }
        self.counts.directory_partitions = partitions.len() as u64;
        self.counts.directory_routes = routes;
        self.counts.next_partition = if partitions.is_empty() { 0 } else { next_partition };
        let _ = self.partition;
        Ok(())
    }
}
