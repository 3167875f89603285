use crate::ids::{NodeId, PartitionId};
use crate::snapshot::SnapshotMessage;

/// One message between two replicas of one partition.
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub partition: PartitionId,
    pub from: NodeId,
    pub to: NodeId,
    pub payload: Payload,
}

/// What an envelope carries.
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// raft-rs's own message; protobuf-encoded on the wire inside cohort's frame (see
    /// `cohort-net`).
    Raft(raft::eraftpb::Message),
    /// A piece of a snapshot transfer, which travels beside Raft (see `crate::snapshot`).
    Snapshot(SnapshotMessage),
    /// Node liveness: "I am alive", once per interval per pair of nodes (see
    /// `node::liveness`). Its envelope's partition means nothing.
    NodeHeartbeat(Heartbeat),
}

/// A node-liveness heartbeat, carrying what measures the round trip between two nodes
/// without comparing their clocks: the sender's clock when it left, and an echo of the last
/// heartbeat the sender had from the receiver (that one's `sent_nanos`, and how long the
/// sender held it before this one left). The receiver's round trip is its clock now, less the
/// echoed time, less the hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    pub sent_nanos: u64,
    pub echo: Option<HeartbeatEcho>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeartbeatEcho {
    pub sent_nanos: u64,
    pub held_nanos: u64,
}

impl Envelope {
    /// The bytes this envelope carries beyond its own struct: entries and their contexts,
    /// snapshot data. Zero for Raft's control messages (heartbeats, votes, acknowledgements)
    /// and node heartbeats, which queues bound by count only, so that data never crowds them
    /// out.
    pub fn payload_bytes(&self) -> usize {
        match &self.payload {
            Payload::Raft(message) => {
                message.entries.iter().map(|entry| entry.data.len() + entry.context.len()).sum::<usize>()
                    + message.context.len()
            }
            Payload::Snapshot(SnapshotMessage::Chunk(chunk)) => chunk.data.len(),
            Payload::Snapshot(_) | Payload::NodeHeartbeat(_) => 0,
        }
    }

    /// The Raft message, if this envelope carries one.
    pub fn raft(&self) -> Option<&raft::eraftpb::Message> {
        match &self.payload {
            Payload::Raft(message) => Some(message),
            Payload::Snapshot(_) | Payload::NodeHeartbeat(_) => None,
        }
    }
}

/// Carries envelopes between nodes. Delivery is best effort: a message may be dropped (a full
/// queue, a broken connection) and Raft retransmits. Incoming envelopes are pushed into the
/// node's inbox, which the transport is given when it is built.
pub trait Transport: Send + Sync + 'static {
    /// Queues `batch` for node `to`; never blocks.
    fn send(&self, to: NodeId, batch: Vec<Envelope>);
}
