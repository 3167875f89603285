//! Clients doing compare-and-set updates and linearizable reads of a few references in a few
//! repositories (each its own partition), recording every invocation and completion in the
//! history. A client retries a write with the same (client, sequence) until it has a definite
//! answer or its deadline passes, which is recorded as an unknown outcome.

use crate::cluster::Services;
use crate::history::{self, History, OpKind, Outcome, Value};
use crate::trace::{now_ns, Trace};
use cohort_core::ids::PartitionId;
use cohort_core::ids::{ClientId, NodeId};
use cohort_core::node::{ApiError, MembersAction, NodeService, UploadBegun, PREPARE_IN_PLACE_BYTES_MAX};
use cohort_core::partition::ReadConsistency;
use cohort_core::state_machine::{
    Command, Expected, NewObject, ObjectKind, Oid, ReadQuery, ReadResult, RefName, RefUpdate, RefValue, Rejection,
    RelativePath, RepoId, WriteOp,
};
use rand::{rngs::StdRng, Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one operation may take, retries included, before it counts as unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(8);

/// Share of writes whose object is uploaded in pieces, and the pieces' size: small, so that
/// an object of a few KiB spans several pieces (each its own Raft entry) under the faults.
const UPLOADED_SHARE: f64 = 0.15;
const UPLOAD_PIECE_BYTES: u32 = cohort_core::state_machine::UPLOAD_CHUNK_BYTES_MIN;

/// Share of the other writes whose object is large enough for the node that receives it to
/// hash and compress it on its blocking pool (`NodeService::write`), which may finish after
/// the request was given up on, or a fault.
const LARGE_SHARE: f64 = 0.05;

#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    pub repos: usize,
    pub keys_per_repo: usize,
    pub clients: u64,
    /// Share of operations that are reads.
    pub read_ratio: f64,
}

pub fn repo(i: usize) -> RepoId {
    RepoId { storage: "default".into(), relative_path: RelativePath::new(&format!("sim/r{i}.git")).expect("valid") }
}

fn ref_name(k: usize) -> RefName {
    RefName::new(&format!("refs/heads/k{k}")).expect("valid")
}

fn key(repo: usize, k: usize) -> String {
    format!("r{repo}:k{k}")
}

/// What the workload shares between clients: the history and the value behind each object id.
#[derive(Clone)]
pub struct Shared {
    pub history: Arc<Mutex<History>>,
    values: Arc<Mutex<BTreeMap<Oid, Value>>>,
    pub services: Services,
    pub trace: Trace,
    pub stop: Arc<AtomicBool>,
    /// Nodes that acknowledged a write, in order, while a fault watches for them (see
    /// `Fault::CrashAfterAck`); `None` while nobody watches.
    pub acks: Arc<Mutex<Option<Vec<NodeId>>>>,
    /// Wakes whoever waits for the next write to be sent (see `Fault::TransferLeader`).
    pub writing: Arc<WriteSignal>,
}

/// The repository of the latest write sent, and a wake-up for those waiting for one.
#[derive(Default)]
pub struct WriteSignal {
    pub notify: tokio::sync::Notify,
    pub last_repo: Mutex<Option<usize>>,
}

impl Shared {
    pub fn new(services: Services, trace: Trace) -> Shared {
        Shared {
            history: Arc::default(),
            values: Arc::default(),
            services,
            trace,
            stop: Arc::new(AtomicBool::new(false)),
            acks: Arc::default(),
            writing: Arc::default(),
        }
    }

    fn value_of(&self, value: &RefValue) -> Option<Value> {
        match value {
            RefValue::Direct(oid) => Some(
                *self
                    .values
                    .lock()
                    .expect("not poisoned")
                    .get(oid)
                    .expect("every ref value was written by the workload"),
            ),
            RefValue::Symbolic(_) => panic!("the workload writes no symbolic refs"),
        }
    }
}

/// One client: its identity, sequence numbers and preferred node.
pub struct SimClient {
    pub id: u64,
    seq: u64,
    target: NodeId,
    rng: StdRng,
    shared: Shared,
    /// Last value this client saw per key, to aim its compare-and-sets.
    seen: BTreeMap<String, Option<Value>>,
    next_token: u64,
}

enum Attempt<T> {
    Done(T),
    Retry { at: Option<NodeId> },
}

impl SimClient {
    pub fn new(id: u64, seed: u64, shared: Shared) -> SimClient {
        let ids = shared.services.ids();
        let mut rng = StdRng::seed_from_u64(seed ^ id.rotate_left(17));
        let target = ids[rng.gen_range(0..ids.len())];
        SimClient { id, seq: 0, target, rng, shared, seen: BTreeMap::new(), next_token: 0 }
    }

    fn other_node(&mut self) -> NodeId {
        let ids = self.shared.services.ids();
        ids[self.rng.gen_range(0..ids.len())]
    }

    /// Runs `attempt` against nodes until it gives a definite answer or the deadline passes.
    async fn with_retries<T, F, Fut>(&mut self, attempt: F) -> Option<T>
    where
        F: FnMut(Arc<NodeService>) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        self.with_retries_within(OP_TIMEOUT, attempt).await
    }

    /// `with_retries`, giving up after `timeout`.
    async fn with_retries_within<T, F, Fut>(&mut self, timeout: Duration, mut attempt: F) -> Option<T>
    where
        F: FnMut(Arc<NodeService>) -> Fut,
        Fut: std::future::Future<Output = Attempt<T>>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let next = match self.shared.services.get(self.target) {
                None => Attempt::Retry { at: None },
                Some(service) => match tokio::time::timeout(deadline - now, attempt(service)).await {
                    Ok(outcome) => outcome,
                    Err(_) => return None,
                },
            };
            match next {
                Attempt::Done(value) => return Some(value),
                Attempt::Retry { at: Some(leader) } if leader != self.target => self.target = leader,
                Attempt::Retry { .. } => {
                    self.target = self.other_node();
                    tokio::time::sleep(Duration::from_millis(self.rng.gen_range(20..120))).await;
                }
            }
        }
    }

    fn retry_for(error: &ApiError) -> Attempt<Outcome> {
        match error {
            ApiError::NotLeader { leader } => Attempt::Retry { at: *leader },
            ApiError::Busy | ApiError::Unknown | ApiError::Unavailable(_) => Attempt::Retry { at: None },
            // The repository's route may not be applied on this replica yet.
            ApiError::NotFound(_) => Attempt::Retry { at: None },
            ApiError::Invalid(message) => panic!("the workload sent an invalid request: {message}"),
            ApiError::Rejected(rejection) => panic!("unexpected rejection {rejection}"),
            ApiError::Refused(reason) => panic!("the workload changes no membership, yet: {reason}"),
            ApiError::TooLarge(reason) => panic!("the workload's objects are small: {reason}"),
        }
    }

    /// Stores `object` through an upload in pieces, finished with `refs`: begins (or finds the
    /// upload again, or its finished result), sends the pieces it lacks, finishes.
    async fn upload(
        service: &NodeService,
        client: ClientId,
        seq: u64,
        repo: RepoId,
        object: &NewObject,
        refs: Vec<RefUpdate>,
    ) -> Result<cohort_core::state_machine::WriteOk, ApiError> {
        let size_bytes = object.data.len() as u64;
        let begun = service
            .begin_upload(client, seq, repo.clone(), object.kind, size_bytes, u64::MAX, UPLOAD_PIECE_BYTES)
            .await?;
        let (chunk_bytes, mut offset) = match begun {
            UploadBegun::Finished(ok) => return Ok(ok),
            UploadBegun::InProgress { chunk_bytes, status } => (u64::from(chunk_bytes), status.received_bytes),
        };
        while offset < size_bytes {
            let end = (offset + chunk_bytes).min(size_bytes);
            let piece = object.data[offset as usize..end as usize].to_vec();
            service.upload_piece(client, seq, repo.clone(), offset, piece).await?;
            offset = end;
        }
        service.finish_upload(client, seq, repo, object.oid, refs).await
    }

    /// Reads an object back by range, piece by piece, and checks it is `object`. A replica
    /// that answers other bytes for an id breaks the store's first promise: fail loudly.
    async fn read_back(&mut self, repo_index: usize, object: &NewObject) {
        let (oid, size_bytes) = (object.oid, object.data.len() as u64);
        let mut data = Vec::new();
        while (data.len() as u64) < size_bytes {
            let offset = data.len() as u64;
            let piece = self
                .with_retries(|service| async move {
                    let query = ReadQuery::ObjectRange { repo: repo(repo_index), oid, offset, len_max: 1500 };
                    match service.read_repository(&repo(repo_index), query, ReadConsistency::Linearizable).await {
                        Ok(answer) => match answer.result {
                            ReadResult::ObjectRange(range) => Attempt::Done(range),
                            other => panic!("unexpected answer to a range read: {other:?}"),
                        },
                        Err(error) => match Self::retry_for(&error) {
                            Attempt::Retry { at } => Attempt::Retry { at },
                            Attempt::Done(_) => unreachable!(),
                        },
                    }
                })
                .await;
            match piece {
                None => return, // Unknown: the faults kept every replica away.
                Some(None) => panic!("object {oid}, acknowledged, is not held by r{repo_index}"),
                Some(Some(range)) => {
                    assert_eq!((range.kind, range.size_bytes), (object.kind, size_bytes), "object {oid}'s shape");
                    assert!(!range.data.is_empty(), "object {oid}: an empty piece at {offset}");
                    data.extend_from_slice(&range.data);
                }
            }
        }
        assert!(data == object.data, "object {oid} read back differs from what was written");
    }

    /// A compare-and-set of one reference to a fresh value.
    pub async fn cas(&mut self, repo_index: usize, k: usize, force_any: bool) -> Outcome {
        let key = key(repo_index, k);
        self.next_token += 1;
        let token: Value = (self.id << 32) | self.next_token;
        let uploaded = self.rng.gen_bool(UPLOADED_SHARE);
        let mut data = format!("value {token}").into_bytes();
        if uploaded {
            // Two to six pieces, the last one short.
            let size_bytes = self.rng.gen_range(UPLOAD_PIECE_BYTES as usize + 1..6 * UPLOAD_PIECE_BYTES as usize);
            let filler: Vec<u8> = (0..size_bytes - data.len()).map(|_| self.rng.gen()).collect();
            data.extend_from_slice(&filler);
        } else if self.rng.gen_bool(LARGE_SHARE) {
            let size_bytes = self.rng.gen_range(PREPARE_IN_PLACE_BYTES_MAX + 1..=2 * PREPARE_IN_PLACE_BYTES_MAX);
            let filler: Vec<u8> = (0..size_bytes - data.len()).map(|_| self.rng.gen()).collect();
            data.extend_from_slice(&filler);
        }
        let object = NewObject::new(ObjectKind::Blob, data);
        self.shared.values.lock().expect("not poisoned").insert(object.oid, token);
        let last_seen = self.seen.get(&key).copied().flatten();
        let expected = match (force_any, self.rng.gen_range(0..10), last_seen) {
            (true, _, _) | (_, 0, _) => history::Expected::Any,
            (_, 1..=2, _) | (_, _, None) => history::Expected::MustNotExist,
            (_, _, Some(value)) => history::Expected::Value(value),
        };
        let wire_expected = match expected {
            history::Expected::Any => Expected::Any,
            history::Expected::MustNotExist => Expected::MustNotExist,
            history::Expected::Value(_) => {
                Expected::Value(RefValue::Direct(self.oid_of(last_seen.expect("a value was seen"))))
            }
        };
        self.seq += 1;
        let command = Command {
            client: ClientId(self.id),
            seq: self.seq,
            op: WriteOp::Transaction {
                repo: repo(repo_index),
                refs: vec![RefUpdate {
                    name: ref_name(k),
                    expected: wire_expected,
                    new: Some(RefValue::Direct(object.oid)),
                }],
                objects: vec![object],
            },
        };
        let op = self.shared.history.lock().expect("not poisoned").invoke(
            self.id,
            key.clone(),
            OpKind::Cas { expected, new: Some(token) },
            now_ns(),
        );
        self.shared.trace.event(
            now_ns(),
            format!(
                "op {op} client {} seq {} cas {key} {expected:?} -> {token}{}",
                self.id,
                self.seq,
                match &command.op {
                    WriteOp::Transaction { objects, .. } if uploaded =>
                        format!(" (uploaded, {} bytes)", objects[0].data.len()),
                    _ => String::new(),
                }
            ),
        );
        *self.shared.writing.last_repo.lock().expect("not poisoned") = Some(repo_index);
        self.shared.writing.notify.notify_waiters();
        let shared = self.shared.clone();
        let outcome = self
            .with_retries(|service| {
                let command = command.clone();
                let shared = shared.clone();
                async move {
                    let written = match (&command.op, uploaded) {
                        (WriteOp::Transaction { repo, objects, refs }, true) => {
                            Self::upload(&service, command.client, command.seq, repo.clone(), &objects[0], refs.clone())
                                .await
                        }
                        _ => service.write(command).await,
                    };
                    match written {
                        Ok(_) => Attempt::Done(Outcome::CasOk),
                        // The upload went on without this attempt (a piece retried after its
                        // leader changed, or a finish that dropped it): begin again.
                        Err(ApiError::Rejected(
                            Rejection::UploadNotFound { .. } | Rejection::UploadOutOfOrder { .. },
                        )) => Attempt::Retry { at: None },
                        Err(ApiError::Rejected(Rejection::PreconditionFailed { current, .. })) => {
                            Attempt::Done(Outcome::CasFailed {
                                current: current.as_ref().and_then(|v| shared.value_of(v)),
                            })
                        }
                        // The repository exists from setup on: a replica that applied the
                        // write without it saw every reference missing (the checkers judge).
                        Err(ApiError::Rejected(Rejection::RepositoryNotFound { .. })) => {
                            Attempt::Done(Outcome::CasFailed { current: None })
                        }
                        Err(error) => Self::retry_for(&error),
                    }
                }
            })
            .await
            .unwrap_or(Outcome::Unknown);
        match &outcome {
            Outcome::CasOk => {
                self.seen.insert(key.clone(), Some(token));
                if let Some(acks) = self.shared.acks.lock().expect("not poisoned").as_mut() {
                    acks.push(self.target);
                }
            }
            Outcome::CasFailed { current } => {
                self.seen.insert(key.clone(), *current);
            }
            _ => {}
        }
        self.shared.history.lock().expect("not poisoned").complete(op, outcome.clone(), now_ns());
        self.shared.trace.event(now_ns(), format!("op {op} -> {outcome:?}"));
        if uploaded && outcome == Outcome::CasOk && self.rng.gen_bool(0.5) {
            let WriteOp::Transaction { objects, .. } = &command.op else { unreachable!("built above") };
            self.read_back(repo_index, &objects[0]).await;
        }
        outcome
    }

    fn oid_of(&self, value: Value) -> Oid {
        let values = self.shared.values.lock().expect("not poisoned");
        *values.iter().find(|(_, &v)| v == value).map(|(oid, _)| oid).expect("a seen value was written")
    }

    /// A linearizable read of every reference of one repository; one history op per key.
    pub async fn read(&mut self, repo_index: usize, keys: usize) -> bool {
        let now = now_ns();
        let ops: Vec<_> = {
            let mut history = self.shared.history.lock().expect("not poisoned");
            (0..keys).map(|k| history.invoke(self.id, key(repo_index, k), OpKind::Read, now)).collect()
        };
        self.shared.trace.event(now, format!("ops {ops:?} client {} read r{repo_index}", self.id));
        let shared = self.shared.clone();
        let refs = self
            .with_retries(|service| {
                let query = ReadQuery::ListRefs { repo: repo(repo_index) };
                async move {
                    match service.read_repository(&repo(repo_index), query, ReadConsistency::Linearizable).await {
                        Ok(answer) => match answer.result {
                            ReadResult::Refs(refs) => Attempt::Done(refs),
                            other => panic!("unexpected answer to a ref listing: {other:?}"),
                        },
                        // As for writes: a repository that is missing has no references.
                        Err(ApiError::Rejected(Rejection::RepositoryNotFound { .. })) => Attempt::Done(Vec::new()),
                        Err(error) => match Self::retry_for(&error) {
                            Attempt::Retry { at } => Attempt::Retry { at },
                            Attempt::Done(_) => unreachable!(),
                        },
                    }
                }
            })
            .await;
        let done = now_ns();
        shared.trace.event(
            done,
            format!(
                "ops {ops:?} -> {}",
                match &refs {
                    Some(refs) => format!("{} refs", refs.len()),
                    None => "unknown".to_owned(),
                }
            ),
        );
        let mut history = shared.history.lock().expect("not poisoned");
        for (k, op) in ops.into_iter().enumerate() {
            let outcome = match &refs {
                Some(refs) => {
                    let name = ref_name(k);
                    let value = refs.iter().find(|(n, _)| *n == name).and_then(|(_, v)| shared.value_of(v));
                    self.seen.insert(key(repo_index, k), value);
                    Outcome::ReadOk(value)
                }
                None => Outcome::Unknown,
            };
            history.complete(op, outcome, done);
        }
        refs.is_some()
    }

    /// Random operations until told to stop.
    pub async fn run(mut self, config: WorkloadConfig) {
        while !self.shared.stop.load(Ordering::Relaxed) {
            let repo_index = self.rng.gen_range(0..config.repos);
            if self.rng.gen_bool(config.read_ratio) {
                self.read(repo_index, config.keys_per_repo).await;
            } else {
                let k = self.rng.gen_range(0..config.keys_per_repo);
                self.cas(repo_index, k, false).await;
                // Half the time, read back at once what was just written, as clients do: a
                // replica that serves a read before applying what it confirmed shows it here.
                if self.rng.gen_bool(0.5) {
                    self.read(repo_index, config.keys_per_repo).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(1..50))).await;
        }
    }
}

impl SimClient {
    /// Where nodes that acknowledge writes are reported while a fault watches.
    pub fn acks(&self) -> Arc<Mutex<Option<Vec<NodeId>>>> {
        self.shared.acks.clone()
    }

    /// Every node's service, to ask one node in particular.
    pub fn services(&self) -> &Services {
        &self.shared.services
    }

    /// Sends the next request to `node` first.
    pub fn aim_at(&mut self, node: NodeId) {
        self.target = node;
    }

    /// Wakes when the next write is sent.
    pub fn writing(&self) -> Arc<WriteSignal> {
        self.shared.writing.clone()
    }

    /// An operator's membership change of a partition, retried like a client request until it
    /// is applied, refused, or its deadline passes (`None`: unknown).
    pub async fn change_members(
        &mut self,
        partition: PartitionId,
        node: NodeId,
        action: MembersAction,
    ) -> Option<Result<(), String>> {
        self.change_members_within(OP_TIMEOUT, partition, node, action).await
    }

    /// `change_members`, given up after `timeout`: the change may be cut short anywhere, Raft
    /// committing it and the directory not yet recording it included.
    pub async fn change_members_within(
        &mut self,
        timeout: Duration,
        partition: PartitionId,
        node: NodeId,
        action: MembersAction,
    ) -> Option<Result<(), String>> {
        let outcome = self.change_members_seen_within(timeout, partition, node, action).await;
        outcome.map(|result| result.map(|_| ()))
    }

    /// `change_members_within`, answering the members it left the partition with.
    pub async fn change_members_seen_within(
        &mut self,
        timeout: Duration,
        partition: PartitionId,
        node: NodeId,
        action: MembersAction,
    ) -> Option<Result<cohort_core::node::PartitionView, String>> {
        self.with_retries_within(timeout, |service| async move {
            match service.change_members(partition, node, action).await {
                Ok(view) => Attempt::Done(Ok(view)),
                Err(ApiError::Refused(reason)) => Attempt::Done(Err(reason)),
                Err(ApiError::NotLeader { leader }) => Attempt::Retry { at: leader },
                Err(_) => Attempt::Retry { at: None },
            }
        })
        .await
    }
}

impl SimClient {
    /// An operator's switch of a partition's Raft mode, retried like a client request until it
    /// is answered, refused, or `timeout` passes (`None`: unknown).
    pub async fn set_raft_within(
        &mut self,
        timeout: Duration,
        partition: PartitionId,
        mode: cohort_core::persist::RaftMode,
    ) -> Option<Result<(), String>> {
        self.with_retries_within(timeout, |service| async move {
            match service.set_raft(partition, mode).await {
                Ok(_) => Attempt::Done(Ok(())),
                Err(ApiError::Refused(reason)) => Attempt::Done(Err(reason)),
                Err(ApiError::NotLeader { leader }) => Attempt::Retry { at: leader },
                Err(_) => Attempt::Retry { at: None },
            }
        })
        .await
    }
}

/// Creates the workload's repositories (each in its own partition), retrying until done.
pub async fn create_repositories(shared: &Shared, repos: usize, seed: u64) {
    let mut client = SimClient::new(u64::MAX >> 1, seed, shared.clone());
    for i in 0..repos {
        client.seq += 1;
        let seq = client.seq;
        let created = client
            .with_retries(|service| async move {
                match service.create_repository(ClientId(u64::MAX >> 1), seq, repo(i), None).await {
                    Ok(_) => Attempt::Done(()),
                    Err(ApiError::NotLeader { leader }) => Attempt::Retry { at: leader },
                    Err(_) => Attempt::Retry { at: None },
                }
            })
            .await;
        assert!(created.is_some(), "repository {i} is created before any fault");
        shared.trace.event(now_ns(), format!("created {}", repo(i)));
    }
}
