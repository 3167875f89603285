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
    NodeHeartbeat,
}

impl Envelope {
    /// The Raft message, if this envelope carries one.
    pub fn raft(&self) -> Option<&raft::eraftpb::Message> {
        match &self.payload {
            Payload::Raft(message) => Some(message),
            Payload::Snapshot(_) | Payload::NodeHeartbeat => None,
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
