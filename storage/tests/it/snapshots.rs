//! Snapshot files and snapshot transfers (cohort-core's `snapshot`) on the disks of this
//! crate: a real file system for damaged files, the crash-faithful `SimDisk` for crashes in
//! the middle of a transfer or an install. A snapshot holds a partition's rows exported from a
//! store; a received one is checked by importing it into a fresh store.

use cohort_core::env::{Disk, Envelope, Instant, Payload};
use cohort_core::ids::{NodeId, PartitionId, PeerId};
use cohort_core::metrics::NodeMetrics;
use cohort_core::persist::{LogPosition, SnapshotMeta};
use cohort_core::snapshot::{check_file, AuthorityDir, SnapshotMessage, SnapshotStore, TransferEvents, Transfers};
use cohort_core::state_machine::Digest;
use cohort_core::store::{self, Commit, DedupLimits, Rows as _, Store};
use cohort_storage::{FsDisk, SimDisk};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::VecDeque;
use std::path::Path;
use std::sync::Arc;

const PARTITION: PartitionId = PartitionId(9);
const SENDER: NodeId = NodeId(1);
const RECEIVER: NodeId = NodeId(2);

/// A partition's state of about `blobs` × 64 KiB in a store: a repository holding that many
/// random blobs.
fn state(blobs: u64, seed: u64) -> Store {
    cohort_core::testing::partition_state(PARTITION, blobs, 64 * 1024, seed)
}

fn digest(store: &Store) -> Digest {
    store::check::digest(&store.read().unwrap(), PARTITION).unwrap()
}

fn meta_of(store: &Store) -> SnapshotMeta {
    let record = store.read().unwrap().partition(PARTITION).unwrap().unwrap();
    SnapshotMeta { position: record.applied, conf_state: record.conf_state }
}

fn save(files: &SnapshotStore, state: &Store) -> SnapshotMeta {
    let meta = meta_of(state);
    let rows = state.read().unwrap();
    files.save(&meta, |out| store::snapshot::export(&rows, PARTITION, out)).unwrap();
    meta
}

/// Checks the snapshot file at `position` whole and imports it into a fresh store; returns the
/// digest of what it holds.
fn load(files: &SnapshotStore, disk: &Arc<dyn Disk>, position: LogPosition) -> Result<Digest, String> {
    let meta = check_file(disk, &files.path(position)).map_err(|e| e.to_string())?;
    assert_eq!(meta.position, position);
    let mut rows_reader = files.open_rows(position).map_err(|e| e.to_string())?;
    let fresh = Store::in_memory();
    fresh
        .write(Commit::Durable, |rows| {
            store::snapshot::import(rows, PARTITION, position.index, &mut rows_reader, &DedupLimits::DEFAULT)
                .map(|_| ())
                .map_err(|e| store::StoreError::Corrupt { reason: e.to_string() })
        })
        .map_err(|e| e.to_string())?;
    Ok(digest(&fresh))
}

fn msg_snapshot(meta: &SnapshotMeta) -> raft::eraftpb::Message {
    let mut message = raft::eraftpb::Message::default();
    message.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
    message.from = SENDER.0;
    message.to = RECEIVER.0;
    message.term = meta.position.term;
    let metadata = message.mut_snapshot().mut_metadata();
    metadata.index = meta.position.index;
    metadata.term = meta.position.term;
    metadata.set_conf_state((&meta.conf_state).into());
    message
}

fn transfers(disk: Arc<dyn Disk>, node: NodeId) -> Transfers {
    let store = SnapshotStore::new(disk, "default", PARTITION);
    Transfers::new(PARTITION, node, store, Arc::new(NodeMetrics::default()), node.0, 1 << 30)
}

fn snapshot_message(envelope: Envelope) -> SnapshotMessage {
    match envelope.payload {
        Payload::Snapshot(message) => message,
        Payload::Raft(_) | Payload::NodeHeartbeat(_) => panic!("transfers send only snapshot messages"),
    }
}

#[test]
fn a_saved_snapshot_loads_back_and_a_damaged_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(dir.path()).unwrap());
    let store = SnapshotStore::new(disk.clone(), "default", PARTITION);
    let state = state(3, 1);
    let meta = save(&store, &state);
    assert_eq!(check_file(&disk, &store.path(meta.position)).unwrap(), meta);
    assert_eq!(load(&store, &disk, meta.position).unwrap(), digest(&state));
    assert!(dir.path().join("partitions/default/9").is_dir(), "the replica's files live under its authority");

    let path = dir.path().join(store.path(meta.position));
    let good = std::fs::read(&path).unwrap();
    for offset in [0, 10, good.len() / 2, good.len() - 3] {
        let mut bad = good.clone();
        bad[offset] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        assert!(check_file(&disk, &store.path(meta.position)).is_err(), "a flipped byte at {offset} is caught");
    }
    std::fs::write(&path, &good[..good.len() - 100]).unwrap();
    assert!(check_file(&disk, &store.path(meta.position)).is_err(), "a cut file is caught");
}

/// Runs a transfer over a network that loses, duplicates and reorders chunks; returns the
/// installed snapshot, the most chunks one acknowledgement released, and what the sender
/// reported.
fn transfer_through(
    sender: &mut Transfers,
    receiver: &mut Transfers,
    meta: &SnapshotMeta,
    rng: &mut StdRng,
    loss: f64,
) -> (Option<cohort_core::snapshot::Installed>, usize, Vec<(NodeId, bool)>) {
    let now = Instant::ZERO;
    let mut events = TransferEvents::default();
    sender.start(now, RECEIVER, &msg_snapshot(meta), &mut events);
    let mut network: VecDeque<Envelope> = events.send.drain(..).collect();
    let (mut installed, mut in_flight_max, mut finished) = (None, 0, events.finished);
    for round in 0..100_000 {
        if !finished.is_empty() {
            break;
        }
        let Some(envelope) = (if rng.gen_bool(0.2) { network.pop_back() } else { network.pop_front() }) else {
            // Nothing in flight: time passes.
            let mut events = TransferEvents::default();
            sender.tick(&mut events);
            receiver.tick(&mut events);
            network.extend(events.send);
            finished.extend(events.finished);
            continue;
        };
        if rng.gen_bool(loss) {
            continue;
        }
        if rng.gen_bool(0.05) {
            network.push_back(envelope.clone());
        }
        let mut events = TransferEvents::default();
        let (to, from) = (envelope.to, envelope.from);
        let target = if to == RECEIVER { &mut *receiver } else { &mut *sender };
        target.handle(now, from, snapshot_message(envelope), &mut events);
        target.check_now(&mut events);
        if to == SENDER {
            // What one acknowledgement lets the sender put in flight.
            in_flight_max = in_flight_max.max(events.send.len());
        }
        if round % 7 == 0 {
            sender.tick(&mut events);
        }
        network.extend(events.send);
        finished.extend(events.finished);
        if let Some(done) = events.installed {
            assert!(installed.is_none(), "installed once");
            installed = Some(*done);
        }
    }
    (installed, in_flight_max, finished)
}

/// Delivers every message, in order and without loss, until none is left; returns what the
/// receiver installed.
fn deliver_in_order(
    sender: &mut Transfers,
    receiver: &mut Transfers,
    mut network: VecDeque<Envelope>,
) -> Option<cohort_core::snapshot::Installed> {
    let mut installed = None;
    while let Some(envelope) = network.pop_front() {
        let mut out = TransferEvents::default();
        let (to, from) = (envelope.to, envelope.from);
        let target = if to == RECEIVER { &mut *receiver } else { &mut *sender };
        target.handle(Instant::ZERO, from, snapshot_message(envelope), &mut out);
        target.check_now(&mut out);
        network.extend(out.send);
        installed = installed.or(out.installed.map(|boxed| *boxed));
    }
    installed
}

#[test]
fn a_snapshot_crosses_a_lossy_network_whole_with_a_bounded_window() {
    let sender_disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let receiver_disk: Arc<dyn Disk> = Arc::new(SimDisk::new(2));
    let state = state(40, 2); // about 2.6 MiB: ten or so chunks
    let mut sender = transfers(sender_disk, SENDER);
    let mut receiver = transfers(receiver_disk.clone(), RECEIVER);
    let meta = save(sender.store(), &state);
    let mut rng = StdRng::seed_from_u64(3);
    let (installed, in_flight_max, finished) = transfer_through(&mut sender, &mut receiver, &meta, &mut rng, 0.2);
    assert_eq!(finished, vec![(RECEIVER, true)], "the sender saw the transfer complete");
    let installed = installed.expect("the receiver installed the snapshot");
    assert_eq!(installed.meta, meta);
    assert_eq!(installed.message.get_snapshot().get_metadata().index, meta.position.index);
    let window = cohort_core::limits::SNAPSHOT_WINDOW_CHUNKS as usize;
    assert!(in_flight_max <= window, "one acknowledgement released {in_flight_max} chunks, window {window}");
    // The received file is the receiver's own, whole: it imports to the sender's state.
    let store = SnapshotStore::new(receiver_disk.clone(), "default", PARTITION);
    assert_eq!(load(&store, &receiver_disk, meta.position).unwrap(), digest(&state));
}

/// A transfer whose Raft message lies about the file (another membership) or about who sends
/// it is refused whole: nothing installed, no file left, and the sender told.
#[test]
fn a_transfer_whose_raft_message_lies_is_refused() {
    let lies: [fn(&mut raft::eraftpb::Message); 2] = [
        |message| message.mut_snapshot().mut_metadata().mut_conf_state().voters.push(99),
        |message| message.from = RECEIVER.0 + 40,
    ];
    for (seed, lie) in lies.into_iter().enumerate() {
        let receiver_disk: Arc<dyn Disk> = Arc::new(SimDisk::new(10 + seed as u64));
        let mut sender = transfers(Arc::new(SimDisk::new(20 + seed as u64)), SENDER);
        let mut receiver = transfers(receiver_disk.clone(), RECEIVER);
        let meta = save(sender.store(), &state(4, 2));
        let mut message = msg_snapshot(&meta);
        lie(&mut message);
        let mut events = TransferEvents::default();
        sender.start(Instant::ZERO, RECEIVER, &message, &mut events);
        let mut network: VecDeque<Envelope> = events.send.into();
        let mut finished = Vec::new();
        let mut installed = false;
        while let Some(envelope) = network.pop_front() {
            let mut out = TransferEvents::default();
            let (to, from) = (envelope.to, envelope.from);
            let target = if to == RECEIVER { &mut receiver } else { &mut sender };
            target.handle(Instant::ZERO, from, snapshot_message(envelope), &mut out);
            target.check_now(&mut out);
            network.extend(out.send);
            finished.extend(out.finished);
            installed |= out.installed.is_some();
        }
        assert!(!installed, "lie {seed}: a lying transfer is not installed");
        assert_eq!(finished, vec![(RECEIVER, false)], "lie {seed}: the sender learns it failed");
        let store = SnapshotStore::new(receiver_disk.clone(), "default", PARTITION);
        assert!(load(&store, &receiver_disk, meta.position).is_err(), "lie {seed}: no snapshot file is kept");
    }
}

/// A snapshot larger than the receiver's configured limit, or than its disk can take while
/// keeping its reserve, is refused at its first chunk: the sender learns it failed, and the
/// receiver wrote nothing.
#[test]
fn a_transfer_too_large_for_the_limit_or_the_free_disk_is_refused_at_its_first_chunk() {
    use cohort_core::limits::SNAPSHOT_DISK_RESERVE_BYTES;
    let meta_and_size = |sender: &Transfers| {
        let meta = save(sender.store(), &state(4, 2));
        let size = sender.store().size(meta.position).unwrap();
        (meta, size)
    };
    for case in ["limit", "disk"] {
        let receiver_disk = SimDisk::new(30);
        let mut sender = transfers(Arc::new(SimDisk::new(31)), SENDER);
        let (meta, size) = meta_and_size(&sender);
        let limit = if case == "limit" { size - 1 } else { 1 << 30 };
        if case == "disk" {
            receiver_disk.set_available_bytes(size + SNAPSHOT_DISK_RESERVE_BYTES - 1);
        }
        let receiver_disk: Arc<dyn Disk> = Arc::new(receiver_disk);
        let files = SnapshotStore::new(receiver_disk.clone(), "default", PARTITION);
        let mut receiver = Transfers::new(PARTITION, RECEIVER, files, Arc::new(NodeMetrics::default()), 2, limit);
        let mut events = TransferEvents::default();
        sender.start(Instant::ZERO, RECEIVER, &msg_snapshot(&meta), &mut events);
        let first = events.send.remove(0);
        let mut out = TransferEvents::default();
        receiver.handle(Instant::ZERO, SENDER, snapshot_message(first), &mut out);
        receiver.check_now(&mut out);
        let refusal = match out.send.as_slice() {
            [envelope] => snapshot_message(envelope.clone()),
            other => panic!("{case}: one answer expected, got {other:?}"),
        };
        let SnapshotMessage::Refuse { reason, .. } = &refusal else { panic!("{case}: refused, not {refusal:?}") };
        assert!(reason.contains("refused"), "{case}: {reason}");
        assert!(receiver.is_idle(), "{case}: nothing is being received");
        assert!(receiver_disk.list(Path::new("partitions/default/9")).unwrap().is_empty(), "{case}: no file");
        let mut finished = TransferEvents::default();
        sender.handle(Instant::ZERO, RECEIVER, refusal, &mut finished);
        sender.check_now(&mut finished);
        assert_eq!(finished.finished, vec![(RECEIVER, false)], "{case}: the sender learns it failed");
    }
    // With room, the same transfer goes through.
    let mut sender = transfers(Arc::new(SimDisk::new(32)), SENDER);
    let (meta, size) = meta_and_size(&sender);
    let receiver_disk = SimDisk::new(33);
    receiver_disk.set_available_bytes(size + SNAPSHOT_DISK_RESERVE_BYTES);
    let mut receiver = transfers(Arc::new(receiver_disk), RECEIVER);
    let mut events = TransferEvents::default();
    sender.start(Instant::ZERO, RECEIVER, &msg_snapshot(&meta), &mut events);
    assert!(deliver_in_order(&mut sender, &mut receiver, events.send.into()).is_some(), "installed");
}

#[test]
fn a_transfer_to_an_unreachable_receiver_fails_after_its_retries() {
    let mut sender = transfers(Arc::new(SimDisk::new(4)), SENDER);
    let meta = save(sender.store(), &state(2, 4));
    let mut events = TransferEvents::default();
    sender.start(Instant::ZERO, RECEIVER, &msg_snapshot(&meta), &mut events);
    assert!(!events.send.is_empty());
    let mut finished = Vec::new();
    for _ in 0..1000 {
        let mut events = TransferEvents::default();
        sender.tick(&mut events);
        finished.extend(events.finished);
    }
    assert_eq!(finished, vec![(RECEIVER, false)], "raft is told the snapshot failed, once");
    assert_eq!(sender.outgoing_count(), 0);
}

#[test]
fn a_receiver_that_crashes_mid_transfer_keeps_its_previous_state_and_the_transfer_restarts() {
    let receiver_disk = Arc::new(SimDisk::new(5));
    let state = state(30, 5);
    let mut sender = transfers(Arc::new(SimDisk::new(6)), SENDER);
    let meta = save(sender.store(), &state);
    // The receiver already holds an older snapshot, made current by its log.
    let older = self::state(1, 7);
    let receiver_store = SnapshotStore::new(receiver_disk.clone(), "default", PARTITION);
    let older_meta = save(&receiver_store, &older);

    let mut receiver = transfers(receiver_disk.clone(), RECEIVER);
    let mut events = TransferEvents::default();
    sender.start(Instant::ZERO, RECEIVER, &msg_snapshot(&meta), &mut events);
    // Half the window arrives, then the receiver's machine loses power.
    for envelope in events.send.drain(..).take(4) {
        let mut out = TransferEvents::default();
        receiver.handle(Instant::ZERO, SENDER, snapshot_message(envelope), &mut out);
        receiver.check_now(&mut out);
        assert!(out.installed.is_none());
    }
    receiver_disk.crash();
    drop(receiver);
    let names = receiver_disk.list(&receiver_store.dir()).unwrap();
    assert!(!names.iter().any(|n| n == &format!("snap-{}-{}", meta.position.index, meta.position.term)));
    receiver_store.retain_only(Some(older_meta.position)).unwrap();
    let receiver_dyn: Arc<dyn Disk> = receiver_disk.clone();
    assert_eq!(
        load(&receiver_store, &receiver_dyn, older_meta.position).unwrap(),
        digest(&older),
        "the previous snapshot survives"
    );

    // The restarted receiver asks the sender to start over, and the transfer completes.
    let mut receiver = transfers(receiver_disk, RECEIVER);
    let mut network: VecDeque<Envelope> = VecDeque::new();
    let mut events = TransferEvents::default();
    sender.tick(&mut events); // nothing yet
    for _ in 0..cohort_core::limits::SNAPSHOT_ACK_TIMEOUT_TICKS {
        sender.tick(&mut events);
    }
    network.extend(events.send);
    let installed = deliver_in_order(&mut sender, &mut receiver, network).expect("the restarted transfer completes");
    assert_eq!(load(&receiver_store, &receiver_dyn, installed.meta.position).unwrap(), digest(&state));
}

#[test]
fn power_loss_at_any_point_of_an_install_leaves_no_file_or_the_whole_file() {
    let state = state(12, 9);
    let source = transfers(Arc::new(SimDisk::new(10)), SENDER);
    let meta = save(source.store(), &state);
    let final_name = format!("snap-{}-{}", meta.position.index, meta.position.term);
    let mut outcomes = (0, 0);
    for ops in 0..40 {
        let disk = Arc::new(SimDisk::new(11 + ops));
        let mut sender = transfers(Arc::new(SimDisk::new(10)), SENDER);
        save(sender.store(), &state);
        let mut receiver = transfers(disk.clone(), RECEIVER);
        disk.set_power_loss_after_ops(Some(ops));
        let mut network: VecDeque<Envelope> = VecDeque::new();
        let mut events = TransferEvents::default();
        sender.start(Instant::ZERO, RECEIVER, &msg_snapshot(&meta), &mut events);
        network.extend(events.send);
        deliver_in_order(&mut sender, &mut receiver, network);
        disk.crash();
        let store = SnapshotStore::new(disk.clone(), "default", PARTITION);
        if disk.list(&store.dir()).unwrap().contains(&final_name) {
            let disk_dyn: Arc<dyn Disk> = disk.clone();
            let loaded = load(&store, &disk_dyn, meta.position).expect("a file under its final name is whole");
            assert_eq!(loaded, digest(&state));
            outcomes.1 += 1;
        } else {
            outcomes.0 += 1;
        }
    }
    assert!(outcomes.0 > 0 && outcomes.1 > 0, "both outcomes were exercised: {outcomes:?}");
}

#[test]
fn arbitrary_bytes_in_a_snapshot_file_are_an_error_never_a_panic() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(12));
    let store = SnapshotStore::new(disk.clone(), "default", PARTITION);
    store.create_dir().unwrap();
    let position = LogPosition { index: 5, term: 1 };
    let path = store.path(position);
    let good = {
        let other = SnapshotStore::new(Arc::new(SimDisk::new(13)), "default", PARTITION);
        let state = state(1, 13);
        let meta = save(&other, &state);
        (other, meta)
    };
    let good_bytes = good.0.read_chunk(good.1.position, 0, 1 << 20).unwrap();
    let mut rng = StdRng::seed_from_u64(14);
    for round in 0..400 {
        let bytes: Vec<u8> = match round % 3 {
            // Noise, sometimes behind the magic.
            0 => (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect(),
            1 => b"COHSNAP2".iter().copied().chain((0..rng.gen_range(0..200)).map(|_| rng.gen())).collect(),
            // A real file with bytes flipped or cut.
            _ => {
                let mut bytes = good_bytes.clone();
                let at = rng.gen_range(0..bytes.len());
                if rng.gen_bool(0.5) {
                    bytes[at] ^= 1 << rng.gen_range(0..8);
                } else {
                    bytes.truncate(at);
                }
                bytes
            }
        };
        let _ = disk.remove_file(&path);
        let mut file = disk.open_append(&path).unwrap();
        file.append(&bytes).unwrap();
        assert!(load(&store, &disk, position).is_err(), "round {round}: bad bytes are an error");
    }
}

#[test]
fn a_new_replica_syncs_its_authoritys_parents_once_per_process_and_its_peer_id_survives_power_loss() {
    let sim = Arc::new(SimDisk::new(7));
    let disk: Arc<dyn Disk> = sim.clone();
    let authority = AuthorityDir::new("default");
    let replica = |partition| SnapshotStore::in_authority(disk.clone(), authority.clone(), PartitionId(partition));
    replica(1).write_peer(PeerId(1)).unwrap();
    let before = sim.stats().dir_syncs;
    replica(2).write_peer(PeerId(2)).unwrap();
    assert_eq!(
        sim.stats().dir_syncs - before,
        2,
        "the second replica syncs the authority's directory (its own entry) and its own (the peer file)"
    );
    // A new process knows nothing of what the last one synced: it syncs the parents again.
    let before = sim.stats().dir_syncs;
    SnapshotStore::new(disk.clone(), "default", PartitionId(3)).write_peer(PeerId(3)).unwrap();
    assert_eq!(sim.stats().dir_syncs - before, 4);

    sim.crash();
    for partition in 1..=3 {
        let files = SnapshotStore::new(disk.clone(), "default", PartitionId(partition));
        assert_eq!(files.read_peer().unwrap(), Some(PeerId(partition)), "replica {partition}'s peer id is durable");
    }
}

#[test]
fn a_replica_created_where_a_stopped_process_left_unsynced_directories_survives_power_loss() {
    let sim = Arc::new(SimDisk::new(8));
    let disk: Arc<dyn Disk> = sim.clone();
    // A process made the authority's directories and stopped before syncing them: they are
    // there, and not durable.
    disk.create_dir_all(Path::new("partitions/default/1")).unwrap();
    // The next process creates a replica there, then the power goes.
    let files = SnapshotStore::in_authority(disk.clone(), AuthorityDir::new("default"), PartitionId(2));
    files.write_peer(PeerId(2)).unwrap();
    sim.crash();
    let files = SnapshotStore::new(disk.clone(), "default", PartitionId(2));
    assert_eq!(files.read_peer().unwrap(), Some(PeerId(2)), "the replica's directory and peer id are durable");
}
