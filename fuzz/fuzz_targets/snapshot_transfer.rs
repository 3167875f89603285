//! A snapshot transfer's receiving side fed what a hostile or broken peer could send: chunks of
//! a real snapshot file, in any order, from the right sender or another, with lying sizes,
//! offsets, checksums, positions and Raft messages, mixed with ticks. Nothing panics, and a
//! snapshot is only ever installed whole and true: the file on disk checks out, and it, the
//! Raft message and the authenticated sender all agree.
#![no_main]

use cohort_core::env::{Disk, Instant};
use cohort_core::ids::{NodeId, PartitionId, PeerId};
use cohort_core::limits::SNAPSHOT_CHUNK_BYTES;
use cohort_core::metrics::NodeMetrics;
use cohort_core::persist::{ConfState, SnapshotMeta};
use cohort_core::snapshot::{
    check_file, PendingCheck, SnapshotChunk, SnapshotMessage, SnapshotStore, TransferEvents, Transfers,
};
use cohort_storage::SimDisk;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use protobuf::Message as _;
use std::sync::{Arc, OnceLock};

const PARTITION: PartitionId = PartitionId(9);
const SENDER: NodeId = NodeId(1);
const RECEIVER: NodeId = NodeId(2);
const STEPS_MAX: usize = 48;

#[path = "common/snapshot_fixture.rs"]
mod snapshot_fixture;

use snapshot_fixture::{snapshot_file, Fixture};

/// A real snapshot file of a few blobs, spanning three chunks.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        // Five random blobs of 120,000 bytes: incompressible, so the file spans three chunks.
        let fixture = snapshot_file(PARTITION, 5, 120_000, 1);
        assert!(fixture.file.len() > 2 * SNAPSHOT_CHUNK_BYTES, "the fixture spans three chunks");
        fixture
    })
}

fn msg_snapshot(meta: &SnapshotMeta, from: u64, to: u64) -> raft::eraftpb::Message {
    let mut message = raft::eraftpb::Message::default();
    message.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    message.from = from;
    message.to = to;
    message.term = meta.position.term;
    let metadata = message.mut_snapshot().mut_metadata();
    metadata.index = meta.position.index;
    metadata.term = meta.position.term;
    metadata.set_conf_state((&meta.conf_state).into());
    message
}

/// The Raft message a chunk carries: the true one most often, else one that lies about one
/// thing, else any bytes.
fn raft_message(u: &mut Unstructured, meta: &SnapshotMeta) -> Result<Vec<u8>> {
    let (from, to) = (PeerId::new(SENDER, 0).0, PeerId::new(RECEIVER, 0).0);
    let mut lie = meta.clone();
    let message = match u.int_in_range(0u8..=7)? {
        0..=3 => msg_snapshot(meta, from, to),
        4 => msg_snapshot(meta, PeerId::new(NodeId(3), 0).0, to),
        5 => msg_snapshot(meta, from, PeerId::new(NodeId(3), 0).0),
        6 => {
            match u.int_in_range(0u8..=2)? {
                0 => lie.position.index = u.arbitrary()?,
                1 => lie.position.term = u.arbitrary()?,
                _ => lie.conf_state.voters = vec![1, 3, 4],
            }
            msg_snapshot(&lie, from, to)
        }
        _ => return Ok(u.arbitrary::<&[u8]>()?.to_vec()),
    };
    Ok(message.write_to_bytes().unwrap())
}

fn chunk(u: &mut Unstructured, fixture: &Fixture) -> Result<SnapshotChunk> {
    let file = &fixture.file;
    let chunks = file.len().div_ceil(SNAPSHOT_CHUNK_BYTES) as u64;
    let offset = match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        _ => u.int_in_range(0..=chunks)? * SNAPSHOT_CHUNK_BYTES as u64,
    };
    let mut data = match usize::try_from(offset).ok().filter(|&o| o < file.len()) {
        Some(start) => file[start..(start + SNAPSHOT_CHUNK_BYTES).min(file.len())].to_vec(),
        None => u.arbitrary::<&[u8]>()?.to_vec(),
    };
    match u.int_in_range(0u8..=7)? {
        0 if !data.is_empty() => {
            let at = u.choose_index(data.len())?;
            data[at] ^= u.int_in_range(1..=255)?;
        }
        1 => data.truncate(u.arbitrary::<usize>()? % (data.len() + 1)),
        _ => {}
    }
    let crc32c = if u.ratio(1, 8)? { u.arbitrary()? } else { crc32c::crc32c(&data) };
    let size_bytes = if u.ratio(1, 8)? { u.arbitrary()? } else { file.len() as u64 };
    let mut position = fixture.meta.position;
    if u.ratio(1, 8)? {
        position.index = u.arbitrary()?;
    }
    Ok(SnapshotChunk {
        transfer: *u.choose(&[7, 7, 7, 8])?,
        position,
        size_bytes,
        offset,
        data,
        crc32c,
        raft_message: raft_message(u, &fixture.meta)?,
    })
}

/// What the receiver did in one step for `from`: answers only to it, and a snapshot installed
/// only whole and true.
fn verify(events: &TransferEvents, from: NodeId, disk: &Arc<dyn Disk>, files: &SnapshotStore, fixture: &Fixture) {
    assert!(events.finished.is_empty(), "a receiver has no transfer of its own to finish");
    assert!(events.send.iter().all(|e| e.to == from && e.from == RECEIVER), "answers go to the sender only");
    if let Some(installed) = &events.installed {
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            eprintln!("installed from {from}");
        }
        assert_eq!(installed.meta, fixture.meta, "only the real snapshot installs");
        assert_eq!(files.path(installed.meta.position), fixture.path, "installed where the replica keeps it");
        assert_eq!(check_file(disk, &fixture.path).unwrap(), fixture.meta);
        let metadata = installed.message.get_snapshot().get_metadata();
        assert_eq!((metadata.index, metadata.term), (fixture.meta.position.index, fixture.meta.position.term));
        assert_eq!(ConfState::from(metadata.get_conf_state()), fixture.meta.conf_state);
        assert_eq!(PeerId(installed.message.from).node(), from, "the sender is the one authenticated");
        assert_eq!(PeerId(installed.message.to).node(), RECEIVER);
    }
}

fn run(u: &mut Unstructured) -> Result<()> {
    let fixture = fixture();
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(2));
    let files = SnapshotStore::new(disk.clone(), "default", PARTITION);
    files.create_dir().unwrap();
    let mut receiver = Transfers::new(PARTITION, RECEIVER, files.clone(), Arc::new(NodeMetrics::default()), 2, 1 << 30);
    // A received file's check runs off the worker in a node: here it finishes some steps
    // later, with chunks, acknowledgements and ticks arriving meanwhile.
    let mut checking: Option<Box<PendingCheck>> = None;
    for step in 0..STEPS_MAX {
        if checking.is_some() && (step + 1 == STEPS_MAX || u.ratio(1, 3)?) {
            let check = checking.take().expect("present");
            let sender = check.sender();
            let mut events = TransferEvents::default();
            receiver.checked(check.run(), &mut events);
            assert!(events.check.is_none(), "a finished check asks for no other");
            verify(&events, sender, &disk, &files, fixture);
        }
        let mut events = TransferEvents::default();
        let from = *u.choose(&[SENDER, SENDER, SENDER, NodeId(3)])?;
        match u.int_in_range(0u8..=9)? {
            0 => receiver.tick(&mut events),
            1 => {
                let message = SnapshotMessage::Ack { transfer: u.arbitrary()?, next_offset: u.arbitrary()? };
                receiver.handle(Instant::ZERO, from, message, &mut events);
            }
            2 => {
                let message = SnapshotMessage::Refuse { transfer: u.arbitrary()?, reason: u.arbitrary()? };
                receiver.handle(Instant::ZERO, from, message, &mut events);
            }
            _ => receiver.handle(Instant::ZERO, from, SnapshotMessage::Chunk(chunk(u, fixture)?), &mut events),
        }
        if let Some(check) = events.check.take() {
            assert!(checking.is_none(), "one received file is checked at a time");
            assert_eq!(check.sender(), from, "the file checked is the sender's");
            checking = Some(check);
        }
        verify(&events, from, &disk, &files, fixture);
    }
    Ok(())
}

fuzz_target!(|bytes: &[u8]| {
    let _ = run(&mut Unstructured::new(bytes));
});
