//! The cluster directory's rows (partition 0 only): the partition each repository is routed to
//! (`routes`), each partition's authority and members (`members`), and how many repositories
//! each partition has routed (`route_counts`). Partition ids are allocated from 1 and never
//! reused; the next one is in the directory's record.

use super::keys;
use super::tables::{self, Counts, Rows, TableId, WriteRows};
use super::StoreError;
use crate::ids::{NodeId, PartitionId, PeerId};
use crate::state_machine::{
    PartitionInfo, Rejection, RepoId, DIRECTORY_PARTITIONS_MAX, DIRECTORY_ROUTES_MAX, PAGE_ROUTES_MAX,
    PARTITION_REPOSITORIES_MAX,
};

/// The id the next allocation takes (1 before the first).
pub fn next_partition(counts: &Counts) -> u64 {
    counts.next_partition.max(1)
}

pub fn route(rows: &dyn Rows, directory: PartitionId, repo: &RepoId) -> Result<Option<PartitionId>, StoreError> {
    match rows.get(TableId::Routes, &keys::repo(directory, repo))? {
        Some(bytes) => Ok(Some(PartitionId(tables::decode_u64("route", &bytes)?))),
        None => Ok(None),
    }
}

pub fn partition_info(
    rows: &dyn Rows,
    directory: PartitionId,
    partition: PartitionId,
) -> Result<Option<PartitionInfo>, StoreError> {
    match rows.get(TableId::Members, &keys::about(directory, partition))? {
        Some(bytes) => Ok(Some(tables::decode("partition members", &bytes)?)),
        None => Ok(None),
    }
}

/// Up to `limit` routes of repositories after `after` (from the first with `None`), by
/// repository.
pub fn routes_after(
    rows: &dyn Rows,
    directory: PartitionId,
    after: Option<&RepoId>,
    limit: usize,
) -> Result<Vec<(RepoId, PartitionId)>, StoreError> {
    let after = after.map(|repo| keys::repo(directory, repo));
    tables::scan_page(
        rows,
        TableId::Routes,
        &keys::partition_prefix(directory),
        after.as_deref(),
        limit,
        |repo, value| {
            let repo = keys::KeyReader::new(repo).take_repo()?;
            Ok((repo, PartitionId(tables::decode_u64("route", value)?)))
        },
    )
}

/// Every recorded partition, by increasing id.
pub fn partitions(rows: &dyn Rows, directory: PartitionId) -> Result<Vec<(PartitionId, PartitionInfo)>, StoreError> {
    partitions_after(rows, directory, None, usize::MAX)
}

/// Up to `limit` recorded partitions with ids above `after` (from the first with `None`), by
/// increasing id.
pub fn partitions_after(
    rows: &dyn Rows,
    directory: PartitionId,
    after: Option<PartitionId>,
    limit: usize,
) -> Result<Vec<(PartitionId, PartitionInfo)>, StoreError> {
    let after = after.map(|partition| keys::about(directory, partition));
    tables::scan_page(
        rows,
        TableId::Members,
        &keys::partition_prefix(directory),
        after.as_deref(),
        limit,
        |id, value| {
            let id = keys::KeyReader::new(id).take_u64()?;
            Ok((PartitionId(id), tables::decode("partition members", value)?))
        },
    )
}

/// The repositories routed to `partition`, sorted (a prefix scan of the directory's index).
pub fn routed_to(rows: &dyn Rows, directory: PartitionId, partition: PartitionId) -> Result<Vec<RepoId>, StoreError> {
    tables::scan_repositories(rows, TableId::PartitionRoutes, &keys::about(directory, partition))
}

/// Up to `limit` partitions with ids above `after` (from the first with `None`), by
/// increasing id, each with the repositories routed to it (sorted).
pub fn partitions_with_routes(
    rows: &dyn Rows,
    directory: PartitionId,
    after: Option<PartitionId>,
    limit: usize,
) -> Result<Vec<(PartitionId, PartitionInfo, Vec<RepoId>)>, StoreError> {
    let mut page = Vec::new();
    let mut routes = 0;
    for (id, info) in partitions_after(rows, directory, after, limit)? {
        if routes >= PAGE_ROUTES_MAX {
            break;
        }
        let repositories = routed_to(rows, directory, id)?;
        routes += repositories.len();
        page.push((id, info, repositories));
    }
    Ok(page)
}

fn route_count(rows: &dyn Rows, directory: PartitionId, partition: PartitionId) -> Result<u64, StoreError> {
    match rows.get(TableId::RouteCounts, &keys::about(directory, partition))? {
        Some(bytes) => tables::decode_u64("route count", &bytes),
        None => Ok(0),
    }
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

/// Changes to the directory, for one partition-0 command.
pub struct DirectoryWriter<'a, 'txn> {
    pub rows: &'a mut WriteRows<'txn>,
    pub directory: PartitionId,
    pub counts: &'a mut Counts,
}

impl DirectoryWriter<'_, '_> {
    /// Allocates the next partition id for `repo` (created on `repo.storage` with `voters`) and
    /// routes `repo` to it. `voters` passed `check_members`.
    pub fn allocate_partition(
        &mut self,
        repo: &RepoId,
        voters: &[NodeId],
    ) -> Result<Result<PartitionId, Rejection>, StoreError> {
        if let Err(rejection) = self.check_unrouted(repo)? {
            return Ok(Err(rejection));
        }
        let too_many = Rejection::TooManyPartitions { count_max: DIRECTORY_PARTITIONS_MAX as u64 };
        if self.counts.directory_partitions >= DIRECTORY_PARTITIONS_MAX as u64 {
            return Ok(Err(too_many));
        }
        let id = next_partition(self.counts);
        // Ids are never reused; running out of them is running out of partitions.
        let Some(next) = id.checked_add(1) else { return Ok(Err(too_many)) };
        if let Err(rejection) = self.check_route_room() {
            return Ok(Err(rejection));
        }
        let id = PartitionId(id);
        self.counts.next_partition = next;
        // Initial members are incarnation 0: their peer id is their node id.
        let peers = sorted(voters).iter().map(|&n| PeerId::new(n, 0)).collect();
        let info = PartitionInfo {
            authority: repo.storage.clone(),
            voters: sorted(voters),
            learners: Vec::new(),
            peers,
            members_as_of: 0,
        };
        let key = keys::about(self.directory, id);
        assert!(!self.rows.contains(TableId::Members, &key)?, "partition {id} allocated twice");
        self.rows.insert(TableId::Members, &key, &tables::encode(&info))?;
        self.counts.directory_partitions += 1;
        self.insert_route(repo, id)?;
        Ok(Ok(id))
    }

    /// Routes `repo` to an existing partition (a fork placed in its parent's).
    pub fn route_repository(
        &mut self,
        repo: &RepoId,
        partition: PartitionId,
    ) -> Result<Result<(), Rejection>, StoreError> {
        if partition_info(self.rows, self.directory, partition)?.is_none() {
            return Ok(Err(Rejection::PartitionNotFound { partition }));
        }
        if let Err(rejection) = self.check_unrouted(repo)? {
            return Ok(Err(rejection));
        }
        if let Err(rejection) = self.check_route_room() {
            return Ok(Err(rejection));
        }
        if route_count(self.rows, self.directory, partition)? >= PARTITION_REPOSITORIES_MAX as u64 {
            return Ok(Err(Rejection::TooManyRepositories { count_max: PARTITION_REPOSITORIES_MAX as u64 }));
        }
        self.insert_route(repo, partition)?;
        Ok(Ok(()))
    }

    pub fn unroute_repository(&mut self, repo: &RepoId) -> Result<Result<(), Rejection>, StoreError> {
        let Some(partition) = route(self.rows, self.directory, repo)? else {
            return Ok(Err(Rejection::RepositoryNotFound { repo: repo.clone() }));
        };
        self.rows.remove(TableId::Routes, &keys::repo(self.directory, repo))?;
        let indexed =
            self.rows.remove(TableId::PartitionRoutes, &keys::partition_route(self.directory, partition, repo))?;
        assert!(indexed, "{repo}'s route to partition {partition} is not indexed");
        let count = route_count(self.rows, self.directory, partition)?;
        assert!(count >= 1, "partition {partition} counts no routes");
        let count_key = keys::about(self.directory, partition);
        if count == 1 {
            self.rows.remove(TableId::RouteCounts, &count_key)?;
        } else {
            self.rows.insert(TableId::RouteCounts, &count_key, &tables::encode_u64(count - 1))?;
        }
        self.counts.directory_routes -= 1;
        Ok(Ok(()))
    }

    /// Records a partition's new membership. The lists passed `check_members`.
    pub fn set_partition_members(
        &mut self,
        partition: PartitionId,
        voters: &[NodeId],
        learners: &[NodeId],
        peers: &[PeerId],
        as_of: u64,
    ) -> Result<Result<(), Rejection>, StoreError> {
        let Some(mut info) = partition_info(self.rows, self.directory, partition)? else {
            return Ok(Err(Rejection::PartitionNotFound { partition }));
        };
        if as_of < info.members_as_of {
            // A report older than the recorded one: the record stands.
            return Ok(Ok(()));
        }
        info.members_as_of = as_of;
        info.voters = sorted(voters);
        info.learners = sorted(learners);
        let mut peers = peers.to_vec();
        peers.sort_unstable();
        info.peers = peers;
        self.rows.insert(TableId::Members, &keys::about(self.directory, partition), &tables::encode(&info))?;
        Ok(Ok(()))
    }

    fn check_unrouted(&self, repo: &RepoId) -> Result<Result<(), Rejection>, StoreError> {
        if route(self.rows, self.directory, repo)?.is_some() {
            return Ok(Err(Rejection::RepositoryExists { repo: repo.clone() }));
        }
        Ok(Ok(()))
    }

    fn check_route_room(&self) -> Result<(), Rejection> {
        if self.counts.directory_routes >= DIRECTORY_ROUTES_MAX as u64 {
            return Err(Rejection::TooManyRoutes { count_max: DIRECTORY_ROUTES_MAX as u64 });
        }
        Ok(())
    }

    /// Adds a route that every check allowed.
    fn insert_route(&mut self, repo: &RepoId, partition: PartitionId) -> Result<(), StoreError> {
        let key = keys::repo(self.directory, repo);
        assert!(!self.rows.contains(TableId::Routes, &key)?, "{repo} routed twice");
        self.rows.insert(TableId::Routes, &key, &tables::encode_u64(partition.0))?;
        self.rows.insert(TableId::PartitionRoutes, &keys::partition_route(self.directory, partition, repo), &[])?;
        let count = route_count(self.rows, self.directory, partition)?;
        self.rows.insert(
            TableId::RouteCounts,
            &keys::about(self.directory, partition),
            &tables::encode_u64(count + 1),
        )?;
        self.counts.directory_routes += 1;
        Ok(())
    }
}
