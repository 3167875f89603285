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
}

impl ClientConfig {
    pub fn new(endpoints: Vec<String>, client_id: u64) -> ClientConfig {
        ClientConfig {
            endpoints,
            token: None,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(5),
            client_id,
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
    #[error("gave up after {elapsed_ms} ms and {attempts} attempts; last error: {last}")]
    Timeout { elapsed_ms: u128, attempts: usize, last: String },
    #[error("bad endpoint {endpoint}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
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

fn classify(status: &Status) -> Next {
    match status.code() {
        Code::FailedPrecondition => Next::Fail(ClientError::Rejected(status.message().to_owned())),
        Code::NotFound => Next::Fail(ClientError::NotFound(status.message().to_owned())),
        Code::InvalidArgument => Next::Fail(ClientError::Invalid(status.message().to_owned())),
        Code::Unauthenticated => Next::Fail(ClientError::Unauthenticated(status.message().to_owned())),
        _ => {
            let hint = status.metadata().get(LEADER_METADATA).and_then(|v| v.to_str().ok()).map(str::to_owned);
            Next::Retry { hint }
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
            Endpoint::from_shared(endpoint.clone())
                .map_err(|e| ClientError::BadEndpoint { endpoint: endpoint.clone(), reason: e.to_string() })?;
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
        let bad = |reason: String| ClientError::BadEndpoint { endpoint: endpoint.to_owned(), reason };
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| bad(e.to_string()))?
            .connect_timeout(self.config.attempt_timeout)
            .connect_lazy();
        channels.insert(endpoint.to_owned(), channel.clone());
        Ok(channel)
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
    ) -> Result<(Vec<(Oid, Vec<u8>)>, bool), ClientError> {
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
            .map(|o| Ok((convert::oid(&o.oid).map_err(ClientError::Invalid)?, o.loose)))
            .collect::<Result<Vec<_>, ClientError>>()?;
        Ok((objects, reply.complete))
    }

    pub async fn list_repositories(&self) -> Result<Vec<(RepoId, u64)>, ClientError> {
        let reply = self
            .call(None, |mut c| {
                let request = self.request(proto::ListRepositoriesRequest {});
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

    pub async fn list_partitions(&self) -> Result<Vec<proto::PartitionInfo>, ClientError> {
        let reply = self
            .call(None, |mut c| {
                let request = self.request(proto::ListPartitionsRequest {});
                async move { c.list_partitions(request).await }
            })
            .await?;
        Ok(reply.partitions)
    }

    /// The status as one endpoint sees it (no failover: status is per node).
    pub async fn status_of(&self, endpoint: &str) -> Result<proto::StatusReply, ClientError> {
        let mut client = CohortClient::new(self.channel(endpoint)?);
        let request = self.request(proto::StatusRequest {});
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
