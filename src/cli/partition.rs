//! `cohort partition list|show` and the membership changes, and the partition view `cohort
//! repo info` prints.

use super::{client, Cli};
use clap::Subcommand;
use cohort_net::api::proto;
use cohort_net::client::Client;
use serde::Serialize;

#[derive(Subcommand, Debug)]
pub enum PartitionCommand {
    /// Every partition with its members, leader and repositories.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a replica: a voter (joins as a learner, catches up, is promoted) or, with
    /// --learner, a read-only replica.
    AddReplica {
        partition: u64,
        #[arg(long)]
        node: u64,
        #[arg(long)]
        learner: bool,
    },
    /// Promote a learner to voter once it has caught up.
    Promote {
        partition: u64,
        #[arg(long)]
        node: u64,
    },
    /// Remove a replica (voter or learner); its node deletes its data.
    RemoveReplica {
        partition: u64,
        #[arg(long)]
        node: u64,
    },
    /// Move leadership to a voter.
    TransferLeader {
        partition: u64,
        #[arg(long)]
        node: u64,
    },
    /// Turn Raft on or off for a partition, in place: no data is copied. Off needs a partition
    /// with one replica (remove the others first); its writes then go to the same log without
    /// Raft. On makes it a single-voter Raft group again, which can then take replicas.
    Raft {
        #[arg(value_enum)]
        mode: RaftSwitch,
        partition: u64,
    },
    /// One partition as each of its replicas' nodes sees it: roles, leader and term, applied,
    /// matched, durable and compacted indexes, how far each is behind the commit (in entries,
    /// and in time as the leader sees it), when the leader last heard from each, how it
    /// replicates to each (probe, replicate, snapshot), and whether each is awake, quiesced or
    /// unloaded.
    Show {
        partition: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaftSwitch {
    On,
    Off,
}

/// `cohort partition show`: one partition from every node's status.
async fn show(client: &Client, partition: u64, json: bool) -> anyhow::Result<()> {
    let status = super::status::collect_partition(client, partition).await?;
    let view = status
        .partitions
        .into_iter()
        .find(|p| p.id == partition)
        .ok_or_else(|| anyhow::anyhow!("no answering node hosts partition {partition}"))?;
    if json {
        let replicas: Vec<serde_json::Value> = view
            .replicas
            .iter()
            .map(|r| {
                serde_json::json!({
                    "node": r.node,
                    "role": r.role,
                    "leader": r.node == view.leader,
                    "applied_index": r.applied_index,
                    "match_index": r.match_index,
                    "durable_index": r.durable_index,
                    "compacted_index": r.compacted_index,
                    "lag_entries": view.commit_index.saturating_sub(r.match_index),
                    "behind_seconds": r.behind_seconds,
                    "last_heard_seconds": r.last_heard_seconds,
                    "progress": r.progress,
                    "state": r.reported.then(|| super::status::replica_state(r)),
                })
            })
            .collect();
        let value = serde_json::json!({
            "partition": view.id,
            "leader": (view.leader != 0).then_some(view.leader),
            "term": view.term,
            "commit_index": view.commit_index,
            "repositories": view.repositories,
            "replicas": replicas,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let leader = if view.leader == 0 { "none known".to_owned() } else { format!("node {}", view.leader) };
    println!("partition {}: leader {leader}, term {}, commit {}", view.id, view.term, view.commit_index);
    for repo in &view.repositories {
        println!("  repository {repo}");
    }
    println!(
        "  {:<6} {:<9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}  {:<9}  state",
        "node", "role", "applied", "match", "durable", "compacted", "behind", "behind_s", "heard", "progress"
    );
    let seconds = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1}s"));
    for r in &view.replicas {
        let state = if r.reported { super::status::replica_state(r) } else { "(its node did not answer)" };
        let role = if r.node == view.leader { "leader".to_owned() } else { r.role.clone() };
        let leader = r.node == view.leader;
        println!(
            "  {:<6} {:<9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>7}  {:<9}  {state}",
            r.node,
            role,
            r.applied_index,
            r.match_index,
            r.durable_index,
            r.compacted_index,
            view.commit_index.saturating_sub(r.match_index),
            if leader { "-".to_owned() } else { seconds(r.behind_seconds) },
            if leader { "-".to_owned() } else { seconds(r.last_heard_seconds) },
            if leader { "-" } else { r.progress.as_deref().unwrap_or("-") },
        );
    }
    Ok(())
}

#[derive(Serialize, Debug)]
pub struct PartitionJson {
    pub partition: u64,
    pub authority: String,
    /// 0 when no answering node knows a leader.
    pub leader: u64,
    pub replicas: Vec<ReplicaJson>,
    pub repositories: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct ReplicaJson {
    pub node: u64,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// `awake`, `quiesced` or `unloaded`, as the replica's node reports it (`repo info` only;
    /// absent if that node did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
}

/// Prints partitions; a leader the answering node did not know is looked up in every
/// endpoint's status.
/// `single`: print one object (for `repo info`) rather than a list.
pub async fn print(
    client: &Client,
    partitions: &[proto::PartitionInfo],
    json: bool,
    single: bool,
) -> anyhow::Result<()> {
    // `repo info` shows each replica's state, which only the replica's own node knows.
    assert!(!single || partitions.len() == 1, "`single` prints one partition");
    let status = if single {
        super::status::collect_partition(client, partitions[0].id).await.ok()
    } else if partitions.iter().any(|p| p.leader == 0) {
        super::status::collect(client).await.ok()
    } else {
        None
    };
    let views: Vec<PartitionJson> = partitions
        .iter()
        .map(|p| {
            let leader = match (p.leader, &status) {
                (0, Some(status)) => status.partitions.iter().find(|s| s.id == p.id).map_or(0, |s| s.leader),
                (leader, _) => leader,
            };
            let state = |node: u64| {
                let replicas = &status.as_ref()?.partitions.iter().find(|s| s.id == p.id)?.replicas;
                let replica = replicas.iter().find(|r| r.node == node && r.reported)?;
                Some(super::status::replica_state(replica))
            };
            let replica = |node: u64, role| ReplicaJson { node, role, state: if single { state(node) } else { None } };
            let mut replicas: Vec<ReplicaJson> = p.voters.iter().map(|&node| replica(node, "voter")).collect();
            replicas.extend(p.learners.iter().map(|&node| replica(node, "learner")));
            replicas.sort_by_key(|r| r.node);
            PartitionJson {
                partition: p.id,
                authority: p.authority.clone(),
                leader,
                replicas,
                repositories: p.repositories.iter().map(|r| format!("{}/{}", r.storage, r.relative_path)).collect(),
            }
        })
        .collect();
    if json {
        if single {
            anyhow::ensure!(views.len() == 1, "one partition expected");
            println!("{}", serde_json::to_string_pretty(&views[0])?);
        } else {
            println!("{}", serde_json::to_string_pretty(&views)?);
        }
        return Ok(());
    }
    for view in &views {
        let leader = if view.leader == 0 { "unknown".to_owned() } else { view.leader.to_string() };
        println!("partition {} (authority {}): leader {leader}", view.partition, view.authority);
        for replica in &view.replicas {
            let leading = if replica.node == view.leader { ", leader" } else { "" };
            let state = replica.state.map(|s| format!(", {s}")).unwrap_or_default();
            println!("  node {} {}{leading}{state}", replica.node, replica.role);
        }
        for repo in &view.repositories {
            println!("  repository {repo}");
        }
    }
    Ok(())
}

pub async fn run(cli: &Cli, command: &PartitionCommand) -> anyhow::Result<()> {
    let client = client(cli)?;
    match command {
        PartitionCommand::List { json } => {
            let partitions = client.list_partitions().await?;
            print(&client, &partitions, *json, false).await
        }
        PartitionCommand::AddReplica { partition, node, learner } => {
            let action = if *learner { "add-learner" } else { "add-voter" };
            let info = client.change_members(*partition, *node, action).await?;
            print(&client, &[info], false, true).await
        }
        PartitionCommand::Promote { partition, node } => {
            let info = client.change_members(*partition, *node, "promote").await?;
            print(&client, &[info], false, true).await
        }
        PartitionCommand::RemoveReplica { partition, node } => {
            let info = client.change_members(*partition, *node, "remove").await?;
            print(&client, &[info], false, true).await
        }
        PartitionCommand::TransferLeader { partition, node } => {
            let info = client.change_members(*partition, *node, "transfer-leader").await?;
            print(&client, &[info], false, true).await
        }
        PartitionCommand::Raft { mode, partition } => {
            let enabled = client.set_partition_raft(*partition, *mode == RaftSwitch::On).await?;
            println!("partition {partition}: Raft {}", if enabled { "on" } else { "off" });
            Ok(())
        }
        PartitionCommand::Show { partition, json } => show(&client, *partition, *json).await,
    }
}
