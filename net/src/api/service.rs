//! The tonic service: authentication, conversion, and mapping of outcomes to gRPC statuses.

use super::convert;
use super::proto::{self, cohort_server::Cohort};
use cohort_core::ids::{NodeId, PartitionId, DIRECTORY};
use cohort_core::node::{
    ApiError, MembersAction, NodeService, PartitionView, Retirement, UploadBegun, UPLOAD_PIECE_BYTES,
};
use cohort_core::partition::{PartitionStatus, ReadConsistency};
use cohort_core::persist::RaftMode;
use cohort_core::state_machine::{PagedObject, ReadQuery, ReadResult, Rejection, RelativePath, WriteOk};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Metadata key of the leader's client URL on an `UNAVAILABLE` not-leader answer.
pub const LEADER_METADATA: &str = "cohort-leader";
/// Metadata key of the client token, when the node requires one.
pub const TOKEN_METADATA: &str = "authorization";

/// What the service knows of the cluster's nodes.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeId,
    pub peer_address: String,
    /// As clients dial it, e.g. `http://127.0.0.1:7101`.
    pub client_url: String,
}

/// The node's view of the cluster for status answers: which peers are connected.
pub trait NodeDirectory: Send + Sync + 'static {
    fn nodes(&self) -> Vec<NodeInfo>;
    fn is_up(&self, node: NodeId) -> bool;
}

pub struct ApiServer {
    service: Arc<NodeService>,
    directory: Arc<dyn NodeDirectory>,
    token: Option<String>,
    object_size_bytes_max: u64,
}

/// Largest object a node accepts unless configured otherwise.
pub const OBJECT_SIZE_BYTES_MAX_DEFAULT: u64 = 4 << 30;

impl ApiServer {
    pub fn new(service: Arc<NodeService>, directory: Arc<dyn NodeDirectory>, token: Option<String>) -> ApiServer {
        ApiServer { service, directory, token, object_size_bytes_max: OBJECT_SIZE_BYTES_MAX_DEFAULT }
    }

    /// Objects larger than this are refused (`OUT_OF_RANGE`) before any piece is sent.
    pub fn with_object_size_bytes_max(self, object_size_bytes_max: u64) -> ApiServer {
        ApiServer { object_size_bytes_max, ..self }
    }

    pub fn into_service(self) -> proto::cohort_server::CohortServer<ApiServer> {
        proto::cohort_server::CohortServer::new(self)
            .max_decoding_message_size(cohort_core::limits::COMMAND_SIZE_BYTES_MAX + 64 * 1024)
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else { return Ok(()) };
        let given = request.metadata().get(TOKEN_METADATA).and_then(|v| v.to_str().ok());
        match given.and_then(|v| v.strip_prefix("Bearer ")) {
            Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Ok(()),
            _ => Err(Status::unauthenticated("missing or wrong client token")),
        }
    }

    /// `call` on the node service on the blocking pool, off the async workers: for calls that
    /// write and sync a file. `what` names it if the work is lost.
    async fn off_workers<T: Send + 'static>(
        &self,
        what: &str,
        call: impl FnOnce(&NodeService) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, Status> {
        let service = self.service.clone();
        let (done, answer) = futures::channel::oneshot::channel();
        let work = Box::new(move || {
            let _ = done.send(call(&service));
        });
        self.service.router().env().spawn.run_blocking(work).await;
        answer
            .await
            .map_err(|_| Status::internal(format!("{what}: the work was dropped")))?
            .map_err(|e| self.status_of(e))
    }

    fn status_of(&self, error: ApiError) -> Status {
        match error {
            ApiError::NotLeader { leader } => {
                let url =
                    leader.and_then(|l| self.directory.nodes().into_iter().find(|n| n.id == l)).map(|n| n.client_url);
                let mut status = Status::unavailable(match &url {
                    Some(url) => format!("not the leader; the leader is at {url}"),
                    None => "not the leader; no leader is known yet".to_owned(),
                });
                if let Some(url) = url.and_then(|u| u.parse().ok()) {
                    status.metadata_mut().insert(LEADER_METADATA, url);
                }
                status
            }
            ApiError::NotFound(what) => Status::not_found(what),
            ApiError::Rejected(rejection @ Rejection::ObjectTooLarge { .. }) => {
                Status::out_of_range(rejection.to_string())
            }
            // The upload moved on without this call (a retried piece after a leader change, or
            // an upload dropped as idle): the client begins it again.
            ApiError::Rejected(rejection @ (Rejection::UploadNotFound { .. } | Rejection::UploadOutOfOrder { .. })) => {
                Status::aborted(rejection.to_string())
            }
            ApiError::Rejected(rejection) => Status::failed_precondition(rejection.to_string()),
            ApiError::TooLarge(message) => Status::out_of_range(message),
            ApiError::Invalid(message) => Status::invalid_argument(message),
            ApiError::Busy => Status::resource_exhausted("busy: too many requests in flight"),
            ApiError::Unknown => Status::unavailable("outcome unknown; retry with the same client id and sequence"),
            ApiError::Unavailable(message) => Status::unavailable(message),
            ApiError::Refused(reason) => Status::failed_precondition(reason),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn write_reply(ok: WriteOk) -> proto::WriteReply {
    proto::WriteReply {
        index: ok.index,
        object_ids: ok.object_ids.iter().map(|o| o.0.to_vec()).collect(),
        partition: ok.partition.map_or(0, |p| p.0),
    }
}

fn consistency(stale: bool) -> ReadConsistency {
    if stale {
        ReadConsistency::Stale
    } else {
        ReadConsistency::Linearizable
    }
}

/// Page sizes when a listing asks for the server's default (`limit` 0).
const ROUTES_PAGE_DEFAULT: u32 = 10_000;
const PARTITIONS_PAGE_DEFAULT: u32 = 1_000;
const STATUS_PAGE_DEFAULT: u32 = 1_000;
/// Replicas in one status page: each costs a round trip to its replica.
const STATUS_PAGE_MAX: u32 = 1_000;

#[tonic::async_trait]
impl Cohort for ApiServer {
    async fn repo_info(
        &self,
        request: Request<proto::RepoInfoRequest>,
    ) -> Result<Response<proto::PartitionInfo>, Status> {
        self.authorize(&request)?;
        let repo = convert::repo(request.into_inner().repo).map_err(Status::invalid_argument)?;
        let view = self.service.repository_partition(&repo).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(partition_info(&view)))
    }

    async fn change_members(
        &self,
        request: Request<proto::ChangeMembersRequest>,
    ) -> Result<Response<proto::PartitionInfo>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let action = match request.action.as_str() {
            "add-learner" => MembersAction::AddLearner,
            "add-voter" => MembersAction::AddVoter,
            "promote" => MembersAction::Promote,
            "remove" => MembersAction::Remove,
            "transfer-leader" => MembersAction::TransferLeader,
            "replace" => MembersAction::Replace,
            other => return Err(Status::invalid_argument(format!("unknown membership action {other:?}"))),
        };
        let view = self
            .service
            .change_members(PartitionId(request.partition), NodeId(request.node), action)
            .await
            .map_err(|e| self.status_of(e))?;
        Ok(Response::new(partition_info(&view)))
    }

    async fn set_partition_raft(
        &self,
        request: Request<proto::SetPartitionRaftRequest>,
    ) -> Result<Response<proto::SetPartitionRaftReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let mode = if request.enabled { RaftMode::On } else { RaftMode::Off };
        let now = self.service.set_raft(PartitionId(request.partition), mode).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(proto::SetPartitionRaftReply { enabled: now == RaftMode::On }))
    }

    async fn retire_peer(
        &self,
        request: Request<proto::RetirePeerRequest>,
    ) -> Result<Response<proto::RetirePeerReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let node = NodeId(request.node);
        let replacement = match request.replacement_instance.as_str() {
            "" => None,
            hex => Some(hex.parse().map_err(|e| Status::invalid_argument(format!("replacement instance: {e}")))?),
        };
        // The peers file is rewritten and synced.
        let retired =
            self.off_workers("retiring a peer", move |service| service.retire_peer(node, replacement)).await?;
        let (retired_instance, already_replaced) = match retired {
            Retirement::Retired(instance) => (instance.to_string(), false),
            Retirement::NothingRemembered => (String::new(), false),
            Retirement::AlreadyReplaced => (String::new(), true),
        };
        Ok(Response::new(proto::RetirePeerReply { retired_instance, already_replaced }))
    }

    async fn join_directory(
        &self,
        request: Request<proto::JoinDirectoryRequest>,
    ) -> Result<Response<proto::JoinDirectoryReply>, Status> {
        self.authorize(&request)?;
        let peer = cohort_core::ids::PeerId(request.into_inner().peer);
        // The peer is written to a file and synced.
        self.off_workers("joining the directory", move |service| service.join_directory_as(peer)).await?;
        Ok(Response::new(proto::JoinDirectoryReply {}))
    }

    async fn list_partitions(
        &self,
        request: Request<proto::ListPartitionsRequest>,
    ) -> Result<Response<proto::ListPartitionsReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let after = (request.after > 0).then_some(PartitionId(request.after));
        let limit = if request.limit == 0 { PARTITIONS_PAGE_DEFAULT } else { request.limit };
        let views = self
            .service
            .partition_views(after, limit, ReadConsistency::Linearizable)
            .await
            .map_err(|e| self.status_of(e))?;
        Ok(Response::new(proto::ListPartitionsReply { partitions: views.iter().map(partition_info).collect() }))
    }

    async fn create_repository(
        &self,
        request: Request<proto::CreateRepositoryRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let (client, seq) = convert::write_id(request.id).map_err(Status::invalid_argument)?;
        let fork_of = match request.fork_of {
            Some(path) => Some(RelativePath::new(&path).map_err(|e| Status::invalid_argument(e.to_string()))?),
            None => None,
        };
        let ok = self.service.create_repository(client, seq, repo, fork_of).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(write_reply(ok)))
    }

    async fn delete_repository(
        &self,
        request: Request<proto::DeleteRepositoryRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let (client, seq) = convert::write_id(request.id).map_err(Status::invalid_argument)?;
        let ok = self.service.delete_repository(client, seq, repo).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(write_reply(ok)))
    }

    async fn write(&self, request: Request<proto::WriteRequest>) -> Result<Response<proto::WriteReply>, Status> {
        self.authorize(&request)?;
        let command = convert::write_command(request.into_inner()).map_err(Status::invalid_argument)?;
        let ok = self.service.write(command).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(write_reply(ok)))
    }

    async fn read_refs(
        &self,
        request: Request<proto::ReadRefsRequest>,
    ) -> Result<Response<proto::ReadRefsReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let query = ReadQuery::ListRefs { repo: repo.clone() };
        let answer = self
            .service
            .read_repository(&repo, query, consistency(request.stale))
            .await
            .map_err(|e| self.status_of(e))?;
        let ReadResult::Refs(refs) = answer.result else {
            return Err(Status::internal("unexpected answer to a reference listing"));
        };
        let refs = refs
            .iter()
            .map(|(name, value)| proto::Ref {
                name: name.as_str().to_owned(),
                value: Some(convert::ref_value_to_wire(value)),
            })
            .collect();
        Ok(Response::new(proto::ReadRefsReply { refs, applied_index: answer.applied_index }))
    }

    async fn read_object(
        &self,
        request: Request<proto::ReadObjectRequest>,
    ) -> Result<Response<proto::ReadObjectReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let oid = convert::oid(&request.oid).map_err(Status::invalid_argument)?;
        let query = ReadQuery::GetObject { repo: repo.clone(), oid };
        let answer = self
            .service
            .read_repository(&repo, query, consistency(request.stale))
            .await
            .map_err(|e| self.status_of(e))?;
        let reply = match answer.result {
            ReadResult::Object(Some((kind, data))) => proto::ReadObjectReply {
                found: true,
                kind: kind.as_str().to_owned(),
                data,
                applied_index: answer.applied_index,
            },
            ReadResult::Object(None) => {
                proto::ReadObjectReply { found: false, applied_index: answer.applied_index, ..Default::default() }
            }
            _ => return Err(Status::internal("unexpected answer to an object read")),
        };
        Ok(Response::new(reply))
    }

    async fn list_objects(
        &self,
        request: Request<proto::ListObjectsRequest>,
    ) -> Result<Response<proto::ListObjectsReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let after = match request.after.is_empty() {
            true => None,
            false => Some(convert::oid(&request.after).map_err(Status::invalid_argument)?),
        };
        // Half a message's room: one object may be as large as a whole write.
        let bytes_max = cohort_core::limits::COMMAND_SIZE_BYTES_MAX as u64 / 2;
        let query = ReadQuery::LooseObjects { repo: repo.clone(), after, bytes_max };
        let answer = self
            .service
            .read_repository(&repo, query, consistency(request.stale))
            .await
            .map_err(|e| self.status_of(e))?;
        match answer.result {
            ReadResult::LooseObjects { objects, complete } => Ok(Response::new(proto::ListObjectsReply {
                objects: objects
                    .into_iter()
                    .map(|(oid, object)| match object {
                        PagedObject::Loose(loose) => {
                            proto::LooseObject { oid: oid.0.to_vec(), loose, ..Default::default() }
                        }
                        PagedObject::Large { kind, size_bytes } => proto::LooseObject {
                            oid: oid.0.to_vec(),
                            loose: Vec::new(),
                            large_kind: kind.as_str().to_owned(),
                            large_size: size_bytes,
                        },
                    })
                    .collect(),
                complete,
                applied_index: answer.applied_index,
            })),
            ReadResult::Rejected(rejection) => Err(Status::failed_precondition(rejection.to_string())),
            _ => Err(Status::internal("unexpected answer to an object listing")),
        }
    }

    async fn read_object_range(
        &self,
        request: Request<proto::ReadObjectRangeRequest>,
    ) -> Result<Response<proto::ReadObjectRangeReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let oid = convert::oid(&request.oid).map_err(Status::invalid_argument)?;
        let query = ReadQuery::ObjectRange { repo: repo.clone(), oid, offset: request.offset, len_max: request.length };
        let answer = self
            .service
            .read_repository(&repo, query, consistency(request.stale))
            .await
            .map_err(|e| self.status_of(e))?;
        match answer.result {
            ReadResult::ObjectRange(Some(range)) => Ok(Response::new(proto::ReadObjectRangeReply {
                found: true,
                kind: range.kind.as_str().to_owned(),
                size: range.size_bytes,
                data: range.data,
                applied_index: answer.applied_index,
            })),
            ReadResult::ObjectRange(None) => Ok(Response::new(proto::ReadObjectRangeReply {
                found: false,
                applied_index: answer.applied_index,
                ..Default::default()
            })),
            ReadResult::Rejected(rejection) => Err(self.status_of(ApiError::Rejected(rejection))),
            _ => Err(Status::internal("unexpected answer to an object range read")),
        }
    }

    async fn begin_upload(
        &self,
        request: Request<proto::BeginUploadRequest>,
    ) -> Result<Response<proto::BeginUploadReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let (client, seq) = convert::write_id(request.id).map_err(Status::invalid_argument)?;
        let kind = convert::kind(&request.kind).map_err(Status::invalid_argument)?;
        let begun = self
            .service
            .begin_upload(client, seq, repo, kind, request.size, self.object_size_bytes_max, UPLOAD_PIECE_BYTES)
            .await
            .map_err(|e| self.status_of(e))?;
        Ok(Response::new(match begun {
            UploadBegun::Finished(ok) => {
                proto::BeginUploadReply { finished: Some(write_reply(ok)), piece_size: 0, received_bytes: 0 }
            }
            UploadBegun::InProgress { chunk_bytes, status } => proto::BeginUploadReply {
                finished: None,
                piece_size: u64::from(chunk_bytes),
                received_bytes: status.received_bytes,
            },
        }))
    }

    async fn upload_piece(
        &self,
        request: Request<proto::UploadPieceRequest>,
    ) -> Result<Response<proto::UploadPieceReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let (client, seq) = convert::write_id(request.id).map_err(Status::invalid_argument)?;
        self.service
            .upload_piece(client, seq, repo, request.offset, request.data)
            .await
            .map_err(|e| self.status_of(e))?;
        Ok(Response::new(proto::UploadPieceReply {}))
    }

    async fn finish_upload(
        &self,
        request: Request<proto::FinishUploadRequest>,
    ) -> Result<Response<proto::WriteReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let repo = convert::repo(request.repo).map_err(Status::invalid_argument)?;
        let (client, seq) = convert::write_id(request.id).map_err(Status::invalid_argument)?;
        let oid = convert::oid(&request.oid).map_err(Status::invalid_argument)?;
        let refs = request.refs.into_iter().map(convert::ref_update).collect::<Result<Vec<_>, _>>();
        let refs = refs.map_err(Status::invalid_argument)?;
        let ok = self.service.finish_upload(client, seq, repo, oid, refs).await.map_err(|e| self.status_of(e))?;
        Ok(Response::new(write_reply(ok)))
    }

    async fn list_repositories(
        &self,
        request: Request<proto::ListRepositoriesRequest>,
    ) -> Result<Response<proto::ListRepositoriesReply>, Status> {
        self.authorize(&request)?;
        let request = request.into_inner();
        let after = request.after.map(|r| convert::repo(Some(r))).transpose().map_err(Status::invalid_argument)?;
        let limit = if request.limit == 0 { ROUTES_PAGE_DEFAULT } else { request.limit };
        let repositories = self.service.list_repositories(after, limit).await.map_err(|e| self.status_of(e))?;
        let repositories = repositories
            .iter()
            .map(|r| proto::RepositoryInfo { repo: Some(convert::repo_to_wire(&r.repo)), partition: r.partition.0 })
            .collect();
        Ok(Response::new(proto::ListRepositoriesReply { repositories }))
    }

    async fn status(&self, request: Request<proto::StatusRequest>) -> Result<Response<proto::StatusReply>, Status> {
        self.authorize(&request)?;
        let router = self.service.router();
        let me = router.node();
        let nodes = self
            .directory
            .nodes()
            .into_iter()
            .map(|n| proto::NodeStatus {
                id: n.id.0,
                peer_address: n.peer_address,
                client_address: n.client_url,
                up: n.id == me || self.directory.is_up(n.id),
            })
            .collect();
        let request = request.into_inner();
        let metrics = &router.env().metrics;
        let gauge = |value: i64| value.max(0) as u64;
        let (leaders, followers, candidates, learners) = (
            gauge(metrics.partitions_leader.get()),
            gauge(metrics.partitions_follower.get()),
            gauge(metrics.partitions_candidate.get()),
            gauge(metrics.partitions_learner.get()),
        );
        let unloaded = gauge(metrics.partitions_unloaded.get());
        let summary = proto::StatusSummary {
            // Unloaded replicas keep no role: the roles count loaded ones.
            hosted: leaders + followers + candidates + learners + unloaded,
            leaders,
            followers,
            candidates,
            learners,
            quiesced: gauge(metrics.partitions_quiesced.get()),
            unloaded,
        };
        let mut partitions = Vec::new();
        if !request.summary_only {
            let limit = if request.limit == 0 { STATUS_PAGE_DEFAULT } else { request.limit.min(STATUS_PAGE_MAX) };
            let rows = router.store().read();
            for partition in router.partitions_from(PartitionId(request.start), limit as usize) {
                let Ok(status) = router.status(partition).await else { continue };
                // The repositories routed to it, from this node's directory replica (may be a
                // little behind).
                let repositories = match &rows {
                    Ok(rows) if partition != DIRECTORY => {
                        cohort_core::store::read::directory_routed_to(rows, DIRECTORY, partition).unwrap_or_default()
                    }
                    _ => Vec::new(),
                };
                let repositories = repositories.iter().map(convert::repo_to_wire).collect();
                partitions.push(partition_status(me, status, repositories));
            }
        }
        let origin = if router.joins() { "join" } else { "bootstrap" }.to_owned();
        let instance = self.service.instance().to_string();
        Ok(Response::new(proto::StatusReply {
            node: me.0,
            nodes,
            partitions,
            summary: Some(summary),
            origin,
            instance,
        }))
    }
}

fn partition_info(view: &PartitionView) -> proto::PartitionInfo {
    proto::PartitionInfo {
        id: view.partition.0,
        authority: view.info.authority.clone(),
        voters: view.info.voters.iter().map(|n| n.0).collect(),
        learners: view.info.learners.iter().map(|n| n.0).collect(),
        leader: view.leader.map_or(0, |l| l.0),
        repositories: view.repositories.iter().map(convert::repo_to_wire).collect(),
        peers: view.info.peers.iter().map(|peer| peer.0).collect(),
    }
}

fn partition_status(me: NodeId, status: PartitionStatus, repositories: Vec<proto::Repo>) -> proto::PartitionStatus {
    // This node's own replica, always; the others' progress when this node leads.
    let mut replicas = vec![proto::ReplicaStatus {
        node: me.0,
        role: status.role.name().to_owned(),
        applied_index: status.applied_index,
        match_index: status.progress.iter().find(|p| p.node == me).map_or(status.last_index, |p| p.match_index),
        compacted_index: status.compacted_index,
        durable_index: status.durable_index,
        quiesced: status.quiesced,
        unloaded: status.unloaded,
        raft_off: status.raft == RaftMode::Off,
        progress: String::new(),
        behind_seconds: 0.0,
        last_heard_seconds: None,
    }];
    for progress in status.progress.iter().filter(|p| p.node != me) {
        replicas.push(proto::ReplicaStatus {
            node: progress.node.0,
            role: if progress.voter { "follower" } else { "learner" }.to_owned(),
            applied_index: 0,
            match_index: progress.match_index,
            compacted_index: 0,
            durable_index: 0,
            quiesced: false,
            unloaded: false,
            raft_off: false,
            progress: progress.state.to_owned(),
            behind_seconds: progress.behind.as_secs_f64(),
            last_heard_seconds: progress.last_heard.map(|d| d.as_secs_f64()),
        });
    }
    proto::PartitionStatus {
        id: status.partition.0,
        repositories,
        leader: status.leader.map_or(0, |l| l.0),
        term: status.term,
        commit_index: status.commit_index,
        replicas,
    }
}
