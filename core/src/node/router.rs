//! The node-level owner of partition actors: creates and opens them, unloads idle ones and
//! loads them again on demand, and routes messages and requests to their mailboxes.

use super::actor::{Actor, ActorState, LagGauge, MailboxLoad, PartitionInput, ReplicaHost, Unload};
use super::applier::{ApplyRequest, DurableSignal};
use super::liveness::{Liveness, LivenessOptions, NOTICES_PER_INTERVAL};
use super::persisted::PersistSignal;
use super::workers::Workers;
use crate::env::{Env, Envelope, Payload, Transport};
use crate::ids::{NodeId, PartitionId, PartitionMap, PeerId, DIRECTORY};
use crate::limits::{MAILBOX_BYTES_MAX, MAILBOX_MESSAGES_MAX, MAILBOX_REQUESTS_MAX, MAILBOX_REQUEST_BYTES_MAX};
use crate::partition::{
    Dormant, Partition, PartitionConfig, PartitionStatus, ReplicaOptions, Request, Response, StoredState,
};
use crate::persist::{ConfState, ConfStatePool, PersistRequest, RecoveredPartition};
use crate::snapshot::{AuthorityDir, SnapshotStore, Transfers, DIRECTORY_AUTHORITY};
use crate::state_machine::PartitionInfo;
use crate::store::Store;
use futures::channel::{mpsc, oneshot};
use futures::future::BoxFuture;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// What a node's router needs: who it is, and how its replicas run Raft.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub node: NodeId,
    /// Every other node of the cluster: node liveness watches them.
    pub peers: Vec<NodeId>,
    pub replica: ReplicaOptions,
    /// Workers that drive the loaded replicas (`workers.rs`); one per runtime thread is the
    /// usual choice.
    pub workers: usize,
    /// This node's data directory was made to join the cluster (`identity::Origin::Join`):
    /// it hosts no directory replica until the directory's leader adds it.
    pub joins: bool,
}

/// Why a request did not reach a partition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("partition {0} is not hosted on this node")]
    UnknownPartition(PartitionId),
    #[error("partition {0} already exists on this node")]
    PartitionExists(PartitionId),
    #[error("partition {0} is unloaded on this node")]
    Unloaded(PartitionId),
    #[error("partition {0} is overloaded: its mailbox is full")]
    MailboxFull(PartitionId),
    #[error("partition {0} stopped before answering")]
    Stopped(PartitionId),
    #[error("partition {partition}: {reason}")]
    Disk { partition: PartitionId, reason: String },
}

/// Counters a node exports.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// Raft messages dropped because the target partition's mailbox was full.
    pub messages_dropped_mailbox_full: AtomicU64,
    /// Raft messages for a partition this node does not host.
    pub messages_dropped_unknown_partition: AtomicU64,
}

/// A replica this node hosts: running, or unloaded. An unloaded one lives in the map itself
/// (see [`PartitionMap`]): unloading allocates nothing. A large node's replicas are mostly
/// unloaded; a loaded one costs thousands of bytes anyway.
enum Replica {
    Loaded(Box<Hosted>),
    /// Unloaded (`partition/dormant.rs`): no task, no mailbox, no timer; the first request or
    /// message for it loads it again.
    Unloaded(Unloaded),
}

struct Unloaded {
    dormant: Dormant,
    /// Where its files are (with the partition's id): the disk is the router's.
    authority: Arc<AuthorityDir>,
}

impl Replica {
    fn peer(&self) -> PeerId {
        match self {
            Replica::Loaded(hosted) => hosted.peer,
            Replica::Unloaded(unloaded) => unloaded.dormant.peer,
        }
    }
}

/// What made an unloaded replica load again (`cohort_partition_loads_total{cause}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LoadCause {
    Request,
    Message,
    /// The node of the leader it followed went down: it must take part in the election.
    LeaderNodeDown,
    /// Its membership changed: the loaded replica carries the change out (removal).
    Membership,
}

impl LoadCause {
    fn name(self) -> &'static str {
        match self {
            LoadCause::Request => "request",
            LoadCause::Message => "message",
            LoadCause::LeaderNodeDown => "leader_node_down",
            LoadCause::Membership => "membership",
        }
    }
}

/// The sending side of a replica's mailbox, bounded in inputs and in bytes.
#[derive(Clone)]
struct Mailbox {
    sender: mpsc::Sender<PartitionInput>,
    load: Arc<MailboxLoad>,
}

/// Why an input did not go in a mailbox.
enum Refused {
    Full,
    Closed,
}

impl Mailbox {
    /// Puts `input` in the mailbox unless it is full, in inputs or in bytes. Client requests
    /// and inspections fill only up to `MAILBOX_REQUEST_BYTES_MAX` and `MAILBOX_REQUESTS_MAX`,
    /// Raft messages carrying entries or snapshot data up to `MAILBOX_BYTES_MAX`, and Raft's
    /// control messages (heartbeats, votes, acknowledgements: no payload) are held only to the
    /// input bound. So a flood of writes or reads crowds out neither the acknowledgements that
    /// would commit them nor the heartbeats that keep their leader. Called under the router's
    /// lock on the router's own sender: a clone of a sender is never parked, so the input
    /// bound holds only for the one stored sender.
    fn try_send(&mut self, input: PartitionInput) -> Result<(), Refused> {
        let size = input.size_bytes();
        let request = input.is_client_request();
        let limit_bytes = if request {
            MAILBOX_REQUEST_BYTES_MAX
        } else if input.payload_bytes() == 0 {
            usize::MAX
        } else {
            MAILBOX_BYTES_MAX
        };
        let load = &self.load;
        if load.bytes.load(Ordering::Relaxed) + size > limit_bytes
            || (request && load.requests.load(Ordering::Relaxed) >= MAILBOX_REQUESTS_MAX)
        {
            return Err(Refused::Full);
        }
        load.bytes.fetch_add(size, Ordering::Relaxed);
        load.requests.fetch_add(usize::from(request), Ordering::Relaxed);
        self.sender.try_send(input).map_err(|error| {
            load.bytes.fetch_sub(size, Ordering::Relaxed);
            load.requests.fetch_sub(usize::from(request), Ordering::Relaxed);
            if error.is_full() {
                Refused::Full
            } else {
                Refused::Closed
            }
        })
    }

    /// Puts `input` in the mailbox once it has room for one more input, on a clone of the
    /// sender, for inputs that must not be lost (liveness notices, a removal). They are small,
    /// and not held to the byte bound.
    async fn send(mut self, input: PartitionInput) {
        use futures::SinkExt;
        debug_assert!(!input.is_client_request(), "requests are never waited for");
        let size = input.size_bytes();
        self.load.bytes.fetch_add(size, Ordering::Relaxed);
        if self.sender.send(input).await.is_err() {
            self.load.bytes.fetch_sub(size, Ordering::Relaxed);
        }
    }
}

/// A replica this node runs.
struct Hosted {
    mailbox: Mailbox,
    /// Its Raft id: which incarnation of this node's membership it is.
    peer: PeerId,
    /// How far its furthest-behind follower is behind it while it leads.
    lag: Arc<LagGauge>,
}

/// Why `Router::join_directory_as` did not take a peer.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Identity(#[from] super::identity::IdentityError),
}

pub struct Router {
    config: RouterConfig,
    env: Env,
    transport: Arc<dyn Transport>,
    /// Taken by `stop_all`, so that the log writer sees its queue close once every actor has
    /// stopped.
    persist: Mutex<Option<mpsc::Sender<PersistRequest>>>,
    /// The node's state store, and the queue of its one writer (taken by `stop_all`, like
    /// `persist`).
    store: Arc<Store>,
    applier: Mutex<Option<mpsc::Sender<ApplyRequest>>>,
    replicas: Mutex<PartitionMap<Replica>>,
    /// The memberships of unloaded replicas, one copy each (taken inside `replicas`' lock).
    conf_states: Mutex<ConfStatePool>,
    /// The directories of the authorities (storage names) replicas were created for, one
    /// each: as few as the cluster's nodes have storages.
    authorities: Mutex<BTreeMap<Box<str>, Arc<AuthorityDir>>>,
    /// Where loaded replicas run.
    workers: Workers,
    /// Replicas being deleted, until their removal is durable; `Some((authority, peer))`:
    /// this node became a member again meanwhile (as `peer`), so a new replica starts once the
    /// old one is gone.
    retiring: Mutex<BTreeMap<PartitionId, Option<(String, PeerId)>>>,
    pub stats: RouterStats,
    /// Directory updates this node made, to name each with its own writer.
    internal_writes: AtomicU64,
    /// Who this node hears from (see `liveness.rs`); a change is told to every replica by the
    /// task `start_liveness` starts, woken through `liveness_changed`.
    liveness: Mutex<Liveness>,
    liveness_options: LivenessOptions,
    liveness_changed: Mutex<Option<mpsc::Sender<()>>>,
    /// On a node made to join: the directory peer the operator named for it once the
    /// directory made it a member (`join_directory_as`); only that peer's messages start its
    /// directory replica.
    directory_peer: Mutex<Option<PeerId>>,
    this: Weak<Router>,
}

impl Router {
    pub fn new(
        config: RouterConfig,
        env: Env,
        transport: Arc<dyn Transport>,
        persist: mpsc::Sender<PersistRequest>,
        store: Arc<Store>,
        applier: mpsc::Sender<ApplyRequest>,
    ) -> Arc<Router> {
        let liveness_options = LivenessOptions::for_replicas(&config.replica);
        let liveness = Liveness::new(&config.peers, liveness_options.timeout, env.clock.now());
        let workers = Workers::start(config.workers, env.clock.clone(), &*env.spawn);
        Arc::new_cyclic(|this| Router {
            workers,
            liveness: Mutex::new(liveness),
            liveness_options,
            liveness_changed: Mutex::new(None),
            config,
            env,
            transport,
            persist: Mutex::new(Some(persist)),
            store,
            applier: Mutex::new(Some(applier)),
            replicas: Mutex::new(PartitionMap::default()),
            conf_states: Mutex::new(ConfStatePool::default()),
            authorities: Mutex::new(BTreeMap::new()),
            retiring: Mutex::new(BTreeMap::new()),
            stats: RouterStats::default(),
            internal_writes: AtomicU64::new(0),
            directory_peer: Mutex::new(None),
            this: this.clone(),
        })
    }

    pub fn node(&self) -> NodeId {
        self.config.node
    }

    /// Starts node liveness: a task that heartbeats every other node and marks silent ones
    /// down, and one that tells every replica here about each change (paced; see
    /// `liveness.rs`). Both end when the router stops.
    pub fn start_liveness(&self) {
        let (changed_tx, mut changed_rx) = mpsc::channel::<()>(1);
        *self.liveness_changed.lock().expect("not poisoned") = Some(changed_tx);
        let mut liveness = self.liveness.lock().expect("not poisoned");
        liveness.start_listening(self.env.clock.now());
        for peer in liveness.peers() {
            self.env.metrics.peer_alive.get_or_create(&vec![("peer", peer.to_string())]).set(1);
        }
        drop(liveness);
        let (clock, interval) = (self.env.clock.clone(), self.liveness_options.interval);
        let this = self.this.clone();
        self.env.spawn.spawn(
            "node liveness",
            Box::pin(async move {
                loop {
                    clock.sleep_until(clock.now() + interval).await;
                    let Some(router) = this.upgrade() else { return };
                    if !router.heartbeat_peers() {
                        return;
                    }
                }
            }),
        );
        let (clock, options) = (self.env.clock.clone(), self.liveness_options);
        let this = self.this.clone();
        self.env.spawn.spawn(
            "liveness notices",
            Box::pin(async move {
                use futures::StreamExt;
                while changed_rx.next().await.is_some() {
                    let Some(router) = this.upgrade() else { return };
                    let down = Arc::new(router.liveness.lock().expect("not poisoned").down().clone());
                    let partitions = router.partitions();
                    drop(router);
                    let mut told = 0;
                    for partition in partitions {
                        let Some(router) = this.upgrade() else { return };
                        let mailbox = router.liveness_mailbox(partition, &down);
                        drop(router);
                        let Some(mailbox) = mailbox else { continue };
                        // With backpressure: a notice must not be lost (a follower that never
                        // learns its leader died would sleep forever). An actor that unloads
                        // meanwhile drops it, and learns the down set when it loads.
                        mailbox.send(PartitionInput::Liveness(down.clone())).await;
                        told += 1;
                        if told % NOTICES_PER_INTERVAL == 0 {
                            clock.sleep_until(clock.now() + options.interval).await;
                        }
                    }
                }
            }),
        );
    }

    /// Where to tell `partition`'s replica about a liveness change: its mailbox if it runs; if
    /// it is unloaded, only if the leader it followed is down (it is loaded to take part in
    /// the election); the others learn the down set whenever they load.
    fn liveness_mailbox(&self, partition: PartitionId, down: &BTreeSet<NodeId>) -> Option<Mailbox> {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        let leader_down = match replicas.get(&partition)? {
            Replica::Loaded(hosted) => return Some(hosted.mailbox.clone()),
            Replica::Unloaded(unloaded) => unloaded.dormant.leader_node().is_some_and(|n| down.contains(&n)),
        };
        if !leader_down {
            return None;
        }
        self.load(&mut replicas, partition, LoadCause::LeaderNodeDown).map(|hosted| hosted.mailbox.clone())
    }

    /// Sends every peer a node heartbeat and marks silent ones down. False once the router
    /// is stopping.
    fn heartbeat_peers(&self) -> bool {
        let Some(changed) = self.liveness_changed.lock().expect("not poisoned").clone() else { return false };
        let now = self.env.clock.now();
        let mut liveness = self.liveness.lock().expect("not poisoned");
        let peers: Vec<NodeId> = liveness.peers().collect();
        for peer in peers {
            let payload = Payload::NodeHeartbeat(liveness.heartbeat_for(peer, now));
            let heartbeat = Envelope { partition: DIRECTORY, from: self.config.node, to: peer, payload };
            self.transport.send(peer, vec![heartbeat]);
        }
        let before = liveness.down().clone();
        if liveness.check(now) {
            for node in liveness.down().difference(&before) {
                tracing::warn!(node = %self.config.node, peer = %node, "peer node stopped answering");
                self.env.metrics.peer_alive.get_or_create(&vec![("peer", node.to_string())]).set(0);
                self.env.metrics.peer_down_events.inc();
            }
            Self::liveness_changed(changed);
        }
        true
    }

    fn liveness_changed(mut changed: mpsc::Sender<()>) {
        // Full: a notice pass is already due, and it reads the newest state.
        let _ = changed.try_send(());
    }

    /// Whether this node's data directory was made to join the cluster (`RouterConfig::joins`).
    pub fn joins(&self) -> bool {
        self.config.joins
    }

    /// Whether `node` has been heard from since this node started, and lately.
    pub fn answers(&self, node: NodeId) -> bool {
        self.liveness.lock().expect("not poisoned").answers(node)
    }

    /// The nodes node liveness reports down.
    pub fn down_nodes(&self) -> BTreeSet<NodeId> {
        self.liveness.lock().expect("not poisoned").down().clone()
    }

    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The directory write that records `conf` as `partition`'s members as of its log index
    /// `as_of`, under a fresh writer: the update sets whole member lists, so it needs no
    /// deduplication, and a node-made sequence could collide with a client's.
    fn members_command(
        &self,
        partition: PartitionId,
        conf: &crate::persist::ConfState,
        as_of: u64,
    ) -> crate::state_machine::Command {
        let n = self.internal_writes.fetch_add(1, Ordering::Relaxed);
        // Spread over the id space; mixing the node's seed keeps ids apart across restarts.
        let writer = crate::ids::ClientId(
            (self.env.seed ^ (self.config.node.0 << 48) ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1 << 63,
        );
        let op = crate::state_machine::WriteOp::SetPartitionMembers {
            partition,
            voters: conf.voter_nodes(),
            learners: conf.learner_nodes(),
            peers: conf.members().into_iter().map(PeerId).collect(),
            as_of,
        };
        crate::state_machine::Command { client: writer, seq: 1, op }
    }

    /// Whether this node's directory replica records `conf` as `partition`'s members.
    pub fn directory_records(&self, partition: PartitionId, conf: &crate::persist::ConfState) -> bool {
        let recorded = self
            .store
            .read()
            .ok()
            .and_then(|rows| crate::store::read::directory_partition(&rows, DIRECTORY, partition).ok().flatten());
        let peers: Vec<PeerId> = conf.members().into_iter().map(PeerId).collect();
        recorded.is_some_and(|info| {
            info.voters == conf.voter_nodes() && info.learners == conf.learner_nodes() && info.peers == peers
        })
    }

    /// The node's state store, for reads.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn tick_interval(&self) -> Duration {
        self.config.replica.tick_interval
    }

    /// How this node's replicas run Raft.
    pub fn replica_options(&self) -> &ReplicaOptions {
        &self.config.replica
    }

    fn partition_config(&self, partition: PartitionId, peer: PeerId) -> PartitionConfig {
        assert_eq!(peer.node(), self.config.node, "a replica here is this node's peer");
        PartitionConfig {
            node: self.config.node,
            peer,
            partition,
            options: self.config.replica.clone(),
            seed: self.env.seed,
            observer: self.env.observer.clone(),
        }
    }

    /// Where a replica of `partition` created for `authority` keeps its snapshot files.
    fn files(&self, authority: &str, partition: PartitionId) -> SnapshotStore {
        let authority = if partition == crate::ids::DIRECTORY { DIRECTORY_AUTHORITY } else { authority };
        let mut authorities = self.authorities.lock().expect("not poisoned");
        // Looked up before `entry`, which would copy the name for every replica opened.
        let shared = match authorities.get(authority) {
            Some(shared) => Arc::clone(shared),
            None => Arc::clone(authorities.entry(authority.into()).or_insert_with(|| AuthorityDir::new(authority))),
        };
        SnapshotStore::in_authority(self.env.disk.clone(), shared, partition)
    }

    /// Creates a new replica of `partition` (created for storage `authority`) with initial
    /// voters `voters`; with `campaign` it starts the first election at once.
    pub fn create_partition(
        &self,
        partition: PartitionId,
        authority: &str,
        voters: &[NodeId],
        campaign: bool,
    ) -> Result<(), RouteError> {
        if self.hosts(partition) {
            return Err(RouteError::PartitionExists(partition));
        }
        let peer = PeerId::new(self.config.node, 0);
        let files = self.recorded_files(authority, partition, peer)?;
        let mut replicas = self.replicas.lock().expect("not poisoned");
        if replicas.contains_key(&partition) {
            // Created meanwhile, under the same peer id the file records.
            return Err(RouteError::PartitionExists(partition));
        }
        let now = self.env.clock.now();
        let mut replica = Partition::create(self.partition_config(partition, peer), voters, now);
        if campaign {
            replica.campaign(now);
        }
        let (mailbox, lag) = self.start(replica, files, false)?;
        replicas.insert(partition, Replica::Loaded(Box::new(Hosted { mailbox, peer, lag })));
        Ok(())
    }

    /// The files of a new replica of `partition`, its peer id recorded durably (before it can
    /// speak: see `SnapshotStore::write_peer`). Called without the router's lock held: its
    /// fsyncs would stall every request and message to every replica meanwhile.
    fn recorded_files(
        &self,
        authority: &str,
        partition: PartitionId,
        peer: PeerId,
    ) -> Result<SnapshotStore, RouteError> {
        let files = self.files(authority, partition);
        files.write_peer(peer).map_err(|e| RouteError::Disk { partition, reason: e.to_string() })?;
        Ok(files)
    }

    /// Brings this node's replica of `partition` in line with the directory's members:
    /// starts an empty one if this node is a member without a replica (the leader brings it
    /// the log or a snapshot), deletes this node's replica if it is no longer a member or if
    /// the member now is another incarnation (removed and added back meanwhile).
    pub fn reconcile(&self, partition: PartitionId, info: &PartitionInfo) {
        let me = self.config.node;
        let wanted = info.peer_of(me);
        let mut replicas = self.replicas.lock().expect("not poisoned");
        let mut retiring = self.retiring.lock().expect("not poisoned");
        let hosted = replicas.get(&partition).map(Replica::peer);
        match (wanted, hosted) {
            (Some(peer), None) if retiring.contains_key(&partition) => {
                // Its old replica's removal is not durable yet: start afresh after it.
                retiring.insert(partition, Some((info.authority.clone(), peer)));
            }
            (Some(peer), None) => {
                drop(retiring);
                drop(replicas);
                let files = match self.recorded_files(&info.authority, partition, peer) {
                    Ok(files) => files,
                    Err(error) => return tracing::error!(%partition, %error, "cannot start the new replica"),
                };
                let mut replicas = self.replicas.lock().expect("not poisoned");
                if replicas.contains_key(&partition)
                    || self.retiring.lock().expect("not poisoned").contains_key(&partition)
                {
                    // Started or retired meanwhile by a concurrent reconcile; a retirement
                    // reconciles again once its removal is done.
                    return;
                }
                let now = self.env.clock.now();
                let replica = Partition::create_empty(self.partition_config(partition, peer), now);
                match self.start(replica, files, false) {
                    Ok((mailbox, lag)) => {
                        replicas.insert(partition, Replica::Loaded(Box::new(Hosted { mailbox, peer, lag })));
                        tracing::info!(node = %me, %partition, %peer, "joined partition as a new replica");
                    }
                    Err(error) => tracing::error!(%partition, %error, "cannot start the new replica"),
                }
            }
            (wanted, Some(old)) if wanted != Some(old) => {
                // The removal goes through the log, which the replica's actor writes to.
                let Some(hosted) = self.load(&mut replicas, partition, LoadCause::Membership) else { return };
                let mailbox = hosted.mailbox.clone();
                replicas.remove(&partition);
                tracing::info!(node = %me, %partition, %old, "retiring replica");
                retiring.insert(partition, wanted.map(|peer| (info.authority.clone(), peer)));
                // Sent with backpressure: the removal must reach the actor, after its inputs.
                self.env.spawn.spawn("retire replica", Box::pin(mailbox.send(PartitionInput::Remove)));
            }
            (None, None) if retiring.contains_key(&partition) => {
                // Added back and removed again while the old replica was being deleted.
                retiring.insert(partition, None);
            }
            _ => {}
        }
    }

    /// Starts a replica from recovered state: the log's, and what the store holds.
    pub fn open_partition(
        &self,
        partition: PartitionId,
        recovered: RecoveredPartition,
        stored: StoredState,
        store: SnapshotStore,
    ) -> Result<(), RouteError> {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        if replicas.contains_key(&partition) {
            return Err(RouteError::PartitionExists(partition));
        }
        let now = self.env.clock.now();
        // The replica recorded its incarnation before it first spoke. A replica without the
        // record never started, so it never acknowledged anything; it takes the incarnation
        // its membership names, or the initial one (`reconcile` replaces it if the directory
        // says otherwise).
        let me = self.config.node;
        let recorded = store.read_peer().map_err(|e| RouteError::Disk { partition, reason: e.to_string() })?;
        let conf = &recovered.conf_state;
        let member = conf.members().into_iter().map(PeerId).find(|p| p.node() == me);
        let peer = recorded.or(member).unwrap_or(PeerId::new(me, 0));
        if partition != DIRECTORY && recorded.is_some() && self.config.replica.unload_after_ticks > 0 {
            // A restart loads lazily: a replica whose log holds nothing the store has not
            // made durable stays unloaded until a request or a message needs it.
            if let Some(dormant) = Dormant::recovered(peer, &recovered, &stored) {
                replicas.insert(partition, self.unloaded(dormant, store));
                self.env.metrics.partitions_unloaded.inc();
                return Ok(());
            }
            tracing::info!(
                %partition,
                entries = recovered.entries.len(),
                compacted = recovered.compacted.index,
                applied = stored.applied.index,
                commit = recovered.hard_state.commit,
                "loading at start: the log holds entries past what the store made durable"
            );
        }
        let config = self.partition_config(partition, peer);
        let mut replica = Partition::open(config, recovered, stored, now);
        if partition != DIRECTORY {
            // A restart does not wake, let alone elect, every partition this node hosts: each
            // sleeps until a request or a message needs it. The directory stays awake: the
            // nodes' bookkeeping (members, allocations) needs its leader without a request to
            // wake it (resting it too left it leaderless after whole-cluster restarts in the
            // simulator).
            replica.rest();
        }
        let (mailbox, lag) = self.start(replica, store, recorded.is_none())?;
        replicas.insert(partition, Replica::Loaded(Box::new(Hosted { mailbox, peer, lag })));
        Ok(())
    }

    /// `dormant` as an unloaded replica, its membership shared with the other unloaded ones'.
    fn unloaded(&self, mut dormant: Dormant, files: SnapshotStore) -> Replica {
        dormant.conf_state = self.conf_states.lock().expect("not poisoned").share(&dormant.conf_state);
        Replica::Unloaded(Unloaded { dormant, authority: Arc::clone(files.authority()) })
    }

    /// Where a recovered replica keeps its files: under `authority`, where a past start put
    /// them (or where they go if it had none).
    pub fn store_for_recovered(&self, partition: PartitionId, authority: &str) -> SnapshotStore {
        self.files(authority, partition)
    }

    /// Starts the actor of `partition`; with `record_peer`, first records its peer id durably.
    fn start(
        &self,
        partition: Partition,
        store: SnapshotStore,
        record_peer: bool,
    ) -> Result<(Mailbox, Arc<LagGauge>), RouteError> {
        let id = partition.id();
        if record_peer {
            let peer = partition.peer();
            store.write_peer(peer).map_err(|e| RouteError::Disk { partition: id, reason: e.to_string() })?;
        }
        let persist = self.persist.lock().expect("not poisoned").clone().ok_or(RouteError::Stopped(id))?;
        let applier = self.applier.lock().expect("not poisoned").clone().ok_or(RouteError::Stopped(id))?;
        let (sender, rx) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        let mut mailbox = Mailbox { sender, load: Arc::default() };
        let lag = Arc::new(LagGauge::default());
        let down = self.down_nodes();
        if !down.is_empty() && mailbox.try_send(PartitionInput::Liveness(Arc::new(down))).is_err() {
            unreachable!("a new mailbox has room");
        }
        let seed = self.env.seed ^ self.env.clock.now().as_nanos();
        let transfers = Transfers::new(
            id,
            self.config.node,
            store,
            self.env.metrics.clone(),
            seed,
            self.config.replica.snapshot_size_bytes_max,
        );
        let ticks = u32::try_from(self.config.replica.unload_after_ticks).unwrap_or(u32::MAX);
        let unload_after = (ticks > 0).then(|| self.config.replica.tick_interval * ticks);
        let state = ActorState::new(&partition, self.env.metrics.clone(), lag.clone(), unload_after);
        let actor = Actor {
            partition,
            mailbox: rx,
            mailbox_load: mailbox.load.clone(),
            env: self.env.clone(),
            transport: self.transport.clone(),
            persist,
            signal: PersistSignal::new(),
            store: self.store.clone(),
            applier,
            durable: DurableSignal::default(),
            host: self.this.clone() as Weak<dyn ReplicaHost>,
            transfers,
            transfer_events: Default::default(),
            saving: None,
            checking: None,
            members: Default::default(),
            state,
        };
        self.workers.insert(id, Box::new(actor));
        Ok((mailbox, lag))
    }

    /// How far behind each partition led here is, in entries and in time (its furthest-behind
    /// member), a pair per loaded replica (others lead nothing: unloaded replicas are quiesced).
    pub fn leader_lags(&self) -> Vec<(u64, Duration)> {
        let replicas = self.replicas.lock().expect("not poisoned");
        let lags = replicas.values().filter_map(|replica| match replica {
            Replica::Loaded(hosted) => Some((
                hosted.lag.entries.load(Ordering::Relaxed),
                Duration::from_millis(hosted.lag.millis.load(Ordering::Relaxed)),
            )),
            Replica::Unloaded(_) => None,
        });
        lags.collect()
    }

    /// What waits in the loaded replicas' mailboxes, summed: bytes, and client requests (and
    /// inspections) among them. Read at a scrape, from the counters the bounds are checked
    /// against.
    pub fn mailbox_load(&self) -> (usize, usize) {
        let replicas = self.replicas.lock().expect("not poisoned");
        let loads = replicas.values().filter_map(|replica| match replica {
            Replica::Loaded(hosted) => Some(&hosted.mailbox.load),
            Replica::Unloaded(_) => None,
        });
        loads.fold((0, 0), |(bytes, requests), load| {
            (bytes + load.bytes.load(Ordering::Relaxed), requests + load.requests.load(Ordering::Relaxed))
        })
    }

    /// Whether this node hosts a replica of `partition` (loaded or not).
    pub fn hosts(&self, partition: PartitionId) -> bool {
        self.replicas.lock().expect("not poisoned").contains_key(&partition)
    }

    /// The partitions this node hosts, sorted.
    pub fn partitions(&self) -> Vec<PartitionId> {
        let mut ids: Vec<PartitionId> = self.replicas.lock().expect("not poisoned").keys().copied().collect();
        // Sorted once the lock is released: routing waits on it.
        ids.sort_unstable();
        ids
    }

    /// How many partitions this node hosts.
    pub fn partitions_hosted(&self) -> usize {
        self.replicas.lock().expect("not poisoned").len()
    }

    /// Up to `limit` of the partitions this node hosts, from `start` on, sorted.
    pub fn partitions_from(&self, start: PartitionId, limit: usize) -> Vec<PartitionId> {
        let mut ids: Vec<PartitionId> =
            self.replicas.lock().expect("not poisoned").keys().copied().filter(|&id| id >= start).collect();
        // A page costs one pass over the map, not a sort of all of it.
        if ids.len() > limit {
            ids.select_nth_unstable(limit);
            ids.truncate(limit);
        }
        ids.sort_unstable();
        ids
    }

    /// Loads `partition`'s replica if it is unloaded; its running actor, or `None` if this
    /// node hosts no replica of it (or the node is stopping).
    fn load<'a>(
        &self,
        replicas: &'a mut PartitionMap<Replica>,
        partition: PartitionId,
        cause: LoadCause,
    ) -> Option<&'a mut Hosted> {
        let replica = replicas.get_mut(&partition)?;
        if let Replica::Unloaded(unloaded) = replica {
            let Unloaded { dormant, authority } = &*unloaded;
            let files = SnapshotStore::in_authority(self.env.disk.clone(), Arc::clone(authority), partition);
            let now = self.env.clock.now();
            let reopened = Partition::reopen(self.partition_config(partition, dormant.peer), dormant, now);
            let peer = dormant.peer;
            match self.start(reopened, files, false) {
                Ok((mailbox, lag)) => {
                    *replica = Replica::Loaded(Box::new(Hosted { mailbox, peer, lag }));
                    self.env.metrics.partitions_unloaded.dec();
                    if let Some(observer) = &self.env.observer {
                        observer.load_changed(self.config.node, partition, true);
                    }
                    self.env.metrics.partition_loads.get_or_create(&vec![("cause", cause.name().to_string())]).inc();
                }
                Err(error) => {
                    tracing::warn!(%partition, %error, "cannot load the replica");
                    return None;
                }
            }
        }
        match replica {
            Replica::Loaded(hosted) => Some(&mut **hosted),
            Replica::Unloaded(_) => unreachable!("loaded above"),
        }
    }

    /// Puts `input` in `partition`'s mailbox, loading the replica first if `load` names why.
    fn send_input(
        &self,
        partition: PartitionId,
        input: PartitionInput,
        load: Option<LoadCause>,
    ) -> Result<(), RouteError> {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        match (replicas.get(&partition), load) {
            (None, _) => return Err(RouteError::UnknownPartition(partition)),
            (Some(Replica::Unloaded(_)), None) => return Err(RouteError::Unloaded(partition)),
            (Some(_), _) => {}
        }
        let cause = load.unwrap_or(LoadCause::Request);
        let hosted = self.load(&mut replicas, partition, cause).ok_or(RouteError::Stopped(partition))?;
        hosted.mailbox.try_send(input).map_err(|refused| match refused {
            Refused::Full => RouteError::MailboxFull(partition),
            Refused::Closed => RouteError::Stopped(partition),
        })
    }

    /// Delivers Raft messages that arrived from the network, loading unloaded replicas they
    /// are for. A full mailbox drops the message (Raft retransmits) and counts it.
    pub fn deliver(&self, envelopes: Vec<Envelope>) {
        self.heard_from(&envelopes);
        let mut replicas = self.replicas.lock().expect("not poisoned");
        if self.config.joins && !replicas.contains_key(&DIRECTORY) {
            if let Some(peer) = envelopes.iter().find_map(|e| self.directory_invitation(e)) {
                drop(replicas);
                self.join_directory(peer);
                replicas = self.replicas.lock().expect("not poisoned");
            }
        }
        for envelope in envelopes {
            if matches!(envelope.payload, Payload::NodeHeartbeat(_)) {
                continue;
            }
            if envelope.to != self.config.node {
                self.stats.messages_dropped_unknown_partition.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.load(&mut replicas, envelope.partition, LoadCause::Message) {
                Some(hosted) => {
                    if hosted.mailbox.try_send(PartitionInput::Message(envelope)).is_err() {
                        self.stats.messages_dropped_mailbox_full.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => {
                    self.stats.messages_dropped_unknown_partition.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// On a node made to join, which hosts no directory replica yet: starts one as `peer` once
    /// a message of the directory's group addresses it, and only then. The operator names the
    /// peer (`cohort node replace`, step 3) from the directory's members once it made this
    /// node one: the directory may also name a peer of this node that a lost data directory
    /// held (a node replaced twice: the first replacement's peer, until step 3 replaces it),
    /// which its leader keeps addressing, and which this node must never take.
    ///
    /// Remembered durably (`identity::save_directory_peer`; read back at start by
    /// `restore_directory_peer`).
    pub fn join_directory_as(&self, peer: PeerId) -> Result<(), JoinError> {
        if !self.config.joins {
            return Err(JoinError::Invalid(
                "only a node started on a data directory made to join takes a directory peer".into(),
            ));
        }
        if peer.node() != self.config.node || peer.incarnation() == 0 {
            return Err(JoinError::Invalid(format!(
                "{peer} is not a peer the directory adds for node {}",
                self.config.node
            )));
        }
        super::identity::save_directory_peer(&*self.env.disk, peer)?;
        *self.directory_peer.lock().expect("not poisoned") = Some(peer);
        Ok(())
    }

    /// At start, on a node made to join: the directory peer an operator named before it
    /// stopped, if any.
    pub fn restore_directory_peer(&self) -> Result<(), super::identity::IdentityError> {
        if self.config.joins {
            *self.directory_peer.lock().expect("not poisoned") = super::identity::load_directory_peer(&*self.env.disk)?;
        }
        Ok(())
    }

    /// The peer id a Raft message of the directory's group addresses on this node, if it is
    /// the one the operator named (`join_directory_as`). The initial members' ids are never
    /// taken: they belong to the data directories that bootstrapped the directory.
    fn directory_invitation(&self, envelope: &Envelope) -> Option<PeerId> {
        let Payload::Raft(message) = &envelope.payload else { return None };
        let peer = PeerId(message.to);
        let named = *self.directory_peer.lock().expect("not poisoned");
        (envelope.partition == DIRECTORY && envelope.to == self.config.node && Some(peer) == named).then_some(peer)
    }

    /// Starts an empty directory replica as `peer`, on a node made to join the cluster (its
    /// data directory's origin is `join`): the directory's leader added it as a member and
    /// brings it the log or a snapshot. The replica acts on no directory entry before the one
    /// that added it (see `Partition::open`), then reconciles with the whole directory.
    fn join_directory(&self, peer: PeerId) {
        let files = match self.recorded_files(DIRECTORY_AUTHORITY, DIRECTORY, peer) {
            Ok(files) => files,
            Err(error) => return tracing::error!(%error, "cannot start the directory replica"),
        };
        let mut replicas = self.replicas.lock().expect("not poisoned");
        if replicas.contains_key(&DIRECTORY) {
            return;
        }
        let replica = Partition::create_empty(self.partition_config(DIRECTORY, peer), self.env.clock.now());
        match self.start(replica, files, false) {
            Ok((mailbox, lag)) => {
                replicas.insert(DIRECTORY, Replica::Loaded(Box::new(Hosted { mailbox, peer, lag })));
                tracing::info!(node = %self.config.node, %peer, "joined the cluster: the directory added this node");
            }
            Err(error) => tracing::error!(%error, "cannot start the directory replica"),
        }
    }

    /// Anything that arrives from a node shows it alive.
    fn heard_from(&self, envelopes: &[Envelope]) {
        let now = self.env.clock.now();
        let mut liveness = self.liveness.lock().expect("not poisoned");
        let mut back = false;
        for envelope in envelopes {
            if let Payload::NodeHeartbeat(heartbeat) = envelope.payload {
                if let Some(rtt) = liveness.heartbeat_from(envelope.from, heartbeat, now) {
                    let peer = vec![("peer", envelope.from.to_string())];
                    self.env.metrics.peer_rtt_seconds.get_or_create(&peer).set(rtt.as_secs_f64());
                }
            }
            if liveness.heard(envelope.from, now) {
                tracing::info!(node = %self.config.node, peer = %envelope.from, "peer node answers again");
                self.env.metrics.peer_alive.get_or_create(&vec![("peer", envelope.from.to_string())]).set(1);
                back = true;
            }
        }
        drop(liveness);
        if back {
            if let Some(changed) = self.liveness_changed.lock().expect("not poisoned").clone() {
                Self::liveness_changed(changed);
            }
        }
    }

    /// Sends `body` to `partition` (loading its replica if it is unloaded) and waits for its
    /// answer.
    pub async fn request(&self, partition: PartitionId, body: Request) -> Result<Response, RouteError> {
        let (reply, answer) = oneshot::channel();
        self.send_input(partition, PartitionInput::Request { body, reply }, Some(LoadCause::Request))?;
        answer.await.map_err(|_| RouteError::Stopped(partition))
    }

    /// Runs `f` on the partition's replica and returns its result. An unloaded replica is not
    /// loaded for this: `RouteError::Unloaded`.
    pub async fn inspect<T: Send + 'static>(
        &self,
        partition: PartitionId,
        f: impl FnOnce(&Partition) -> T + Send + 'static,
    ) -> Result<T, RouteError> {
        let (tx, rx) = oneshot::channel();
        let inspect = Box::new(move |p: &Partition| {
            let _ = tx.send(f(p));
        });
        self.send_input(partition, PartitionInput::Inspect(inspect), None)?;
        rx.await.map_err(|_| RouteError::Stopped(partition))
    }

    /// The replica's status; an unloaded one answers from its record, without loading.
    pub async fn status(&self, partition: PartitionId) -> Result<PartitionStatus, RouteError> {
        let unloaded = match self.replicas.lock().expect("not poisoned").get(&partition) {
            Some(Replica::Unloaded(unloaded)) => Some(unloaded.dormant.status(partition)),
            _ => None,
        };
        if let Some(status) = unloaded {
            return Ok(status);
        }
        let now = self.env.clock.now();
        self.inspect(partition, move |p| p.status(now)).await
    }

    /// Stops every partition actor and lets go of the log writer's queue: once the actors
    /// are gone, the writer makes what is queued durable and ends.
    pub fn stop_all(&self) {
        self.liveness_changed.lock().expect("not poisoned").take();
        self.persist.lock().expect("not poisoned").take();
        self.applier.lock().expect("not poisoned").take();
        let mut replicas = self.replicas.lock().expect("not poisoned");
        // In partition order: the actors stop in the same order in every run.
        let mut stopping: Vec<(PartitionId, Replica)> = std::mem::take(&mut *replicas).into_iter().collect();
        stopping.sort_unstable_by_key(|(id, _)| *id);
        for (_, replica) in stopping {
            let Replica::Loaded(hosted) = replica else {
                self.env.metrics.partitions_unloaded.dec();
                continue;
            };
            let mut mailbox = hosted.mailbox;
            // A full mailbox: closing the channel stops the actor all the same.
            if mailbox.try_send(PartitionInput::Stop).is_err() {
                mailbox.sender.close_channel();
            }
        }
        drop(replicas);
        self.workers.stop();
    }
}

/// The replicas' actors report to the router, which owns their lifecycle.
impl ReplicaHost for Router {
    fn tick_interval(&self) -> Duration {
        self.config.replica.tick_interval
    }

    /// The directory allocated `partition`: host a replica of it if this node is a member.
    /// Replaying the directory's log after a restart allocates again what exists already.
    fn partition_allocated(&self, partition: PartitionId, info: &PartitionInfo, campaign: bool) {
        if !info.voters.contains(&self.config.node) {
            return;
        }
        match self.create_partition(partition, &info.authority, &info.voters, campaign) {
            Ok(()) => tracing::info!(node = %self.config.node, %partition, "created partition replica"),
            Err(RouteError::PartitionExists(_)) => {}
            Err(error) => tracing::error!(%partition, %error, "cannot create partition replica"),
        }
    }

    fn members_changed(&self, partition: PartitionId, info: &PartitionInfo) {
        self.reconcile(partition, info);
    }

    /// Unloads the replica of `partition` whose actor calls this, leaving `dormant` in its
    /// place, unless an input waits in its `mailbox` or it no longer runs as that actor (see
    /// [`Unload`]). Senders use the mailbox under this lock, so once it is empty here nothing
    /// more arrives in it.
    fn unload(
        &self,
        partition: PartitionId,
        dormant: Dormant,
        files: SnapshotStore,
        mailbox: &mut mpsc::Receiver<PartitionInput>,
    ) -> Unload {
        let mut replicas = self.replicas.lock().expect("not poisoned");
        match replicas.get(&partition) {
            Some(Replica::Loaded(hosted)) if hosted.peer == dormant.peer => {}
            _ => return Unload::Refused,
        }
        match mailbox.try_recv() {
            Ok(input) => return Unload::Input(Box::new(input)),
            Err(mpsc::TryRecvError::Closed) => return Unload::Refused,
            Err(mpsc::TryRecvError::Empty) => {}
        }
        replicas.insert(partition, self.unloaded(dormant, files));
        self.env.metrics.partitions_unloaded.inc();
        self.env.metrics.partition_unloads.inc();
        if let Some(observer) = &self.env.observer {
            observer.load_changed(self.config.node, partition, false);
        }
        Unload::Done
    }

    /// The removal of this node's old replica of `partition` is durable.
    fn retired(&self, partition: PartitionId) {
        let rejoin = self.retiring.lock().expect("not poisoned").remove(&partition).flatten();
        if let Some((authority, peer)) = rejoin {
            let info = PartitionInfo {
                authority,
                voters: vec![self.config.node],
                learners: Vec::new(),
                peers: vec![peer],
                members_as_of: 0,
            };
            self.reconcile(partition, &info);
        }
    }

    /// Makes sure the directory records `conf` as `partition`'s members: nothing if this
    /// node's directory replica already does, else one write through the directory's leader.
    /// Whether the directory records them now.
    fn record_members(&self, partition: PartitionId, conf: ConfState, as_of: u64) -> BoxFuture<'static, bool> {
        let this = self.this.clone();
        Box::pin(async move {
            let Some(router) = this.upgrade() else { return false };
            if router.directory_records(partition, &conf) {
                return true;
            }
            let command = router.members_command(partition, &conf, as_of);
            matches!(router.request(DIRECTORY, Request::ForwardedWrite(command)).await, Ok(Response::Written(Ok(_))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Raft message from node 2 to node 1 of partition 1.
    fn raft_message(message: raft::eraftpb::Message) -> PartitionInput {
        PartitionInput::Message(Envelope {
            partition: PartitionId(1),
            from: NodeId(2),
            to: NodeId(1),
            payload: Payload::Raft(message),
        })
    }

    /// An append carrying one entry of 1 MiB.
    fn append() -> PartitionInput {
        let mut message = raft::eraftpb::Message::default();
        message.entries.push(raft::eraftpb::Entry { data: vec![0; 1 << 20].into(), ..Default::default() });
        raft_message(message)
    }

    /// A message with no payload, as a heartbeat or an acknowledgement is.
    fn heartbeat() -> PartitionInput {
        raft_message(raft::eraftpb::Message::default())
    }

    #[test]
    fn a_mailbox_is_bounded_in_bytes_as_well_as_in_inputs() {
        let (sender, mut receiver) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        let mut mailbox = Mailbox { sender, load: Arc::default() };
        // Raft appends carrying 1 MiB each: far fewer than the input bound fit.
        let size = append().size_bytes();
        let fit = MAILBOX_BYTES_MAX / size;
        assert!(fit < MAILBOX_MESSAGES_MAX);
        for _ in 0..fit {
            assert!(mailbox.try_send(append()).is_ok());
        }
        assert!(matches!(mailbox.try_send(append()), Err(Refused::Full)), "past the byte bound");
        assert_eq!(mailbox.load.bytes.load(Ordering::Relaxed), fit * size, "a refused input is not counted");
        // What the actor takes out makes room (as `Actor::took_out` does).
        let taken = receiver.try_recv().unwrap();
        mailbox.load.bytes.fetch_sub(taken.size_bytes(), Ordering::Relaxed);
        assert!(mailbox.try_send(append()).is_ok());
        drop(receiver);
        assert!(matches!(mailbox.try_send(PartitionInput::Stop), Err(Refused::Closed)));
    }

    #[test]
    fn client_requests_fill_half_a_mailbox_and_leave_the_rest_to_raft() {
        let (sender, _receiver) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        let mut mailbox = Mailbox { sender, load: Arc::default() };
        let write = || {
            let object = crate::state_machine::NewObject::new(crate::state_machine::ObjectKind::Blob, vec![7; 1 << 20]);
            let repo = crate::state_machine::RepoId {
                storage: "default".into(),
                relative_path: crate::state_machine::RelativePath::new("a.git").unwrap(),
            };
            let op = crate::state_machine::WriteOp::Transaction { repo, objects: vec![object], refs: Vec::new() };
            let command = crate::state_machine::Command { client: crate::ids::ClientId(1), seq: 1, op };
            let (reply, _) = futures::channel::oneshot::channel();
            PartitionInput::Request { body: crate::partition::Request::Write(command), reply }
        };
        let mut requests = 0;
        while mailbox.try_send(write()).is_ok() {
            requests += 1;
        }
        assert_eq!(requests, MAILBOX_REQUEST_BYTES_MAX / write().size_bytes(), "requests stop at their share");
        for _ in 0..100 {
            assert!(mailbox.try_send(heartbeat()).is_ok(), "Raft's messages still go in");
        }
        // Small requests stop at their share of the input bound.
        let (sender, _receiver) = mpsc::channel(MAILBOX_MESSAGES_MAX);
        let mut small = Mailbox { sender, load: Arc::default() };
        let inspect = || PartitionInput::Inspect(Box::new(|_: &crate::partition::Partition| {}));
        let mut inspections = 0;
        while small.try_send(inspect()).is_ok() {
            inspections += 1;
        }
        assert_eq!(inspections, MAILBOX_REQUESTS_MAX);
        for _ in 0..100 {
            assert!(small.try_send(heartbeat()).is_ok(), "a heartbeat or an acknowledgement still goes in");
        }
        // Appends fill the rest; Raft's control messages still go in.
        while mailbox.try_send(append()).is_ok() {}
        assert!(mailbox.load.bytes.load(Ordering::Relaxed) + append().size_bytes() > MAILBOX_BYTES_MAX);
        assert!(mailbox.try_send(heartbeat()).is_ok(), "a heartbeat or an acknowledgement still goes in");
    }

    /// What the router keeps per unloaded replica, counted from the types: its entry in the
    /// table, record inline, with the table's spare room. The record allocates nothing of its
    /// own: its membership and its files' directory are shared (`ConfStatePool`,
    /// `AuthorityDir`). The log keeps the other record of an unloaded replica (its own test
    /// bounds it to 256 bytes too); the idle benchmark measures the node's whole heap.
    #[test]
    fn an_unloaded_replica_costs_the_router_at_most_256_bytes() {
        let worst = crate::ids::partition_map_entry_bytes_max::<Replica>();
        assert!(worst <= 256, "an unloaded replica costs the router up to {worst} bytes");
    }
}
