//! Node identity (cohort-core's `node::identity`) on the crash-faithful `SimDisk`: a data
//! directory keeps the instance id it was given at its first start, and a node admits each
//! peer only as the instance it first saw.

use cohort_core::env::{write_file_atomic, Disk};
use cohort_core::ids::NodeId;
use cohort_core::node::identity::{Identity, IdentityError, InstanceId, Origin, PeerInstances};
use cohort_storage::SimDisk;
use std::path::Path;
use std::sync::Arc;

#[test]
fn a_directory_keeps_its_identity_and_refuses_another_node() {
    let disk = SimDisk::new(1);
    let first = Identity::open_or_create(&disk, "c", NodeId(2), 0xabc, Origin::Bootstrap).unwrap();
    let again = Identity::open_or_create(&disk, "c", NodeId(2), 0xdef, Origin::Bootstrap).unwrap();
    assert_eq!(first, again, "the instance is chosen once");
    assert!(matches!(
        Identity::open_or_create(&disk, "c", NodeId(3), 1, Origin::Bootstrap),
        Err(IdentityError::WrongDirectory { node: NodeId(2), .. })
    ));
    assert!(matches!(
        Identity::open_or_create(&disk, "other", NodeId(2), 1, Origin::Bootstrap),
        Err(IdentityError::WrongDirectory { .. })
    ));
}

#[test]
fn a_peer_is_admitted_as_its_first_instance_only_and_that_is_remembered() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let peers = PeerInstances::open(disk.clone()).unwrap();
    peers.admit(NodeId(3), InstanceId(7)).unwrap();
    peers.admit(NodeId(3), InstanceId(7)).unwrap();
    peers.admit(NodeId(1), InstanceId(9)).unwrap();
    let reopened = PeerInstances::open(disk).unwrap();
    assert_eq!(reopened.remembered(NodeId(3)), Some(InstanceId(7)));
    assert!(matches!(
        reopened.admit(NodeId(3), InstanceId(8)),
        Err(IdentityError::Replaced { node: NodeId(3), remembered: InstanceId(7), presented: InstanceId(8) })
    ));
    reopened.admit(NodeId(1), InstanceId(9)).unwrap();
}

/// Replacing a node retires the instance remembered for it: that instance is refused for good
/// (even after a restart), and the next one the node presents is admitted like a first.
#[test]
fn a_retired_instance_is_refused_for_good_and_its_successor_admitted() {
    let disk: Arc<dyn Disk> = Arc::new(SimDisk::new(1));
    let peers = PeerInstances::open(disk.clone()).unwrap();
    peers.admit(NodeId(3), InstanceId(7)).unwrap();
    peers.admit(NodeId(2), InstanceId(5)).unwrap();
    assert!(!peers.was_replaced(NodeId(3)));
    assert_eq!(peers.retire(NodeId(3)).unwrap(), Some(InstanceId(7)));
    assert_eq!(peers.retire(NodeId(3)).unwrap(), None, "nothing left to retire");
    assert!(peers.was_replaced(NodeId(3)));
    assert!(matches!(peers.admit(NodeId(3), InstanceId(7)), Err(IdentityError::Retired { .. })));
    peers.admit(NodeId(3), InstanceId(8)).unwrap();
    let reopened = PeerInstances::open(disk).unwrap();
    assert_eq!(reopened.remembered(NodeId(3)), Some(InstanceId(8)));
    assert_eq!(reopened.remembered(NodeId(2)), Some(InstanceId(5)), "other peers are kept");
    assert!(matches!(reopened.admit(NodeId(3), InstanceId(7)), Err(IdentityError::Retired { .. })));
    assert!(matches!(reopened.admit(NodeId(3), InstanceId(9)), Err(IdentityError::Replaced { .. })));
    // Replaced again: both old instances stay refused.
    assert_eq!(reopened.retire(NodeId(3)).unwrap(), Some(InstanceId(8)));
    reopened.admit(NodeId(3), InstanceId(9)).unwrap();
    for old in [7, 8] {
        assert!(matches!(reopened.admit(NodeId(3), InstanceId(old)), Err(IdentityError::Retired { .. })));
    }
}

#[test]
fn a_directory_made_to_join_says_so_and_keeps_its_origin() {
    let disk = SimDisk::new(1);
    let joined = Identity::open_or_create(&disk, "c", NodeId(2), 0xabc, Origin::Join).unwrap();
    assert_eq!(joined.origin, Origin::Join);
    let again = Identity::open_or_create(&disk, "c", NodeId(2), 0xdef, Origin::Bootstrap).unwrap();
    assert_eq!(again, joined, "an existing directory keeps its origin");
    // A directory written before origins existed was its cluster's first.
    write_file_atomic(&disk, Path::new("identity"), b"cluster = c\nnode = 2\ninstance = ab\n").unwrap();
    assert_eq!(Identity::open_or_create(&disk, "c", NodeId(2), 1, Origin::Join).unwrap().origin, Origin::Bootstrap);
}

#[test]
fn damaged_identity_files_are_errors() {
    let disk = SimDisk::new(1);
    for bytes in [
        &b"node = 2\n"[..],
        b"cluster = c\nnode = x\ninstance = 1\n",
        b"\xff",
        b"node = 1\nnode = 2\n",
        b"cluster = c\nnode = 1\ninstance = 1\norigin = maybe\n",
    ] {
        write_file_atomic(&disk, Path::new("identity"), bytes).unwrap();
        assert!(matches!(
            Identity::open_or_create(&disk, "c", NodeId(1), 1, Origin::Bootstrap),
            Err(IdentityError::Corrupt { .. })
        ));
    }
}

/// Power lost at any step of a first start leaves either no identity (the start never
/// finished, and nothing else was written after it) or the whole one, never a damaged file.
#[test]
fn power_loss_while_creating_the_identity_leaves_none_or_all_of_it() {
    for ops in 0..12 {
        let disk = SimDisk::new(ops);
        disk.set_power_loss_after_ops(Some(ops));
        let created = Identity::open_or_create(&disk, "c", NodeId(1), 5, Origin::Bootstrap);
        disk.crash();
        let reopened = Identity::open_or_create(&disk, "c", NodeId(1), 6, Origin::Bootstrap).unwrap();
        if created.is_ok() {
            assert_eq!(reopened.instance, InstanceId(5), "a created identity is durable (power lost after op {ops})");
        } else {
            assert!(reopened.instance == InstanceId(5) || reopened.instance == InstanceId(6));
        }
    }
}

/// The directory peer an operator names for a node made to join survives a crash once saved,
/// the last one named counts, and a damaged file is an error, not a peer.
#[test]
fn the_named_directory_peer_survives_a_crash_and_a_damaged_one_is_refused() {
    use cohort_core::ids::PeerId;
    use cohort_core::node::identity::{load_directory_peer, save_directory_peer};
    let disk = SimDisk::new(3);
    assert_eq!(load_directory_peer(&disk).unwrap(), None);
    save_directory_peer(&disk, PeerId::new(NodeId(3), 12)).unwrap();
    save_directory_peer(&disk, PeerId::new(NodeId(3), 40)).unwrap();
    disk.crash();
    assert_eq!(load_directory_peer(&disk).unwrap(), Some(PeerId::new(NodeId(3), 40)));
    write_file_atomic(&disk, Path::new("directory-peer"), b"peer = 3.40\n").unwrap();
    assert!(matches!(load_directory_peer(&disk), Err(IdentityError::Corrupt { .. })));
    write_file_atomic(&disk, Path::new("directory-peer"), b"# no peer\n").unwrap();
    assert!(matches!(load_directory_peer(&disk), Err(IdentityError::Corrupt { .. })));
}
