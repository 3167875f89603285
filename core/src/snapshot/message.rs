//! What travels between two nodes during a snapshot transfer.

use crate::persist::LogPosition;
use serde::{Deserialize, Serialize};

/// One step of a snapshot transfer, carried in an [`Envelope`](crate::env::Envelope) beside
/// Raft's own messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotMessage {
    /// Sender → receiver: bytes of the snapshot file.
    Chunk(SnapshotChunk),
    /// Receiver → sender: every byte before `next_offset` is written; send from there. An
    /// offset below what the sender saw acknowledged means the receiver started over.
    Ack { transfer: u64, next_offset: u64 },
    /// Receiver → sender: the transfer cannot succeed (a bad snapshot, a disk error).
    Refuse { transfer: u64, reason: String },
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    /// Chosen by the sender; names one transfer of one file to one receiver.
    pub transfer: u64,
    /// The snapshot's position, which names its file.
    pub position: LogPosition,
    /// Size of the whole file.
    pub size_bytes: u64,
    /// Where `data` starts in the file.
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// CRC32C of `data`.
    pub crc32c: u32,
    /// Raft's `MsgSnapshot` (protobuf), stepped by the receiver once the whole file is
    /// installed. Carried by every chunk: it is small, and the receiver then needs no state
    /// beyond the file to finish.
    #[serde(with = "serde_bytes")]
    pub raft_message: Vec<u8>,
}

impl std::fmt::Debug for SnapshotChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotChunk")
            .field("transfer", &self.transfer)
            .field("position", &self.position)
            .field("size_bytes", &self.size_bytes)
            .field("offset", &self.offset)
            .field("data_bytes", &self.data.len())
            .finish_non_exhaustive()
    }
}
