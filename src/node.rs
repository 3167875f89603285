//! A running node: the one place production parts are put together (`production_env`), the
//! partitions recovered from the log, the peer transport, the gRPC API and the HTTP server.

use crate::config::Config;
use crate::metered_disk::MeteredDisk;
use anyhow::Context as _;
use cohort_core::env::{Env, Envelope};
use cohort_core::ids::NodeId;
use cohort_core::limits::PERSIST_QUEUE_WRITES_MAX;
use cohort_core::metrics::NodeMetrics;
use cohort_core::node::{NodeService, Router, RouterConfig, DIRECTORY};
use cohort_core::state_machine::StateMachine;
use cohort_net::api::{ApiServer, NodeDirectory, NodeInfo};
use cohort_net::runtime::{TokioClock, TokioSpawn};
use cohort_net::{TcpTransport, TransportConfig};
use cohort_storage::log::{run_group_commit, GroupCommitOptions};
use cohort_storage::{FsDisk, LogEngine, LogOptions};
use futures::channel::mpsc;
use futures::StreamExt;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

/// Core's `Env` from production parts: tokio's clock and tasks, the real file system.
pub fn production_env(config: &Config, seed: u64) -> anyhow::Result<Env> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| format!("creating {}", config.data_dir.display()))?;
    let metrics = Arc::new(NodeMetrics::default());
    let disk = FsDisk::new(&config.data_dir).with_context(|| format!("opening {}", config.data_dir.display()))?;
    Ok(Env {
        clock: Arc::new(TokioClock::new()),
        disk: Arc::new(MeteredDisk::new(disk, metrics.fsync_latency_seconds.clone())),
        spawn: Arc::new(TokioSpawn),
        seed,
        metrics,
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

/// Runs a node until `shutdown` completes, then stops it cleanly: partitions stop, the log
/// writes already queued are made durable, and the function returns.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let seed: u64 = rand::random();
    let env = production_env(&config, seed)?;
    let (engine, recovered) = LogEngine::open(env.disk.clone(), Path::new("wal"), LogOptions::default())
        .with_context(|| format!("recovering the log in {}", config.data_dir.display()))?;
    tracing::info!(node = %config.node, partitions = recovered.len(), "log recovered");

    let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE_WRITES_MAX);
    let group_commit =
        tokio::spawn(run_group_commit(engine, persist_rx, env.spawn.clone(), GroupCommitOptions::default()));

    let me = config.me().clone();
    let listener =
        tokio::net::TcpListener::bind(me.peer).await.with_context(|| format!("binding peer address {}", me.peer))?;
    let peers = config.nodes.iter().filter(|(&id, _)| id != config.node).map(|(&id, n)| (id, n.peer)).collect();
    let mut transport_config = TransportConfig::new(config.node, &config.cluster_id, &config.secret, peers, seed);
    transport_config.frame_size_bytes_max = config.frame_size_bytes_max;
    transport_config.outbox_messages_max = config.outbox_messages_max;
    let (inbox_tx, mut inbox_rx) = mpsc::channel::<Vec<Envelope>>(cohort_net::limits::INBOX_BATCHES_MAX);
    let transport = TcpTransport::start(transport_config, listener, inbox_tx);

    let router_config = RouterConfig {
        node: config.node,
        tick_interval: config.tick_interval,
        election_ticks: config.election_ticks,
        heartbeat_ticks: config.heartbeat_ticks,
    };
    let router = Router::new(router_config, env.clone(), transport.clone(), persist_tx);
    let voters: Vec<NodeId> = config.nodes.keys().copied().collect();
    let has_directory = recovered.contains_key(&DIRECTORY);
    for (partition, state) in recovered {
        router.open_partition(partition, state, StateMachine::new()).context("opening a recovered partition")?;
    }
    if !has_directory {
        // A brand-new node: the directory exists on every node from the start.
        router.create_partition(DIRECTORY, &voters, false).context("creating the directory")?;
    }
    let pump_router = router.clone();
    tokio::spawn(async move {
        while let Some(batch) = inbox_rx.next().await {
            pump_router.deliver(batch);
        }
    });

    let service = Arc::new(NodeService::new(router.clone(), voters));
    let handle = Arc::new(NodeHandle {
        config: config.clone(),
        router: router.clone(),
        transport: transport.clone(),
        service: service.clone(),
    });
    let directory = Arc::new(Peers { config: config.clone(), transport: transport.clone() });
    let api = ApiServer::new(service, directory, config.token.clone()).into_service();

    let http = tokio::spawn(crate::http::serve(me.http, handle.clone()));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let grpc =
        tokio::spawn(tonic::transport::Server::builder().add_service(api).serve_with_shutdown(me.client, async {
            let _ = stop_rx.await;
        }));
    tracing::info!(node = %config.node, peer = %me.peer, client = %me.client, http = %me.http, "node serving");

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        result = grpc => { result??; anyhow::bail!("the client API server stopped") }
    }
    let _ = stop_tx.send(());
    http.abort();
    router.stop_all();
    drop(handle);
    drop(router);
    // Every partition actor has stopped and dropped its queue sender: group commit drains what
    // is queued, syncs it, and returns.
    match tokio::time::timeout(std::time::Duration::from_secs(10), group_commit).await {
        Ok(_) => tracing::info!("log synced; stopped"),
        Err(_) => tracing::warn!("log writer did not finish within 10 s"),
    }
    Ok(())
}
