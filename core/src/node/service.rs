//! Client requests at the level of a node: find a repository's partition through the
//! directory (partition 0), send the request to that partition, and turn its answer into a
//! typed result. The gRPC layer (`cohort-net`) only converts to and from wire types.

use super::identity::{InstanceId, PeerInstances};
use super::router::{RouteError, Router};
use crate::env::Spawn;
use crate::ids::{ClientId, NodeId, PartitionId};
use crate::partition::{MembershipChange, ReadConsistency, Request, Response};
use crate::persist::{ConfState, RaftMode};
use crate::state_machine::{
    Command, PartitionInfo, ReadQuery, ReadResult, Rejection, RelativePath, RepoId, WriteOk, WriteOp,
};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::ids::DIRECTORY;

/// How long a write waits for a freshly created partition's replica and leader (in ticks),
/// and the first pause between its attempts, which doubles up to a tick: a new partition is
/// usually ready within a few round trips and fsyncs, far less than a tick.
const NEW_PARTITION_WAIT_TICKS: u32 = 50;
const NEW_PARTITION_FIRST_PAUSE: Duration = Duration::from_millis(1);

/// Why a request did not succeed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ApiError {
    #[error("this node does not lead the partition; leader: {leader:?}")]
    NotLeader { leader: Option<NodeId> },
    #[error("not found: {0}")]
    NotFound(String),
    #[error(transparent)]
    Rejected(Rejection),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("busy: too many requests in flight; retry later")]
    Busy,
    /// The outcome is unknown (a leader changed under the write); retrying with the same
    /// client id and sequence number is safe.
    #[error("outcome unknown; retry with the same client id and sequence number")]
    Unknown,
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A membership change or leadership transfer that would be unsafe or is not possible.
    #[error("refused: {0}")]
    Refused(String),
    /// Larger than this node accepts; no retry can fix it.
    #[error("too large: {0}")]
    TooLarge(String),
}

/// Object bytes a write may carry that its partition hashes and compresses itself, on the
/// node's runtime thread: about a tenth of a millisecond of CPU, the order of the hop to the
/// blocking pool and back. Random content goes at about 90 MiB/s (`cargo bench --bench apply`
/// prices it): an 8 MiB command is about 90 ms.
pub const PREPARE_IN_PLACE_BYTES_MAX: usize = 16 * 1024;

/// Object bytes of writes being prepared or waiting their turn: two of the largest commands.
/// A write beyond it is answered busy rather than queued, so a flood of large writes holds
/// memory without bound no more here than in a partition's mailbox.
const PREPARING_BYTES_MAX: usize = 2 * crate::limits::COMMAND_SIZE_BYTES_MAX;

/// Writes being hashed and compressed on the blocking pool (`NodeService::prepared`), one at
/// a time: with one per request, a flood of 2 MiB writes kept eight threads compressing on a
/// two-core machine, and the runtime thread, with the liveness heartbeats, got too little of
/// it for the peers (an election in one of two runs of the end-to-end flood test).
#[derive(Default)]
struct Preparing {
    /// Bytes of the writes being prepared or waiting (`Reservation`).
    bytes: AtomicUsize,
    /// Held by the one being prepared; the others wait for it in turn.
    turn: futures::lock::Mutex<()>,
}

/// `size_bytes` of `Preparing::bytes`, given back when dropped (also when the request is).
struct Reservation<'a> {
    preparing: &'a Preparing,
    size_bytes: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let before = self.preparing.bytes.fetch_sub(self.size_bytes, Ordering::Relaxed);
        assert!(before >= self.size_bytes, "a reservation gives back what it took");
    }
}

impl Preparing {
    /// `command` with its objects hashed and compressed (`WriteOp::prepare`) on the blocking
    /// pool, if it is large; `Busy` if the writes prepared or waiting fill `PREPARING_BYTES_MAX`.
    async fn prepared(&self, spawn: &dyn Spawn, command: Command) -> Result<Command, ApiError> {
        let size_bytes = command.op.data_bytes();
        // The partition refuses a command larger than it proposes before it hashes anything.
        if size_bytes <= PREPARE_IN_PLACE_BYTES_MAX || size_bytes > crate::limits::COMMAND_SIZE_BYTES_MAX {
            return Ok(command);
        }
        let reserved = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bytes| {
            (bytes + size_bytes <= PREPARING_BYTES_MAX).then_some(bytes + size_bytes)
        });
        if reserved.is_err() {
            return Err(ApiError::Busy);
        }
        let _reservation = Reservation { preparing: self, size_bytes };
        let _turn = self.turn.lock().await;
        let command = Arc::new(command);
        let shared = command.clone();
        spawn.run_blocking(Box::new(move || shared.op.prepare())).await;
        Ok(Arc::try_unwrap(command).unwrap_or_else(|_| panic!("the blocking work has ended and dropped its reference")))
    }
}

/// Pieces of the uploads this node begins: a Raft entry each, under the per-message bound.
pub const UPLOAD_PIECE_BYTES: u32 = crate::state_machine::UPLOAD_CHUNK_BYTES_MAX;

/// Where an upload stands once begun.
#[derive(Clone, Debug, PartialEq)]
pub enum UploadBegun {
    /// Its write finished before, with this answer.
    Finished(WriteOk),
    InProgress {
        chunk_bytes: u32,
        status: crate::state_machine::UploadStatus,
    },
}

impl From<RouteError> for ApiError {
    fn from(error: RouteError) -> ApiError {
        match error {
            RouteError::UnknownPartition(p) => {
                ApiError::Unavailable(format!("partition {p} is not hosted on this node"))
            }
            RouteError::MailboxFull(_) => ApiError::Busy,
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}

/// A read's answer with the applied index it reflects.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadAnswer {
    pub result: ReadResult,
    pub applied_index: u64,
    pub partition: PartitionId,
}

/// An operator's change to a partition's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembersAction {
    /// A read-only replica.
    AddLearner,
    /// An electable replica: joins as a learner, catches up, then is promoted.
    AddVoter,
    /// A learner that has caught up becomes a voter.
    Promote,
    Remove,
    TransferLeader,
    /// The node lost its replica with its data directory: a new, empty one takes its place in
    /// the same role (`MembershipChange::Replace`). Not repeatable as a no-op: each call makes
    /// a new replica.
    Replace,
}

/// How long a membership change may wait for the directory to record it.
const RECORD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a new replica may take to catch up before its promotion is given up.
const CATCH_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// A partition's directory entry and the leader this node knows of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionView {
    pub partition: PartitionId,
    pub info: PartitionInfo,
    pub repositories: Vec<RepoId>,
    pub leader: Option<NodeId>,
}

/// What `NodeService::retire_peer` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retirement {
    /// This instance of the node is refused from now on.
    Retired(InstanceId),
    /// No instance was remembered (never seen, or retired by an earlier call).
    NothingRemembered,
    /// This node knows the node by its replacement already (retired earlier, or met after the
    /// old directory was lost).
    AlreadyReplaced,
}

/// A repository and the partition holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedRepository {
    pub repo: RepoId,
    pub partition: PartitionId,
}

pub struct NodeService {
    router: Arc<Router>,
    /// Every node of the static cluster: where new partitions may be placed.
    nodes: Vec<NodeId>,
    /// Voters of each new partition.
    replicas: usize,
    /// The data directory instance this node knows each peer node by.
    peers: Arc<PeerInstances>,
    /// This node's own data directory instance.
    instance: InstanceId,
    placement: std::sync::Mutex<PlacementLoad>,
    preparing: Preparing,
    routes: std::sync::Mutex<RouteCache>,
}

/// Routes this node's directory replica gave, kept by the store's routes version
/// ([`crate::store::Store::routes_version`]): every client request looks its repository's
/// partition up, and reading it from the store (a read transaction, two tables, two lookups)
/// was 6% of the leader's runtime thread under 64 writing clients (`perf`, `cargo bench
/// --bench vs_etcd`). A route is what the store holds, never older: any change to the routes
/// (a repository deleted, a snapshot of the directory installed) empties the cache, so a
/// repository deleted and created again is looked up anew.
#[derive(Debug, Default)]
struct RouteCache {
    /// The routes version the routes were read at.
    version: u64,
    routes: std::collections::HashMap<RepoId, PartitionId>,
}

impl RouteCache {
    /// The route of `repo`, if kept and read at `version` (the store's routes version now).
    fn get(&self, version: u64, repo: &RepoId) -> Option<PartitionId> {
        (version == self.version).then(|| self.routes.get(repo).copied()).flatten()
    }

    /// Keeps a route read in a transaction begun at routes version `read_at`, if the version
    /// is still that (`now`): a route read before a change that committed meanwhile may be
    /// gone. Routes of an older version are dropped.
    fn remember(&mut self, read_at: u64, now: u64, repo: &RepoId, partition: PartitionId) {
        if read_at != now || now < self.version {
            return;
        }
        if now > self.version || self.routes.len() >= crate::limits::ROUTE_CACHE_ENTRIES_MAX {
            self.routes.clear();
            self.version = now;
        }
        self.routes.insert(repo.clone(), partition);
    }
}

/// How long placement counts replicas per node incrementally before it counts them all again.
const PLACEMENT_RECOUNT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How many partitions each node hosts, as this node's directory records them, for placing
/// new ones. Counting every partition for each creation would make creating N partitions cost
/// N² row reads, so new partitions (ids only grow) are added as they appear, and the whole
/// count is redone every `PLACEMENT_RECOUNT_INTERVAL`: replicas that membership changes move
/// weigh in within that time. Placement only balances, so a count that old is good enough.
#[derive(Default)]
struct PlacementLoad {
    load: BTreeMap<NodeId, usize>,
    /// The highest partition id counted, if any.
    through: Option<PartitionId>,
    counted_at: Option<crate::env::Instant>,
}

impl PlacementLoad {
    fn count(&mut self, partitions: &[(PartitionId, PartitionInfo)]) {
        for (id, info) in partitions {
            for node in info.voters.iter().chain(&info.learners) {
                *self.load.entry(*node).or_default() += 1;
            }
            assert!(self.through < Some(*id), "partitions are counted once, by increasing id");
            self.through = Some(*id);
        }
    }
}

/// Chooses the voters of a new partition from how many partitions each node hosts
/// (`hosted`): the `replicas` nodes that host the fewest, ties to the lower id. Deterministic,
/// and it spreads partitions evenly.
pub fn place(nodes: &[NodeId], replicas: usize, hosted: &BTreeMap<NodeId, usize>) -> Vec<NodeId> {
    assert!((1..=nodes.len()).contains(&replicas), "a partition has between 1 and all nodes as voters");
    let load = nodes.iter().map(|&n| (n, hosted.get(&n).copied().unwrap_or(0)));
    let mut by_load: Vec<(usize, NodeId)> = load.map(|(n, c)| (c, n)).collect();
    by_load.sort();
    let mut voters: Vec<NodeId> = by_load.into_iter().take(replicas).map(|(_, n)| n).collect();
    voters.sort();
    voters
}

impl NodeService {
    pub fn new(
        router: Arc<Router>,
        nodes: Vec<NodeId>,
        replicas: usize,
        peers: Arc<PeerInstances>,
        instance: InstanceId,
    ) -> NodeService {
        assert!(nodes.contains(&router.node()), "this node is one of the cluster's nodes");
        assert!((1..=nodes.len()).contains(&replicas), "replicas between 1 and the cluster's size");
        NodeService {
            router,
            nodes,
            replicas,
            peers,
            instance,
            placement: Default::default(),
            preparing: Preparing::default(),
            routes: Default::default(),
        }
    }

    /// This node's data directory instance (what its peers admit it by).
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    async fn call(&self, partition: PartitionId, request: Request) -> Result<Response, ApiError> {
        match self.router.request(partition, request).await {
            Ok(response) => Ok(response),
            Err(RouteError::UnknownPartition(_)) if partition != DIRECTORY => Err(self.redirect(partition)),
            Err(error) => Err(error.into()),
        }
    }

    /// This node does not host `partition`: send the caller to a node that does.
    fn redirect(&self, partition: PartitionId) -> ApiError {
        // One point read of this node's directory rows: never the whole directory.
        let members = self
            .router
            .store()
            .read()
            .and_then(|rows| crate::store::read::directory_partition(&rows, DIRECTORY, partition));
        match members {
            Ok(Some(info)) => ApiError::NotLeader { leader: info.voters.first().copied() },
            Ok(None) => ApiError::Unavailable(format!("partition {partition} is not known here yet")),
            Err(error) => ApiError::Unavailable(format!("cannot read this node's directory: {error}")),
        }
    }

    fn write_result(response: Response) -> Result<WriteOk, ApiError> {
        match response {
            Response::Written(Ok(ok)) => Ok(ok),
            Response::Written(Err(rejection)) => Err(ApiError::Rejected(rejection)),
            other => Err(Self::failure(other)),
        }
    }

    fn failure(response: Response) -> ApiError {
        match response {
            Response::NotLeader { leader } => ApiError::NotLeader { leader },
            Response::Unknown => ApiError::Unknown,
            Response::Busy => ApiError::Busy,
            Response::Invalid(message) => ApiError::Invalid(message),
            Response::Failed(error) => ApiError::Unavailable(error.to_string()),
            Response::Refused(reason) => ApiError::Refused(reason),
            Response::Written(_)
            | Response::Read { .. }
            | Response::Membership(_)
            | Response::Transferring
            | Response::RaftMode(_) => {
                unreachable!("successes are handled by the caller")
            }
        }
    }

    /// The partition of `repo`. This node's copy of the directory answers if it knows (one
    /// point read of the store, which holds what the local directory replica applied: no
    /// request through the directory's replica, no Raft; then kept in memory until the routes
    /// change); if not, the directory's leader is asked (its directory is newer).
    pub async fn route(&self, repo: &RepoId) -> Result<PartitionId, ApiError> {
        let store = self.router.store();
        let read_at = store.routes_version();
        if let Some(partition) = self.routes.lock().expect("not poisoned").get(read_at, repo) {
            return Ok(partition);
        }
        let query = ReadQuery::Route { repo: repo.clone() };
        let local = store.read().and_then(|rows| crate::store::read::read(&rows, DIRECTORY, &query));
        match local {
            Ok(ReadResult::Route(Some((partition, _)))) => {
                let now = store.routes_version();
                self.routes.lock().expect("not poisoned").remember(read_at, now, repo, partition);
                return Ok(partition);
            }
            Ok(ReadResult::Rejected(rejection)) => return Err(ApiError::Rejected(rejection)),
            Ok(_) => {}
            Err(error) => return Err(ApiError::Unavailable(format!("cannot read this node's directory: {error}"))),
        }
        match self.read(DIRECTORY, query, ReadConsistency::Linearizable).await?.result {
            ReadResult::Route(Some((partition, _))) => Ok(partition),
            ReadResult::Route(None) => Err(ApiError::NotFound(format!("repository {repo}"))),
            other => Err(ApiError::Invalid(format!("unexpected directory answer {other:?}"))),
        }
    }

    async fn read(
        &self,
        partition: PartitionId,
        query: ReadQuery,
        consistency: ReadConsistency,
    ) -> Result<ReadAnswer, ApiError> {
        match self.call(partition, Request::Read { query, consistency }).await? {
            Response::Read { result: ReadResult::Rejected(rejection), .. } => Err(ApiError::Rejected(rejection)),
            Response::Read { result, applied_index } => Ok(ReadAnswer { result, applied_index, partition }),
            other => Err(Self::failure(other)),
        }
    }

    /// A write this node makes on the client's behalf, forwarded to the partition's leader
    /// if need be. A partition that has no replica here or no leader yet (just created) is
    /// retried for a while, soon at first.
    async fn forwarded_write(&self, partition: PartitionId, command: Command) -> Result<WriteOk, ApiError> {
        let clock = self.router.env().clock.clone();
        let tick = self.router.tick_interval();
        let deadline = clock.now() + tick * NEW_PARTITION_WAIT_TICKS;
        let mut pause = NEW_PARTITION_FIRST_PAUSE.min(tick);
        let mut last_error = ApiError::Unavailable(format!("partition {partition} has no replica here"));
        while clock.now() < deadline {
            let outcome = match self.router.request(partition, Request::ForwardedWrite(command.clone())).await {
                Ok(response) => Self::write_result(response),
                Err(RouteError::UnknownPartition(_)) => {
                    Err(ApiError::Unavailable(format!("partition {partition} is not created here yet")))
                }
                Err(error) => Err(error.into()),
            };
            match outcome {
                Err(
                    error @ (ApiError::NotLeader { leader: None }
                    | ApiError::Unavailable(_)
                    | ApiError::Unknown
                    | ApiError::Busy),
                ) => {
                    last_error = error;
                    clock.sleep_until(clock.now() + pause).await;
                    pause = (pause * 2).min(tick);
                }
                other => return other,
            }
        }
        Err(last_error)
    }

    /// Creates a repository: allocates a partition for it in the directory (or, for a fork,
    /// routes it to its parent's partition), then creates it there. Every step is idempotent
    /// under the request's (client, sequence), so a client may retry the whole call anywhere.
    pub async fn create_repository(
        &self,
        client: ClientId,
        seq: u64,
        repo: RepoId,
        fork_of: Option<RelativePath>,
    ) -> Result<WriteOk, ApiError> {
        let existing = match self.route(&repo).await {
            Ok(partition) => Some(partition),
            Err(ApiError::NotFound(_) | ApiError::NotLeader { .. }) => None,
            Err(error) => return Err(error),
        };
        let partition = match (existing, &fork_of) {
            (Some(partition), _) => partition,
            (None, None) => {
                let voters = self.place_new_partition()?;
                let op = WriteOp::AllocatePartition { repo: repo.clone(), voters };
                let ok = self.forwarded_write(DIRECTORY, Command { client, seq, op }).await?;
                ok.partition.expect("an allocation names its partition")
            }
            (None, Some(parent)) => {
                let parent_repo = RepoId { storage: repo.storage.clone(), relative_path: parent.clone() };
                let partition = self.route(&parent_repo).await?;
                let op = WriteOp::RouteRepository { repo: repo.clone(), partition };
                self.forwarded_write(DIRECTORY, Command { client, seq, op }).await?;
                partition
            }
        };
        let op = WriteOp::CreateRepository { repo, fork_of };
        let mut ok = self.forwarded_write_anywhere(partition, Command { client, seq, op }).await?;
        ok.partition = Some(partition);
        Ok(ok)
    }

    /// Like `forwarded_write`, but a partition this node does not host is redirected.
    async fn forwarded_write_anywhere(&self, partition: PartitionId, command: Command) -> Result<WriteOk, ApiError> {
        let hosted = self.router.hosts(partition);
        if !hosted && !self.will_host(partition).await {
            return Err(self.redirect(partition));
        }
        self.forwarded_write(partition, command).await
    }

    /// Whether the directory places `partition` on this node (its replica may not exist yet).
    async fn will_host(&self, partition: PartitionId) -> bool {
        let me = self.router.node();
        let info = self
            .router
            .store()
            .read()
            .and_then(|rows| crate::store::read::directory_partition(&rows, DIRECTORY, partition));
        matches!(info, Ok(Some(info)) if info.voters.contains(&me) || info.learners.contains(&me))
    }

    /// The voters of a new partition (see `PlacementLoad`).
    fn place_new_partition(&self) -> Result<Vec<NodeId>, ApiError> {
        let now = self.router.env().clock.now();
        let mut placement = self.placement.lock().expect("not poisoned");
        let stale =
            placement.counted_at.is_none_or(|at| now.saturating_duration_since(at) >= PLACEMENT_RECOUNT_INTERVAL);
        if stale {
            *placement = PlacementLoad { counted_at: Some(now), ..PlacementLoad::default() };
        }
        let unavailable = |error: crate::store::StoreError| {
            ApiError::Unavailable(format!("cannot read this node's directory: {error}"))
        };
        let rows = self.router.store().read().map_err(unavailable)?;
        let new = match placement.through {
            None => crate::store::read::directory_partitions(&rows, DIRECTORY),
            Some(through) => crate::store::read::directory_partitions_after(&rows, DIRECTORY, through),
        };
        let new = new.map_err(|error| {
            // Counted again in full next time.
            placement.counted_at = None;
            unavailable(error)
        })?;
        placement.count(&new);
        Ok(place(&self.nodes, self.replicas, &placement.load))
    }

    /// Deletes a repository's data, then its route.
    pub async fn delete_repository(&self, client: ClientId, seq: u64, repo: RepoId) -> Result<WriteOk, ApiError> {
        let partition = self.route(&repo).await?;
        let op = WriteOp::DeleteRepository { repo: repo.clone() };
        let ok = match self.forwarded_write_anywhere(partition, Command { client, seq, op }).await {
            // A retry after the data went but before the route did.
            Err(ApiError::Rejected(Rejection::RepositoryNotFound { .. })) => None,
            other => Some(other?),
        };
        let op = WriteOp::UnrouteRepository { repo };
        let unrouted = self.forwarded_write(DIRECTORY, Command { client, seq, op }).await?;
        let mut ok = ok.unwrap_or(unrouted);
        ok.partition = Some(partition);
        Ok(ok)
    }

    /// A client's transaction on one repository. Served by the partition's leader only.
    pub async fn write(&self, command: Command) -> Result<WriteOk, ApiError> {
        let repo = match &command.op {
            WriteOp::Transaction { repo, .. } => repo.clone(),
            other => return Err(ApiError::Invalid(format!("{other:?} is not a client transaction"))),
        };
        let partition = self.route(&repo).await?;
        let command = self.prepared(command).await?;
        let mut ok = Self::write_result(self.call(partition, Request::Write(command)).await?)?;
        ok.partition = Some(partition);
        Ok(ok)
    }

    /// `command` with its objects hashed and compressed (`WriteOp::prepare`), on the blocking
    /// pool when that is more than brief work. Left to the partition, that work runs on the
    /// node's runtime thread when the command is proposed or forwarded, and a few megabytes of
    /// it held up everything else there, the liveness heartbeats included: on a node with one
    /// runtime thread, long enough for its peers to declare it down and elect another leader.
    async fn prepared(&self, command: Command) -> Result<Command, ApiError> {
        self.preparing.prepared(&*self.router.env().spawn, command).await
    }

    /// Begins (or finds again) the upload of `client`'s write `seq`, in pieces of
    /// `chunk_bytes` (`UPLOAD_PIECE_BYTES` for clients; smaller in tests and the simulator):
    /// the object is stored already if that write finished, else where the next piece goes.
    #[allow(clippy::too_many_arguments)] // One request's fields and this node's limits, named.
    pub async fn begin_upload(
        &self,
        client: ClientId,
        seq: u64,
        repo: RepoId,
        kind: crate::state_machine::ObjectKind,
        size_bytes: u64,
        size_bytes_max: u64,
        chunk_bytes: u32,
    ) -> Result<UploadBegun, ApiError> {
        if size_bytes > size_bytes_max {
            return Err(ApiError::TooLarge(format!(
                "an object of {size_bytes} bytes is larger than this node's limit of {size_bytes_max} bytes"
            )));
        }
        let partition = self.route(&repo).await?;
        let op = WriteOp::BeginUpload { repo: repo.clone(), kind, size_bytes, chunk_bytes };
        let begun = Self::write_result(self.call(partition, Request::Write(Command { client, seq, op })).await?)?;
        if !begun.object_ids.is_empty() {
            // Only the finishing write names objects: this one finished already.
            return Ok(UploadBegun::Finished(WriteOk { partition: Some(partition), ..begun }));
        }
        // This replica just applied the beginning, so its state has the upload.
        let query = ReadQuery::Upload { repo, client, seq };
        match self.read(partition, query, ReadConsistency::Stale).await?.result {
            ReadResult::Upload(Some(status)) => Ok(UploadBegun::InProgress { chunk_bytes, status }),
            // Finished or dropped in between: the caller begins again.
            ReadResult::Upload(None) => Err(ApiError::Unknown),
            other => Err(ApiError::Invalid(format!("unexpected answer {other:?}"))),
        }
    }

    /// Stores one piece of an upload (see `WriteOp::UploadChunk`).
    pub async fn upload_piece(
        &self,
        client: ClientId,
        seq: u64,
        repo: RepoId,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<(), ApiError> {
        let partition = self.route(&repo).await?;
        let op = WriteOp::UploadChunk { repo, offset, data };
        Self::write_result(self.call(partition, Request::Write(Command { client, seq, op })).await?).map(|_| ())
    }

    /// Finishes an upload: the object is verified and added, and `refs` applied, atomically.
    pub async fn finish_upload(
        &self,
        client: ClientId,
        seq: u64,
        repo: RepoId,
        oid: crate::state_machine::Oid,
        refs: Vec<crate::state_machine::RefUpdate>,
    ) -> Result<WriteOk, ApiError> {
        let partition = self.route(&repo).await?;
        let op = WriteOp::FinishUpload { repo, oid, refs };
        let ok = Self::write_result(self.call(partition, Request::Write(Command { client, seq, op })).await?)?;
        Ok(WriteOk { partition: Some(partition), ..ok })
    }

    /// Uploads in progress in the partitions this node leads (from its own replicas). Only
    /// partitions whose rows here hold uploads are asked, so an idle node with many
    /// partitions does no work per partition.
    pub async fn led_uploads(&self) -> Vec<(PartitionId, ClientId, u64, RepoId, crate::state_machine::UploadStatus)> {
        let mut out = Vec::new();
        let with_uploads =
            self.router.store().read().and_then(|rows| crate::store::read::partitions_with_uploads(&rows));
        let with_uploads = match with_uploads {
            Ok(partitions) => partitions,
            Err(error) => {
                tracing::warn!(%error, "cannot list the partitions with uploads");
                return out;
            }
        };
        for partition in with_uploads {
            let leads =
                matches!(self.router.status(partition).await, Ok(s) if s.role == crate::partition::Role::Leader);
            if !leads {
                continue;
            }
            if let Ok(answer) = self.read(partition, ReadQuery::Uploads, ReadConsistency::Stale).await {
                if let ReadResult::Uploads(uploads) = answer.result {
                    out.extend(uploads.into_iter().map(|(c, s, repo, status)| (partition, c, s, repo, status)));
                }
            }
        }
        out
    }

    /// Drops an upload and its pieces (see `WriteOp::AbortUpload`).
    pub async fn abort_upload(
        &self,
        partition: PartitionId,
        client: ClientId,
        seq: u64,
        repo: RepoId,
    ) -> Result<(), ApiError> {
        let command = Command { client, seq, op: WriteOp::AbortUpload { repo } };
        Self::write_result(self.call(partition, Request::Write(command)).await?).map(|_| ())
    }

    /// A read of one repository.
    pub async fn read_repository(
        &self,
        repo: &RepoId,
        query: ReadQuery,
        consistency: ReadConsistency,
    ) -> Result<ReadAnswer, ApiError> {
        let partition = self.route(repo).await?;
        self.read(partition, query, consistency).await
    }

    /// A page of the repositories and their partitions, by repository after `after`, from
    /// the directory (linearizable); an empty page is the last.
    pub async fn list_repositories(
        &self,
        after: Option<RepoId>,
        limit: u32,
    ) -> Result<Vec<RoutedRepository>, ApiError> {
        let query = ReadQuery::Routes { after, limit };
        match self.read(DIRECTORY, query, ReadConsistency::Linearizable).await?.result {
            ReadResult::Routes(routes) => {
                Ok(routes.into_iter().map(|(repo, partition)| RoutedRepository { repo, partition }).collect())
            }
            other => Err(ApiError::Invalid(format!("unexpected directory answer {other:?}"))),
        }
    }

    /// The partition of `repo` with its members and repositories, and the leader if this node
    /// hosts a replica and knows it.
    pub async fn repository_partition(&self, repo: &RepoId) -> Result<PartitionView, ApiError> {
        let partition = self.route(repo).await?;
        self.partition_view(partition, ReadConsistency::Linearizable).await
    }

    /// One partition as the directory records it, with the leader if this node knows it.
    async fn partition_view(
        &self,
        partition: PartitionId,
        consistency: ReadConsistency,
    ) -> Result<PartitionView, ApiError> {
        let query = ReadQuery::Partition { partition };
        let (info, repositories) = match self.read(DIRECTORY, query, consistency).await?.result {
            ReadResult::Partition(Some(found)) => found,
            ReadResult::Partition(None) => return Err(ApiError::NotFound(format!("partition {partition}"))),
            other => return Err(ApiError::Invalid(format!("unexpected directory answer {other:?}"))),
        };
        Ok(PartitionView { partition, info, repositories, leader: self.known_leader(partition).await })
    }

    /// The leader of `partition` as this node's replica knows it (`None` if it hosts none).
    async fn known_leader(&self, partition: PartitionId) -> Option<NodeId> {
        self.router.status(partition).await.ok().and_then(|status| status.leader)
    }

    /// A page of the partitions the directory knows (ids above `after`, at most `limit`), with
    /// the leader where this node knows it; an empty page is the last.
    pub async fn partition_views(
        &self,
        after: Option<PartitionId>,
        limit: u32,
        consistency: ReadConsistency,
    ) -> Result<Vec<PartitionView>, ApiError> {
        let query = ReadQuery::Partitions { after, limit };
        let page = match self.read(DIRECTORY, query, consistency).await?.result {
            ReadResult::Partitions(page) => page,
            other => return Err(ApiError::Invalid(format!("unexpected directory answer {other:?}"))),
        };
        let mut views = Vec::with_capacity(page.len());
        for (partition, info, repositories) in page {
            views.push(PartitionView { partition, info, repositories, leader: self.known_leader(partition).await });
        }
        Ok(views)
    }

    /// Changes the replicas of `partition`, on its leader, one Raft membership change at a
    /// time, and records the new members in the directory. Each step tolerates having been
    /// done already, so an interrupted call can be repeated.
    pub async fn change_members(
        &self,
        partition: PartitionId,
        node: NodeId,
        action: MembersAction,
    ) -> Result<PartitionView, ApiError> {
        if partition == DIRECTORY && !matches!(action, MembersAction::Replace | MembersAction::TransferLeader) {
            // A node whose directory replica left could not start another (only a node made to
            // join does): the directory's replicas are only ever replaced.
            return Err(ApiError::Invalid(
                "the directory lives on every node: its replicas are only replaced (`cohort node replace`)".into(),
            ));
        }
        if !self.nodes.contains(&node) {
            return Err(ApiError::Invalid(format!("node {node} is not a node of this cluster")));
        }
        if partition == DIRECTORY
            && action == MembersAction::Replace
            && node != self.router.node()
            && !self.peers.was_replaced(node)
        {
            // Only a node made to join starts a directory replica for a new incarnation: one
            // that still runs on its old data directory would be left without any. (The node
            // being replaced cannot judge itself: it sends the caller on to the directory's
            // leader, which has no replica there to lead.)
            return Err(ApiError::Refused(format!(
                "node {node}'s data directory was not retired here: replace it with `cohort node replace {node}`"
            )));
        }
        match action {
            MembersAction::AddLearner => {
                self.membership_step(partition, MembershipChange::AddLearner(node), |c| {
                    c.learner_nodes().contains(&node)
                })
                .await?;
            }
            MembersAction::AddVoter => {
                self.membership_step(partition, MembershipChange::AddLearner(node), |c| {
                    c.learner_nodes().contains(&node) || c.voter_nodes().contains(&node)
                })
                .await?;
                self.wait_caught_up(partition, node).await?;
                self.membership_step(partition, MembershipChange::Promote(node), |c| c.voter_nodes().contains(&node))
                    .await?;
            }
            MembersAction::Promote => {
                self.wait_caught_up(partition, node).await?;
                self.membership_step(partition, MembershipChange::Promote(node), |c| c.voter_nodes().contains(&node))
                    .await?;
            }
            MembersAction::Remove => {
                self.membership_step(partition, MembershipChange::Remove(node), |c| {
                    !c.voter_nodes().contains(&node) && !c.learner_nodes().contains(&node)
                })
                .await?;
            }
            MembersAction::TransferLeader => self.transfer_leader(partition, node).await?,
            MembersAction::Replace => {
                self.membership_step(partition, MembershipChange::Replace(node), |_| false).await?;
                self.wait_joint_left(partition).await?;
            }
        }
        if partition == DIRECTORY {
            return self.directory_view().await;
        }
        // This node applied the directory update it waited for: its own replica of the
        // directory is fresh enough, and asking the directory's leader would send the caller
        // away from the partition's leader.
        self.partition_view(partition, ReadConsistency::Stale).await
    }

    /// One membership change on the partition's leader (here), then the directory update.
    /// `done` says whether a membership already has the change (a repeated call).
    async fn membership_step(
        &self,
        partition: PartitionId,
        change: MembershipChange,
        done: impl Fn(&ConfState) -> bool,
    ) -> Result<(), ApiError> {
        let conf = match self.call(partition, Request::ChangeMembership(change)).await? {
            Response::Membership(conf) => conf,
            Response::Refused(reason) => {
                let status = self.router.status(partition).await?;
                if !done(&status.conf_state) {
                    return Err(ApiError::Refused(reason));
                }
                status.conf_state
            }
            other => return Err(Self::failure(other)),
        };
        if partition == DIRECTORY {
            // The directory does not record its own members: it lives on every node, and only
            // replacing a node changes them (`cohort node replace`).
            return Ok(());
        }
        self.record_members(partition, &conf).await
    }

    /// The directory's members and leader, from this node's directory replica.
    async fn directory_view(&self) -> Result<PartitionView, ApiError> {
        let status = self.router.status(DIRECTORY).await?;
        let conf = &status.conf_state;
        let info = PartitionInfo {
            authority: crate::snapshot::DIRECTORY_AUTHORITY.to_owned(),
            voters: conf.voter_nodes(),
            learners: conf.learner_nodes(),
            peers: conf.members().into_iter().map(crate::ids::PeerId).collect(),
            members_as_of: status.applied_index,
        };
        Ok(PartitionView { partition: DIRECTORY, info, repositories: Vec::new(), leader: status.leader })
    }

    /// On a node made to join, replacing one that lost its data directory: the directory peer
    /// the directory just made it (`cohort node replace`, step 3), the only one whose messages
    /// start its directory replica (`Router::join_directory_as`). Repeatable; the last one
    /// named counts.
    pub fn join_directory_as(&self, peer: crate::ids::PeerId) -> Result<(), ApiError> {
        if self.router.hosts(DIRECTORY) {
            return Err(ApiError::Refused("this node hosts a directory replica already".into()));
        }
        match self.router.join_directory_as(peer) {
            Ok(()) => Ok(()),
            Err(super::router::JoinError::Invalid(reason)) => Err(ApiError::Invalid(reason)),
            Err(error) => Err(ApiError::Unavailable(error.to_string())),
        }
    }

    /// Retires the data directory instance this node remembers for `node`, which an operator
    /// is replacing (`cohort node replace`) with the data directory `replacement` (that node's
    /// new instance, if the operator knows it): the instance retired is refused from now on,
    /// and the next one `node` presents is admitted.
    ///
    /// With `replacement` known, this node may already know `node` by it (it first met the
    /// node after the old directory was lost): nothing to retire. Otherwise a remembered
    /// instance that still answers here is refused: it has not stopped yet (it answered within
    /// the liveness timeout; a second replacement right after a first finds the first's
    /// directory answering) or it lost nothing. Without `replacement`, an answering node that
    /// was replaced before is taken as replaced already.
    pub fn retire_peer(&self, node: NodeId, replacement: Option<InstanceId>) -> Result<Retirement, ApiError> {
        if node == self.router.node() {
            return Err(ApiError::Invalid("a node does not replace itself; ask another node".into()));
        }
        if !self.nodes.contains(&node) {
            return Err(ApiError::Invalid(format!("node {node} is not a node of this cluster")));
        }
        // Only an admitted peer is ever heard from: one that answers presents the instance
        // remembered.
        let answers = self.router.answers(node);
        if let Some(replacement) = replacement {
            let remembered = self.peers.remembered(node);
            if remembered == Some(replacement) {
                return Ok(Retirement::AlreadyReplaced);
            }
            if answers {
                let remembered = remembered.map_or_else(|| "unknown".to_owned(), |i| i.to_string());
                return Err(ApiError::Refused(format!(
                    "node {node} answers here with the data directory {remembered}, not the replacement {replacement}: \
                     retire it once that one has stopped (a node is taken as stopped two election timeouts \
                     after it last answered)"
                )));
            }
        } else if answers && self.peers.was_replaced(node) {
            return Ok(Retirement::AlreadyReplaced);
        }
        if answers {
            return Err(ApiError::Refused(format!(
                "node {node} answers with the data directory this node knows it by: it lost nothing, \
                 and replacing it would throw away a healthy replica set"
            )));
        }
        match self.peers.retire(node).map_err(|e| ApiError::Unavailable(format!("peers file: {e}")))? {
            Some(instance) => {
                tracing::warn!(%node, %instance, "retired the node's old data directory: an operator replaces the node");
                Ok(Retirement::Retired(instance))
            }
            None => Ok(Retirement::NothingRemembered),
        }
    }

    /// Waits until this node's directory replica records `conf` as `partition`'s members
    /// (nodes create or delete their replicas when they apply that). The partition's leader
    /// records them itself (`Output::LeaderMembers`), so the directory follows the partition
    /// even when this call is cut short.
    async fn record_members(&self, partition: PartitionId, conf: &ConfState) -> Result<(), ApiError> {
        let clock = self.router.env().clock.clone();
        let deadline = clock.now() + RECORD_TIMEOUT;
        loop {
            if self.router.directory_records(partition, conf) {
                return Ok(());
            }
            if clock.now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "the directory has not recorded the members of partition {partition} within {RECORD_TIMEOUT:?}"
                )));
            }
            clock.sleep_until(clock.now() + self.router.tick_interval()).await;
        }
    }

    /// Waits until `partition` (led here) has left the joint configuration a replacement
    /// entered, so the next membership change can be made at once.
    async fn wait_joint_left(&self, partition: PartitionId) -> Result<(), ApiError> {
        let clock = self.router.env().clock.clone();
        let deadline = clock.now() + RECORD_TIMEOUT;
        loop {
            if self.router.status(partition).await?.conf_state.voters_outgoing.is_empty() {
                return Ok(());
            }
            if clock.now() >= deadline {
                return Err(ApiError::Unavailable(format!(
                    "partition {partition} did not leave its joint configuration within {RECORD_TIMEOUT:?}"
                )));
            }
            clock.sleep_until(clock.now() + self.router.tick_interval()).await;
        }
    }

    /// Waits until `node`'s replica has every committed entry, as the leader (here) sees it.
    async fn wait_caught_up(&self, partition: PartitionId, node: NodeId) -> Result<(), ApiError> {
        let clock = self.router.env().clock.clone();
        let deadline = clock.now() + CATCH_UP_TIMEOUT;
        loop {
            let status = self.router.status(partition).await?;
            if status.leader != Some(self.router.node()) {
                return Err(ApiError::NotLeader { leader: status.leader });
            }
            let matched = status.progress.iter().find(|p| p.node == node).map(|p| p.match_index);
            match matched {
                None => return Err(ApiError::Refused(format!("node {node} is not a member of partition {partition}"))),
                Some(index) if index >= status.commit_index => return Ok(()),
                Some(_) if clock.now() >= deadline => {
                    return Err(ApiError::Unavailable(format!(
                        "node {node} did not catch up within {CATCH_UP_TIMEOUT:?}"
                    )))
                }
                Some(_) => clock.sleep_until(clock.now() + self.router.tick_interval()).await,
            }
        }
    }

    /// Turns Raft on or off for `partition` in place, on its leader (here). Repeating a switch
    /// already made answers the mode at once.
    pub async fn set_raft(&self, partition: PartitionId, mode: RaftMode) -> Result<RaftMode, ApiError> {
        if partition == DIRECTORY {
            return Err(ApiError::Invalid("the directory runs Raft on every node".into()));
        }
        match self.call(partition, Request::SetRaft(mode)).await? {
            Response::RaftMode(now) => Ok(now),
            other => Err(Self::failure(other)),
        }
    }

    async fn transfer_leader(&self, partition: PartitionId, node: NodeId) -> Result<(), ApiError> {
        match self.call(partition, Request::TransferLeader(node)).await? {
            Response::Transferring => {}
            other => return Err(Self::failure(other)),
        }
        let clock = self.router.env().clock.clone();
        let deadline = clock.now() + self.router.tick_interval() * 50;
        while clock.now() < deadline {
            if self.router.status(partition).await?.leader == Some(node) {
                return Ok(());
            }
            clock.sleep_until(clock.now() + self.router.tick_interval()).await;
        }
        Err(ApiError::Unavailable(format!("leadership did not move to node {node} in time")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(voters: &[u64]) -> PartitionInfo {
        PartitionInfo {
            authority: "default".into(),
            voters: voters.iter().map(|&n| NodeId(n)).collect(),
            learners: Vec::new(),
            peers: voters.iter().map(|&n| crate::ids::PeerId::new(NodeId(n), 0)).collect(),
            members_as_of: 0,
        }
    }

    /// Runs blocking work where asked, counting it; with `hold`, the caller waits for it
    /// forever.
    #[derive(Default)]
    struct CountingSpawn {
        blocking_runs: std::sync::atomic::AtomicUsize,
        hold: bool,
    }

    impl CountingSpawn {
        fn blocking_runs(&self) -> usize {
            self.blocking_runs.load(Ordering::Relaxed)
        }
    }

    impl Spawn for CountingSpawn {
        fn spawn(&self, _name: &'static str, _task: crate::env::BoxFuture<()>) {
            unreachable!("preparing a write spawns no task");
        }

        fn run_blocking(&self, work: Box<dyn FnOnce() + Send + 'static>) -> crate::env::BoxFuture<()> {
            self.blocking_runs.fetch_add(1, Ordering::Relaxed);
            work();
            match self.hold {
                true => Box::pin(std::future::pending()),
                false => Box::pin(std::future::ready(())),
            }
        }
    }

    /// A transaction storing one object of `size_bytes`, its claimed id wrong.
    fn write_of(size_bytes: usize) -> Command {
        use crate::state_machine::{NewObject, ObjectKind, Oid};
        let data = (0..size_bytes).map(|i| (i * 7919 % 251) as u8).collect();
        let object = NewObject::claimed(ObjectKind::Blob, data, Oid([0; 20]));
        let repo = RepoId::new("default", "a.git").unwrap();
        Command { client: ClientId(1), seq: 1, op: WriteOp::Transaction { repo, objects: vec![object], refs: vec![] } }
    }

    fn object_of(command: &Command) -> &crate::state_machine::NewObject {
        match &command.op {
            WriteOp::Transaction { objects, .. } => &objects[0],
            _ => unreachable!("a transaction"),
        }
    }

    #[test]
    fn large_writes_are_hashed_and_compressed_on_the_blocking_pool_and_small_ones_where_they_are_proposed() {
        let (spawn, preparing) = (CountingSpawn::default(), Preparing::default());
        let prepare = |command| futures::executor::block_on(preparing.prepared(&spawn, command)).unwrap();
        let small = prepare(write_of(PREPARE_IN_PLACE_BYTES_MAX));
        assert_eq!(spawn.blocking_runs(), 0);
        assert!(!object_of(&small).is_prepared(), "left to the partition");
        let large = write_of(PREPARE_IN_PLACE_BYTES_MAX + 1);
        let large_prepared = prepare(large.clone());
        assert_eq!(spawn.blocking_runs(), 1);
        assert!(object_of(&large_prepared).is_prepared(), "hashed and compressed");
        assert_eq!(large_prepared, large, "the same write");
        // What `check_op` compares with the claimed id is the content's own.
        let object = object_of(&large_prepared);
        assert_eq!(object.content_oid(), crate::state_machine::Oid::hash_object(object.kind, &object.data));
        assert_ne!(object.content_oid(), object.oid);
        // Larger than any partition proposes: refused there, unprepared.
        let too_large = prepare(write_of(crate::limits::COMMAND_SIZE_BYTES_MAX + 1));
        assert!(!object_of(&too_large).is_prepared());
        assert_eq!(preparing.bytes.load(Ordering::Relaxed), 0, "every reservation given back");
    }

    #[test]
    fn kept_routes_hold_only_while_the_routes_version_stands() {
        let repo = |path: &str| RepoId::new("default", path).unwrap();
        let (a, b) = (repo("a.git"), repo("b.git"));
        let mut cache = RouteCache::default();
        assert_eq!(cache.get(0, &a), None);
        cache.remember(0, 0, &a, PartitionId(1));
        assert_eq!(cache.get(0, &a), Some(PartitionId(1)));
        // The routes changed: nothing kept is answered, and what was read before the change
        // is not kept.
        assert_eq!(cache.get(1, &a), None);
        cache.remember(0, 1, &b, PartitionId(2));
        assert_eq!(cache.get(1, &b), None);
        // Read at the new version, a route is kept again; the older ones are gone.
        cache.remember(1, 1, &b, PartitionId(2));
        assert_eq!((cache.get(1, &a), cache.get(1, &b)), (None, Some(PartitionId(2))));
        assert_eq!(cache.routes.len(), 1);
        // A late reader of an older version keeps nothing in a newer cache.
        cache.remember(0, 0, &a, PartitionId(1));
        assert_eq!(cache.get(1, &a), None);
        // Full, it starts over.
        for n in 0..crate::limits::ROUTE_CACHE_ENTRIES_MAX as u64 {
            cache.remember(1, 1, &repo(&format!("r{n}.git")), PartitionId(n));
        }
        assert_eq!(cache.routes.len(), 1, "emptied when full, then the newest kept");
        assert_eq!(cache.get(1, &b), None);
    }

    #[test]
    fn large_writes_are_prepared_one_at_a_time_and_beyond_a_bound_answered_busy() {
        use std::future::Future as _;
        use std::task::{Context, Poll};
        let (spawn, preparing) = (CountingSpawn { hold: true, ..Default::default() }, Preparing::default());
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        let largest = crate::limits::COMMAND_SIZE_BYTES_MAX;
        let mut first = Box::pin(preparing.prepared(&spawn, write_of(largest)));
        let mut second = Box::pin(preparing.prepared(&spawn, write_of(largest)));
        assert!(first.as_mut().poll(&mut cx).is_pending());
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(spawn.blocking_runs(), 1, "the second waits for the first");
        assert_eq!(preparing.bytes.load(Ordering::Relaxed), PREPARING_BYTES_MAX);
        let third = preparing.prepared(&spawn, write_of(PREPARE_IN_PLACE_BYTES_MAX + 1));
        assert!(matches!(Box::pin(third).as_mut().poll(&mut cx), Poll::Ready(Err(ApiError::Busy))));
        // Small writes never wait.
        let small = preparing.prepared(&spawn, write_of(PREPARE_IN_PLACE_BYTES_MAX));
        assert!(matches!(Box::pin(small).as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
        // A request dropped while its write is prepared (its client went away) gives back its
        // room and its turn.
        drop(first);
        assert!(second.as_mut().poll(&mut cx).is_pending());
        assert_eq!(spawn.blocking_runs(), 2, "the second's turn");
        let mut fourth = Box::pin(preparing.prepared(&spawn, write_of(PREPARE_IN_PLACE_BYTES_MAX + 1)));
        assert!(fourth.as_mut().poll(&mut cx).is_pending(), "room again: it waits its turn");
        assert_eq!(spawn.blocking_runs(), 2);
        drop((second, fourth));
        assert_eq!(preparing.bytes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn placement_picks_the_least_loaded_nodes_and_counts_new_partitions_once() {
        let nodes: Vec<NodeId> = (1..=4).map(NodeId).collect();
        let mut placement = PlacementLoad::default();
        placement.count(&[(PartitionId(1), info(&[1, 2, 3])), (PartitionId(2), info(&[1, 2, 4]))]);
        assert_eq!(place(&nodes, 3, &placement.load), vec![NodeId(1), NodeId(3), NodeId(4)]);
        assert_eq!(placement.through, Some(PartitionId(2)));
        // The next partitions are counted on top, as `partitions_after` returns them.
        placement.count(&[(PartitionId(3), info(&[2, 3, 4]))]);
        assert_eq!(place(&nodes, 2, &placement.load), vec![NodeId(1), NodeId(3)]);
        assert_eq!(place(&nodes, 1, &BTreeMap::new()), vec![NodeId(1)], "ties go to the lower id");
    }
}
