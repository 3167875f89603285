//! A Rust client of the cohort API that routes: it knows several endpoints, remembers which
//! endpoint led each repository's partition last, follows `NotLeader` hints, retries writes
//! with the same (client id, sequence number) after timeouts and failovers, and gives up with
//! a clear error once its deadline passes.

use crate::api::proto::{self, cohort_client::CohortClient};
use crate::api::{convert, LEADER_METADATA, TOKEN_METADATA};
use cohort_core::state_machine::{Expected, NewObject, ObjectKind, Oid, RefName, RefValue, RepoId};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Client URLs of the cluster's nodes, e.g. `http://127.0.0.1:7101`.
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    /// Total time one call may take, retries included.
    pub deadline: Duration,
    /// Time one attempt may take before it is retried elsewhere.
    pub attempt_timeout: Duration,
    /// Identifies this client's writes; with the sequence number it makes them idempotent.
    pub client_id: u64,
    /// The cluster CA's certificate (PEM), which `https` endpoints must present a certificate
    /// signed by.
    pub ca_pem: Option<Vec<u8>>,
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, client_id: u64) -> ClientConfig {
        ClientConfig {
            endpoints,
            token: None,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            client_id,
            ca_pem: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("rejected: {0}")]
    Rejected(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("the cluster refused the client token: {0}")]
    Unauthenticated(String),
    #[error("not permitted: {0}")]
    PermissionDenied(String),
    #[error("too large: {0}")]
    TooLarge(String),
    /// An upload went on without this call (see `upload_object`, which begins it again).
    #[error("aborted: {0}")]
    Aborted(String),
    /// The server failed in a way a retry does not fix (a bug, or an unsupported call).
    #[error("server error ({code}): {message}")]
    Server { code: String, message: String },
    #[error("reading the object to upload: {0}")]
    Input(String),
    #[error("writing the object read: {0}")]
    Output(String),
    #[error("gave up after {elapsed_ms} ms and {attempts} attempts; last error: {last}")]
    Timeout { elapsed_ms: u128, attempts: usize, last: String },
    #[error("bad endpoint {endpoint}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
}

/// Bytes of an object one range read asks for.
pub const READ_PIECE_BYTES: u64 = 1024 * 1024;

/// A piece of an object's content, with the object's kind and whole size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectPiece {
    pub kind: ObjectKind,
    pub size_bytes: u64,
    pub data: Vec<u8>,
}

/// An object of a listing page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListedObject {
    /// Git's loose encoding (zlib of the header and content).
    Loose(Vec<u8>),
    /// Too large for a page: read it by range.
    Large { kind: ObjectKind, size_bytes: u64 },
}

/// Input read at any offset (a file), so an upload can go on from where the cluster stands.
pub trait ReadAt {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

/// A reference update, as the client states it.
#[derive(Clone, Debug)]
pub struct RefChange {
    pub name: RefName,
    pub expected: Expected,
    pub new: Option<RefValue>,
}

pub struct Client {
    config: ClientConfig,
    channels: Mutex<BTreeMap<String, Channel>>,
    /// Repository (storage/path) -> the endpoint that last served it.
    leaders: Mutex<BTreeMap<String, String>>,
    next_seq: AtomicU64,
    round_robin: AtomicUsize,
}

/// Leader hints followed back to back before the client pauses.
const HINT_HOPS_MAX: usize = 3;

enum Next {
    Retry { hint: Option<String> },
    Fail(ClientError),
}

impl ClientError {
    /// The process exit status the CLI reports this error with: 2 the request is wrong (invalid,
    /// too large), 3 the cluster refused it (a failed precondition, not found, not permitted),
    /// 4 the cluster could not be reached or did not answer in time, 5 anything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Invalid(_) | ClientError::TooLarge(_) | ClientError::BadEndpoint { .. } => 2,
            ClientError::Rejected(_)
            | ClientError::NotFound(_)
            | ClientError::Unauthenticated(_)
            | ClientError::PermissionDenied(_) => 3,
            ClientError::Timeout { .. } | ClientError::Aborted(_) => 4,
            ClientError::Server { .. } | ClientError::Input(_) | ClientError::Output(_) => 5,
        }
    }
}

/// Retries only what a retry can fix: an unavailable node or one that is not the leader
/// (following its hint), a busy node (with backoff), an attempt that timed out or was
/// cancelled, a connection that failed (tonic reports a refused or broken connection as
/// `UNKNOWN` "transport error", or `INTERNAL` "h2 protocol error"; cohort's server sends
/// neither code for those). Writes carry their write id, so a retry is safe. Everything else
/// fails at once with its cause.
fn classify(status: &Status) -> Next {
    let message = status.message().to_owned();
    let transport_failure = match status.code() {
        Code::Unknown => true,
        Code::Internal => message.starts_with("h2 protocol error") || message.contains("transport error"),
        _ => false,
    };
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled => {
            let hint = status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Next::Retry { hint }
        }
        _ if transport_failure => Next::Retry { hint: None },
        Code::FailedPrecondition | Code::AlreadyExists => Next::Fail(ClientError::Rejected(message)),
        // Retrying the same call cannot help; the caller restarts what it belongs to.
        Code::Aborted => Next::Fail(ClientError::Aborted(message)),
        Code::NotFound => Next::Fail(ClientError::NotFound(message)),
        Code::InvalidArgument => Next::Fail(ClientError::Invalid(message)),
        Code::OutOfRange => Next::Fail(ClientError::TooLarge(message)),
        Code::Unauthenticated => Next::Fail(ClientError::Unauthenticated(message)),
        Code::PermissionDenied => Next::Fail(ClientError::PermissionDenied(message)),
        code @ (Code::Ok | Code::Unknown | Code::Internal | Code::Unimplemented | Code::DataLoss) => {
            Next::Fail(ClientError::Server { code: format!("{code:?}"), message })
        }
    }
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::BadEndpoint { endpoint: String::new(), reason: "no endpoints given".into() });
        }
        let client = Client {
            config,
            channels: Mutex::new(BTreeMap::new()),
            leaders: Mutex::new(BTreeMap::new()),
            next_seq: AtomicU64::new(1),
            round_robin: AtomicUsize::new(0),
        };
        for endpoint in &client.config.endpoints {
            client.endpoint(endpoint)?;
        }
        Ok(client)
    }

    /// Starts sequence numbers at `next` (a CLI invocation picks a fresh client id instead).
    pub fn set_next_sequence(&self, next: u64) {
        self.next_seq.store(next, Ordering::Relaxed);
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, ClientError> {
        let mut channels = self.channels.lock().expect("not poisoned");
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let channel = self.endpoint(endpoint)?.connect_timeout(self.config.attempt_timeout).connect_lazy();
        channels.insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
    }

    /// `endpoint` parsed, with TLS if it is `https`.
    fn endpoint(&self, endpoint: &str) -> Result<Endpoint, ClientError> {
        let bad = |reason: String| ClientError::BadEndpoint { endpoint: endpoint.to_owned(), reason };
        let parsed = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| bad(e.to_string()))?;
        if !endpoint.starts_with("https://") {
            return Ok(parsed);
        }
        let ca =
            self.config.ca_pem.as_deref().ok_or_else(|| {
                bad("an https endpoint needs the cluster's CA certificate (--ca or COHORT_CA)".into())
            })?;
        let tls = crate::tls::api_client_config(ca).map_err(|e| bad(e.to_string()))?;
        parsed.tls_config(tls).map_err(|e| bad(e.to_string()))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.config.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert(TOKEN_METADATA, value);
            }
        }
        request
    }

    fn next_endpoint(&self) -> String {
        let i = self.round_robin.fetch_add(1, Ordering::Relaxed);
        self.config.endpoints[i % self.config.endpoints.len()].clone()
    }

    /// Runs `attempt` against endpoints until it succeeds, fails for good, or the deadline
    /// passes. `key` names the repository, for the leader cache.
    async fn call<T, F, Fut>(&self, key: Option<String>, attempt: F) -> Result<T, ClientError>
    where
        F: FnMut(CohortClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_with(key, self.config.attempt_timeout, attempt).await
    }

    /// `call` with its own time per attempt (a membership change waits for a replica to
    /// catch up, far longer than a write).
    async fn call_with<T, F, Fut>(
        &self,
        key: Option<String>,
        attempt_timeout: Duration,
        mut attempt: F,
    ) -> Result<T, ClientError>
    where
        F: FnMut(CohortClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let started = tokio::time::Instant::now();
        let cached = key.as_ref().and_then(|k| self.leaders.lock().expect("not poisoned").get(k).cloned());
        let mut target = cached.unwrap_or_else(|| self.next_endpoint());
        let mut attempts = 0;
        // Short pauses: during a failover the new leader appears within an election timeout,
        // and a client that sleeps long adds its own delay to the outage.
        let mut pause = Duration::from_millis(10);
        // Hints followed in a row without a pause; stale views can point nodes at each other.
        let mut hops = 0;
        loop {
            attempts += 1;
            let client = CohortClient::new(self.channel(&target)?)
                .max_decoding_message_size(cohort_core::limits::COMMAND_SIZE_BYTES_MAX + 64 * 1024);
            let outcome = tokio::time::timeout(attempt_timeout, attempt(client)).await;
            let last = match outcome {
                Ok(Ok(response)) => {
                    if let Some(key) = key {
                        self.leaders.lock().expect("not poisoned").insert(key, target);
                    }
                    return Ok(response.into_inner());
                }
                Ok(Err(status)) => match classify(&status) {
                    Next::Fail(error) => return Err(error),
                    Next::Retry { hint: Some(leader) } if leader != target && hops < HINT_HOPS_MAX => {
                        // A fresh hint: follow it at once.
                        hops += 1;
                        target = leader;
                        continue;
                    }
                    Next::Retry { .. } => {
                        let message = format!("{target}: {}: {}", status.code(), status.message());
                        target = self.next_endpoint();
                        message
                    }
                },
                Err(_) => {
                    let message = format!("{target}: no answer within {attempt_timeout:?}");
                    target = self.next_endpoint();
                    message
                }
            };
            hops = 0;
            let elapsed = started.elapsed();
            if elapsed + pause >= self.config.deadline {
                return Err(ClientError::Timeout { elapsed_ms: elapsed.as_millis(), attempts, last });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    fn write_id(&self) -> proto::WriteId {
        proto::WriteId { client_id: self.config.client_id, sequence: self.next_seq.fetch_add(1, Ordering::Relaxed) }
    }

    fn key(repo: &RepoId) -> String {
        format!("{}/{}", repo.storage, repo.relative_path.as_str())
    }

    pub async fn create_repository(
        &self,
        repo: &RepoId,
        fork_of: Option<&str>,
    ) -> Result<proto::WriteReply, ClientError> {
        let message = proto::CreateRepositoryRequest {
            repo: Some(convert::repo_to_wire(repo)),
            id: Some(self.write_id()),
            fork_of: fork_of.map(str::to_owned),
        };
        self.call(None, |mut c| {
            let request = self.request(message.clone());
            async move { c.create_repository(request).await }
        })
        .await
    }

    pub async fn delete_repository(&self, repo: &RepoId) -> Result<proto::WriteReply, ClientError> {
        let message =
            proto::DeleteRepositoryRequest { repo: Some(convert::repo_to_wire(repo)), id: Some(self.write_id()) };
        self.call(None, |mut c| {
            let request = self.request(message.clone());
            async move { c.delete_repository(request).await }
        })
        .await
    }

    /// One transaction: objects and reference changes, atomically.
    pub async fn write(
        &self,
        repo: &RepoId,
        objects: Vec<NewObject>,
        refs: Vec<RefChange>,
    ) -> Result<proto::WriteReply, ClientError> {
        let message = proto::WriteRequest {
            repo: Some(convert::repo_to_wire(repo)),
            id: Some(self.write_id()),
            objects: objects
                .into_iter()
                .map(|o| proto::Object { kind: o.kind.as_str().to_owned(), data: o.data, oid: o.oid.0.to_vec() })
                .collect(),
            refs: refs.into_iter().map(ref_change_to_wire).collect(),
        };
        self.call(Some(Self::key(repo)), |mut c| {
            let request = self.request(message.clone());
            async move { c.write(request).await }
        })
        .await
    }

    pub async fn read_refs(&self, repo: &RepoId, stale: bool) -> Result<(Vec<(RefName, RefValue)>, u64), ClientError> {
        let message = proto::ReadRefsRequest { repo: Some(convert::repo_to_wire(repo)), stale };
        let key = if stale { None } else { Some(Self::key(repo)) };
        let reply = self
            .call(key, |mut c| {
                let request = self.request(message.clone());
                async move { c.read_refs(request).await }
            })
            .await?;
        let mut refs = Vec::with_capacity(reply.refs.len());
        for r in reply.refs {
            let name = RefName::new(&r.name).map_err(|e| ClientError::Invalid(e.to_string()))?;
            refs.push((name, convert::ref_value(r.value).map_err(ClientError::Invalid)?));
        }
        Ok((refs, reply.applied_index))
    }

    pub async fn read_object(
        &self,
        repo: &RepoId,
        oid: Oid,
        stale: bool,
    ) -> Result<Option<(ObjectKind, Vec<u8>)>, ClientError> {
        let message = proto::ReadObjectRequest { repo: Some(convert::repo_to_wire(repo)), oid: oid.0.to_vec(), stale };
        let reply = self
            .call(Some(Self::key(repo)), |mut c| {
                let request = self.request(message.clone());
                async move { c.read_object(request).await }
            })
            .await?;
        if !reply.found {
            return Ok(None);
        }
        Ok(Some((convert::kind(&reply.kind).map_err(ClientError::Invalid)?, reply.data)))
    }

    /// A page of `repo`'s objects in Git's loose encoding, by id after `after`; `true` when no
    /// object follows the page.
    pub async fn list_objects(
        &self,
        repo: &RepoId,
        after: Option<Oid>,
    ) -> Result<(Vec<(Oid, ListedObject)>, bool), ClientError> {
        let message = proto::ListObjectsRequest {
            repo: Some(convert::repo_to_wire(repo)),
            after: after.map_or_else(Vec::new, |oid| oid.0.to_vec()),
            stale: false,
        };
        let reply = self
            .call(Some(Self::key(repo)), |mut c| {
                let request = self.request(message.clone());
                async move { c.list_objects(request).await }
            })
            .await?;
        let objects = reply
            .objects
            .into_iter()
            .map(|o| {
                let oid = convert::oid(&o.oid).map_err(ClientError::Invalid)?;
                if o.large_kind.is_empty() {
                    return Ok((oid, ListedObject::Loose(o.loose)));
                }
                let kind = convert::kind(&o.large_kind).map_err(ClientError::Invalid)?;
                Ok((oid, ListedObject::Large { kind, size_bytes: o.large_size }))
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok((objects, reply.complete))
    }

    /// Up to `length` bytes of an object from `offset` (the server answers at most 4 MiB):
    /// `None` if `repo` does not hold it.
    pub async fn read_object_range(
        &self,
        repo: &RepoId,
        oid: Oid,
        offset: u64,
        length: u64,
        stale: bool,
    ) -> Result<Option<ObjectPiece>, ClientError> {
        let message = proto::ReadObjectRangeRequest {
            repo: Some(convert::repo_to_wire(repo)),
            oid: oid.0.to_vec(),
            stale,
            offset,
            length,
        };
        let key = if stale { None } else { Some(Self::key(repo)) };
        let reply = self
            .call(key, |mut c| {
                let request = self.request(message.clone());
                async move { c.read_object_range(request).await }
            })
            .await?;
        if !reply.found {
            return Ok(None);
        }
        let kind = convert::kind(&reply.kind).map_err(ClientError::Invalid)?;
        Ok(Some(ObjectPiece { kind, size_bytes: reply.size, data: reply.data }))
    }

    /// Writes a whole object of any size to `out`, piece by piece (`READ_PIECE_BYTES` at a
    /// time, so memory stays bounded); `None` if `repo` does not hold it. With `stale`, any
    /// replica answers (a follower may not have it yet).
    pub async fn read_object_to(
        &self,
        repo: &RepoId,
        oid: Oid,
        stale: bool,
        out: &mut dyn std::io::Write,
    ) -> Result<Option<(ObjectKind, u64)>, ClientError> {
        let mut offset = 0u64;
        let mut shape = None;
        loop {
            // The object is immutable once stored, so later pieces may come from any replica
            // that has it; the first decides whether it exists at all.
            let Some(piece) = self.read_object_range(repo, oid, offset, READ_PIECE_BYTES, stale).await? else {
                if shape.is_some() {
                    return Err(ClientError::NotFound(format!("object {oid} was deleted while being read")));
                }
                return Ok(None);
            };
            if *shape.get_or_insert((piece.kind, piece.size_bytes)) != (piece.kind, piece.size_bytes) {
                return Err(ClientError::Server {
                    code: "DataLoss".into(),
                    message: format!("object {oid} changed shape"),
                });
            }
            out.write_all(&piece.data).map_err(|e| ClientError::Output(e.to_string()))?;
            offset += piece.data.len() as u64;
            if offset >= piece.size_bytes {
                return Ok(shape);
            }
            if piece.data.is_empty() {
                return Err(ClientError::Server {
                    code: "DataLoss".into(),
                    message: format!("object {oid}: empty piece at {offset}"),
                });
            }
        }
    }

    /// Stores an object of any size read from `input` (`size_bytes` long, hashing to `oid`),
    /// in pieces, under one write id, and applies `refs` with it atomically. Survives leader
    /// changes and node restarts: it begins again with the same write id and goes on from what
    /// the cluster holds. `input` is read once per attempt, from where the upload stands.
    pub async fn upload_object(
        &self,
        repo: &RepoId,
        kind: ObjectKind,
        size_bytes: u64,
        oid: Oid,
        refs: Vec<RefChange>,
        input: &mut (dyn ReadAt + Send),
    ) -> Result<proto::WriteReply, ClientError> {
        let id = self.write_id();
        let key = Some(Self::key(repo));
        let started = tokio::time::Instant::now();
        let refs: Vec<proto::RefUpdate> = refs.into_iter().map(ref_change_to_wire).collect();
        loop {
            let begin = proto::BeginUploadRequest {
                repo: Some(convert::repo_to_wire(repo)),
                id: Some(id),
                kind: kind.as_str().to_owned(),
                size: size_bytes,
            };
            let begun = self
                .call(key.clone(), |mut c| {
                    let request = self.request(begin.clone());
                    async move { c.begin_upload(request).await }
                })
                .await?;
            if let Some(finished) = begun.finished {
                return Ok(finished);
            }
            let piece_bytes = begun.piece_size;
            if piece_bytes == 0 {
                return Err(ClientError::Server { code: "Internal".into(), message: "pieces of 0 bytes".into() });
            }
            let mut offset = begun.received_bytes;
            let mut buffer = vec![0u8; piece_bytes as usize];
            let mut lost = false;
            while offset < size_bytes {
                let len = piece_bytes.min(size_bytes - offset) as usize;
                input.read_exact_at(&mut buffer[..len], offset).map_err(|e| ClientError::Input(e.to_string()))?;
                let piece = proto::UploadPieceRequest {
                    repo: Some(convert::repo_to_wire(repo)),
                    id: Some(id),
                    offset,
                    data: buffer[..len].to_vec(),
                };
                let sent = self
                    .call(key.clone(), |mut c| {
                        let request = self.request(piece.clone());
                        async move { c.upload_piece(request).await }
                    })
                    .await;
                match sent {
                    Ok(_) => offset += len as u64,
                    // The upload moved on or went (a retried piece after a failover, or a
                    // leader that dropped an idle upload): begin again from what it holds.
                    Err(ClientError::Aborted(_)) => {
                        lost = true;
                        break;
                    }
                    Err(error) => return Err(error),
                }
            }
            if lost {
                if started.elapsed() >= self.config.deadline * 4 {
                    return Err(ClientError::Timeout {
                        elapsed_ms: started.elapsed().as_millis(),
                        attempts: 0,
                        last: "the upload kept restarting".into(),
                    });
                }
                continue;
            }
            let finish = proto::FinishUploadRequest {
                repo: Some(convert::repo_to_wire(repo)),
                id: Some(id),
                oid: oid.0.to_vec(),
                refs: refs.clone(),
            };
            return self
                .call(key.clone(), |mut c| {
                    let request = self.request(finish.clone());
                    async move { c.finish_upload(request).await }
                })
                .await;
        }
    }

    /// Every repository and its partition, by repository (read a page at a time).
    pub async fn list_repositories(&self) -> Result<Vec<(RepoId, u64)>, ClientError> {
        let mut all: Vec<(RepoId, u64)> = Vec::new();
        loop {
            let page = self.list_repositories_page(all.last().map(|(repo, _)| repo), 0).await?;
            if page.is_empty() {
                return Ok(all);
            }
            all.extend(page);
        }
    }

    /// Up to `limit` repositories after `after` (0: the server's default page); an empty page
    /// is the last.
    pub async fn list_repositories_page(
        &self,
        after: Option<&RepoId>,
        limit: u32,
    ) -> Result<Vec<(RepoId, u64)>, ClientError> {
        let message = proto::ListRepositoriesRequest { after: after.map(convert::repo_to_wire), limit };
        let reply = self
            .call(None, |mut c| {
                let request = self.request(message.clone());
                async move { c.list_repositories(request).await }
            })
            .await?;
        reply
            .repositories
            .into_iter()
            .map(|r| Ok((convert::repo(r.repo).map_err(ClientError::Invalid)?, r.partition)))
            .collect()
    }

    /// The partition of `repo`: members, repositories, and the leader as the answering node
    /// knows it (0 if it does not host a replica).
    pub async fn repo_info(&self, repo: &RepoId) -> Result<proto::PartitionInfo, ClientError> {
        let message = proto::RepoInfoRequest { repo: Some(convert::repo_to_wire(repo)) };
        self.call(None, |mut c| {
            let request = self.request(message.clone());
            async move { c.repo_info(request).await }
        })
        .await
    }

    /// Changes a partition's replicas (`action`: add-learner, add-voter, promote, remove,
    /// transfer-leader), following leader hints; returns the new membership.
    pub async fn change_members(
        &self,
        partition: u64,
        node: u64,
        action: &str,
    ) -> Result<proto::PartitionInfo, ClientError> {
        let message = proto::ChangeMembersRequest { partition, node, action: action.to_owned() };
        self.call_with(None, self.config.deadline, |mut c| {
            let request = self.request(message.clone());
            async move { c.change_members(request).await }
        })
        .await
    }

    /// Turns Raft on (`enabled`) or off for `partition`, on its leader; whether it runs Raft now.
    pub async fn set_partition_raft(&self, partition: u64, enabled: bool) -> Result<bool, ClientError> {
        let message = proto::SetPartitionRaftRequest { partition, enabled };
        let reply = self
            .call_with(None, self.config.deadline, |mut c| {
                let request = self.request(message);
                async move { c.set_partition_raft(request).await }
            })
            .await?;
        Ok(reply.enabled)
    }

    /// Asks the node at `endpoint` (only that one: each node remembers its peers' data
    /// directories itself) to retire the instance it knows `node` by.
    /// `replacement`: the new data directory's instance (hex), or empty if unknown.
    pub async fn retire_peer_at(
        &self,
        endpoint: &str,
        node: u64,
        replacement: &str,
    ) -> Result<proto::RetirePeerReply, ClientError> {
        let mut client = CohortClient::new(self.channel(endpoint)?);
        let request = self.request(proto::RetirePeerRequest { node, replacement_instance: replacement.to_owned() });
        self.one_attempt(client.retire_peer(request)).await
    }

    /// Tells the node at `endpoint`, made to join, the directory peer the directory made it
    /// (`NodeService::join_directory_as`).
    pub async fn join_directory_at(&self, endpoint: &str, peer: u64) -> Result<(), ClientError> {
        let mut client = CohortClient::new(self.channel(endpoint)?);
        let request = self.request(proto::JoinDirectoryRequest { peer });
        self.one_attempt(client.join_directory(request)).await.map(|_| ())
    }

    /// One call to one node, within the attempt timeout, not retried: for requests that only
    /// the node asked can answer.
    async fn one_attempt<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.config.attempt_timeout, call).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => Err(match classify(&status) {
                Next::Fail(error) => error,
                Next::Retry { .. } => {
                    ClientError::Timeout { elapsed_ms: 0, attempts: 1, last: status.message().to_owned() }
                }
            }),
            Err(_) => Err(ClientError::Timeout {
                elapsed_ms: self.config.attempt_timeout.as_millis(),
                attempts: 1,
                last: "no answer".into(),
            }),
        }
    }

    /// Every partition the directory records (read a page at a time).
    pub async fn list_partitions(&self) -> Result<Vec<proto::PartitionInfo>, ClientError> {
        let mut all: Vec<proto::PartitionInfo> = Vec::new();
        loop {
            let message = proto::ListPartitionsRequest { after: all.last().map_or(0, |p| p.id), limit: 0 };
            let reply = self
                .call(None, |mut c| {
                    let request = self.request(message);
                    async move { c.list_partitions(request).await }
                })
                .await?;
            if reply.partitions.is_empty() {
                return Ok(all);
            }
            all.extend(reply.partitions);
        }
    }

    /// The status as one endpoint sees it, with every replica it hosts (read a page at a
    /// time; no failover: status is per node).
    pub async fn status_of(&self, endpoint: &str) -> Result<proto::StatusReply, ClientError> {
        let mut whole = self.status_page(endpoint, 0, 0).await?;
        loop {
            let start = match whole.partitions.last() {
                Some(last) => last.id + 1,
                None => return Ok(whole),
            };
            let page = self.status_page(endpoint, start, 0).await?;
            if page.partitions.is_empty() {
                return Ok(whole);
            }
            whole.partitions.extend(page.partitions);
        }
    }

    /// One endpoint's nodes and counts of replicas, without listing them.
    pub async fn status_summary_of(&self, endpoint: &str) -> Result<proto::StatusReply, ClientError> {
        self.status_call(endpoint, proto::StatusRequest { start: 0, limit: 0, summary_only: true }).await
    }

    /// One endpoint's status with up to `limit` of its replicas from partition `start` on (0:
    /// the server's default page); an empty page is the last.
    pub async fn status_page(&self, endpoint: &str, start: u64, limit: u32) -> Result<proto::StatusReply, ClientError> {
        self.status_call(endpoint, proto::StatusRequest { start, limit, summary_only: false }).await
    }

    async fn status_call(
        &self,
        endpoint: &str,
        message: proto::StatusRequest,
    ) -> Result<proto::StatusReply, ClientError> {
        let mut client = CohortClient::new(self.channel(endpoint)?);
        let request = self.request(message);
        match tokio::time::timeout(self.config.attempt_timeout, client.status(request)).await {
            Ok(Ok(reply)) => Ok(reply.into_inner()),
            Ok(Err(status)) => {
                Err(ClientError::Timeout { elapsed_ms: 0, attempts: 1, last: status.message().to_owned() })
            }
            Err(_) => Err(ClientError::Timeout {
                elapsed_ms: self.config.attempt_timeout.as_millis(),
                attempts: 1,
                last: "no answer".into(),
            }),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.config.endpoints
    }
}

fn ref_change_to_wire(change: RefChange) -> proto::RefUpdate {
    let expected = match change.expected {
        Expected::Any => proto::ref_update::Expected::Any(true),
        Expected::MustNotExist => proto::ref_update::Expected::MustNotExist(true),
        Expected::Value(value) => proto::ref_update::Expected::Value(convert::ref_value_to_wire(&value)),
    };
    proto::RefUpdate {
        name: change.name.as_str().to_owned(),
        expected: Some(expected),
        new_value: change.new.as_ref().map(convert::ref_value_to_wire),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retried(status: Status) -> bool {
        matches!(classify(&status), Next::Retry { .. })
    }

    #[test]
    fn only_what_a_retry_can_fix_is_retried() {
        for status in [
            Status::unavailable("not the leader"),
            Status::resource_exhausted("busy: too many requests in flight"),
            Status::deadline_exceeded("timed out"),
            Status::unknown("transport error"),
            Status::internal("h2 protocol error: error reading a body from connection"),
        ] {
            assert!(retried(status.clone()), "{status:?}");
        }
        let failures = [
            (Status::failed_precondition("precondition failed"), 3),
            (Status::not_found("repository x"), 3),
            (Status::permission_denied("no"), 3),
            (Status::invalid_argument("bad path"), 2),
            (Status::out_of_range("decoded message length too large"), 2),
            (Status::internal("unexpected answer to an object read"), 5),
            (Status::unimplemented("no such method"), 5),
            (Status::aborted("upload piece at offset 0 is out of order"), 4),
        ];
        for (status, exit_code) in failures {
            match classify(&status) {
                Next::Fail(error) => {
                    assert_eq!(error.exit_code(), exit_code, "{status:?}");
                    assert!(error.to_string().contains(status.message()), "the cause is kept: {error}");
                }
                Next::Retry { .. } => panic!("{status:?} is retried"),
            }
        }
    }
}
