//! Linearizable reads: waiting for leadership in the current term, for a ReadIndex, then for
//! this replica to apply up to that index.

use crate::ids::RequestId;
use crate::limits::READS_PENDING_MAX;
use crate::state_machine::ReadQuery;
use std::collections::{BTreeMap, VecDeque};

pub type PendingRead = (RequestId, ReadQuery);

#[derive(Debug, Default)]
pub struct Reads {
    /// Reads that arrived before this leader committed an entry of its term (raft-rs drops a
    /// ReadIndex asked then, so we hold it back).
    awaiting_term_commit: VecDeque<PendingRead>,
    /// Reads whose ReadIndex round is in flight, by the context sent with it.
    awaiting_index: BTreeMap<u64, Vec<PendingRead>>,
    /// Reads with a confirmed read index, waiting for apply to reach it.
    awaiting_apply: BTreeMap<u64, Vec<PendingRead>>,
    next_context: u64,
    len: usize,
}

impl Reads {
    pub fn is_full(&self) -> bool {
        self.len >= READS_PENDING_MAX
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn hold(&mut self, read: PendingRead) {
        assert!(!self.is_full(), "reads are bounded by READS_PENDING_MAX");
        self.awaiting_term_commit.push_back(read);
        self.len += 1;
    }

    /// Holds a read until apply reaches `index` (Raft off: no ReadIndex round is needed).
    pub fn hold_until_applied(&mut self, index: u64, read: PendingRead) {
        assert!(!self.is_full(), "reads are bounded by READS_PENDING_MAX");
        self.awaiting_apply.entry(index).or_default().push(read);
        self.len += 1;
    }

    /// Moves every held read into one ReadIndex round; returns its context, if any were held.
    pub fn start_round(&mut self) -> Option<u64> {
        if self.awaiting_term_commit.is_empty() {
            return None;
        }
        self.next_context += 1;
        let context = self.next_context;
        let batch: Vec<_> = self.awaiting_term_commit.drain(..).collect();
        self.awaiting_index.insert(context, batch);
        Some(context)
    }

    /// The ReadIndex round `context` confirmed `index`.
    pub fn confirmed(&mut self, context: u64, index: u64) {
        if let Some(batch) = self.awaiting_index.remove(&context) {
            self.awaiting_apply.entry(index).or_default().extend(batch);
        }
    }

    /// Takes the reads that can be served now that `applied` is applied.
    pub fn take_ready(&mut self, applied: u64) -> Vec<PendingRead> {
        let later = self.awaiting_apply.split_off(&(applied + 1));
        let ready: Vec<_> = std::mem::replace(&mut self.awaiting_apply, later).into_values().flatten().collect();
        self.len -= ready.len();
        ready
    }

    /// Takes every read not yet confirmed by a ReadIndex (leadership was lost, so no
    /// confirmation will come). Confirmed reads stay: their index is still a valid bound.
    pub fn take_unconfirmed(&mut self) -> Vec<PendingRead> {
        let mut out: Vec<_> = self.awaiting_term_commit.drain(..).collect();
        out.extend(std::mem::take(&mut self.awaiting_index).into_values().flatten());
        self.len -= out.len();
        out
    }

    pub fn take_all(&mut self) -> Vec<PendingRead> {
        let mut out = self.take_unconfirmed();
        let confirmed: Vec<_> = std::mem::take(&mut self.awaiting_apply).into_values().flatten().collect();
        self.len -= confirmed.len();
        out.extend(confirmed);
        assert_eq!(self.len, 0, "read count matches the queues");
        out
    }
}

pub fn context_bytes(context: u64) -> Vec<u8> {
    context.to_le_bytes().to_vec()
}

/// The context of a ReadState; `None` for bytes we did not produce.
pub fn context_from_bytes(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
