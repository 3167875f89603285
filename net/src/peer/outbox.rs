//! Messages waiting to be written to one peer: bounded in messages and in payload bytes,
//! dropping (and counting) beyond either, since Raft retransmits what is lost. A peer that is
//! down keeps what was queued for it (Raft pipelines appends to a follower it believes
//! reachable): the byte bound keeps that from holding gigabytes of entries. Messages without
//! a payload (heartbeats, votes, acknowledgements) count against the message bound only, so
//! that entries never crowd them out.

use cohort_core::env::Envelope;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Outbox {
    queue: Mutex<Queue>,
    messages_max: usize,
    bytes_max: usize,
    pub notify: Notify,
}

#[derive(Default)]
struct Queue {
    envelopes: VecDeque<Envelope>,
    /// `Envelope::payload_bytes` of everything in `envelopes`.
    payload_bytes: usize,
}

impl Outbox {
    pub fn new(messages_max: usize, bytes_max: usize) -> Outbox {
        Outbox { queue: Mutex::new(Queue::default()), messages_max, bytes_max, notify: Notify::new() }
    }

    /// Queues `batch`; returns how many messages were dropped because the outbox was full.
    pub fn push(&self, batch: Vec<Envelope>) -> usize {
        let mut queue = self.queue.lock().expect("not poisoned");
        let mut dropped = 0;
        for envelope in batch {
            let bytes = envelope.payload_bytes();
            // One message larger than the whole bound still goes when nothing else waits:
            // dropping it every time would stall its follower for good.
            let over_bytes = bytes > 0 && queue.payload_bytes > 0 && queue.payload_bytes + bytes > self.bytes_max;
            if queue.envelopes.len() >= self.messages_max || over_bytes {
                dropped += 1;
                continue;
            }
            queue.payload_bytes += bytes;
            queue.envelopes.push_back(envelope);
        }
        drop(queue);
        self.notify.notify_one();
        dropped
    }

    /// Takes up to `messages_max` queued messages, oldest first.
    pub fn take(&self, messages_max: usize) -> Vec<Envelope> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let n = queue.envelopes.len().min(messages_max);
        let taken: Vec<Envelope> = queue.envelopes.drain(..n).collect();
        let bytes: usize = taken.iter().map(Envelope::payload_bytes).sum();
        assert!(bytes <= queue.payload_bytes, "the outbox counts every queued payload byte");
        queue.payload_bytes -= bytes;
        taken
    }

    pub fn len(&self) -> usize {
        self.queue.lock().expect("not poisoned").envelopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes queued.
    pub fn payload_bytes(&self) -> usize {
        self.queue.lock().expect("not poisoned").payload_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::env::Payload;
    use cohort_core::ids::{NodeId, PartitionId};

    fn message(entry_bytes: usize) -> Envelope {
        let mut message = raft::eraftpb::Message::default();
        if entry_bytes > 0 {
            let entry = raft::eraftpb::Entry { data: vec![7u8; entry_bytes].into(), ..Default::default() };
            message.entries = vec![entry].into();
        }
        Envelope { partition: PartitionId(1), from: NodeId(1), to: NodeId(2), payload: Payload::Raft(message) }
    }

    #[test]
    fn entries_beyond_the_byte_bound_are_dropped_but_control_messages_still_queue() {
        let outbox = Outbox::new(10, 1000);
        assert_eq!(outbox.push(vec![message(600), message(300)]), 0);
        assert_eq!(outbox.push(vec![message(200)]), 1, "over the byte bound");
        assert_eq!(outbox.push(vec![message(0), message(0)]), 0, "heartbeats and acks are not held to it");
        assert_eq!((outbox.len(), outbox.payload_bytes()), (4, 900));
        assert_eq!(outbox.take(1).len(), 1);
        assert_eq!(outbox.payload_bytes(), 300, "taking frees its bytes");
        assert_eq!(outbox.push(vec![message(600)]), 0, "room again");
        assert_eq!(outbox.push((0..10).map(|_| message(0)).collect()), 4, "the message bound holds for all");
        assert_eq!(outbox.len(), 10);
        let outbox = Outbox::new(10, 1000);
        assert_eq!(outbox.push(vec![message(5000), message(1)]), 1, "one oversized message alone still goes");
    }
}
