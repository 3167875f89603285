//! Writes this replica forwarded to its leader through Raft, waiting to see their command
//! applied. Unlike a leader's own proposals they are matched by (client, sequence), since
//! a follower never learns the index its proposal landed at.

use crate::ids::{ClientId, RequestId};
use crate::limits::PROPOSALS_PENDING_MAX;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Forwarded {
    /// (client, sequence) -> (request, tick by which it is given up).
    waiting: BTreeMap<(ClientId, u64), (RequestId, u64)>,
}

impl Forwarded {
    pub fn is_full(&self) -> bool {
        self.waiting.len() >= PROPOSALS_PENDING_MAX
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Records a forwarded write; returns an earlier request for the same key it replaces.
    pub fn insert(&mut self, key: (ClientId, u64), request: RequestId, give_up_at_tick: u64) -> Option<RequestId> {
        assert!(!self.is_full(), "forwarded writes are bounded by PROPOSALS_PENDING_MAX");
        self.waiting.insert(key, (request, give_up_at_tick)).map(|(r, _)| r)
    }

    /// The command with `key` was applied.
    pub fn settle(&mut self, key: (ClientId, u64)) -> Option<RequestId> {
        self.waiting.remove(&key).map(|(r, _)| r)
    }

    /// Takes the writes not seen applied by `tick`: the forward may have been lost.
    pub fn expire(&mut self, tick: u64) -> Vec<RequestId> {
        let expired: Vec<_> = self.waiting.iter().filter(|(_, &(_, at))| at <= tick).map(|(&k, _)| k).collect();
        expired.into_iter().filter_map(|k| self.waiting.remove(&k)).map(|(r, _)| r).collect()
    }

    pub fn drain(&mut self) -> Vec<RequestId> {
        std::mem::take(&mut self.waiting).into_values().map(|(r, _)| r).collect()
    }
}
