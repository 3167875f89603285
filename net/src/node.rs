//! A node's moving parts put together over a given `Env`: the log recovered and its group
//! commit, the state store and its applier, the peer transport, the router with every
//! recovered partition (and the directory on a brand-new node), and the request service. Production (`src/node.rs`) and the simulator
//! both start nodes through here, so the simulator runs the same assembly.

use crate::{TcpTransport, TransportConfig};
use cohort_core::env::{Disk, Env, Envelope, Transport};
use cohort_core::ids::{NodeId, PartitionId};
use cohort_core::limits::{APPLY_QUEUE_REQUESTS_MAX, PERSIST_QUEUE_WRITES_MAX};
use cohort_core::node::identity::{Identity, IdentityError, Origin, PeerInstances};
use cohort_core::node::{run_applier, ApplierOptions, NodeService, RouteError, Router, RouterConfig, DIRECTORY};
use cohort_core::partition::{ReplicaOptions, StoredState};
use cohort_core::persist::RecoveredPartition;
use cohort_core::snapshot::{partition_dir, SnapshotError, SnapshotStore, DIRECTORY_AUTHORITY};
use cohort_core::store::{Format, Store, StoreError, StoreOptions};
use cohort_storage::log::{run_group_commit, GroupCommitOptions};
use cohort_storage::{LogEngine, LogError, LogOptions};
use futures::channel::mpsc;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Where the write-ahead log's segments are, under the data directory.
pub const WAL_DIR: &str = "wal";

/// What a node needs to know to start, beyond its `Env`.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub node: NodeId,
    pub cluster_id: String,
    pub secret: Vec<u8>,
    pub listen_peer: SocketAddr,
    /// Every other node and its peer address.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    pub replica: ReplicaOptions,
    pub frame_size_bytes_max: usize,
    pub outbox_messages_max: usize,
    /// Voters of each new partition.
    pub replicas: usize,
    /// Workers that drive the partition replicas.
    pub workers: usize,
    pub store: StoreOptions,
    /// When the store's commits are made durable (and logs compacted through them).
    pub applier: ApplierOptions,
    /// Mutual TLS between peers, if configured.
    pub peer_tls: Option<crate::tls::PeerTls>,
    /// A new data directory is made to join the cluster as a replacement of this node
    /// (`cohort node --join`), not to bootstrap it; an existing one keeps its origin.
    pub join: bool,
}

impl NodeSpec {
    /// Every node of the static cluster.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut voters: Vec<NodeId> = self.peers.keys().copied().collect();
        voters.push(self.node);
        voters.sort();
        voters
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("recovering the log: {0}")]
    Log(#[from] LogError),
    #[error("binding the peer address {address}: {source}")]
    Bind { address: SocketAddr, source: std::io::Error },
    #[error("starting partitions: {0}")]
    Route(#[from] RouteError),
    #[error("snapshot files of partition {partition}: {source}")]
    Snapshot { partition: PartitionId, source: SnapshotError },
    #[error("opening the state store: {0}")]
    Store(#[from] StoreError),
    #[error("listing the replicas' directories: {0}")]
    Disk(#[from] cohort_core::env::DiskError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

pub struct RunningNode {
    pub router: Arc<Router>,
    pub transport: Arc<TcpTransport>,
    pub service: Arc<NodeService>,
    group_commit: tokio::task::JoinHandle<()>,
    applier: tokio::task::JoinHandle<()>,
}

/// Starts a node. `wrap_transport` may put a layer between the partitions and the TCP
/// transport (the simulator's fault injection); production passes the transport through.
pub async fn start(
    env: Env,
    spec: NodeSpec,
    wrap_transport: impl FnOnce(Arc<TcpTransport>) -> Arc<dyn Transport>,
) -> Result<RunningNode, StartError> {
    // Before anything else is written: which data directory this is, and whether it is this
    // node's (see `node::identity`).
    let instance_seed = u128::from(env.seed) << 64 | u128::from(env.seed.rotate_left(29) ^ spec.node.0);
    let origin = if spec.join { Origin::Join } else { Origin::Bootstrap };
    let identity = Identity::open_or_create(&*env.disk, &spec.cluster_id, spec.node, instance_seed, origin)?;
    let peer_instances = Arc::new(PeerInstances::open(env.disk.clone())?);
    tracing::info!(node = %spec.node, instance = %identity.instance, origin = ?identity.origin, "data directory identity");
    if spec.join && identity.origin != Origin::Join {
        tracing::warn!(node = %spec.node, "--join ignored: this data directory already exists and bootstrapped with the cluster");
    }
    let (engine, recovered) = LogEngine::open(env.disk.clone(), Path::new(WAL_DIR), LogOptions::default())?;
    tracing::info!(node = %spec.node, partitions = recovered.len(), "log recovered");
    // The seal of a clean stop goes before the store can change (`store::seal`).
    cohort_core::store::seal::unseal(&*env.disk)?;
    let store = Arc::new(Store::open(&env.disk, &spec.store)?);
    let stored = remove_orphan_rows(&store, &recovered)?;
    tracing::info!(node = %spec.node, partitions = stored.len(), "state store opened");
    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE_WRITES_MAX);
    let group_commit =
        tokio::spawn(run_group_commit(engine, persist_rx, env.spawn.clone(), GroupCommitOptions::default()));
    let (apply_tx, apply_rx) = mpsc::channel(APPLY_QUEUE_REQUESTS_MAX);
    let applier = tokio::spawn(run_applier(
        store.clone(),
        apply_rx,
        env.spawn.clone(),
        env.clock.clone(),
        spec.applier.clone(),
        env.metrics.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(spec.listen_peer)
        .await
        .map_err(|source| StartError::Bind { address: spec.listen_peer, source })?;
    let mut transport_config = TransportConfig::new(
        spec.node,
        &spec.cluster_id,
        &spec.secret,
        spec.peers.clone(),
        env.seed,
        identity.instance,
        peer_instances.clone(),
    );
    transport_config.frame_size_bytes_max = spec.frame_size_bytes_max;
    transport_config.outbox_messages_max = spec.outbox_messages_max;
    transport_config.tls = spec.peer_tls.clone();
    let (inbox_tx, mut inbox_rx) = mpsc::channel::<Vec<Envelope>>(crate::limits::INBOX_BATCHES_MAX);
    let transport = TcpTransport::start(transport_config, listener, inbox_tx);

    let peers = spec.peers.keys().copied().collect();
    let joins = identity.origin == Origin::Join;
    let router_config =
        RouterConfig { node: spec.node, peers, replica: spec.replica.clone(), workers: spec.workers, joins };
    let router =
        Router::new(router_config, env.clone(), wrap_transport(transport.clone()), persist_tx, store, apply_tx);
    let nodes = spec.nodes();
    let has_directory = recovered.contains_key(&DIRECTORY);
    // Listed once: a lookup per replica would list every replica's directory each time.
    let authorities = remove_orphan_replicas(&*env.disk, &recovered)?;
    // The directory opens last: once it has replayed it reconciles this node's replicas with
    // its members, which must find every recovered replica already open.
    let mut recovered: Vec<_> = recovered.into_iter().collect();
    recovered.sort_by_key(|(partition, _)| (*partition == DIRECTORY, *partition));
    for (partition, state) in recovered {
        let authority = authorities.get(&partition).map_or(DIRECTORY_AUTHORITY, String::as_str);
        let files = router.store_for_recovered(partition, authority);
        // Snapshot files only carry a state between replicas; none is needed after a start.
        files.retain_only(None).map_err(|source| StartError::Snapshot { partition, source })?;
        let stored = stored.get(&partition).cloned().unwrap_or_default();
        router.open_partition(partition, state, stored, files)?;
    }
    match (has_directory, joins) {
        (true, _) => {}
        // A brand-new node of a new cluster: the directory is on every node from the start.
        (false, false) => router.create_partition(DIRECTORY, DIRECTORY_AUTHORITY, &nodes, false)?,
        (false, true) => tracing::info!(
            node = %spec.node,
            "made to join: waiting for the cluster to add this node (`cohort node replace {}`)",
            spec.node
        ),
    }
    router.restore_directory_peer()?;
    router.start_liveness();
    let pump = router.clone();
    tokio::spawn(async move {
        while let Some(batch) = inbox_rx.next().await {
            pump.deliver(batch);
        }
    });
    let service = Arc::new(NodeService::new(router.clone(), nodes, spec.replicas, peer_instances, identity.instance));
    Ok(RunningNode { router, transport, service, group_commit, applier })
}

/// Deletes the store's rows of partitions the log no longer knows (their removal became
/// durable but the node stopped before deleting them); returns what the store holds of the
/// others.
fn remove_orphan_rows(
    store: &Store,
    recovered: &BTreeMap<PartitionId, RecoveredPartition>,
) -> Result<BTreeMap<PartitionId, StoredState>, StoreError> {
    let mut stored = BTreeMap::new();
    let rows = store.read()?;
    for (partition, record) in rows.partitions()? {
        if recovered.contains_key(&partition) {
            let format = Format::of(&rows, partition)?;
            stored.insert(
                partition,
                StoredState { applied: record.applied, conf_state: record.conf_state, raft: record.raft, format },
            );
        } else {
            tracing::info!(%partition, "deleting the state of a removed replica");
            store.remove_partition(partition)?;
        }
    }
    Ok(stored)
}

/// Deletes the files of replicas the log no longer knows: their removal became durable but
/// the node stopped before deleting them. Returns the authority under which each other
/// replica's directory is.
fn remove_orphan_replicas(
    disk: &dyn Disk,
    recovered: &BTreeMap<PartitionId, RecoveredPartition>,
) -> Result<BTreeMap<PartitionId, String>, cohort_core::env::DiskError> {
    let mut authorities = BTreeMap::new();
    for (authority, partition) in SnapshotStore::all(disk)? {
        if recovered.contains_key(&partition) {
            authorities.insert(partition, authority);
        } else {
            let dir = partition_dir(&authority, partition);
            tracing::info!(%partition, dir = %dir.display(), "deleting the files of a removed replica");
            if let Err(error) = disk.remove_dir_all(&dir) {
                tracing::warn!(%partition, %error, "cannot delete a removed replica's files");
            }
        }
    }
    Ok(authorities)
}

impl RunningNode {
    /// Stops every partition, then waits (up to `limit`) for the log writer and the applier
    /// to make what is queued durable. Returns whether they finished in time.
    pub async fn stop(self, limit: Duration) -> bool {
        self.router.stop_all();
        let RunningNode { router, service, group_commit, applier, .. } = self;
        drop(service);
        drop(router);
        tokio::time::timeout(limit, async move {
            let _ = group_commit.await;
            let _ = applier.await;
        })
        .await
        .is_ok()
    }
}
