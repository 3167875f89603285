//! The idempotency table in the store: per client, the results of its recent sequence numbers,
//! so that a retried write returns its first result instead of being applied twice.
//!
//! Its rows depend on the partition's [`Format`]: kept in rings (`dedup_ring.rs`), or as
//! partitions of the original formats keep them until they switch, which is what this file
//! does. [`lookup`] and [`record`] take either.
//!
//! Bounded three ways, all deterministic (every replica evicts the same rows at the same
//! index): `window_max` results per client (the oldest sequence goes), `clients_max` clients,
//! and `results_bytes_max` bytes of encoded results. A full table evicts the client whose last
//! write has the lowest raft index (the first row of `dedup_order`). A retry from an evicted
//! client is applied again: the price of a bounded table.

use super::dedup_ring;
use super::keys;
use super::tables::{self, ClientRecord, Counts, Format, Rows, TableId, WriteRows};
use super::StoreError;
use crate::ids::{ClientId, PartitionId};
use crate::state_machine::{Rejection, WriteResult, TRANSACTION_OBJECTS_MAX};
use std::ops::ControlFlow;

/// Sequence numbers remembered per client.
pub const DEDUP_WINDOW_MAX: u64 = 128;
/// Clients remembered per partition.
pub const DEDUP_CLIENTS_MAX: u64 = 4096;
/// Encoded results remembered per partition, all clients together.
pub const DEDUP_RESULTS_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Upper bound of one result's row: a `WriteOk` naming the most objects (rejections are
/// smaller: their strings are cut to a few KiB), after its sequence in a ring's slot.
const RESULT_SIZE_BYTES_MAX: u64 = 64 + 20 * TRANSACTION_OBJECTS_MAX as u64 + 8;
// One client's full window always fits, so byte eviction never evicts the client that is
// writing (it has the highest index, and eviction stops at one client).
const _: () = assert!(DEDUP_WINDOW_MAX * RESULT_SIZE_BYTES_MAX <= DEDUP_RESULTS_BYTES_MAX);
const _: () = assert!(DEDUP_WINDOW_MAX >= 1 && DEDUP_CLIENTS_MAX >= 1);

/// The bounds of one table; [`DedupLimits::DEFAULT`] outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DedupLimits {
    pub window_max: u64,
    pub clients_max: u64,
    pub results_bytes_max: u64,
}

impl DedupLimits {
    pub const DEFAULT: DedupLimits = DedupLimits {
        window_max: DEDUP_WINDOW_MAX,
        clients_max: DEDUP_CLIENTS_MAX,
        results_bytes_max: DEDUP_RESULTS_BYTES_MAX,
    };
}

impl Default for DedupLimits {
    fn default() -> DedupLimits {
        DedupLimits::DEFAULT
    }
}

/// What the table knows of a `(client, seq)` about to be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not remembered: apply it, then hand this to [`record`].
    New(Fresh),
    /// Applied already: this was its result.
    Retry(WriteResult),
    /// Older than everything a full window keeps: it may have been applied, its result is lost.
    TooOld { oldest_kept: u64 },
}

/// What [`lookup`] read of a client whose next result is to be recorded, so that [`record`]
/// does not read it again (every write goes through both). Applying the command between them
/// changes no row of this client's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fresh {
    Original(OriginalFresh),
    Ring(dedup_ring::Fresh),
}

/// [`Fresh`] in the original format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalFresh {
    client: Option<ClientRecord>,
    /// The client's oldest remembered result, read only if it has a full window.
    oldest: Option<tables::Row>,
}

/// A client's `dedup_clients` row, in either format (`T`).
pub(super) fn client_row<T: serde::de::DeserializeOwned>(
    rows: &dyn Rows,
    partition: PartitionId,
    client: ClientId,
) -> Result<Option<T>, StoreError> {
    match rows.get(TableId::DedupClients, &keys::client(partition, client))? {
        Some(bytes) => Ok(Some(tables::decode("dedup client", &bytes)?)),
        None => Ok(None),
    }
}

fn client_record(
    rows: &dyn Rows,
    partition: PartitionId,
    client: ClientId,
) -> Result<Option<ClientRecord>, StoreError> {
    client_row(rows, partition, client)
}

/// The oldest result remembered for `client`, and its sequence number.
fn oldest(rows: &dyn Rows, partition: PartitionId, client: ClientId) -> Result<Option<(tables::Row, u64)>, StoreError> {
    let prefix = keys::client(partition, client);
    match rows.first(TableId::DedupResults, &prefix)? {
        Some((key, value)) => {
            let mut reader = keys::KeyReader::new(&key[prefix.len()..]);
            let seq = reader.take_u64()?;
            Ok(Some(((key, value), seq)))
        }
        None => Ok(None),
    }
}

/// What the table of a partition of `format` knows of `(client, seq)`.
pub fn lookup(
    rows: &dyn Rows,
    partition: PartitionId,
    format: Format,
    limits: &DedupLimits,
    client: ClientId,
    seq: u64,
) -> Result<Lookup, StoreError> {
    match format.dedup_ring() {
        true => dedup_ring::lookup(rows, partition, limits, client, seq),
        false => lookup_original(rows, partition, limits, client, seq),
    }
}

/// A result to remember: that of `(client, seq)`, applied at `index`.
#[derive(Clone, Copy, Debug)]
pub struct Recorded<'r> {
    pub index: u64,
    pub client: ClientId,
    pub seq: u64,
    pub result: &'r WriteResult,
}

/// Remembers `recorded`, of which `lookup` said `New`.
pub fn record(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    counts: &mut Counts,
    limits: &DedupLimits,
    recorded: Recorded<'_>,
    fresh: Fresh,
) -> Result<(), StoreError> {
    assert!(
        !matches!(recorded.result, Err(Rejection::SequenceTooOld { .. })),
        "SequenceTooOld is an answer about the table, never recorded in it"
    );
    match fresh {
        Fresh::Ring(fresh) => dedup_ring::record(rows, partition, counts, limits, recorded, fresh),
        Fresh::Original(fresh) => record_original(rows, partition, counts, limits, recorded, fresh),
    }
}

fn lookup_original(
    rows: &dyn Rows,
    partition: PartitionId,
    limits: &DedupLimits,
    client: ClientId,
    seq: u64,
) -> Result<Lookup, StoreError> {
    let Some(record) = client_record(rows, partition, client)? else {
        return Ok(Lookup::New(Fresh::Original(OriginalFresh { client: None, oldest: None })));
    };
    if let Some(bytes) = rows.get(TableId::DedupResults, &keys::client_result(partition, client, seq))? {
        return Ok(Lookup::Retry(tables::decode("dedup result", &bytes)?));
    }
    // A window that is not full has forgotten nothing: a lower seq was never applied.
    if record.results < limits.window_max {
        return Ok(Lookup::New(Fresh::Original(OriginalFresh { client: Some(record), oldest: None })));
    }
    let (oldest, oldest_kept) = oldest(rows, partition, client)?
        .ok_or_else(|| StoreError::Corrupt { reason: format!("dedup client {client} remembers no result") })?;
    if seq < oldest_kept {
        return Ok(Lookup::TooOld { oldest_kept });
    }
    Ok(Lookup::New(Fresh::Original(OriginalFresh { client: Some(record), oldest: Some(oldest) })))
}

fn record_original(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    counts: &mut Counts,
    limits: &DedupLimits,
    recorded: Recorded<'_>,
    fresh: OriginalFresh,
) -> Result<(), StoreError> {
    let Recorded { index, client, seq, result } = recorded;
    let encoded = tables::encode(result);
    let size_bytes = encoded.len() as u64;
    debug_assert_eq!(
        client_record(rows, partition, client)?,
        fresh.client,
        "dedup client {client} changed since lookup"
    );
    let mut record = match fresh.client {
        Some(record) => {
            let unindexed = rows.remove(TableId::DedupOrder, &keys::index(partition, record.last_index))?;
            assert!(unindexed, "dedup order out of step with client {client}");
            record
        }
        None => {
            counts.dedup_clients += 1;
            ClientRecord { last_index: 0, results: 0, results_bytes: 0 }
        }
    };
    assert!(index > record.last_index, "dedup record at index {index} is not the client's newest");
    let result_key = keys::client_result(partition, client, seq);
    let replaced = rows.insert(TableId::DedupResults, &result_key, &encoded)?;
    assert!(!replaced, "client {client} seq {seq} recorded twice");
    record.results += 1;
    record.results_bytes += size_bytes;
    counts.dedup_results_bytes += size_bytes;
    if record.results > limits.window_max {
        let (oldest_key, oldest) = fresh.oldest.expect("lookup read the oldest result of a full window");
        debug_assert_eq!(
            rows.first(TableId::DedupResults, &keys::client(partition, client))?.map(|(key, _)| key).as_ref(),
            Some(&oldest_key),
            "the oldest result of client {client} changed since lookup"
        );
        assert!(oldest_key != result_key, "the window dropped the result it just recorded");
        rows.remove(TableId::DedupResults, &oldest_key)?;
        record.results -= 1;
        record.results_bytes -= oldest.len() as u64;
        counts.dedup_results_bytes -= oldest.len() as u64;
    }
    record.last_index = index;
    let displaced = rows.insert(TableId::DedupOrder, &keys::index(partition, index), &tables::encode_client(client))?;
    assert!(!displaced, "two clients recorded at index {index}");
    rows.insert(TableId::DedupClients, &keys::client(partition, client), &tables::encode(&record))?;

    // Bounded: each turn removes a client. The writer has the highest index, and the loop
    // stops at one client, so it is never the one evicted.
    while counts.dedup_clients > limits.clients_max
        || (counts.dedup_results_bytes > limits.results_bytes_max && counts.dedup_clients > 1)
    {
        let evicted = evict_least_recent(rows, partition, counts)?;
        assert!(evicted != client, "evicted the client being recorded");
    }
    Ok(())
}

fn evict_least_recent(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    counts: &mut Counts,
) -> Result<ClientId, StoreError> {
    let prefix = keys::partition_prefix(partition);
    let (order_key, client_bytes) = rows.first(TableId::DedupOrder, &prefix)?.expect("a client to evict");
    let client = ClientId(u64::from_be_bytes(
        client_bytes.as_slice().try_into().map_err(|_| StoreError::Corrupt { reason: "a dedup order row".into() })?,
    ));
    rows.remove(TableId::DedupOrder, &order_key)?;
    let record = client_record(rows, partition, client)?.expect("an ordered client is remembered");
    let mut results = Vec::new();
    rows.scan(TableId::DedupResults, &keys::client(partition, client), &mut |key, _| {
        results.push(key.to_vec());
        Ok(ControlFlow::Continue(()))
    })?;
    assert_eq!(results.len() as u64, record.results, "dedup client {client} counts its results");
    for key in results {
        rows.remove(TableId::DedupResults, &key)?;
    }
    rows.remove(TableId::DedupClients, &keys::client(partition, client))?;
    assert!(record.results_bytes <= counts.dedup_results_bytes, "dedup byte count below zero");
    counts.dedup_results_bytes -= record.results_bytes;
    counts.dedup_clients -= 1;
    Ok(client)
}
