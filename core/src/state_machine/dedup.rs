//! The idempotency table: per client, the results of its recent sequence numbers, so that a
//! retried write returns its first result instead of being applied twice.
//!
//! Bounded three ways, all deterministic (every replica evicts the same entries at the same
//! index): `DEDUP_WINDOW_MAX` results per client, `DEDUP_CLIENTS_MAX` clients, and
//! `DEDUP_RESULTS_BYTES_MAX` bytes of encoded results. A full table evicts the client whose
//! last write has the lowest raft index. A retry from an evicted client is applied again:
//! the price of a bounded table.

use super::{Rejection, WriteResult, TRANSACTION_OBJECTS_MAX};
use crate::codec;
use crate::ids::ClientId;
use serde::{Deserialize, Serialize, Serializer};
use std::collections::BTreeMap;

/// Sequence numbers remembered per client.
pub const DEDUP_WINDOW_MAX: usize = 128;
/// Clients remembered per partition.
pub const DEDUP_CLIENTS_MAX: usize = 4096;
/// Encoded results remembered per partition, all clients together.
pub const DEDUP_RESULTS_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Upper bound of one encoded result: a `WriteOk` naming the most objects (rejections are
/// smaller: their strings are cut to a few KiB).
const RESULT_SIZE_BYTES_MAX: u64 = 64 + 20 * TRANSACTION_OBJECTS_MAX as u64;
// One client's full window always fits, so byte eviction never evicts the client that is
// writing (it has the highest index, and eviction stops at one client).
const _: () = assert!(DEDUP_WINDOW_MAX as u64 * RESULT_SIZE_BYTES_MAX <= DEDUP_RESULTS_BYTES_MAX);
const _: () = assert!(DEDUP_WINDOW_MAX >= 1 && DEDUP_CLIENTS_MAX >= 1);

/// The bounds of one table; always [`DedupLimits::DEFAULT`] outside tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DedupLimits {
    pub window_max: usize,
    pub clients_max: usize,
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

/// The remembered results of one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClientWindow {
    /// Never empty: a client enters the table with its first result.
    pub results: BTreeMap<u64, WriteResult>,
    /// Raft index of the client's last recorded write; orders eviction.
    pub last_index: u64,
}

/// What the table knows of a `(client, seq)` about to be applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Not remembered: apply it.
    New,
    /// Applied before: answer this again.
    Retry(WriteResult),
    /// Older than everything a full window keeps: it may have been applied, its result is lost.
    TooOld { oldest_kept: u64 },
}

/// Serialized as its `clients` map only; the rest is derived from it on decode, so a snapshot
/// cannot hold an inconsistent index.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "BTreeMap<ClientId, ClientWindow>")]
pub(crate) struct DedupTable {
    clients: BTreeMap<ClientId, ClientWindow>,
    /// Derived: each client under its `last_index` (unique: one write per raft index).
    clients_by_last_index: BTreeMap<u64, ClientId>,
    /// Derived: sum of the encoded sizes of every remembered result.
    results_bytes: u64,
    limits: DedupLimits,
}

impl Serialize for DedupTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.clients.serialize(serializer)
    }
}

impl TryFrom<BTreeMap<ClientId, ClientWindow>> for DedupTable {
    type Error = String;
    fn try_from(clients: BTreeMap<ClientId, ClientWindow>) -> Result<DedupTable, String> {
        DedupTable::rebuild(clients, DedupLimits::DEFAULT)
    }
}

/// The size a result counts for against `results_bytes_max`.
fn result_size_bytes(result: &WriteResult) -> u64 {
    codec::encode(result).len() as u64
}

impl DedupTable {
    #[cfg(test)]
    pub fn with_limits(limits: DedupLimits) -> DedupTable {
        DedupTable { limits, ..DedupTable::default() }
    }

    #[cfg(test)]
    pub fn clients_len(&self) -> usize {
        self.clients.len()
    }

    #[cfg(test)]
    pub fn results_bytes(&self) -> u64 {
        self.results_bytes
    }

    /// Highest raft index recorded, 0 when empty.
    pub fn last_index_max(&self) -> u64 {
        self.clients_by_last_index.last_key_value().map_or(0, |(index, _)| *index)
    }

    pub fn lookup(&self, client: ClientId, seq: u64) -> Lookup {
        let Some(window) = self.clients.get(&client) else {
            return Lookup::New;
        };
        if let Some(result) = window.results.get(&seq) {
            return Lookup::Retry(result.clone());
        }
        let oldest_kept = *window.results.keys().next().expect("a remembered client has results");
        // A window that is not full has forgotten nothing: a lower seq was never applied.
        if window.results.len() >= self.limits.window_max && seq < oldest_kept {
            return Lookup::TooOld { oldest_kept };
        }
        Lookup::New
    }

    /// Remembers the result of `(client, seq)`, applied at `index`; `lookup` said `New`.
    pub fn record(&mut self, index: u64, client: ClientId, seq: u64, result: WriteResult) {
        assert!(index > self.last_index_max(), "dedup record at index {index} is not the newest");
        assert!(
            !matches!(result, Err(Rejection::SequenceTooOld { .. })),
            "SequenceTooOld is an answer about the table, never recorded in it"
        );
        let limits = self.limits;
        let size_bytes = result_size_bytes(&result);
        let window =
            self.clients.entry(client).or_insert_with(|| ClientWindow { results: BTreeMap::new(), last_index: 0 });
        if !window.results.is_empty() {
            let unindexed = self.clients_by_last_index.remove(&window.last_index);
            assert_eq!(unindexed, Some(client), "dedup index out of step with client {client}");
        }
        let replaced = window.results.insert(seq, result);
        assert!(replaced.is_none(), "client {client} seq {seq} recorded twice");
        window.last_index = index;
        self.results_bytes += size_bytes;
        if window.results.len() > limits.window_max {
            let (oldest_seq, oldest) = window.results.pop_first().expect("a full window");
            assert!(oldest_seq != seq, "the window dropped the result it just recorded");
            self.results_bytes -= result_size_bytes(&oldest);
        }
        let displaced = self.clients_by_last_index.insert(index, client);
        assert!(displaced.is_none(), "two clients recorded at index {index}");

        // Bounded: each turn removes a client. The writer has the highest index, and the loop
        // stops at one client, so it is never the one evicted.
        while self.clients.len() > limits.clients_max
            || (self.results_bytes > limits.results_bytes_max && self.clients.len() > 1)
        {
            let evicted = self.evict_least_recent();
            assert!(evicted != client, "evicted the client being recorded");
        }
    }

    fn evict_least_recent(&mut self) -> ClientId {
        let (index, client) = self.clients_by_last_index.pop_first().expect("a client to evict");
        let window = self.clients.remove(&client).expect("an indexed client is remembered");
        assert_eq!(window.last_index, index, "dedup index out of step with client {client}");
        let size_bytes: u64 = window.results.values().map(result_size_bytes).sum();
        assert!(size_bytes <= self.results_bytes, "dedup byte count below zero");
        self.results_bytes -= size_bytes;
        client
    }

    /// Builds the derived fields from `clients`, checking every bound and invariant; the error
    /// names the first broken one.
    fn rebuild(clients: BTreeMap<ClientId, ClientWindow>, limits: DedupLimits) -> Result<DedupTable, String> {
        if clients.len() > limits.clients_max {
            return Err(format!("{} dedup clients, more than {}", clients.len(), limits.clients_max));
        }
        let mut clients_by_last_index = BTreeMap::new();
        let mut results_bytes = 0u64;
        for (client, window) in &clients {
            if window.results.is_empty() || window.results.len() > limits.window_max {
                return Err(format!("client {client} remembers {} results", window.results.len()));
            }
            if window.last_index == 0 {
                return Err(format!("client {client} wrote at index 0"));
            }
            if clients_by_last_index.insert(window.last_index, *client).is_some() {
                return Err(format!("two clients wrote at index {}", window.last_index));
            }
            for result in window.results.values() {
                match result {
                    Ok(ok) if ok.index > window.last_index => {
                        return Err(format!(
                            "client {client} has a result from index {} after its last write",
                            ok.index
                        ));
                    }
                    Err(Rejection::SequenceTooOld { .. }) => {
                        return Err(format!("client {client} has a recorded SequenceTooOld"));
                    }
                    _ => {}
                }
                results_bytes += result_size_bytes(result);
            }
        }
        if results_bytes > limits.results_bytes_max && clients.len() > 1 {
            return Err(format!("dedup results take {results_bytes} bytes, more than {}", limits.results_bytes_max));
        }
        Ok(DedupTable { clients, clients_by_last_index, results_bytes, limits })
    }

    /// The first broken invariant of the table, if any (for state checks and tests).
    pub fn invariant_violation(&self) -> Option<String> {
        match DedupTable::rebuild(self.clients.clone(), self.limits) {
            Err(problem) => Some(problem),
            Ok(rebuilt) if rebuilt != *self => Some("dedup derived fields out of step".to_string()),
            Ok(_) => None,
        }
    }
}
