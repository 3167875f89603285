//! The node's status page (`/`) and the JSON it refreshes itself from (`/status.json`): nodes
//! and their liveness, this node's replicas by role and state, what needs attention
//! (unreachable peers, under-replicated and leaderless partitions, lagging followers), and
//! the first replicas with their leader, indexes and lag.

use crate::node::NodeHandle;
use cohort_core::partition::{PartitionStatus, Role};
use serde_json::{json, Value};

/// The page: static HTML whose script fetches `/status.json` every two seconds and redraws in
/// place.
pub const PAGE: &str = include_str!("status_page.html");

/// Replicas listed: each costs a round trip to its replica.
const REPLICAS_LISTED_MAX: usize = 1_000;

/// A follower this many entries behind its leader is shown as lagging.
const LAGGING_ENTRIES: u64 = 1_000;
/// So is one lacking an entry its leader appended this many seconds ago.
const LAGGING_SECONDS: f64 = 10.0;

/// How far the furthest member is behind the leader's commit (leaders only).
fn lag_entries(status: &PartitionStatus) -> Option<u64> {
    (status.role == Role::Leader)
        .then(|| status.progress.iter().map(|p| status.commit_index.saturating_sub(p.match_index)).max().unwrap_or(0))
}

/// Everything the page shows, as JSON.
pub async fn status_json(node: &NodeHandle) -> Value {
    let me = node.config.node;
    let connected = node.transport.connected_peers();
    let nodes: Vec<Value> = node
        .config
        .nodes
        .values()
        .map(|n| {
            let up = n.id == me || connected.contains(&n.id);
            json!({ "id": n.id.0, "peer": n.peer.to_string(), "client": n.client_url(), "http": n.http.to_string(), "up": up, "this": n.id == me })
        })
        .collect();
    let metrics = &node.router.env().metrics;
    let replicas = json!({
        "hosted": node.router.partitions_hosted(),
        "leader": metrics.partitions_leader.get(),
        "follower": metrics.partitions_follower.get(),
        "learner": metrics.partitions_learner.get(),
        "candidate": metrics.partitions_candidate.get(),
        "quiesced": metrics.partitions_quiesced.get(),
        "unloaded": metrics.partitions_unloaded.get(),
        "under_replicated": metrics.partitions_under_replicated.get(),
        "leaderless": metrics.partitions_leaderless.get(),
    });
    let mut listed = Vec::new();
    for partition in node.router.partitions_from(cohort_core::ids::DIRECTORY, REPLICAS_LISTED_MAX) {
        let Ok(status) = node.router.status(partition).await else { continue };
        let state = if status.raft == cohort_core::persist::RaftMode::Off {
            "raft off"
        } else if status.unloaded {
            "unloaded"
        } else if status.quiesced {
            "quiesced"
        } else {
            "awake"
        };
        listed.push(json!({
            "partition": status.partition.0,
            "role": status.role.name(),
            "state": state,
            "term": status.term,
            "leader": status.leader.map(|l| l.0),
            "commit": status.commit_index,
            "applied": status.applied_index,
            "lag_entries": lag_entries(&status),
        }));
    }
    let lags = node.router.leader_lags();
    let lag_entries_max = lags.iter().map(|&(entries, _)| entries).max().unwrap_or(0);
    let lag_seconds_max = lags.iter().map(|&(_, time)| time.as_secs_f64()).fold(0.0, f64::max);
    let mut attention = Vec::new();
    for n in &nodes {
        if n["up"] == false {
            attention.push(format!("node {} does not answer", n["id"]));
        }
    }
    for (key, one, many) in [
        (
            "under_replicated",
            "partition led here has a voter on a down node",
            "partitions led here have a voter on a down node",
        ),
        ("leaderless", "replica here knows no leader", "replicas here know no leader"),
    ] {
        match replicas[key].as_i64().unwrap_or(0) {
            0 => {}
            1 => attention.push(format!("1 {one}")),
            count => attention.push(format!("{count} {many}")),
        }
    }
    if lag_entries_max >= LAGGING_ENTRIES {
        attention.push(format!("a follower is {lag_entries_max} entries behind a leader here"));
    }
    if lag_seconds_max >= LAGGING_SECONDS {
        attention.push(format!("a follower lacks an entry a leader here appended {lag_seconds_max:.0} s ago"));
    }
    json!({
        "node": me.0,
        "healthy": attention.is_empty(),
        "attention": attention,
        "nodes": nodes,
        "replicas": replicas,
        "lag_entries_max": lag_entries_max,
        "lag_seconds_max": lag_seconds_max,
        "partitions": listed,
    })
}
