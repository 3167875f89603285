//! Identifiers shared by every layer.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, DefaultHasher};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// A cohort process. A node hosts at most one replica of a partition.
    NodeId
);

/// A replica's id in its partition's Raft group: the node hosting it and the incarnation of
/// that node's membership. A node removed from a partition and added back is a new Raft peer,
/// so nothing its old replica said (acknowledgements still in flight, a replica not yet
/// deleted) can count for the new, empty one. Initial members have incarnation 0, so their
/// peer id is their node id; a member added later takes the log index of the change that
/// added it, which no other change shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PeerId(pub u64);

impl PeerId {
    /// Node ids fit in these low bits (the configuration refuses larger ones).
    pub const NODE_BITS: u32 = 16;
    pub const NODE_ID_MAX: u64 = (1 << Self::NODE_BITS) - 1;

    pub fn new(node: NodeId, incarnation: u64) -> PeerId {
        assert!(node.0 <= Self::NODE_ID_MAX, "node id {node} exceeds {}", Self::NODE_ID_MAX);
        assert!(incarnation < 1 << (64 - Self::NODE_BITS), "incarnation {incarnation} too large");
        PeerId(incarnation << Self::NODE_BITS | node.0)
    }

    pub fn node(self) -> NodeId {
        NodeId(self.0 & Self::NODE_ID_MAX)
    }

    pub fn incarnation(self) -> u64 {
        self.0 >> Self::NODE_BITS
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node(), self.incarnation())
    }
}
id_type!(
    /// A Raft group holding one or more repositories; unique in the cluster.
    PartitionId
);
id_type!(
    /// The writer of a request; with a sequence number it makes writes idempotent.
    ClientId
);
id_type!(
    /// Names one in-flight request inside one node, so a partition's answer finds its caller.
    RequestId
);

/// The partition that holds the directory (repository -> partition, partition -> members). It
/// exists on every node from the start.
pub const DIRECTORY: PartitionId = PartitionId(0);

/// A record for every partition a node hosts (the router's replicas, the log's states), in
/// one table: a single allocation that grows by doubling and, once it is 1 MiB or more, is
/// mapped on its own, apart from small allocations (`src/memory.rs`).
///
/// Not a `BTreeMap`, nor boxed values: each of their nodes and boxes is a small allocation
/// made while a restart's recovery, or a replica's load and unload, allocate and free much
/// more around it, and every one that stays keeps its page of the heap resident. A node
/// restarted with 20,000 replicas, all unloaded, held 2.3 KB of RSS per replica for 0.4 KB
/// of records: its heaps were 85 MiB free in 25,000 pieces between them (`malloc_info`).
/// With a table each for the router and the log, 0.9 KB (`cargo bench --bench idle`).
///
/// The hasher has fixed keys, so the order of iteration depends only on what was inserted
/// and removed, and runs replay alike; still, wherever the order reaches output, sort first
/// ([`sorted_entries`]).
pub type PartitionMap<V> = HashMap<PartitionId, V, BuildHasherDefault<DefaultHasher>>;

/// The most room one entry of a `PartitionMap<V>` takes while the map grows: key, value and
/// control byte, with the table's spare room (it doubles past 7/8 full, so a table that has
/// only grown is at least 7/16 full; removals leave room that it keeps).
pub const fn partition_map_entry_bytes_max<V>() -> usize {
    (std::mem::size_of::<PartitionId>() + std::mem::size_of::<V>() + 1) * 16 / 7
}

/// What `map` holds, in partition order.
pub fn sorted_entries<V>(map: &PartitionMap<V>) -> Vec<(PartitionId, &V)> {
    let mut entries: Vec<(PartitionId, &V)> = map.iter().map(|(&id, value)| (id, value)).collect();
    entries.sort_unstable_by_key(|&(id, _)| id);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_ids_keep_node_and_incarnation_apart() {
        let peer = PeerId::new(NodeId(7), 1234);
        assert_eq!((peer.node(), peer.incarnation()), (NodeId(7), 1234));
        assert_eq!(PeerId::new(NodeId(7), 0).0, 7, "initial members' peer id is their node id");
        assert_ne!(PeerId::new(NodeId(7), 5), PeerId::new(NodeId(7), 6));
    }
}
