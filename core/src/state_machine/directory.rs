//! The cluster directory, held by partition 0: the partition each repository is routed to, and
//! each partition's authority (the storage it was created on) and members.
//!
//! Only the directory partition receives the directory operations; every other partition keeps
//! an empty directory. Partition ids are allocated from 1 and never reused; partition 0 is the
//! directory itself, whose members are the whole cluster and are not recorded here.
//!
//! Serialized as its three primary fields only; the per-partition route counts are derived on
//! decode (with every invariant checked), so a snapshot cannot hold an inconsistent count.

use super::{validate_storage_name, Rejection, RepoId, PARTITION_REPOSITORIES_MAX};
use crate::ids::{NodeId, PartitionId, PeerId};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Partitions the directory records.
pub const DIRECTORY_PARTITIONS_MAX: usize = 1_000_000;
/// Repositories the directory routes, all partitions together.
pub const DIRECTORY_ROUTES_MAX: usize = 4_000_000;
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

/// The routing table of the cluster. See the module doc.
///
/// Invariants: every route names a recorded partition; every recorded id is in
/// `1..next_partition`; member lists pass [`check_members`] and are sorted; `route_counts`
/// counts `routes` per partition (partitions without routes are absent from it).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DirectoryData")]
pub struct Directory {
    pub(super) routes: BTreeMap<RepoId, PartitionId>,
    pub(super) partitions: BTreeMap<PartitionId, PartitionInfo>,
    /// The id the next allocation takes.
    pub(super) next_partition: u64,
    /// Derived: repositories routed to each partition that has any.
    route_counts: BTreeMap<PartitionId, usize>,
}

/// The primary fields by reference, to encode without copying; encodes as [`DirectoryData`]
/// decodes.
#[derive(Serialize)]
struct DirectoryRef<'a> {
    routes: &'a BTreeMap<RepoId, PartitionId>,
    partitions: &'a BTreeMap<PartitionId, PartitionInfo>,
    next_partition: u64,
}

#[derive(Clone, Deserialize)]
struct DirectoryData {
    routes: BTreeMap<RepoId, PartitionId>,
    partitions: BTreeMap<PartitionId, PartitionInfo>,
    next_partition: u64,
}

impl Serialize for Directory {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DirectoryRef { routes: &self.routes, partitions: &self.partitions, next_partition: self.next_partition }
            .serialize(serializer)
    }
}

impl TryFrom<DirectoryData> for Directory {
    type Error = String;
    fn try_from(data: DirectoryData) -> Result<Directory, String> {
        Directory::rebuild(data)
    }
}

impl Default for Directory {
    fn default() -> Directory {
        Directory {
            routes: BTreeMap::new(),
            partitions: BTreeMap::new(),
            next_partition: 1,
            route_counts: BTreeMap::new(),
        }
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

/// `nodes` sorted; they were checked to be distinct.
fn sorted(nodes: &[NodeId]) -> Vec<NodeId> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    assert!(
        nodes.windows(2).all(|pair| pair[0] < pair[1]),
        "member lists are checked to be distinct before they are recorded"
    );
    nodes
}

impl Directory {
    /// The partition `repo` is routed to.
    pub fn route(&self, repo: &RepoId) -> Option<PartitionId> {
        self.routes.get(repo).copied()
    }

    pub fn partition(&self, partition: PartitionId) -> Option<&PartitionInfo> {
        self.partitions.get(&partition)
    }

    /// Every recorded partition, by increasing id.
    pub fn partitions(&self) -> impl Iterator<Item = (PartitionId, &PartitionInfo)> + '_ {
        self.partitions.iter().map(|(id, info)| (*id, info))
    }

    /// Every route, by repository.
    pub fn routes(&self) -> impl Iterator<Item = (&RepoId, PartitionId)> + '_ {
        self.routes.iter().map(|(repo, id)| (repo, *id))
    }

    /// The id the next allocation takes.
    pub fn next_partition(&self) -> PartitionId {
        PartitionId(self.next_partition)
    }

    /// Every partition by increasing id, with the repositories routed to it (sorted).
    pub(super) fn partitions_with_routes(&self) -> Vec<(PartitionId, PartitionInfo, Vec<RepoId>)> {
        let mut routed: BTreeMap<PartitionId, Vec<RepoId>> = BTreeMap::new();
        // In repository order, so each list comes out sorted.
        for (repo, partition) in &self.routes {
            routed.entry(*partition).or_default().push(repo.clone());
        }
        self.partitions
            .iter()
            .map(|(id, info)| {
                let repos = routed.remove(id).unwrap_or_default();
                (*id, info.clone(), repos)
            })
            .collect()
    }

    /// Allocates the next partition id for `repo` (created on `repo.storage` with `voters`) and
    /// routes `repo` to it. `voters` passed [`check_members`].
    pub(super) fn allocate_partition(&mut self, repo: &RepoId, voters: &[NodeId]) -> Result<PartitionId, Rejection> {
        self.check_unrouted(repo)?;
        let too_many = Rejection::TooManyPartitions { count_max: DIRECTORY_PARTITIONS_MAX as u64 };
        if self.partitions.len() >= DIRECTORY_PARTITIONS_MAX {
            return Err(too_many);
        }
        // Ids are never reused; running out of them is running out of partitions.
        let next = self.next_partition.checked_add(1).ok_or(too_many)?;
        self.check_route_room()?;

        let id = PartitionId(self.next_partition);
        self.next_partition = next;
        // Initial members are incarnation 0: their peer id is their node id.
        let peers = sorted(voters).iter().map(|&n| PeerId::new(n, 0)).collect();
        let info =
            PartitionInfo { authority: repo.storage.clone(), voters: sorted(voters), learners: Vec::new(), peers };
        let replaced = self.partitions.insert(id, info);
        assert!(replaced.is_none(), "partition {id} allocated twice");
        self.insert_route(repo, id);
        Ok(id)
    }

    /// Routes `repo` to an existing partition (a fork placed in its parent's partition).
    pub(super) fn route_repository(&mut self, repo: &RepoId, partition: PartitionId) -> Result<(), Rejection> {
        if !self.partitions.contains_key(&partition) {
            return Err(Rejection::PartitionNotFound { partition });
        }
        self.check_unrouted(repo)?;
        self.check_route_room()?;
        let routed = self.route_counts.get(&partition).copied().unwrap_or(0);
        if routed >= PARTITION_REPOSITORIES_MAX {
            return Err(Rejection::TooManyRepositories { count_max: PARTITION_REPOSITORIES_MAX as u64 });
        }
        self.insert_route(repo, partition);
        Ok(())
    }

    pub(super) fn unroute_repository(&mut self, repo: &RepoId) -> Result<(), Rejection> {
        let partition = self.routes.remove(repo).ok_or_else(|| Rejection::RepositoryNotFound { repo: repo.clone() })?;
        let count = self.route_counts.get_mut(&partition).expect("a routed partition is counted");
        assert!(*count >= 1, "partition {partition} counts no routes");
        *count -= 1;
        if *count == 0 {
            self.route_counts.remove(&partition);
        }
        Ok(())
    }

    /// Records a partition's new membership. The lists passed [`check_members`].
    pub(super) fn set_partition_members(
        &mut self,
        partition: PartitionId,
        voters: &[NodeId],
        learners: &[NodeId],
        peers: &[PeerId],
    ) -> Result<(), Rejection> {
        let info = self.partitions.get_mut(&partition).ok_or(Rejection::PartitionNotFound { partition })?;
        info.voters = sorted(voters);
        info.learners = sorted(learners);
        let mut peers = peers.to_vec();
        peers.sort_unstable();
        info.peers = peers;
        Ok(())
    }

    fn check_unrouted(&self, repo: &RepoId) -> Result<(), Rejection> {
        if self.routes.contains_key(repo) {
            return Err(Rejection::RepositoryExists { repo: repo.clone() });
        }
        Ok(())
    }

    fn check_route_room(&self) -> Result<(), Rejection> {
        if self.routes.len() >= DIRECTORY_ROUTES_MAX {
            return Err(Rejection::TooManyRoutes { count_max: DIRECTORY_ROUTES_MAX as u64 });
        }
        Ok(())
    }

    /// Adds a route that every check allowed.
    fn insert_route(&mut self, repo: &RepoId, partition: PartitionId) {
        assert!(self.partitions.contains_key(&partition), "route to unknown partition {partition}");
        let replaced = self.routes.insert(repo.clone(), partition);
        assert!(replaced.is_none(), "{repo} routed twice");
        *self.route_counts.entry(partition).or_insert(0) += 1;
    }

    /// Builds the derived counts from the primary fields, checking every bound and invariant;
    /// the error names the first broken one.
    fn rebuild(data: DirectoryData) -> Result<Directory, String> {
        let DirectoryData { routes, partitions, next_partition } = data;
        if partitions.len() > DIRECTORY_PARTITIONS_MAX {
            return Err(format!(
                "{} partitions in the directory, more than {DIRECTORY_PARTITIONS_MAX}",
                partitions.len()
            ));
        }
        if routes.len() > DIRECTORY_ROUTES_MAX {
            return Err(format!("{} routes in the directory, more than {DIRECTORY_ROUTES_MAX}", routes.len()));
        }
        if next_partition == 0 {
            return Err("next partition id is 0; ids start at 1".to_string());
        }
        for (id, info) in &partitions {
            if id.0 == 0 || id.0 >= next_partition {
                return Err(format!("partition {id} recorded, outside the allocated ids 1..{next_partition}"));
            }
            if let Err(rejection) = validate_storage_name(&info.authority) {
                return Err(format!("partition {id}: {rejection}"));
            }
            if let Err(rejection) = check_members(&info.voters, &info.learners)
                .and_then(|_| check_peers(&info.voters, &info.learners, &info.peers))
            {
                return Err(format!("partition {id}: {rejection}"));
            }
            if !info.peers.windows(2).all(|pair| pair[0] < pair[1]) {
                return Err(format!("partition {id}: peer ids are not sorted"));
            }
            let ascending = |nodes: &[NodeId]| nodes.windows(2).all(|pair| pair[0] < pair[1]);
            if !ascending(&info.voters) || !ascending(&info.learners) {
                return Err(format!("partition {id}: member lists are not sorted"));
            }
        }
        let mut route_counts: BTreeMap<PartitionId, usize> = BTreeMap::new();
        for (repo, partition) in &routes {
            if let Err(rejection) = repo.validate() {
                return Err(format!("route of {repo}: {rejection}"));
            }
            if !partitions.contains_key(partition) {
                return Err(format!("{repo} is routed to unknown partition {partition}"));
            }
            let count = route_counts.entry(*partition).or_insert(0);
            *count += 1;
            if *count > PARTITION_REPOSITORIES_MAX {
                return Err(format!("partition {partition} has more than {PARTITION_REPOSITORIES_MAX} routes"));
            }
        }
        Ok(Directory { routes, partitions, next_partition, route_counts })
    }

    /// The first broken invariant of the directory, if any (for state checks and tests).
    pub(super) fn invariant_violation(&self) -> Option<String> {
        let data = DirectoryData {
            routes: self.routes.clone(),
            partitions: self.partitions.clone(),
            next_partition: self.next_partition,
        };
        match Directory::rebuild(data) {
            Err(problem) => Some(problem),
            Ok(rebuilt) if rebuilt != *self => Some("directory route counts out of step".to_string()),
            Ok(_) => None,
        }
    }
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
