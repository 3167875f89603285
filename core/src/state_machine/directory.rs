//! The cluster directory's vocabulary (partition 0 holds the directory, see
//! `crate::store`): a partition's authority and members, and the checks on member lists.
//! Partition ids are allocated from 1 and never reused; partition 0 is the directory itself,
//! whose members are the whole cluster and are not recorded.

use super::Rejection;
use crate::ids::{NodeId, PeerId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

/// Partitions the directory records.
pub const DIRECTORY_PARTITIONS_MAX: usize = 1_000_000;
/// Repositories the directory routes, all partitions together.
pub const DIRECTORY_ROUTES_MAX: usize = 4_000_000;
/// Partitions in one page of a directory listing; a page also ends once it holds
/// `PAGE_ROUTES_MAX` repositories (after at least one partition).
pub const PARTITIONS_PAGE_MAX: usize = 1_000;
pub const PAGE_ROUTES_MAX: usize = 8_192;
/// Repositories in one page of a listing of routes.
pub const ROUTES_PAGE_MAX: usize = 10_000;
/// Voters of one partition.
pub const PARTITION_VOTERS_MAX: usize = 7;
/// Learners of one partition.
pub const PARTITION_LEARNERS_MAX: usize = 16;

// Every allocation routes one repository, so the route limit must not be reached first.
const _: () = assert!(DIRECTORY_ROUTES_MAX >= DIRECTORY_PARTITIONS_MAX);
const _: () = assert!(PARTITION_VOTERS_MAX >= 1);

/// One partition as the directory knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// The storage name the partition was created on.
    pub authority: String,
    /// Sorted, distinct, never empty.
    pub voters: Vec<NodeId>,
    /// Sorted, distinct, disjoint from `voters`.
    pub learners: Vec<NodeId>,
    /// The Raft peer id of every member, sorted; one per node of `voters` and `learners`
    /// (see [`PeerId`]).
    pub peers: Vec<PeerId>,
    /// The partition's log index through which its leader knew these members when it reported
    /// them (0: as allocated). A report with a lower one is older than what is recorded and is
    /// ignored: a deposed leader's late report cannot undo a newer membership.
    pub members_as_of: u64,
}

impl PartitionInfo {
    /// The peer id of `node`'s replica, if `node` is a member.
    pub fn peer_of(&self, node: NodeId) -> Option<PeerId> {
        self.peers.iter().copied().find(|p| p.node() == node)
    }

    pub fn is_member(&self, node: NodeId) -> bool {
        self.peer_of(node).is_some()
    }
}

/// Checks a partition's membership as proposed: 1 to `PARTITION_VOTERS_MAX` voters, at most
/// `PARTITION_LEARNERS_MAX` learners, no node listed twice (in either list or in both), and no
/// node 0 (raft's invalid peer id; a node id is also its raft peer id).
pub fn check_members(voters: &[NodeId], learners: &[NodeId]) -> Result<(), Rejection> {
    let invalid = |reason: String| Err(Rejection::InvalidMembers { reason });
    if voters.is_empty() {
        return invalid("no voters".to_string());
    }
    if voters.len() > PARTITION_VOTERS_MAX {
        return invalid(format!("{} voters, more than {PARTITION_VOTERS_MAX}", voters.len()));
    }
    if learners.len() > PARTITION_LEARNERS_MAX {
        return invalid(format!("{} learners, more than {PARTITION_LEARNERS_MAX}", learners.len()));
    }
    // Bounded by the two limits above.
    let mut seen = BTreeSet::new();
    for node in voters.iter().chain(learners) {
        if node.0 == 0 || node.0 > PeerId::NODE_ID_MAX {
            return invalid(format!("node {node} is not a valid member (ids are 1..={})", PeerId::NODE_ID_MAX));
        }
        if !seen.insert(*node) {
            return invalid(format!("node {node} is listed twice"));
        }
    }
    Ok(())
}

/// Checks that `peers` names exactly the members, once each.
pub fn check_peers(voters: &[NodeId], learners: &[NodeId], peers: &[PeerId]) -> Result<(), Rejection> {
    let invalid = |reason: String| Err(Rejection::InvalidMembers { reason });
    if peers.len() != voters.len() + learners.len() {
        return invalid(format!("{} peer ids for {} members", peers.len(), voters.len() + learners.len()));
    }
    let members: BTreeSet<NodeId> = voters.iter().chain(learners).copied().collect();
    let peer_nodes: BTreeSet<NodeId> = peers.iter().map(|p| p.node()).collect();
    if members != peer_nodes {
        return invalid("peer ids do not name the members".into());
    }
    Ok(())
}

/// Node lists in command displays, cut after a few (an invalid command may list many).
pub(super) struct Nodes<'a>(pub &'a [NodeId]);

impl fmt::Display for Nodes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN_MAX: usize = PARTITION_VOTERS_MAX + 1;
        f.write_str("[")?;
        for (position, node) in self.0.iter().take(SHOWN_MAX).enumerate() {
            if position > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{node}")?;
        }
        if self.0.len() > SHOWN_MAX {
            write!(f, ", … {} in all", self.0.len())?;
        }
        f.write_str("]")
    }
}
