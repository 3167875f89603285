//! A running node: the one place production parts are put together (`production_env`), the
//! partitions recovered from the log, the peer transport, the gRPC API and the HTTP server.

use crate::config::Config;
use crate::data_dir_lock::DataDirLock;
use crate::metered_disk::MeteredDisk;
use anyhow::Context as _;
use cohort_core::env::{Env, Transport};
use cohort_core::ids::NodeId;
use cohort_core::metrics::NodeMetrics;
use cohort_core::node::{NodeService, Router};
use cohort_net::api::{ApiServer, NodeDirectory, NodeInfo};
use cohort_net::node::NodeSpec;
use cohort_net::runtime::{TokioClock, TokioSpawn};
use cohort_net::TcpTransport;
use cohort_storage::FsDisk;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Core's `Env` from production parts: tokio's clock and tasks, the real file system.
pub fn production_env(config: &Config, seed: u64) -> anyhow::Result<Env> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let metrics = Arc::new(NodeMetrics::default());
    let disk = FsDisk::new(&config.data_dir).with_context(|| format!("opening {}", config.data_dir.display()))?;
    Ok(Env {
        clock: Arc::new(TokioClock::new()),
        disk: Arc::new(MeteredDisk::new(
            disk,
            metrics.fsync_latency_seconds.clone(),
            metrics.store_fsync_latency_seconds.clone(),
        )),
        spawn: Arc::new(TokioSpawn),
        seed,
        metrics,
        observer: None,
    })
}

struct Peers {
    config: Config,
    transport: Arc<TcpTransport>,
}

impl NodeDirectory for Peers {
    fn nodes(&self) -> Vec<NodeInfo> {
        self.config
            .nodes
            .values()
            .map(|n| NodeInfo { id: n.id, peer_address: n.peer.to_string(), client_url: n.client_url() })
            .collect()
    }

    fn is_up(&self, node: NodeId) -> bool {
        self.transport.connected_peers().contains(&node)
    }
}

/// What the HTTP server and tests look at in a running node.
pub struct NodeHandle {
    pub config: Config,
    pub router: Arc<Router>,
    pub transport: Arc<TcpTransport>,
    pub service: Arc<NodeService>,
}

/// Makes any panic stop the node (fail-stop). A panic is a broken invariant: the replica (or
/// part) that broke it cannot be trusted to go on, and a panic inside a partition worker's step
/// would otherwise end that worker and silently stop every replica it drives while the node
/// still answered `/health`. Stopping leaves the disk as a crash would; a restart recovers from
/// it. The report names the partition whose replica was being stepped, if any.
fn fail_stop_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        match cohort_core::node::stepping_partition() {
            Some(partition) => {
                tracing::error!(%partition, "partition {partition}'s replica panicked: {info}; the node stops")
            }
            None => tracing::error!("panicked: {info}; the node stops"),
        }
        std::process::abort();
    }));
}

/// Seals the state store file of the node whose data directory is `data_dir`
/// (`cohort_core::store::seal`). Only once the node stopped and nothing holds its store: every
/// task that could has ended (the runtime is gone), so the file changes no more.
pub fn seal_store(data_dir: &std::path::Path) -> anyhow::Result<()> {
    let disk = FsDisk::new(data_dir).with_context(|| format!("opening {}", data_dir.display()))?;
    cohort_core::store::seal::seal(&disk).context("sealing the state store")
}

/// A node that stopped cleanly: its data directory, still locked, for `seal_store`.
#[derive(Debug)]
pub struct StoppedNode {
    pub data_dir: std::path::PathBuf,
    _lock: DataDirLock,
}

/// Runs a node until `shutdown` completes, then stops it cleanly: partitions stop, the log
/// writes already queued are made durable, and the function returns the data directory, to be
/// sealed (`seal_store`) once the runtime is gone; `None` if the stop was not clean. The data
/// directory is locked from before anything is read (`data_dir_lock`) until the returned
/// value is dropped.
pub async fn run(
    config: Config,
    join: bool,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Option<StoppedNode>> {
    let lock = DataDirLock::exclusive(&config.data_dir)?;
    fail_stop_on_panic();
    let seed: u64 = rand::random();
    let env = production_env(&config, seed)?;
    let unloads = env.metrics.partition_unloads.clone();
    crate::memory::spawn_heap_trimmer(move || unloads.get());
    let me = config.me().clone();
    let tls = match &config.tls {
        Some(files) => Some(files.read().context("reading the TLS files")?),
        None => None,
    };
    let peer_tls = tls.as_ref().map(cohort_net::tls::PeerTls::new).transpose().context("peer TLS")?;
    let spec = NodeSpec {
        node: config.node,
        cluster_id: config.cluster_id.clone(),
        secret: config.secret.clone(),
        listen_peer: me.peer,
        peers: config.nodes.iter().filter(|(&id, _)| id != config.node).map(|(&id, n)| (id, n.peer)).collect(),
        replica: config.replica.clone(),
        frame_size_bytes_max: config.frame_size_bytes_max,
        outbox_messages_max: config.outbox_messages_max,
        replicas: config.replicas,
        workers: config.workers,
        store: config.store.clone(),
        applier: config.applier.clone(),
        peer_tls,
        join,
    };
    let node = cohort_net::node::start(env, spec, |transport| transport as Arc<dyn Transport>)
        .await
        .with_context(|| format!("starting node {} in {}", config.node, config.data_dir.display()))?;

    let handle = Arc::new(NodeHandle {
        config: config.clone(),
        router: node.router.clone(),
        transport: node.transport.clone(),
        service: node.service.clone(),
    });
    let directory = Arc::new(Peers { config: config.clone(), transport: node.transport.clone() });
    let api = ApiServer::new(node.service.clone(), directory, config.token.clone())
        .with_object_size_bytes_max(config.object_size_bytes_max)
        .into_service();
    let http = tokio::spawn(crate::http::serve(me.http, handle.clone()));
    let sweeper = tokio::spawn(crate::uploads::sweep_idle_uploads(node.service.clone(), config.upload_idle_timeout));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tonic::transport::Server::builder();
    if let Some(pems) = &tls {
        let tls = cohort_net::tls::api_server_config(pems).context("client API TLS")?;
        server = server.tls_config(tls).context("client API TLS")?;
    }
    let grpc = tokio::spawn(server.add_service(api).serve_with_shutdown(me.client, async {
        let _ = stop_rx.await;
    }));
    tracing::info!(node = %config.node, peer = %me.peer, client = %me.client_url(), http = %me.http, tls = tls.is_some(), "node serving");

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        result = grpc => { result??; anyhow::bail!("the client API server stopped") }
    }
    let _ = stop_tx.send(());
    http.abort();
    sweeper.abort();
    drop(handle);
    if node.stop(Duration::from_secs(10)).await {
        tracing::info!("log synced; stopped");
        Ok(Some(StoppedNode { data_dir: config.data_dir.clone(), _lock: lock }))
    } else {
        tracing::warn!("log writer did not finish within 10 s");
        Ok(None)
    }
}
