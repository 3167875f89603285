//! Partitions on replica sets: R voters among N nodes, spread evenly, reachable from any node.

use crate::cluster::{stdout, TestCluster};
use std::collections::BTreeMap;

#[test]
fn partitions_live_on_evenly_spread_replica_sets_and_any_node_serves() {
    let cluster = TestCluster::start_with_replicas(5, Some(3));
    for i in 0..5 {
        stdout(&cluster.cli(&["repo", "create", &format!("rs/{i}.git")]));
    }
    let listed: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["partition", "list", "--json"]))).unwrap();
    let mut replicas_per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for partition in listed.as_array().unwrap() {
        let replicas = partition["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), 3, "three voters: {partition}");
        for replica in replicas {
            assert_eq!(replica["role"], "voter");
            *replicas_per_node.entry(replica["node"].as_u64().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(
        replicas_per_node.values().copied().collect::<Vec<_>>(),
        vec![3; 5],
        "15 replicas over 5 nodes: {replicas_per_node:?}"
    );

    // Every node takes writes and reads for every repository: non-members redirect.
    for id in 1..=5 {
        let endpoint = cluster.endpoint(id);
        for i in 0..5 {
            let repo = format!("rs/{i}.git");
            let oid =
                stdout(&cluster.cli_at(&endpoint, &["object", "put", &repo], Some(format!("{id}-{i}").as_bytes())));
            stdout(&cluster.cli_at(
                &endpoint,
                &["ref", "update", &repo, &format!("refs/heads/n{id}"), oid.trim()],
                None,
            ));
        }
    }
    for i in 0..5 {
        let refs = stdout(&cluster.cli(&["ref", "list", &format!("rs/{i}.git")]));
        assert_eq!(refs.lines().count(), 5, "{refs}");
    }

    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "rs/0.git", "--json"]))).unwrap();
    assert!(info["partition"].as_u64().unwrap() >= 1);
    let leader = info["leader"].as_u64().unwrap();
    let members: Vec<u64> = info["replicas"].as_array().unwrap().iter().map(|r| r["node"].as_u64().unwrap()).collect();
    assert_eq!(members.len(), 3);
    assert!(members.contains(&leader), "the leader {leader} is a member: {info}");
}
