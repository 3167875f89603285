//! `cohort status [--all] [--json] [--watch]`: asks every endpoint for its view and merges them. A node
//! that does not answer is shown down. Each node's replicas are counted by role and state;
//! they are listed one by one when there are few (at most `LIST_REPLICAS_MAX` on every node),
//! with `--all`, or in JSON, read a page at a time.

use super::{client, Cli};
use cohort_net::api::proto;
use serde::Serialize;
use std::collections::BTreeMap;

/// Without `--all`, replicas are listed only if no node hosts more than this.
const LIST_REPLICAS_MAX: u64 = 100;

#[derive(Serialize, Debug)]
pub struct StatusJson {
    pub nodes: Vec<NodeJson>,
    /// Each answering node's replicas counted by role and by state.
    pub summaries: Vec<SummaryJson>,
    pub partitions: Vec<PartitionJson>,
}

#[derive(Serialize, Debug, Default)]
pub struct SummaryJson {
    pub node: u64,
    pub hosted: u64,
    pub leaders: u64,
    pub followers: u64,
    pub candidates: u64,
    pub learners: u64,
    pub quiesced: u64,
    pub unloaded: u64,
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
    /// Raft is off for its partition: it is the only replica (as its own node reports it).
    pub raft_off: bool,
    /// As the leader sees it (absent if the leader did not answer): how it replicates to it
    /// (`probe`, `replicate`, `snapshot`), how far behind in time (the age of the oldest entry
    /// it lacks), and how long since the leader last heard from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heard_seconds: Option<f64>,
    /// Whether the replica's own node answered (the fields above marked so are its own).
    #[serde(skip)]
    pub reported: bool,
}

impl ReplicaJson {
    /// Takes the leader's view of this member from `r`, if `r` is one.
    fn take_leader_view(&mut self, r: &proto::ReplicaStatus) {
        if !r.progress.is_empty() {
            self.progress = Some(r.progress.clone());
            self.behind_seconds = Some(r.behind_seconds);
            self.last_heard_seconds = r.last_heard_seconds;
        }
    }
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
                            existing.raft_off = r.raft_off;
                            existing.reported = true;
                        }
                        existing.match_index = existing.match_index.max(r.match_index);
                        existing.take_leader_view(r);
                    }
                    None => {
                        let mut replica = ReplicaJson {
                            node: r.node,
                            role: r.role.clone(),
                            applied_index: if own { r.applied_index } else { 0 },
                            match_index: r.match_index,
                            compacted_index: if own { r.compacted_index } else { 0 },
                            durable_index: if own { r.durable_index } else { 0 },
                            quiesced: own && r.quiesced,
                            unloaded: own && r.unloaded,
                            raft_off: own && r.raft_off,
                            progress: None,
                            behind_seconds: None,
                            last_heard_seconds: None,
                            reported: own,
                        };
                        replica.take_leader_view(r);
                        entry.replicas.push(replica);
                    }
                }
            }
        }
    }
    let mut partitions: Vec<PartitionJson> = partitions.into_values().collect();
    for p in &mut partitions {
        p.replicas.sort_by_key(|r| r.node);
        p.repositories.sort();
    }
    let summaries = answered
        .iter()
        .map(|reply| {
            let s = reply.summary.unwrap_or_default();
            SummaryJson {
                node: reply.node,
                hosted: s.hosted,
                leaders: s.leaders,
                followers: s.followers,
                candidates: s.candidates,
                learners: s.learners,
                quiesced: s.quiesced,
                unloaded: s.unloaded,
            }
        })
        .collect();
    StatusJson { nodes: nodes.into_values().collect(), summaries, partitions }
}

/// Which replicas each endpoint is asked for.
#[derive(Clone, Copy)]
enum Replicas {
    None,
    All,
    /// Those of one partition.
    Of(u64),
}

async fn collect_with(client: &cohort_net::client::Client, replicas: Replicas) -> anyhow::Result<StatusJson> {
    let mut replies = Vec::new();
    for endpoint in client.endpoints() {
        let reply = match replicas {
            Replicas::None => client.status_summary_of(endpoint).await,
            Replicas::All => client.status_of(endpoint).await,
            Replicas::Of(partition) => client.status_page(endpoint, partition, 1).await.map(|mut reply| {
                reply.partitions.retain(|p| p.id == partition);
                reply
            }),
        };
        replies.push((endpoint.clone(), reply.ok()));
    }
    anyhow::ensure!(replies.iter().any(|(_, r)| r.is_some()), "no endpoint answered: {:?}", client.endpoints());
    Ok(merge(&replies))
}

/// Every endpoint's view with every replica, merged.
pub async fn collect(client: &cohort_net::client::Client) -> anyhow::Result<StatusJson> {
    collect_with(client, Replicas::All).await
}

/// Every endpoint's view of one partition, merged.
pub async fn collect_partition(client: &cohort_net::client::Client, partition: u64) -> anyhow::Result<StatusJson> {
    collect_with(client, Replicas::Of(partition)).await
}

pub async fn run(cli: &Cli, json: bool, all: bool, watch: bool) -> anyhow::Result<()> {
    let client = client(cli)?;
    if !watch {
        print!("{}", render(&client, json, all).await?);
        return Ok(());
    }
    let interrupted = super::shutdown_signal();
    tokio::pin!(interrupted);
    loop {
        // A node that stops answering is shown down, not an error that ends the watch.
        let text = render(&client, false, all).await.unwrap_or_else(|error| format!("{error:#}\n"));
        // Clear the screen and go home, then draw: the view replaces itself in place.
        print!("\x1b[2J\x1b[H{}\n(every 2 s; Ctrl-C stops)\n", text);
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = &mut interrupted => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

/// The status as text (or JSON).
async fn render(client: &cohort_net::client::Client, json: bool, all: bool) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    // Without `--all` or `--json`, the counts decide whether to list; they are what is shown
    // if not.
    let summary = if json || all { None } else { Some(collect_with(client, Replicas::None).await?) };
    let list = summary.as_ref().is_none_or(|s| s.summaries.iter().all(|s| s.hosted <= LIST_REPLICAS_MAX));
    let status = match summary {
        Some(summary) if !list => summary,
        _ => collect_with(client, Replicas::All).await?,
    };
    if json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(&status)?));
    }
    let mut out = String::new();
    writeln!(out, "NODES")?;
    for n in &status.nodes {
        writeln!(
            out,
            "  node {:<3} {:<5} peer {:<21} client {}",
            n.id,
            if n.up { "up" } else { "DOWN" },
            n.peer_address,
            n.client_address
        )?;
    }
    writeln!(out, "REPLICAS BY NODE")?;
    for s in &status.summaries {
        writeln!(
            out,
            "  node {:<3} {} hosted: {} leading, {} following, {} learning, {} candidates; {} quiesced, {} unloaded",
            s.node, s.hosted, s.leaders, s.followers, s.learners, s.candidates, s.quiesced, s.unloaded
        )?;
    }
    if !list {
        writeln!(
            out,
            "(more than {LIST_REPLICAS_MAX} replicas on a node: `cohort status --all` lists every partition)"
        )?;
        return Ok(out);
    }
    writeln!(out, "PARTITIONS")?;
    for p in &status.partitions {
        let leader = if p.leader == 0 { "none".to_owned() } else { p.leader.to_string() };
        let repos = if p.id == 0 { "(directory)".to_owned() } else { p.repositories.join(", ") };
        writeln!(
            out,
            "  partition {:<4} leader {:<4} term {:<4} commit {:<6} {}",
            p.id, leader, p.term, p.commit_index, repos
        )?;
        for r in &p.replicas {
            writeln!(
                out,
                "    node {:<3} {:<10} applied {:<6} match {:<6} durable {:<6} compacted {:<6} {}",
                r.node,
                r.role,
                r.applied_index,
                r.match_index,
                r.durable_index,
                r.compacted_index,
                replica_state(r)
            )?;
        }
    }
    Ok(out)
}

/// What a replica's own node says of it: `awake`, `quiesced` or `unloaded`.
pub fn replica_state(replica: &ReplicaJson) -> &'static str {
    if replica.raft_off {
        return "raft off";
    }
    match (replica.unloaded, replica.quiesced) {
        (true, _) => "unloaded",
        (false, true) => "quiesced",
        (false, false) => "awake",
    }
}
