//! Frames on a peer connection: a 4-byte little-endian length, then a bincode payload.
//! Decoding never panics: bad bytes are an error that closes the connection.

use cohort_core::codec::{self, DecodeError};
use cohort_core::env::{Envelope, Payload};
use cohort_core::ids::{NodeId, PartitionId, PeerId};
use cohort_core::snapshot::SnapshotMessage;
use protobuf::Message as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Protocol version, checked in the handshake: nodes of different versions do not connect.
/// 6: commands carry objects in Git's loose encoding, which builds before cannot decode (they
/// would apply such an entry as undecodable, and their state would part from the others').
/// 7: partitions place objects by apply index (`store::Format::PlacedByIndex`) from an entry
/// in their log (a new partition's bootstrap, or one an upgraded leader proposes) that builds
/// before would apply as a no-op, placing objects by id.
/// 8: partitions keep dedup results in rings (`store::Format::DedupRing`) from an entry in
/// their log that builds before would apply as a no-op, keeping the original rows.
pub const PROTOCOL_VERSION: u32 = 8;

/// One unit on a peer connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Frame {
    /// Dialer → acceptor: who I am, who I think you are, a fresh nonce, and my data
    /// directory's instance id (little-endian).
    Hello { version: u32, cluster_id: String, from: u64, to: u64, nonce: [u8; 32], instance: [u8; 16] },
    /// Acceptor → dialer: its nonce, its instance id and proof that it knows the secret.
    Challenge { nonce: [u8; 32], proof: [u8; 32], instance: [u8; 16] },
    /// Dialer → acceptor: proof that it knows the secret.
    Proof { proof: [u8; 32] },
    /// Messages between replicas, each for one partition.
    Batch(Vec<WireMessage>),
}

/// One message between two replicas of a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A protobuf-encoded raft-rs message.
    Raft {
        partition: u64,
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
    },
    /// A step of a snapshot transfer.
    Snapshot { partition: u64, message: SnapshotMessage },
    /// Node liveness: the sender is alive (and the round trip's clock readings).
    NodeHeartbeat(cohort_core::env::Heartbeat),
}

impl Frame {
    /// About how many bytes this frame's payload takes.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 128;
        match self {
            Frame::Batch(messages) => OVERHEAD_BYTES + messages.iter().map(WireMessage::size_bytes).sum::<usize>(),
            Frame::Hello { cluster_id, .. } => OVERHEAD_BYTES + cluster_id.len(),
            Frame::Challenge { .. } | Frame::Proof { .. } => OVERHEAD_BYTES,
        }
    }
}

impl WireMessage {
    /// About how many bytes this message adds to a frame.
    pub fn size_bytes(&self) -> usize {
        const OVERHEAD_BYTES: usize = 128;
        OVERHEAD_BYTES
            + match self {
                WireMessage::Raft { message, .. } => message.len(),
                WireMessage::Snapshot { message: SnapshotMessage::Chunk(chunk), .. } => {
                    chunk.data.len() + chunk.raft_message.len()
                }
                WireMessage::Snapshot { message: SnapshotMessage::Refuse { reason, .. }, .. } => reason.len(),
                WireMessage::Snapshot { .. } | WireMessage::NodeHeartbeat(_) => 0,
            }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLarge { size_bytes: usize, limit_bytes: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Encodes `frame` with its length prefix.
pub fn encode(frame: &Frame) -> Vec<u8> {
    // Encoded in place after a placeholder for the length: one buffer, sized from the start,
    // rather than a payload grown by doubling and then copied behind its length.
    let mut out = Vec::with_capacity(LENGTH_BYTES + frame.size_bytes());
    out.extend_from_slice(&[0; LENGTH_BYTES]);
    codec::encode_into(frame, &mut out);
    let payload_bytes = u32::try_from(out.len() - LENGTH_BYTES).expect("a frame's payload is below 4 GiB");
    out[..LENGTH_BYTES].copy_from_slice(&payload_bytes.to_le_bytes());
    out
}

/// The length prefix of a frame.
const LENGTH_BYTES: usize = 4;

/// Decodes one payload (without its length prefix).
pub fn decode_payload(payload: &[u8]) -> Result<Frame, DecodeError> {
    codec::decode("peer frame", payload)
}

/// Why a decoded frame from a peer is refused: the connection that carried it is closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("a handshake frame after the handshake")]
    HandshakeFrame,
    #[error("raft message does not decode: {0}")]
    RaftDecode(String),
    #[error("message from {from} to {to} on the connection with node {peer}")]
    Mislabeled { from: PeerId, to: PeerId, peer: NodeId },
}

/// The messages of a frame received from `peer` (authenticated) by `me`, ready for the router.
/// Every Raft message must be from a replica on `peer` to one on `me`; the envelope's
/// sender is the connection's, whatever the bytes claim.
pub fn received_envelopes(frame: Frame, peer: NodeId, me: NodeId) -> Result<Vec<Envelope>, ProtocolError> {
    let Frame::Batch(items) = frame else {
        return Err(ProtocolError::HandshakeFrame);
    };
    let mut envelopes = Vec::with_capacity(items.len());
    for item in items {
        let (partition, payload) = match item {
            WireMessage::Raft { partition, message: bytes } => {
                let message = raft::eraftpb::Message::parse_from_bytes(&bytes)
                    .map_err(|e| ProtocolError::RaftDecode(e.to_string()))?;
                let (from, to) = (PeerId(message.from), PeerId(message.to));
                if from.node() != peer || to.node() != me {
                    return Err(ProtocolError::Mislabeled { from, to, peer });
                }
                (partition, Payload::Raft(message))
            }
            WireMessage::Snapshot { partition, message } => (partition, Payload::Snapshot(message)),
            WireMessage::NodeHeartbeat(heartbeat) => (0, Payload::NodeHeartbeat(heartbeat)),
        };
        envelopes.push(Envelope { partition: PartitionId(partition), from: peer, to: me, payload });
    }
    Ok(envelopes)
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
    size_bytes_max: usize,
) -> Result<(), FrameError> {
    let bytes = encode(frame);
    if bytes.len() - 4 > size_bytes_max {
        return Err(FrameError::TooLarge { size_bytes: bytes.len() - 4, limit_bytes: size_bytes_max });
    }
    writer.write_all(&bytes).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame, refusing one larger than `size_bytes_max` before reading its payload.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    size_bytes_max: usize,
    buffer: &mut Vec<u8>,
) -> Result<Frame, FrameError> {
    let mut prefix = [0u8; 4];
    reader.read_exact(&mut prefix).await?;
    let size_bytes = u32::from_le_bytes(prefix) as usize;
    if size_bytes > size_bytes_max {
        return Err(FrameError::TooLarge { size_bytes, limit_bytes: size_bytes_max });
    }
    buffer.resize(size_bytes, 0);
    reader.read_exact(buffer).await?;
    Ok(decode_payload(buffer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let frame = Frame::Batch(vec![
            WireMessage::Raft { partition: 3, message: vec![1, 2, 3] },
            WireMessage::Snapshot { partition: 4, message: SnapshotMessage::Ack { transfer: 9, next_offset: 12 } },
        ]);
        let bytes = encode(&frame);
        assert_eq!(decode_payload(&bytes[4..]).unwrap(), frame);
        assert_eq!(bytes[..4], ((bytes.len() - 4) as u32).to_le_bytes(), "the prefix is the payload's length");
        assert_eq!(bytes[4..], codec::encode(&frame), "the payload is the frame's encoding");
    }

    #[test]
    fn a_raft_message_claiming_another_sender_or_receiver_is_refused() {
        let raft = |from: u64, to: u64| {
            let message = raft::eraftpb::Message { from, to, ..Default::default() };
            Frame::Batch(vec![WireMessage::Raft { partition: 1, message: message.write_to_bytes().unwrap() }])
        };
        let (peer, me) = (NodeId(2), NodeId(1));
        let envelopes = received_envelopes(raft(PeerId::new(peer, 3).0, 1), peer, me).unwrap();
        assert_eq!((envelopes[0].from, envelopes[0].to), (peer, me));
        for (from, to) in [(3, 1), (2, 3)] {
            assert!(matches!(received_envelopes(raft(from, to), peer, me), Err(ProtocolError::Mislabeled { .. })));
        }
        let hello = Frame::Proof { proof: [0; 32] };
        assert_eq!(received_envelopes(hello, peer, me).unwrap_err(), ProtocolError::HandshakeFrame);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..5_000 {
            let len = rng.gen_range(0..64);
            let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_payload(&bytes);
        }
    }
}
