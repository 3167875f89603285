//! What a partition asks its driver to do, and what it answers to requests.

use crate::env::Envelope;
use crate::ids::{NodeId, PartitionId, RequestId};
use crate::persist::{ConfState, LogWrite, PersistError, SnapshotMeta};
use crate::state_machine::{PartitionInfo, ReadResult, WriteResult};

/// One effect for the driver to carry out, in the order polled.
#[derive(Debug)]
pub enum Output {
    /// Send a Raft message to another replica.
    Send(Envelope),
    /// Make `write` durable, then call `Partition::handle_persisted(ready_number)`. Writes
    /// must be made durable in the order they are polled.
    Persist { ready_number: u64, write: LogWrite },
    /// Deliver Raft's `MsgSnapshot` to `to`: stream the snapshot file it names (see
    /// `crate::snapshot`), then call `Partition::report_snapshot`.
    SendSnapshot { to: NodeId, message: raft::eraftpb::Message },
    /// Save a snapshot of the applied state: take `Partition::snapshot_view` before any other
    /// input, write it to a durable file (away from the partition's task: it can take a
    /// while), then call `Partition::handle_snapshot_saved`. The replica goes on meanwhile.
    SaveSnapshot(SnapshotMeta),
    /// Append `write` (a log compaction through `snapshot`) to the log after every earlier
    /// `Persist`; nothing waits for it. Once it is durable, older snapshot files may go.
    Compact { write: LogWrite, snapshot: SnapshotMeta },
    /// Answer the request `request`.
    Respond { request: RequestId, response: Response },
    /// The directory (partition 0) applied the allocation of a new partition: the node
    /// creates its replica if it is a member. `campaign`: this replica leads the directory, so
    /// its node should start the new partition's first election at once rather than wait.
    PartitionAllocated { partition: PartitionId, info: PartitionInfo, campaign: bool },
    /// The directory applied new members for `partition`: the node creates its replica if it
    /// became a member, and deletes it if it no longer is.
    MembersChanged { partition: PartitionId, info: PartitionInfo },
    /// The directory replica has applied everything committed before this start: the node
    /// brings its replicas in line with `partitions` once. Changes applied while replaying the
    /// directory's history are not reported one by one: acting on a past membership would
    /// delete or recreate replicas the present one keeps.
    DirectoryReady { partitions: Vec<(PartitionId, PartitionInfo)> },
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum Response {
    /// The write was committed and applied (or deterministically rejected at apply time).
    Written(WriteResult),
    /// The read's result, as of `applied_index` on this replica.
    Read { result: ReadResult, applied_index: u64 },
    /// This replica is not the leader; `leader` is its best guess of who is.
    NotLeader { leader: Option<NodeId> },
    /// The write may or may not have been applied (the leader changed under it). Retrying with
    /// the same client id and sequence number is safe: writes are idempotent.
    Unknown,
    /// Too many requests in flight on this partition; try again later.
    Busy,
    /// The request was refused before it reached Raft (bad input).
    Invalid(String),
    /// The partition stopped on a fatal error (its log could not be made durable).
    Failed(PersistError),
    /// A membership change was applied; the partition's members are now these.
    Membership(ConfState),
    /// A membership change or transfer was refused; nothing changed.
    Refused(String),
    /// The leader started handing leadership to the node asked for.
    Transferring,
}
