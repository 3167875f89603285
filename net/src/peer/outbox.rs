//! Messages waiting to be written to one peer: bounded, dropping (and counting) when full,
//! since Raft retransmits what is lost.

use cohort_core::env::Envelope;
use std::collections::VecDeque;
use std::sync::Mutex;
use tokio::sync::Notify;

pub struct Outbox {
    queue: Mutex<VecDeque<Envelope>>,
    messages_max: usize,
    pub notify: Notify,
}

impl Outbox {
    pub fn new(messages_max: usize) -> Outbox {
        Outbox { queue: Mutex::new(VecDeque::new()), messages_max, notify: Notify::new() }
    }

    /// Queues `batch`; returns how many messages were dropped because the outbox was full.
    pub fn push(&self, batch: Vec<Envelope>) -> usize {
        let mut queue = self.queue.lock().expect("not poisoned");
        let room = self.messages_max - queue.len();
        let dropped = batch.len().saturating_sub(room);
        queue.extend(batch.into_iter().take(room));
        drop(queue);
        self.notify.notify_one();
        dropped
    }

    /// Takes up to `messages_max` queued messages, oldest first.
    pub fn take(&self, messages_max: usize) -> Vec<Envelope> {
        let mut queue = self.queue.lock().expect("not poisoned");
        let n = queue.len().min(messages_max);
        queue.drain(..n).collect()
    }

    pub fn len(&self) -> usize {
        self.queue.lock().expect("not poisoned").len()
    }
}
