//! Streaming a snapshot file from a leader's replica to one that needs it, beside Raft.
//!
//! When raft-rs decides a follower needs a snapshot it emits a `MsgSnapshot`; the partition
//! hands it to its actor instead of sending it, and the actor's `Transfers` sends the snapshot
//! file in checksummed chunks. The receiver appends them to a temporary file, acknowledges each
//! one, and when the file is whole it syncs it, checks it end to end, renames it into place and
//! only then steps the `MsgSnapshot` into its Raft node. Raft accepting it makes the store
//! import the file in one durable transaction; a receiver killed at any point before that
//! restarts from its previous state.
//!
//! Flow control is go-back-N: at most `SNAPSHOT_WINDOW_CHUNKS` unacknowledged chunks are in
//! flight, so each side holds a bounded number of chunk buffers whatever the snapshot's size.
//! The receiver accepts only the next chunk in order and always answers with the offset it
//! wants next; the sender resends from the last acknowledged offset when acknowledgements stop.
//!
//! Syncing a whole received file and checking it end to end reads all of it: that runs off the
//! replica's worker (which drives many replicas), as a [`PendingCheck`] the actor hands to a
//! blocking thread and whose outcome it feeds back (`Transfers::checked`). Meanwhile chunks
//! are ignored (the sender resends; the file being checked is the one incoming file).
//! Loss, duplication and reordering thus cost time, never correctness. A transfer that makes
//! no progress for `SNAPSHOT_RETRIES_MAX` timeouts is reported failed to Raft, which sends a
//! new `MsgSnapshot` later.
//!
//! Time is counted in the partition's ticks, so the same code runs in the simulator.

use super::file::{SnapshotError, SnapshotStore};
use super::message::{SnapshotChunk, SnapshotMessage};
use crate::env::{DiskFile, Envelope, Instant, Payload};
use crate::ids::{NodeId, PartitionId, PeerId};
use crate::limits::{
    SNAPSHOT_ACK_TIMEOUT_TICKS, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_DISK_RESERVE_BYTES, SNAPSHOT_INCOMING_IDLE_TICKS_MAX,
    SNAPSHOT_OUTGOING_MAX, SNAPSHOT_RETRIES_MAX, SNAPSHOT_WINDOW_CHUNKS,
};
use crate::metrics::NodeMetrics;
use crate::persist::{LogPosition, SnapshotMeta};
use protobuf::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A snapshot received whole and checked as a file, ready for Raft.
pub struct Installed {
    /// The `MsgSnapshot` to step into Raft.
    pub message: raft::eraftpb::Message,
    pub meta: SnapshotMeta,
}

/// A file received whole, to be synced, checked end to end and renamed into place: the
/// blocking part of receiving a snapshot, run off the replica's worker.
pub struct PendingCheck {
    from: NodeId,
    transfer: u64,
    size_bytes: u64,
    file: Box<dyn DiskFile>,
    announced: SnapshotMeta,
    message: raft::eraftpb::Message,
    store: SnapshotStore,
}

impl PendingCheck {
    /// The node the file came from.
    pub fn sender(&self) -> NodeId {
        self.from
    }

    /// Syncs, checks and renames the file (blocking I/O, reading the whole file).
    pub fn run(self) -> CheckedSnapshot {
        let PendingCheck { from, transfer, size_bytes, file, announced, message, store } = self;
        let result = store.install_incoming(file, &announced);
        CheckedSnapshot { from, transfer, size_bytes, message, result }
    }
}

/// What [`PendingCheck::run`] found, for `Transfers::checked`.
pub struct CheckedSnapshot {
    from: NodeId,
    transfer: u64,
    size_bytes: u64,
    message: raft::eraftpb::Message,
    result: Result<SnapshotMeta, SnapshotError>,
}

/// What the actor must do after a call into `Transfers`.
#[derive(Default)]
pub struct TransferEvents {
    pub send: Vec<Envelope>,
    /// Outgoing transfers that ended: (receiver, whether it has the whole snapshot). Raft is
    /// told through `Partition::report_snapshot`.
    pub finished: Vec<(NodeId, bool)>,
    /// Boxed: rare, and every replica's actor holds a `TransferEvents`.
    pub installed: Option<Box<Installed>>,
    /// A received file to check off the worker; its outcome goes to `Transfers::checked`.
    pub check: Option<Box<PendingCheck>>,
}

struct Outgoing {
    transfer: u64,
    position: LogPosition,
    size_bytes: u64,
    raft_message: Vec<u8>,
    /// The receiver has every byte before this.
    acked: u64,
    /// Every byte before this was sent at least once since the last rewind.
    sent: u64,
    ticks_without_progress: u32,
    timeouts: u32,
    started: Instant,
}

struct Incoming {
    from: NodeId,
    transfer: u64,
    position: LogPosition,
    size_bytes: u64,
    received: u64,
    file: Box<dyn DiskFile>,
    idle_ticks: u32,
}

/// The snapshot transfers of one replica: at most `SNAPSHOT_OUTGOING_MAX` outgoing (one per
/// receiver) and one incoming.
pub struct Transfers {
    partition: PartitionId,
    node: NodeId,
    store: SnapshotStore,
    metrics: Arc<NodeMetrics>,
    outgoing: BTreeMap<NodeId, Outgoing>,
    incoming: Option<Incoming>,
    /// The last transfer received whole: (sender, transfer, size). Its late duplicates are
    /// answered "complete", so a lost final acknowledgement does not restart the transfer.
    last_installed: Option<(NodeId, u64, u64)>,
    next_transfer: u64,
    /// The largest snapshot accepted from a peer.
    size_bytes_max: u64,
    /// The transfer whose file is being checked (`PendingCheck`): (sender, transfer).
    checking: Option<(NodeId, u64)>,
}

impl Transfers {
    /// `seed` makes transfer ids differ across restarts of the sender; `size_bytes_max` caps
    /// what is accepted from a peer.
    pub fn new(
        partition: PartitionId,
        node: NodeId,
        store: SnapshotStore,
        metrics: Arc<NodeMetrics>,
        seed: u64,
        size_bytes_max: u64,
    ) -> Transfers {
        Transfers {
            partition,
            node,
            store,
            metrics,
            outgoing: BTreeMap::new(),
            incoming: None,
            last_installed: None,
            next_transfer: seed.rotate_left(17) | 1,
            size_bytes_max,
            checking: None,
        }
    }

    pub fn store(&self) -> &SnapshotStore {
        &self.store
    }

    /// Raft wants `message` (a `MsgSnapshot`) delivered to `to`: stream its snapshot file.
    pub fn start(&mut self, now: Instant, to: NodeId, message: &raft::eraftpb::Message, events: &mut TransferEvents) {
        assert_eq!(message.get_msg_type(), raft::eraftpb::MessageType::MsgSnapshot);
        let metadata = message.get_snapshot().get_metadata();
        let position = LogPosition { index: metadata.index, term: metadata.term };
        // Raft sends a new snapshot only after giving up on the previous one to `to`.
        self.outgoing.remove(&to);
        if self.outgoing.len() >= SNAPSHOT_OUTGOING_MAX {
            tracing::info!(partition = %self.partition, %to, "snapshot transfers at their limit; raft will retry");
            events.finished.push((to, false));
            return;
        }
        let size_bytes = match self.store.size(position) {
            Ok(size) => size,
            Err(error) => {
                tracing::warn!(partition = %self.partition, %to, %error, "snapshot to send is unreadable");
                events.finished.push((to, false));
                return;
            }
        };
        self.next_transfer = self.next_transfer.wrapping_add(1);
        tracing::info!(partition = %self.partition, %to, ?position, size_bytes, "sending snapshot");
        let raft_message = message.write_to_bytes().expect("raft messages encode");
        self.outgoing.insert(
            to,
            Outgoing {
                transfer: self.next_transfer,
                position,
                size_bytes,
                raft_message,
                acked: 0,
                sent: 0,
                ticks_without_progress: 0,
                timeouts: 0,
                started: now,
            },
        );
        self.fill_window(to, events);
    }

    /// A snapshot message from `from`.
    pub fn handle(&mut self, now: Instant, from: NodeId, message: SnapshotMessage, events: &mut TransferEvents) {
        match message {
            SnapshotMessage::Chunk(chunk) => self.receive(from, chunk, events),
            SnapshotMessage::Ack { transfer, next_offset } => {
                self.acknowledged(now, from, transfer, next_offset, events)
            }
            SnapshotMessage::Refuse { transfer, reason } => {
                if self.outgoing.get(&from).is_some_and(|o| o.transfer == transfer) {
                    tracing::warn!(partition = %self.partition, to = %from, %reason, "snapshot refused");
                    self.outgoing.remove(&from);
                    events.finished.push((from, false));
                }
            }
        }
    }

    /// One partition tick passed: resend what went unacknowledged, give up on dead transfers.
    pub fn tick(&mut self, events: &mut TransferEvents) {
        let mut rewind = Vec::new();
        let mut failed = Vec::new();
        for (&to, outgoing) in &mut self.outgoing {
            outgoing.ticks_without_progress += 1;
            if outgoing.ticks_without_progress < SNAPSHOT_ACK_TIMEOUT_TICKS {
                continue;
            }
            outgoing.ticks_without_progress = 0;
            outgoing.timeouts += 1;
            if outgoing.timeouts > SNAPSHOT_RETRIES_MAX {
                failed.push(to);
            } else {
                outgoing.sent = outgoing.acked;
                rewind.push(to);
            }
        }
        for to in failed {
            tracing::warn!(partition = %self.partition, %to, "snapshot transfer made no progress; giving up");
            self.outgoing.remove(&to);
            events.finished.push((to, false));
        }
        for to in rewind {
            self.fill_window(to, events);
        }
        if let Some(incoming) = &mut self.incoming {
            incoming.idle_ticks += 1;
            if incoming.idle_ticks > SNAPSHOT_INCOMING_IDLE_TICKS_MAX {
                tracing::info!(partition = %self.partition, from = %incoming.from, "incoming snapshot stalled; dropped");
                self.drop_incoming();
            }
        }
    }

    /// No transfer in either direction: nothing would be lost if this replica unloaded.
    pub fn is_idle(&self) -> bool {
        self.outgoing.is_empty() && self.incoming.is_none() && self.checking.is_none()
    }

    /// The outcome of the check `events.check` asked for: the snapshot is installed (and
    /// acknowledged) or refused.
    pub fn checked(&mut self, checked: CheckedSnapshot, events: &mut TransferEvents) {
        let CheckedSnapshot { from, transfer, size_bytes, message, result } = checked;
        assert_eq!(self.checking.take(), Some((from, transfer)), "a check answers the one asked for");
        match result {
            Ok(meta) => {
                tracing::info!(partition = %self.partition, %from, position = ?meta.position, size_bytes, "snapshot received");
                self.metrics.snapshots_received.inc();
                self.metrics.snapshot_received_bytes.inc_by(size_bytes);
                events.send.push(self.envelope(from, SnapshotMessage::Ack { transfer, next_offset: size_bytes }));
                self.last_installed = Some((from, transfer, size_bytes));
                events.installed = Some(Box::new(Installed { message, meta }));
            }
            Err(error) => self.refuse(from, transfer, error, events),
        }
    }

    /// Runs a pending check on this thread and feeds its outcome back (tests and the fuzzer,
    /// which have no blocking pool).
    pub fn check_now(&mut self, events: &mut TransferEvents) {
        if let Some(check) = events.check.take() {
            self.checked(check.run(), events);
        }
    }

    /// Outgoing transfers in progress (status, tests).
    pub fn outgoing_count(&self) -> usize {
        self.outgoing.len()
    }

    fn acknowledged(
        &mut self,
        now: Instant,
        from: NodeId,
        transfer: u64,
        next_offset: u64,
        events: &mut TransferEvents,
    ) {
        let Some(outgoing) = self.outgoing.get_mut(&from) else { return };
        if outgoing.transfer != transfer || next_offset > outgoing.size_bytes {
            return;
        }
        if next_offset < outgoing.acked {
            // The receiver started over (it restarted, or dropped a stalled transfer).
            outgoing.sent = next_offset;
        }
        if next_offset != outgoing.acked {
            outgoing.ticks_without_progress = 0;
            outgoing.timeouts = 0;
        }
        outgoing.acked = next_offset;
        outgoing.sent = outgoing.sent.max(next_offset);
        if outgoing.acked == outgoing.size_bytes {
            let outgoing = self.outgoing.remove(&from).expect("present");
            let elapsed = now.saturating_duration_since(outgoing.started);
            tracing::info!(partition = %self.partition, to = %from, size_bytes = outgoing.size_bytes,
                elapsed_ms = elapsed.as_millis() as u64, "snapshot sent");
            self.metrics.snapshots_sent.inc();
            self.metrics.snapshot_sent_bytes.inc_by(outgoing.size_bytes);
            self.metrics.snapshot_send_seconds.observe(elapsed.as_secs_f64());
            events.finished.push((from, true));
            return;
        }
        self.fill_window(from, events);
    }

    /// Sends chunks to `to` until the window is full or the file is all sent.
    fn fill_window(&mut self, to: NodeId, events: &mut TransferEvents) {
        let outgoing = self.outgoing.get_mut(&to).expect("filling an existing transfer");
        let window_bytes = SNAPSHOT_WINDOW_CHUNKS * SNAPSHOT_CHUNK_BYTES as u64;
        while outgoing.sent < outgoing.size_bytes && outgoing.sent - outgoing.acked < window_bytes {
            let len = (outgoing.size_bytes - outgoing.sent).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
            let data = match self.store.read_chunk(outgoing.position, outgoing.sent, len) {
                Ok(data) if data.len() == len => data,
                Ok(data) => {
                    tracing::warn!(partition = %self.partition, %to, got = data.len(), len, "snapshot file shrank");
                    self.outgoing.remove(&to);
                    events.finished.push((to, false));
                    return;
                }
                Err(error) => {
                    // Superseded and deleted by a newer snapshot, most likely.
                    tracing::info!(partition = %self.partition, %to, %error, "snapshot to send is gone");
                    self.outgoing.remove(&to);
                    events.finished.push((to, false));
                    return;
                }
            };
            let chunk = SnapshotChunk {
                transfer: outgoing.transfer,
                position: outgoing.position,
                size_bytes: outgoing.size_bytes,
                offset: outgoing.sent,
                crc32c: crc32c::crc32c(&data),
                data,
                raft_message: outgoing.raft_message.clone(),
            };
            outgoing.sent += len as u64;
            events.send.push(Envelope {
                partition: self.partition,
                from: self.node,
                to,
                payload: Payload::Snapshot(SnapshotMessage::Chunk(chunk)),
            });
        }
    }

    fn receive(&mut self, from: NodeId, chunk: SnapshotChunk, events: &mut TransferEvents) {
        let transfer = chunk.transfer;
        let end = chunk.offset.checked_add(chunk.data.len() as u64);
        let sane = chunk.data.len() <= SNAPSHOT_CHUNK_BYTES
            && chunk.size_bytes <= crate::codec::STREAM_DECODE_SIZE_BYTES_MAX as u64
            && end.is_some_and(|end| end <= chunk.size_bytes)
            && crc32c::crc32c(&chunk.data) == chunk.crc32c;
        if !sane {
            // Damaged or hostile: treat as lost; the sender resends.
            tracing::warn!(partition = %self.partition, %from, ?chunk, "bad snapshot chunk ignored");
            return;
        }
        if self.checking.is_some() {
            // The one incoming file is being checked: its sender's resends, or another
            // transfer, wait (the sender resends after its timeout).
            return;
        }
        let same = self
            .incoming
            .as_ref()
            .is_some_and(|i| i.from == from && i.transfer == transfer && i.position == chunk.position);
        if let Some((sender, done, size_bytes)) = self.last_installed {
            if (sender, done) == (from, transfer) {
                events.send.push(self.envelope(from, SnapshotMessage::Ack { transfer, next_offset: size_bytes }));
                return;
            }
        }
        if !same {
            if chunk.offset != 0 {
                // A transfer this replica does not know (it restarted, or dropped it): ask for
                // the start.
                events.send.push(self.envelope(from, SnapshotMessage::Ack { transfer, next_offset: 0 }));
                return;
            }
            self.drop_incoming();
            if let Err(error) = self.room_for(chunk.size_bytes) {
                return self.refuse(from, transfer, error, events);
            }
            let file = match self.store.begin_incoming() {
                Ok(file) => file,
                Err(error) => return self.refuse(from, transfer, error, events),
            };
            tracing::info!(partition = %self.partition, %from, position = ?chunk.position,
                size_bytes = chunk.size_bytes, "receiving snapshot");
            self.incoming = Some(Incoming {
                from,
                transfer,
                position: chunk.position,
                size_bytes: chunk.size_bytes,
                received: 0,
                file,
                idle_ticks: 0,
            });
        }
        let incoming = self.incoming.as_mut().expect("just ensured");
        if chunk.offset == incoming.received && chunk.size_bytes == incoming.size_bytes {
            if let Err(error) = incoming.file.append(&chunk.data) {
                self.drop_incoming();
                return self.refuse(from, transfer, error.into(), events);
            }
            incoming.received += chunk.data.len() as u64;
            incoming.idle_ticks = 0;
        }
        let next_offset = incoming.received;
        if next_offset == incoming.size_bytes {
            let incoming = self.incoming.take().expect("present");
            self.install(from, incoming, &chunk.raft_message, events);
            return;
        }
        events.send.push(self.envelope(from, SnapshotMessage::Ack { transfer, next_offset }));
    }

    /// Whether a snapshot of `size_bytes` may be received: within the configured cap, and
    /// leaving `SNAPSHOT_DISK_RESERVE_BYTES` free on the disk.
    fn room_for(&self, size_bytes: u64) -> Result<(), SnapshotError> {
        if size_bytes > self.size_bytes_max {
            let reason = format!("larger than this node's limit of {} bytes", self.size_bytes_max);
            return Err(SnapshotError::TooLarge { size_bytes, reason });
        }
        let available = self.store.available_bytes()?;
        if size_bytes.saturating_add(SNAPSHOT_DISK_RESERVE_BYTES) > available {
            let reason = format!("{available} bytes are free on the disk, and {SNAPSHOT_DISK_RESERVE_BYTES} are kept");
            return Err(SnapshotError::TooLarge { size_bytes, reason });
        }
        Ok(())
    }

    fn install(&mut self, from: NodeId, incoming: Incoming, raft_message: &[u8], events: &mut TransferEvents) {
        let (transfer, position, size_bytes) = (incoming.transfer, incoming.position, incoming.size_bytes);
        let message = match raft::eraftpb::Message::parse_from_bytes(raft_message) {
            Ok(m) if m.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot => m,
            _ => {
                let _ = self.store.abandon_incoming();
                let error = SnapshotError::Corrupt {
                    path: self.store.dir(),
                    reason: "the transfer's raft message is not a MsgSnapshot".into(),
                };
                return self.refuse(from, transfer, error, events);
            }
        };
        // The Raft message must be the sender's, for this node, about this file: its position
        // (checked here and against the file) and its membership (against the file). Raft
        // takes the message's word for both, and the store the file's.
        let metadata = message.get_snapshot().get_metadata();
        let announced = SnapshotMeta {
            position: LogPosition { index: metadata.index, term: metadata.term },
            conf_state: metadata.get_conf_state().into(),
        };
        if announced.position != position
            || PeerId(message.to).node() != self.node
            || PeerId(message.from).node() != from
        {
            let _ = self.store.abandon_incoming();
            let error = SnapshotError::Corrupt {
                path: self.store.dir(),
                reason: "the transfer's raft message names another snapshot, sender or replica".into(),
            };
            return self.refuse(from, transfer, error, events);
        }
        self.checking = Some((from, transfer));
        let store = self.store.clone();
        events.check =
            Some(Box::new(PendingCheck { from, transfer, size_bytes, file: incoming.file, announced, message, store }));
    }

    fn refuse(&mut self, to: NodeId, transfer: u64, error: SnapshotError, events: &mut TransferEvents) {
        tracing::warn!(partition = %self.partition, from = %to, %error, "refusing snapshot");
        let reason = error.to_string();
        events.send.push(self.envelope(to, SnapshotMessage::Refuse { transfer, reason }));
    }

    fn drop_incoming(&mut self) {
        if self.incoming.take().is_some() {
            if let Err(error) = self.store.abandon_incoming() {
                tracing::warn!(partition = %self.partition, %error, "cannot delete an abandoned snapshot");
            }
        }
    }

    fn envelope(&self, to: NodeId, message: SnapshotMessage) -> Envelope {
        Envelope { partition: self.partition, from: self.node, to, payload: Payload::Snapshot(message) }
    }
}
