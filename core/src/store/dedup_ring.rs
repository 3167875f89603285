//! The idempotency table as partitions of `Format::DedupRing` keep it: per client, a ring
//! of `window_max` slots, the result of sequence `seq` in slot `seq % window_max`.
//!
//! A client's ring answers for the sequences in `(highest - window_max, highest]`, `highest`
//! being the highest it recorded. A slot holds its sequence before the result, so a slot left
//! from an earlier turn of the ring (a sequence at or below `highest - window_max`) answers
//! for nothing. A sequence below the window is `TooOld`, never applied: had it been applied
//! before, its result would be lost. No sequence below the window is ever applied, so a slot
//! never holds a sequence above the one that lands in it.
//!
//! Against the original format (`dedup.rs`) a new write takes 3 B-tree operations instead of
//! 8: read the client, put the result in its slot (the old slot row comes back from the same
//! descent), write the client. The original remembers each client's `window_max` highest
//! sequences however far apart they lie; a ring, those among the `window_max` numbers up to
//! its highest. For a client that numbers its writes one after another, as cohort's client
//! does, the two are the same.
//!
//! Bounded like the original: `clients_max` clients and `results_bytes_max` bytes of slots. No
//! table keeps clients in order of their last write: once over a bound, one scan of the
//! clients evicts the least recent ones (lowest `last_index`) until the table is an eighth
//! below both bounds, so a scan comes once per `clients_max / 8` new clients. Deterministic:
//! every replica evicts the same clients at the same index. The client writing is never
//! evicted: its `last_index` is the highest, and eviction stops at one client.

use super::dedup::{DedupLimits, Fresh as AnyFresh, Lookup, Recorded};
use super::keys;
use super::tables::{self, Counts, RingClient, Rows, TableId, WriteRows};
use super::StoreError;
use crate::ids::{ClientId, PartitionId};
use std::ops::ControlFlow;

/// Bytes of a slot's value before the result: the sequence, big-endian.
const SEQ_BYTES: usize = 8;

/// What [`lookup`] read of a client about to be recorded, so that [`record`] does not read
/// it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fresh {
    client: Option<RingClient>,
}

/// The client a `dedup_clients` key names.
fn client_of(key: &[u8]) -> Result<ClientId, StoreError> {
    let mut reader = keys::KeyReader::new(&key[keys::PARTITION_BYTES..]);
    Ok(ClientId(reader.take_u64()?))
}

fn client_record(rows: &dyn Rows, partition: PartitionId, client: ClientId) -> Result<Option<RingClient>, StoreError> {
    super::dedup::client_row(rows, partition, client)
}

fn slot_key(partition: PartitionId, limits: &DedupLimits, client: ClientId, seq: u64) -> Vec<u8> {
    keys::client_result(partition, client, seq % limits.window_max)
}

/// A slot's value: its sequence, then the encoded result.
fn slot_value(seq: u64, encoded_result: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(SEQ_BYTES + encoded_result.len());
    value.extend_from_slice(&seq.to_be_bytes());
    value.extend_from_slice(encoded_result);
    value
}

/// The sequence a slot's value holds, and its encoded result.
pub fn decode_slot(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    match value.split_first_chunk::<SEQ_BYTES>() {
        Some((seq, result)) => Ok((u64::from_be_bytes(*seq), result)),
        None => Err(StoreError::Corrupt { reason: format!("a dedup slot of {} bytes", value.len()) }),
    }
}

/// The lowest sequence a ring whose highest is `highest` answers for.
pub fn window_start(limits: &DedupLimits, highest: u64) -> u64 {
    (highest + 1).saturating_sub(limits.window_max)
}

pub fn lookup(
    rows: &dyn Rows,
    partition: PartitionId,
    limits: &DedupLimits,
    client: ClientId,
    seq: u64,
) -> Result<Lookup, StoreError> {
    let Some(record) = client_record(rows, partition, client)? else {
        return Ok(Lookup::New(AnyFresh::Ring(Fresh { client: None })));
    };
    if seq > record.highest_seq {
        return Ok(Lookup::New(AnyFresh::Ring(Fresh { client: Some(record) })));
    }
    let oldest_kept = window_start(limits, record.highest_seq);
    if seq < oldest_kept {
        return Ok(Lookup::TooOld { oldest_kept });
    }
    if let Some(value) = rows.get(TableId::DedupResults, &slot_key(partition, limits, client, seq))? {
        let (held, result) = decode_slot(&value)?;
        if held == seq {
            return Ok(Lookup::Retry(tables::decode("dedup result", result)?));
        }
        // The slot is from an earlier turn of the ring (see the module's comment).
        assert!(held < seq, "client {client}'s slot holds seq {held}, above {seq} in its window");
    }
    Ok(Lookup::New(AnyFresh::Ring(Fresh { client: Some(record) })))
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
    let Recorded { index, client, seq, result } = recorded;
    debug_assert_eq!(
        client_record(rows, partition, client)?,
        fresh.client,
        "dedup client {client} changed since lookup"
    );
    let mut record = match fresh.client {
        Some(record) => record,
        None => {
            counts.dedup_clients += 1;
            RingClient { last_index: 0, highest_seq: seq, results: 0, results_bytes: 0 }
        }
    };
    assert!(index > record.last_index, "dedup record at index {index} is not the client's newest");
    assert!(seq >= window_start(limits, record.highest_seq), "client {client} seq {seq} is below its window");
    let value = slot_value(seq, &tables::encode(result));
    match rows.insert_replacing(TableId::DedupResults, &slot_key(partition, limits, client, seq), &value)? {
        Some(replaced) => {
            let (held, _) = decode_slot(&replaced)?;
            assert!(held < seq, "client {client}'s slot held seq {held}, recording {seq}");
            record.results_bytes -= replaced.len() as u64;
            counts.dedup_results_bytes -= replaced.len() as u64;
        }
        None => record.results += 1,
    }
    assert!(record.results <= limits.window_max, "client {client} fills more slots than its ring has");
    record.results_bytes += value.len() as u64;
    counts.dedup_results_bytes += value.len() as u64;
    record.highest_seq = record.highest_seq.max(seq);
    record.last_index = index;
    rows.insert(TableId::DedupClients, &keys::client(partition, client), &tables::encode(&record))?;
    if counts.dedup_clients > limits.clients_max
        || (counts.dedup_results_bytes > limits.results_bytes_max && counts.dedup_clients > 1)
    {
        evict_least_recent(rows, partition, counts, limits, Some(client))?;
    }
    Ok(())
}

/// Evicts the least recent clients until the table is an eighth below its bounds or one
/// client is left, never `writer`.
fn evict_least_recent(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    counts: &mut Counts,
    limits: &DedupLimits,
    writer: Option<ClientId>,
) -> Result<(), StoreError> {
    let clients_target = limits.clients_max - limits.clients_max / 8;
    let bytes_target = limits.results_bytes_max - limits.results_bytes_max / 8;
    // Bounded by the table's bound: at most `clients_max + 1` clients.
    let mut clients: Vec<(u64, ClientId, u64)> = Vec::with_capacity(counts.dedup_clients as usize);
    rows.scan(TableId::DedupClients, &keys::partition_prefix(partition), &mut |key, value| {
        let client = client_of(key)?;
        let record: RingClient = tables::decode("dedup ring client", value)?;
        clients.push((record.last_index, client, record.results_bytes));
        Ok(ControlFlow::Continue(()))
    })?;
    assert_eq!(clients.len() as u64, counts.dedup_clients, "the dedup count of clients is out of step");
    // Each index records one client, so the order is total.
    clients.sort_unstable();
    for (_, client, results_bytes) in clients {
        if (counts.dedup_clients <= clients_target && counts.dedup_results_bytes <= bytes_target)
            || counts.dedup_clients == 1
        {
            break;
        }
        assert!(Some(client) != writer, "evicting the client being recorded");
        rows.remove_prefix(TableId::DedupResults, &keys::client(partition, client))?;
        rows.remove(TableId::DedupClients, &keys::client(partition, client))?;
        assert!(results_bytes <= counts.dedup_results_bytes, "dedup byte count below zero");
        counts.dedup_results_bytes -= results_bytes;
        counts.dedup_clients -= 1;
    }
    Ok(())
}

/// Rewrites the partition's dedup rows from the original format into rings, as the entry that
/// switches the format is applied. Each client keeps the results its ring answers for (the
/// others are dropped: a retry of one is `TooOld`, as safe as the original's answer once its
/// window is full); `dedup_order` is emptied. Bounded by the table's bounds: at most
/// `clients_max` clients of `window_max` results.
pub fn convert(
    rows: &mut WriteRows<'_>,
    partition: PartitionId,
    counts: &mut Counts,
    limits: &DedupLimits,
) -> Result<(), StoreError> {
    let prefix = keys::partition_prefix(partition);
    let mut clients: Vec<(ClientId, tables::ClientRecord)> = Vec::new();
    rows.scan(TableId::DedupClients, &prefix, &mut |key, value| {
        clients.push((client_of(key)?, tables::decode("dedup client", value)?));
        Ok(ControlFlow::Continue(()))
    })?;
    let mut results_bytes_total = 0u64;
    for (client, original) in clients {
        let client_prefix = keys::client(partition, client);
        let mut results: Vec<(u64, Vec<u8>)> = Vec::new();
        rows.scan(TableId::DedupResults, &client_prefix, &mut |key, value| {
            let mut reader = keys::KeyReader::new(&key[client_prefix.len()..]);
            let seq = reader.take_u64()?;
            results.push((seq, value.to_vec()));
            Ok(ControlFlow::Continue(()))
        })?;
        rows.remove_prefix(TableId::DedupResults, &client_prefix)?;
        let highest_seq = results
            .last()
            .map(|(seq, _)| *seq)
            .ok_or_else(|| StoreError::Corrupt { reason: format!("dedup client {client} remembers no result") })?;
        let start = window_start(limits, highest_seq);
        let mut record = RingClient { last_index: original.last_index, highest_seq, results: 0, results_bytes: 0 };
        // Ascending and distinct, so those in the window land in distinct slots.
        for (seq, result) in results.into_iter().filter(|(seq, _)| *seq >= start) {
            let value = slot_value(seq, &result);
            let replaced = rows.insert(TableId::DedupResults, &slot_key(partition, limits, client, seq), &value)?;
            assert!(!replaced, "two of client {client}'s results in one slot");
            record.results += 1;
            record.results_bytes += value.len() as u64;
        }
        results_bytes_total += record.results_bytes;
        rows.insert(TableId::DedupClients, &client_prefix, &tables::encode(&record))?;
    }
    rows.remove_prefix(TableId::DedupOrder, &prefix)?;
    counts.dedup_results_bytes = results_bytes_total;
    // Each result kept grew by its sequence's bytes.
    if counts.dedup_results_bytes > limits.results_bytes_max && counts.dedup_clients > 1 {
        evict_least_recent(rows, partition, counts, limits, None)?;
    }
    Ok(())
}
