//! `cohort status [--json]`: asks every endpoint for its view and merges them. A node that
//! does not answer is shown down.

use super::{client, Cli};
use cohort_net::api::proto;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize, Debug)]
pub struct StatusJson {
    pub nodes: Vec<NodeJson>,
    pub partitions: Vec<PartitionJson>,
}

#[derive(Serialize, Debug)]
pub struct NodeJson {
    pub id: u64,
    pub peer_address: String,
    pub client_address: String,
    pub up: bool,
}

#[derive(Serialize, Debug)]
pub struct PartitionJson {
    pub id: u64,
    pub repositories: Vec<String>,
    /// 0 when no node knows a leader.
    pub leader: u64,
    pub term: u64,
    pub commit_index: u64,
    pub replicas: Vec<ReplicaJson>,
}

#[derive(Serialize, Debug)]
pub struct ReplicaJson {
    pub node: u64,
    pub role: String,
    pub applied_index: u64,
    pub match_index: u64,
    /// The replica's log starts after this entry (0: not compacted, or not reported).
    pub compacted_index: u64,
    /// The replica's state is durable in its store through here (0: not reported).
    pub durable_index: u64,
    /// Quiesced: no timer and no heartbeats until a request or a message wakes it (as its own
    /// node reports it; false when not reported).
    pub quiesced: bool,
    /// Unloaded: a few hundred bytes in memory until a request or a message loads it (as its
    /// own node reports it).
    pub unloaded: bool,
    /// Whether the replica's own node answered (the fields above marked so are its own).
    #[serde(skip)]
    pub reported: bool,
}

fn merge(replies: &[(String, Option<proto::StatusReply>)]) -> StatusJson {
    let mut nodes: BTreeMap<u64, NodeJson> = BTreeMap::new();
    let answered: Vec<&proto::StatusReply> = replies.iter().filter_map(|(_, r)| r.as_ref()).collect();
    for reply in &answered {
        for n in &reply.nodes {
            nodes.entry(n.id).or_insert(NodeJson {
                id: n.id,
                peer_address: n.peer_address.clone(),
                client_address: n.client_address.clone(),
                up: false,
            });
        }
    }
    for reply in &answered {
        if let Some(n) = nodes.get_mut(&reply.node) {
            n.up = true;
        }
    }
    let mut partitions: BTreeMap<u64, PartitionJson> = BTreeMap::new();
    for reply in &answered {
        for p in &reply.partitions {
            let entry = partitions.entry(p.id).or_insert_with(|| PartitionJson {
                id: p.id,
                repositories: Vec::new(),
                leader: 0,
                term: 0,
                commit_index: 0,
                replicas: Vec::new(),
            });
            // The view from the highest term is the freshest about leadership.
            if p.term > entry.term || (p.term == entry.term && p.leader != 0) {
                entry.term = p.term;
                entry.leader = p.leader;
            }
            entry.commit_index = entry.commit_index.max(p.commit_index);
            for r in &p.repositories {
                let name = format!("{}/{}", r.storage, r.relative_path);
                if !entry.repositories.contains(&name) {
                    entry.repositories.push(name);
                }
            }
            for r in &p.replicas {
                let own = r.node == reply.node;
                match entry.replicas.iter_mut().find(|x| x.node == r.node) {
                    Some(existing) => {
                        if own {
                            existing.role = r.role.clone();
                            existing.applied_index = r.applied_index;
                            existing.compacted_index = r.compacted_index;
                            existing.durable_index = r.durable_index;
                            existing.quiesced = r.quiesced;
                            existing.unloaded = r.unloaded;
                            existing.reported = true;
                        }
                        existing.match_index = existing.match_index.max(r.match_index);
                    }
                    None => entry.replicas.push(ReplicaJson {
                        node: r.node,
                        role: r.role.clone(),
                        applied_index: if own { r.applied_index } else { 0 },
                        match_index: r.match_index,
                        compacted_index: if own { r.compacted_index } else { 0 },
                        durable_index: if own { r.durable_index } else { 0 },
                        quiesced: own && r.quiesced,
                        unloaded: own && r.unloaded,
                        reported: own,
                    }),
                }
            }
        }
    }
    let mut partitions: Vec<PartitionJson> = partitions.into_values().collect();
    for p in &mut partitions {
        p.replicas.sort_by_key(|r| r.node);
        p.repositories.sort();
    }
    StatusJson { nodes: nodes.into_values().collect(), partitions }
}

/// Every endpoint's view, merged.
pub async fn collect(client: &cohort_net::client::Client) -> anyhow::Result<StatusJson> {
    let mut replies = Vec::new();
    for endpoint in client.endpoints() {
        replies.push((endpoint.clone(), client.status_of(endpoint).await.ok()));
    }
    anyhow::ensure!(replies.iter().any(|(_, r)| r.is_some()), "no endpoint answered: {:?}", client.endpoints());
    Ok(merge(&replies))
}

pub async fn run(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let client = client(cli)?;
    let status = collect(&client).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
        return Ok(());
    }
    println!("NODES");
    for n in &status.nodes {
        println!(
            "  node {:<3} {:<5} peer {:<21} client {}",
            n.id,
            if n.up { "up" } else { "DOWN" },
            n.peer_address,
            n.client_address
        );
    }
    println!("PARTITIONS");
    for p in &status.partitions {
        let leader = if p.leader == 0 { "none".to_owned() } else { p.leader.to_string() };
        let repos = if p.id == 0 { "(directory)".to_owned() } else { p.repositories.join(", ") };
        println!(
            "  partition {:<4} leader {:<4} term {:<4} commit {:<6} {}",
            p.id, leader, p.term, p.commit_index, repos
        );
        for r in &p.replicas {
            println!(
                "    node {:<3} {:<10} applied {:<6} match {:<6} durable {:<6} compacted {:<6} {}",
                r.node,
                r.role,
                r.applied_index,
                r.match_index,
                r.durable_index,
                r.compacted_index,
                replica_state(r)
            );
        }
    }
    Ok(())
}

/// What a replica's own node says of it: `awake`, `quiesced` or `unloaded`.
pub fn replica_state(replica: &ReplicaJson) -> &'static str {
    match (replica.unloaded, replica.quiesced) {
        (true, _) => "unloaded",
        (false, true) => "quiesced",
        (false, false) => "awake",
    }
}
