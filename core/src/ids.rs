//! Identifiers shared by every layer.

use serde::{Deserialize, Serialize};
use std::fmt;

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
    /// A cohort process. Also the Raft peer id of every replica it hosts: a node hosts at most
    /// one replica of a partition.
    NodeId
);
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
