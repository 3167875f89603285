//! The store's tables and their rows, and one way to reach them from a read or a write
//! transaction ([`Rows`], [`WriteRows`]), so that the state machine's code is written once.
//!
//! | table | key (after the partition's 8 bytes) | value |
//! | --- | --- | --- |
//! | `partitions` | the partition id (the whole key) | [`PartitionRecord`] |
//! | `repositories` | repository | [`RepoRecord`] |
//! | `refs` | repository, reference name | `RefValue` |
//! | `held` | repository, object id | empty: the repository holds the object |
//! | `objects` | object id | the object in Git's loose encoding (zlib), placed by id |
//! | `holders` | object id | [`Holders`]: repositories holding it, and where it is if placed by index |
//! | `dedup_clients` | client id | [`ClientRecord`], or [`RingClient`] in a ring format |
//! | `dedup_results` | client id, sequence (in a ring: its slot) | the write's `WriteResult` (in a ring: after its sequence) |
//! | `dedup_order` | raft index of a client's last write (original formats) | client id |
//! | `routes` | repository (directory only) | partition id |
//! | `members` | partition id (directory only) | `PartitionInfo` |
//! | `route_counts` | partition id (directory only) | u64: repositories routed to it |
//! | `uploads` | client id, sequence | [`UploadRecord`]: an upload in progress |
//! | `chunks` | blob (u64), piece number (u64) | a piece of an upload's or large object's content |
//! | `large_objects` | object id | [`LargeObjectRecord`]: an object stored in pieces |
//! | `objects_at` | apply index, number in its entry | an object in Git's loose encoding, placed by index |
//! | `placement` | (none: one row per partition) | the partition's [`Format`], if not the original |
//!
//! An object is stored whole (if it came in a transaction) or in `large_objects` and
//! `chunks` (if it was uploaded in pieces), never both. A whole object is placed as its
//! partition's [`Placement`] was when it was stored: in `objects` by its id, or in
//! `objects_at` by the entry that stored it (its `holders` row then says where).

use super::keys;
use super::StoreError;
use crate::codec;
use crate::ids::{ClientId, PartitionId};
use crate::persist::{ConfState, LogPosition, RaftMode};
use crate::state_machine::{Oid, RepoId};
use redb::{ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::ops::ControlFlow;

pub(crate) const PARTITIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("partitions");

/// The tables that hold a partition's state, in the order snapshots and digests visit them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TableId {
    Repositories = 1,
    Refs = 2,
    Held = 3,
    Objects = 4,
    Holders = 5,
    DedupClients = 6,
    DedupResults = 7,
    DedupOrder = 8,
    Routes = 9,
    Members = 10,
    RouteCounts = 11,
    Uploads = 12,
    Chunks = 13,
    LargeObjects = 14,
    PartitionRoutes = 15,
    ObjectsAt = 16,
    Placement = 17,
}

impl TableId {
    pub const ALL: [TableId; 17] = [
        TableId::Repositories,
        TableId::Refs,
        TableId::Held,
        TableId::Objects,
        TableId::Holders,
        TableId::DedupClients,
        TableId::DedupResults,
        TableId::DedupOrder,
        TableId::Routes,
        TableId::Members,
        TableId::RouteCounts,
        TableId::Uploads,
        TableId::Chunks,
        TableId::LargeObjects,
        TableId::PartitionRoutes,
        TableId::ObjectsAt,
        TableId::Placement,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TableId::Repositories => "repositories",
            TableId::Refs => "refs",
            TableId::Held => "held",
            TableId::Objects => "objects",
            TableId::Holders => "holders",
            TableId::DedupClients => "dedup_clients",
            TableId::DedupResults => "dedup_results",
            TableId::DedupOrder => "dedup_order",
            TableId::Routes => "routes",
            TableId::Members => "members",
            TableId::RouteCounts => "route_counts",
            TableId::Uploads => "uploads",
            TableId::Chunks => "chunks",
            TableId::LargeObjects => "large_objects",
            TableId::PartitionRoutes => "partition_routes",
            TableId::ObjectsAt => "objects_at",
            TableId::Placement => "placement",
        }
    }

    pub fn from_u8(byte: u8) -> Option<TableId> {
        TableId::ALL.into_iter().find(|t| *t as u8 == byte)
    }

    fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        TableDefinition::new(self.name())
    }

    fn position(self) -> usize {
        self as usize - 1
    }
}

/// What the store knows of a partition besides its rows: how far it has applied, the
/// membership as of then, and counts that bound its tables.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    /// The last entry applied: the state is exactly the effect of the log through it.
    pub applied: LogPosition,
    /// The membership as of `applied` (the snapshot metadata of this state).
    pub conf_state: ConfState,
    pub counts: Counts,
    /// The Raft mode as of `applied`. A snapshot carries none: only a Raft leader sends one.
    pub raft: RaftMode,
}

/// A partition record as stores written before Raft could be turned off hold it.
#[derive(Deserialize)]
#[cfg_attr(test, derive(Serialize))]
struct PartitionRecordBeforeRaftMode {
    applied: LogPosition,
    conf_state: ConfState,
    counts: Counts,
}

impl PartitionRecord {
    /// Decodes a record, or one written before it had a Raft mode (Raft was always on then).
    fn decode(bytes: &[u8]) -> Result<PartitionRecord, StoreError> {
        decode("partition record", bytes).or_else(|error| {
            match decode::<PartitionRecordBeforeRaftMode>("partition record", bytes) {
                Ok(old) => Ok(PartitionRecord {
                    applied: old.applied,
                    conf_state: old.conf_state,
                    counts: old.counts,
                    raft: RaftMode::On,
                }),
                Err(_) => Err(error),
            }
        })
    }
}

/// Row counts a command's bounds are checked against; derived from the rows, so a snapshot
/// does not carry them (the receiver counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub repositories: u64,
    pub dedup_clients: u64,
    pub dedup_results_bytes: u64,
    /// Directory only: partitions recorded, repositories routed, the next partition id.
    pub directory_partitions: u64,
    pub directory_routes: u64,
    pub next_partition: u64,
    /// Uploads in progress.
    pub uploads: u64,
}

/// One repository's row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoRecord {
    pub refs: u64,
}

/// An upload in progress: its object's shape, and how much of it is stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub repo: crate::state_machine::RepoId,
    pub kind: crate::state_machine::ObjectKind,
    pub size_bytes: u64,
    pub chunk_bytes: u32,
    pub received_bytes: u64,
    /// Where its pieces are kept (`chunks`): the index of the write that began it.
    pub blob: u64,
}

/// An object stored in pieces: `chunks` rows `blob, 0..` of `chunk_bytes` each (the last
/// shorter), `size_bytes` in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LargeObjectRecord {
    pub kind: crate::state_machine::ObjectKind,
    pub size_bytes: u64,
    pub chunk_bytes: u32,
    pub blob: u64,
}

/// How a partition lays out its rows: its row of the `placement` table (named for the first
/// change it recorded), so that snapshots and digests carry it like any other row. Each format
/// keeps every change of the one before and adds one. Every replica must lay out its rows alike
/// (replicas compare rows), so the format changes only at a committed entry, which every
/// replica applies at the same index (`partition/format.rs`); partitions created by earlier
/// builds change when their leader proposes it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Format {
    /// Whole objects placed by id; dedup results keyed by sequence, clients ordered by their
    /// last write in `dedup_order` (`store/dedup.rs`).
    #[default]
    Original,
    /// Whole objects placed by index ([`Placement::ByIndex`]).
    PlacedByIndex,
    /// And each dedup client's results in a ring of slots, evicted in bulk without
    /// `dedup_order` (`store/dedup_ring.rs`).
    DedupRing,
}

/// The `placement` row's values (no row means [`Format::Original`]).
const FORMAT_PLACED_BY_INDEX: &[u8] = b"by-index";
const FORMAT_DEDUP_RING: &[u8] = b"dedup-ring";

impl Format {
    /// What partitions this build creates use.
    pub const LATEST: Format = Format::DedupRing;

    /// The value of the partition's `placement` row, if it has one.
    pub fn row(self) -> Option<&'static [u8]> {
        match self {
            Format::Original => None,
            Format::PlacedByIndex => Some(FORMAT_PLACED_BY_INDEX),
            Format::DedupRing => Some(FORMAT_DEDUP_RING),
        }
    }

    pub fn decode(row: Option<&[u8]>) -> Result<Format, StoreError> {
        match row {
            None => Ok(Format::Original),
            Some(FORMAT_PLACED_BY_INDEX) => Ok(Format::PlacedByIndex),
            Some(FORMAT_DEDUP_RING) => Ok(Format::DedupRing),
            Some(other) => Err(StoreError::Corrupt { reason: format!("an unknown partition format {other:?}") }),
        }
    }

    pub fn of(rows: &dyn Rows, partition: PartitionId) -> Result<Format, StoreError> {
        Format::decode(rows.get(TableId::Placement, &keys::partition_prefix(partition))?.as_deref())
    }

    pub fn placement(self) -> Placement {
        match self {
            Format::Original => Placement::ById,
            Format::PlacedByIndex | Format::DedupRing => Placement::ByIndex,
        }
    }

    /// Whether dedup results are kept in rings (`store/dedup_ring.rs`).
    pub fn dedup_ring(self) -> bool {
        self >= Format::DedupRing
    }
}

/// Where a partition stores the whole objects it applies, as its [`Format`] says.
///
/// Placed by id, each new object is a random insert into `objects` (1 KiB rows, a few to a
/// page), which copies and checksums a leaf and its branch path per object. Placed by index,
/// the objects of a batch of entries append to the right edge of `objects_at`, sharing pages:
/// 0.57-0.70x of the store's cost per 1 KiB write alone (`cargo bench --bench apply`), about 8%
/// less CPU per write in a cluster. The price: reading a whole object, wherever it is, starts
/// with its `holders` row (which says where), a second lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// In `objects`, keyed by object id.
    #[default]
    ById,
    /// In `objects_at`, keyed by the apply index of the entry that stored it.
    ByIndex,
}

/// Where an object placed by index is: the apply index of the entry that stored it, and its
/// number among the objects that entry stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectAt {
    pub index: u64,
    pub number: u32,
}

/// An object's `holders` row: how many repositories hold it and, if it is placed by index,
/// where. Eight bytes (the count) for an object placed by id or stored in pieces; twenty
/// (count, index, number) for one placed by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holders {
    pub count: u64,
    pub at: Option<ObjectAt>,
}

impl Holders {
    /// The `holders` row of `oid`, if it is stored.
    pub fn of(rows: &dyn Rows, partition: PartitionId, oid: &Oid) -> Result<Option<Holders>, StoreError> {
        match rows.get(TableId::Holders, &keys::object(partition, oid))? {
            Some(bytes) => Ok(Some(Holders::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub fn encode(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20);
        out.extend_from_slice(&encode_u64(self.count));
        if let Some(at) = self.at {
            out.extend_from_slice(&at.index.to_le_bytes());
            out.extend_from_slice(&at.number.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Holders, StoreError> {
        let bad = || StoreError::Corrupt { reason: format!("holders: a row of {} bytes", bytes.len()) };
        let (count, at) = match bytes.len() {
            8 => (bytes, None),
            20 => {
                let (count, rest) = bytes.split_at(8);
                let (index, number) = rest.split_at(8);
                let at = ObjectAt {
                    index: u64::from_le_bytes(index.try_into().map_err(|_| bad())?),
                    number: u32::from_le_bytes(number.try_into().map_err(|_| bad())?),
                };
                (count, Some(at))
            }
            _ => return Err(bad()),
        };
        Ok(Holders { count: decode_u64("holders", count)?, at })
    }
}

impl LargeObjectRecord {
    /// How many pieces an object of `size_bytes` in pieces of `chunk_bytes` has.
    pub fn chunks(size_bytes: u64, chunk_bytes: u32) -> u64 {
        size_bytes.div_ceil(u64::from(chunk_bytes))
    }
}

/// One client of the dedup table in the original formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// Raft index of its last recorded write (its key in `dedup_order`).
    pub last_index: u64,
    /// Results remembered, and their encoded size.
    pub results: u64,
    pub results_bytes: u64,
}

/// One client of a dedup ring (`store/dedup_ring.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingClient {
    /// Raft index of its last recorded write: the least recent clients are evicted first.
    pub last_index: u64,
    /// The highest sequence recorded: its ring answers for the `window_max` up to it.
    pub highest_seq: u64,
    /// Slots filled, and the size of their values.
    pub results: u64,
    pub results_bytes: u64,
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value)
}

pub fn decode<T: DeserializeOwned>(table: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode(table, bytes).map_err(|e| StoreError::Corrupt { reason: e.to_string() })
}

pub fn encode_u64(value: u64) -> [u8; 8] {
    value.to_le_bytes()
}

pub fn decode_u64(table: &'static str, bytes: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt { reason: format!("{table}: a count of {} bytes", bytes.len()) })?;
    Ok(u64::from_le_bytes(bytes))
}

pub fn encode_client(client: ClientId) -> [u8; 8] {
    client.0.to_be_bytes()
}

/// Reading rows, from a read or a write transaction.
pub trait Rows {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Calls `visit` on every row whose key starts with `prefix`, in key order, until it
    /// breaks.
    fn scan(&self, table: TableId, prefix: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StoreError>;

    /// Like `scan`, starting after the key `after` (which need not exist).
    fn scan_after(
        &self,
        table: TableId,
        prefix: &[u8],
        after: &[u8],
        visit: &mut RowVisitor<'_>,
    ) -> Result<(), StoreError>;

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionRecord>, StoreError>;

    fn contains(&self, table: TableId, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.get(table, key)?.is_some())
    }

    /// The first row whose key starts with `prefix`.
    fn first(&self, table: TableId, prefix: &[u8]) -> Result<Option<Row>, StoreError> {
        let mut found = None;
        self.scan(table, prefix, &mut |key, value| {
            found = Some((key.to_vec(), value.to_vec()));
            Ok(ControlFlow::Break(()))
        })?;
        Ok(found)
    }
}

/// Up to `limit` rows of `table` under `prefix`, in key order, after the key `after` (from the
/// first with `None`), each made a `T` by `decode` from its key less `prefix` and its value.
pub fn scan_page<T>(
    rows: &dyn Rows,
    table: TableId,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    mut decode: impl FnMut(&[u8], &[u8]) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut visit = |key: &[u8], value: &[u8]| {
        if out.len() == limit {
            return Ok(ControlFlow::Break(()));
        }
        out.push(decode(&key[prefix.len()..], value)?);
        Ok(ControlFlow::Continue(()))
    };
    match after {
        None => rows.scan(table, prefix, &mut visit)?,
        Some(after) => rows.scan_after(table, prefix, after, &mut visit)?,
    }
    Ok(out)
}

/// The repositories that the keys of `table` under `prefix` name (each key is `prefix` then a
/// repository), sorted.
pub fn scan_repositories(rows: &dyn Rows, table: TableId, prefix: &[u8]) -> Result<Vec<RepoId>, StoreError> {
    scan_page(rows, table, prefix, None, usize::MAX, |repo, _| Ok(keys::KeyReader::new(repo).take_repo()?))
}

/// A row's key and value.
pub type Row = (Vec<u8>, Vec<u8>);

/// Called on each row of a scan, in key order; `Break` ends the scan.
pub type RowVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<ControlFlow<()>, StoreError> + 'a;

fn db(op: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |source| StoreError::Database { op, source }
}

fn get_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    let value = table.get(key).map_err(|e| db("get")(e.into()))?;
    Ok(value.map(|v| v.value().to_vec()))
}

/// Rows with keys in `start` (inclusive or not) up to the end of `prefix`'s keys.
fn scan_in<T: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &T,
    prefix: &[u8],
    start: std::ops::Bound<&[u8]>,
    visit: &mut RowVisitor<'_>,
) -> Result<(), StoreError> {
    use std::ops::Bound;
    let end = super::keys::prefix_end(prefix);
    let end_bound = match &end {
        Some(end) => Bound::Excluded(end.as_slice()),
        None => Bound::Unbounded,
    };
    let range = table.range::<&[u8]>((start, end_bound)).map_err(|e| db("range")(e.into()))?;
    for row in range {
        let (key, value) = row.map_err(|e| db("range")(e.into()))?;
        if visit(key.value(), value.value())?.is_break() {
            break;
        }
    }
    Ok(())
}

fn partition_in<T: ReadableTable<u64, &'static [u8]>>(
    table: &T,
    partition: PartitionId,
) -> Result<Option<PartitionRecord>, StoreError> {
    match table.get(partition.0).map_err(|e| db("get")(e.into()))? {
        Some(value) => Ok(Some(PartitionRecord::decode(value.value())?)),
        None => Ok(None),
    }
}

type BytesTable<'txn> = redb::Table<'txn, &'static [u8], &'static [u8]>;
type ReadOnlyBytesTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

/// A read transaction's tables, each opened when first used: opening one looks it up in
/// redb's table tree, and opening all sixteen for every read was a twentieth of a leader's CPU
/// under load (`perf`, `cargo bench --bench vs_etcd`), most reads touching one or two.
pub struct ReadRows {
    txn: redb::ReadTransaction,
    tables: [std::sync::OnceLock<ReadOnlyBytesTable>; TableId::ALL.len()],
    partitions: std::sync::OnceLock<redb::ReadOnlyTable<u64, &'static [u8]>>,
}

impl ReadRows {
    pub fn open(txn: redb::ReadTransaction) -> ReadRows {
        ReadRows { txn, tables: Default::default(), partitions: Default::default() }
    }

    fn table(&self, table: TableId) -> Result<&ReadOnlyBytesTable, StoreError> {
        let cell = &self.tables[table.position()];
        if let Some(opened) = cell.get() {
            return Ok(opened);
        }
        let opened = self.txn.open_table(table.definition()).map_err(|e| db("open table")(e.into()))?;
        Ok(cell.get_or_init(|| opened))
    }

    fn partitions_table(&self) -> Result<&redb::ReadOnlyTable<u64, &'static [u8]>, StoreError> {
        if let Some(opened) = self.partitions.get() {
            return Ok(opened);
        }
        let opened = self.txn.open_table(PARTITIONS).map_err(|e| db("open table")(e.into()))?;
        Ok(self.partitions.get_or_init(|| opened))
    }

    /// Every partition record, by id.
    pub fn partitions(&self) -> Result<Vec<(PartitionId, PartitionRecord)>, StoreError> {
        let mut out = Vec::new();
        for row in self.partitions_table()?.iter().map_err(|e| db("iterate")(e.into()))? {
            let (key, value) = row.map_err(|e| db("iterate")(e.into()))?;
            out.push((PartitionId(key.value()), decode("partition record", value.value())?));
        }
        Ok(out)
    }
}

impl Rows for ReadRows {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_in(self.table(table)?, key)
    }

    fn scan(&self, table: TableId, prefix: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StoreError> {
        scan_in(self.table(table)?, prefix, std::ops::Bound::Included(prefix), visit)
    }

    fn scan_after(
        &self,
        table: TableId,
        prefix: &[u8],
        after: &[u8],
        visit: &mut RowVisitor<'_>,
    ) -> Result<(), StoreError> {
        assert!(after.starts_with(prefix), "a scan starts inside its prefix");
        scan_in(self.table(table)?, prefix, std::ops::Bound::Excluded(after), visit)
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionRecord>, StoreError> {
        partition_in(self.partitions_table()?, partition)
    }
}

/// A write transaction's tables, each opened when first used (see `ReadRows`); a table
/// opened in a write transaction is written back to redb's table tree when it closes.
pub struct WriteRows<'txn> {
    txn: &'txn redb::WriteTransaction,
    tables: [std::cell::OnceCell<BytesTable<'txn>>; TableId::ALL.len()],
    partitions: redb::Table<'txn, u64, &'static [u8]>,
    /// The tables this transaction changed (or may have: a removal that found nothing counts),
    /// a bit per table by position.
    changed: u32,
}

const _: () = assert!(TableId::ALL.len() <= u32::BITS as usize, "a bit per table in `WriteRows::changed`");

impl<'txn> WriteRows<'txn> {
    pub fn open(txn: &'txn redb::WriteTransaction) -> Result<WriteRows<'txn>, StoreError> {
        // Every write touches its partition's record, so that table is opened at once.
        let partitions = txn.open_table(PARTITIONS).map_err(|e| db("open table")(e.into()))?;
        Ok(WriteRows { txn, tables: Default::default(), partitions, changed: 0 })
    }

    /// Creates every table that does not exist yet, so that readers never meet a missing one.
    pub fn create_all(&mut self) -> Result<(), StoreError> {
        TableId::ALL.iter().try_for_each(|table| self.table(*table).map(|_| ()))
    }

    /// Whether this transaction changed `table` (inserted or removed rows in it).
    pub fn changed(&self, table: TableId) -> bool {
        self.changed & (1 << table.position()) != 0
    }

    fn table(&self, table: TableId) -> Result<&BytesTable<'txn>, StoreError> {
        let cell = &self.tables[table.position()];
        if let Some(opened) = cell.get() {
            return Ok(opened);
        }
        let opened = self.txn.open_table(table.definition()).map_err(|e| db("open table")(e.into()))?;
        Ok(cell.get_or_init(|| opened))
    }

    fn table_mut(&mut self, table: TableId) -> Result<&mut BytesTable<'txn>, StoreError> {
        self.table(table)?;
        self.changed |= 1 << table.position();
        Ok(self.tables[table.position()].get_mut().expect("opened just above"))
    }

    /// Inserts or replaces a row; returns whether it replaced one (free: the B-tree found it).
    pub fn insert(&mut self, table: TableId, key: &[u8], value: &[u8]) -> Result<bool, StoreError> {
        Ok(self.table_mut(table)?.insert(key, value).map_err(|e| db("insert")(e.into()))?.is_some())
    }

    /// Inserts or replaces a row; returns the row it replaced, if any (found by the same
    /// descent: no lookup before).
    pub fn insert_replacing(
        &mut self,
        table: TableId,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let replaced = self.table_mut(table)?.insert(key, value).map_err(|e| db("insert")(e.into()))?;
        Ok(replaced.map(|old| old.value().to_vec()))
    }

    /// Removes a row; returns whether it was there.
    pub fn remove(&mut self, table: TableId, key: &[u8]) -> Result<bool, StoreError> {
        Ok(self.table_mut(table)?.remove(key).map_err(|e| db("remove")(e.into()))?.is_some())
    }

    /// Removes every row whose key starts with `prefix`.
    pub fn remove_prefix(&mut self, table: TableId, prefix: &[u8]) -> Result<(), StoreError> {
        let end = super::keys::prefix_end(prefix);
        let table = self.table_mut(table)?;
        match &end {
            Some(end) => table.retain_in::<&[u8], _>(prefix..end.as_slice(), |_, _| false),
            None => table.retain_in::<&[u8], _>(prefix.., |_, _| false),
        }
        .map_err(|e| db("remove range")(e.into()))
    }

    pub fn set_partition(&mut self, partition: PartitionId, record: &PartitionRecord) -> Result<(), StoreError> {
        self.partitions.insert(partition.0, encode(record).as_slice()).map_err(|e| db("insert")(e.into()))?;
        Ok(())
    }

    pub fn remove_partition_record(&mut self, partition: PartitionId) -> Result<(), StoreError> {
        self.partitions.remove(partition.0).map_err(|e| db("remove")(e.into()))?;
        Ok(())
    }
}

impl Rows for WriteRows<'_> {
    fn get(&self, table: TableId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        get_in(self.table(table)?, key)
    }

    fn scan(&self, table: TableId, prefix: &[u8], visit: &mut RowVisitor<'_>) -> Result<(), StoreError> {
        scan_in(self.table(table)?, prefix, std::ops::Bound::Included(prefix), visit)
    }

    fn scan_after(
        &self,
        table: TableId,
        prefix: &[u8],
        after: &[u8],
        visit: &mut RowVisitor<'_>,
    ) -> Result<(), StoreError> {
        assert!(after.starts_with(prefix), "a scan starts inside its prefix");
        scan_in(self.table(table)?, prefix, std::ops::Bound::Excluded(after), visit)
    }

    fn partition(&self, partition: PartitionId) -> Result<Option<PartitionRecord>, StoreError> {
        partition_in(&self.partitions, partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_record_from_before_raft_modes_decodes_with_raft_on() {
        let conf_state = ConfState { voters: vec![1, 2, 3], ..ConfState::default() };
        let applied = LogPosition { index: 7, term: 2 };
        let counts = Counts { repositories: 4, ..Counts::default() };
        let old = PartitionRecordBeforeRaftMode { applied, conf_state: conf_state.clone(), counts };
        let record = PartitionRecord::decode(&encode(&old)).unwrap();
        assert_eq!(record, PartitionRecord { applied, conf_state, counts, raft: RaftMode::On });
        let off = PartitionRecord { raft: RaftMode::Off, ..record };
        assert_eq!(PartitionRecord::decode(&encode(&off)).unwrap(), off);
        assert!(PartitionRecord::decode(&[0xff; 3]).is_err(), "garbage is an error, not a panic");
    }

    #[test]
    fn holders_rows_read_back_and_garbage_is_an_error() {
        let by_id = Holders { count: 3, at: None };
        let by_index = Holders { count: 1, at: Some(ObjectAt { index: u64::MAX - 1, number: 7 }) };
        assert_eq!(by_id.encode(), encode_u64(3), "an object placed by id keeps the row it always had");
        for holders in [by_id, by_index] {
            assert_eq!(Holders::decode(&holders.encode()).unwrap(), holders);
        }
        for len in [0, 7, 9, 19, 21] {
            assert!(Holders::decode(&vec![1; len]).is_err(), "a row of {len} bytes");
        }
        for format in [Format::Original, Format::PlacedByIndex, Format::DedupRing] {
            assert_eq!(Format::decode(format.row()).unwrap(), format);
        }
        assert_eq!(Format::decode(Some(b"by-index")).unwrap(), Format::PlacedByIndex, "as earlier builds wrote it");
        assert!(Format::decode(Some(b"by-moon")).is_err());
    }
}
