//! Idle partitions: replicas quiesce, followers unload, and a write loads and wakes them.

use crate::cluster::{stdout, TestCluster};
use std::time::{Duration, Instant};

fn replica_states(cluster: &TestCluster, repo: &str) -> Vec<String> {
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", repo, "--json"]))).unwrap();
    info["replicas"].as_array().unwrap().iter().map(|r| r["state"].as_str().unwrap_or("unknown").to_owned()).collect()
}

#[test]
fn idle_followers_unload_and_a_write_loads_them_without_losing_anything() {
    let raft = cohort::config::RawRaft { quiesce_after_ms: 500, unload_after_ms: 1_000, ..Default::default() };
    let cluster = TestCluster::start_with(3, Some(3), raft);
    stdout(&cluster.cli(&["repo", "create", "idle.git"]));
    let oid = stdout(&cluster.cli_at(&cluster.endpoint(1), &["object", "put", "idle.git"], Some(b"before")));
    stdout(&cluster.cli(&["ref", "update", "idle.git", "refs/heads/main", oid.trim()]));

    // One leader stays loaded and quiesced; both followers unload.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut states = replica_states(&cluster, "idle.git");
    while states.iter().filter(|s| *s == "unloaded").count() < 2 {
        assert!(Instant::now() < deadline, "followers did not unload: {states:?}");
        std::thread::sleep(Duration::from_millis(200));
        states = replica_states(&cluster, "idle.git");
    }
    states.sort();
    assert_eq!(states, ["quiesced", "unloaded", "unloaded"], "the leader stays loaded");

    // A write through every node loads and wakes the replicas, without an election; nothing
    // was lost. (Elections are counted from here: the directory's and the new partition's
    // first ones may take more than one campaign on a busy machine.)
    let elections_before: f64 = (1..=3).map(|id| cluster.metric(id, "cohort_elections_total")).sum();
    for id in 1..=3 {
        let data = format!("after {id}");
        let oid = stdout(&cluster.cli_at(&cluster.endpoint(id), &["object", "put", "idle.git"], Some(data.as_bytes())));
        stdout(&cluster.cli_at(
            &cluster.endpoint(id),
            &["ref", "update", "idle.git", &format!("refs/heads/n{id}"), oid.trim()],
            None,
        ));
    }
    let refs = stdout(&cluster.cli(&["ref", "list", "idle.git"]));
    assert_eq!(refs.lines().count(), 4, "main and one branch per node: {refs}");
    let elections: f64 = (1..=3).map(|id| cluster.metric(id, "cohort_elections_total")).sum::<f64>() - elections_before;
    let loads: f64 = (1..=3).map(|id| cluster.metric(id, "cohort_partition_loads_total")).sum();
    assert!(loads >= 1.0, "the writes loaded unloaded replicas");
    assert_eq!(elections, 0.0, "loading and waking started elections");
}
