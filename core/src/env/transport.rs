use crate::ids::{NodeId, PartitionId};

/// One Raft message between two replicas of one partition. `message` is raft-rs's own message;
/// it is protobuf-encoded on the wire inside cohort's frame (see `cohort-net`).
#[derive(Clone, Debug, PartialEq)]
pub struct Envelope {
    pub partition: PartitionId,
    pub from: NodeId,
    pub to: NodeId,
    pub message: raft::eraftpb::Message,
}

/// Carries envelopes between nodes. Delivery is best effort: a message may be dropped (a full
/// queue, a broken connection) and Raft retransmits. Incoming envelopes are pushed into the
/// node's inbox, which the transport is given when it is built.
pub trait Transport: Send + Sync + 'static {
    /// Queues `batch` for node `to`; never blocks.
    fn send(&self, to: NodeId, batch: Vec<Envelope>);
}
