//! `cohort node`: run a node (`--config`, `--join`), or bring back a node that lost its data
//! directory (`replace`).
//!
//! A node whose data directory was wiped has forgotten the votes and entries it promised, so
//! its peers refuse it (`node::identity`). Replacing it, once it runs again on an empty data
//! directory made to join (`cohort node --config FILE --join`):
//!
//! 1. every other node retires the data directory instance it knew the node by: that one is
//!    refused for good, and the new one is admitted;
//! 2. in every partition the node is a member of, its lost replica gives way to a new, empty
//!    one in the same role (one Raft membership change through a joint configuration), so no
//!    partition keeps a member that the new directory could host under its old identity;
//! 3. only then the directory's replica on the node is replaced the same way: the directory's
//!    leader invites the new node, which starts its directory replica, catches up and creates
//!    its new replicas, each of which its partition's leader fills (log or snapshot).
//!
//! Every step is checked against what is done already, so an interrupted run can be repeated.

use super::{client, Cli};
use anyhow::Context as _;
use clap::{Args, Subcommand};
use cohort_net::api::proto;
use cohort_net::client::Client;
use futures::StreamExt as _;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// The node's TOML configuration.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Make a new (empty) data directory join the running cluster as a replacement for this
    /// node, instead of bootstrapping a new cluster; then run `cohort node replace <id>`.
    /// Ignored for a data directory that exists.
    #[arg(long, requires = "config")]
    pub join: bool,
    #[command(subcommand)]
    pub command: Option<NodeCommand>,
}

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Replace node NODE, which lost its data directory and now runs on an empty one started
    /// with `cohort node --config FILE --join`: the other nodes stop refusing it, and each of
    /// its replicas (the directory's last) gives way to a new one that catches up from the
    /// others. Safe to run again if interrupted.
    Replace {
        node: u64,
        /// Membership changes made at once.
        #[arg(long, default_value_t = 8)]
        parallel: usize,
    },
}

pub async fn run(cli: &Cli, command: &NodeCommand) -> anyhow::Result<()> {
    match command {
        NodeCommand::Replace { node, parallel } => replace(&client(cli)?, *node, (*parallel).max(1)).await,
    }
}

/// How long `replace` waits for the new node to host every replica it was given.
const HOSTING_TIMEOUT: Duration = Duration::from_secs(120);

async fn replace(client: &Client, node: u64, parallel: usize) -> anyhow::Result<()> {
    let nodes = cluster_nodes(client).await?;
    let target = nodes
        .iter()
        .find(|n| n.id == node)
        .ok_or_else(|| anyhow::anyhow!("node {node} is not a node of this cluster"))?;
    let status = client.status_summary_of(&target.client_address).await.with_context(|| {
        format!(
            "node {node} does not answer at {}: start it on an empty data directory with \
             `cohort node --config FILE --join` first",
            target.client_address
        )
    })?;
    anyhow::ensure!(
        status.origin == "join",
        "node {node} runs on a data directory that bootstrapped with the cluster, not one made to join it: \
         stop it, empty its data directory and start it with `cohort node --config FILE --join`"
    );

    // 1. Every other node stops refusing the new data directory (and refuses the old one).
    let mut unreachable = Vec::new();
    for other in nodes.iter().filter(|n| n.id != node) {
        match client.retire_peer_at(&other.client_address, node, &status.instance).await {
            Ok(reply) if reply.already_replaced => {
                println!("node {}: admits node {node}'s new data directory", other.id)
            }
            Ok(reply) if reply.retired_instance.is_empty() => {
                println!("node {}: knew no data directory of node {node}", other.id)
            }
            Ok(reply) => {
                println!("node {}: retired node {node}'s old data directory {}", other.id, reply.retired_instance)
            }
            Err(error) => unreachable.push(format!("node {}: {error}", other.id)),
        }
    }
    anyhow::ensure!(
        unreachable.is_empty(),
        "every other node must retire node {node}'s old data directory; run this again once these answer:\n  {}",
        unreachable.join("\n  ")
    );

    // 2. A new replica in place of each lost one. The new node hosts only replicas made for
    //    it (it never bootstraps any), so those it hosts are done.
    let hosted = hosted_by(client, &target.client_address).await?;
    let partitions = client.list_partitions().await.context("listing the partitions")?;
    let lost: Vec<u64> = partitions
        .iter()
        .filter(|p| p.id != 0 && is_member(p, node) && !hosted.contains(&p.id))
        .map(|p| p.id)
        .collect();
    println!("{} partitions have a replica on node {node} to replace", lost.len());
    let total = lost.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(u64, Result<(), String>)> = futures::stream::iter(lost.iter().copied())
        .map(|partition| {
            let done = &done;
            async move {
                let result =
                    client.change_members(partition, node, "replace").await.map(|_| ()).map_err(|e| e.to_string());
                let count = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if count.is_multiple_of(100) {
                    println!("  {count} of {total}");
                }
                (partition, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let failed: Vec<String> =
        results.into_iter().filter_map(|(p, r)| r.err().map(|e| format!("partition {p}: {e}"))).collect();
    // The directory must not invite the new node while a partition still names its old
    // replica: the new node would start that replica empty, under the old identity.
    anyhow::ensure!(
        failed.is_empty(),
        "{} partitions kept their lost replica on node {node} (run this again):\n  {}",
        failed.len(),
        failed.join("\n  ")
    );

    // 3. The directory last, and the new node told which directory peer it is: the directory
    //    may also name a peer of it that a lost data directory held (a node replaced twice),
    //    whose messages must not start its replica.
    if hosted.contains(&0) {
        println!("node {node} already hosts its new directory replica");
    } else {
        let directory = client.change_members(0, node, "replace").await.context("replacing the directory's replica")?;
        let peer = directory
            .peers
            .iter()
            .copied()
            .filter(|&peer| cohort_core::ids::PeerId(peer).node().0 == node)
            .max()
            .ok_or_else(|| anyhow::anyhow!("the directory's members name no peer of node {node} after replacing it"))?;
        client
            .join_directory_at(&target.client_address, peer)
            .await
            .with_context(|| format!("telling node {node} its directory peer"))?;
        println!("the directory invited node {node} as peer {}", cohort_core::ids::PeerId(peer));
    }

    // The new node creates its replicas as its directory catches up.
    let wanted: BTreeSet<u64> =
        client.list_partitions().await?.iter().filter(|p| is_member(p, node)).map(|p| p.id).chain([0]).collect();
    let deadline = Instant::now() + HOSTING_TIMEOUT;
    loop {
        let hosted = hosted_by(client, &target.client_address).await.unwrap_or_default();
        let missing = wanted.difference(&hosted).count();
        if missing == 0 {
            println!(
                "node {node} is replaced: it hosts all {} of its replicas, which catch up from the others",
                wanted.len()
            );
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "node {node} hosts {} of its {} replicas after {HOSTING_TIMEOUT:?}; see its log, and run this again",
            wanted.len() - missing,
            wanted.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn is_member(partition: &proto::PartitionInfo, node: u64) -> bool {
    partition.voters.contains(&node) || partition.learners.contains(&node)
}

/// The cluster's nodes, from the first endpoint that answers.
async fn cluster_nodes(client: &Client) -> anyhow::Result<Vec<proto::NodeStatus>> {
    let mut last = None;
    for endpoint in client.endpoints() {
        match client.status_summary_of(endpoint).await {
            Ok(status) => return Ok(status.nodes),
            Err(error) => last = Some(error),
        }
    }
    Err(anyhow::anyhow!("no endpoint answered: {}", last.map_or("none given".into(), |e| e.to_string())))
}

/// The partitions the node at `endpoint` hosts a replica of.
async fn hosted_by(client: &Client, endpoint: &str) -> anyhow::Result<BTreeSet<u64>> {
    let status = client.status_of(endpoint).await.with_context(|| format!("the status of {endpoint}"))?;
    Ok(status.partitions.iter().map(|p| p.id).collect())
}
