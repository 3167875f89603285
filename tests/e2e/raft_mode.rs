//! Raft turned off and on again for a live partition, in place, on real processes.

use crate::cluster::{repo, runtime, stdout, wait_for, write_key, TestCluster};
use std::time::Duration;

/// The state `repo info` reports for the replica on `node` ("raft off", "awake", ...).
fn replica_state(cluster: &TestCluster, node: u64) -> String {
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "r.git", "--json"]))).unwrap();
    let replicas = info["replicas"].as_array().unwrap();
    let replica = replicas.iter().find(|r| r["node"] == node).unwrap_or_else(|| panic!("no replica on {node}: {info}"));
    replica["state"].as_str().unwrap_or("").to_owned()
}

#[test]
fn raft_goes_off_and_on_in_place_and_every_write_survives() {
    // One replica per partition: each partition starts as a single-voter Raft group.
    let mut cluster = TestCluster::start_with_replicas(3, Some(1));
    let rt = runtime();
    let client = cluster.client(41);
    rt.block_on(client.create_repository(&repo("r.git"), None)).unwrap();
    let write = |key: u32| write_key(&rt, &client, &repo("r.git"), key);
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "r.git", "--json"]))).unwrap();
    let partition = info["partition"].as_u64().unwrap().to_string();
    let home = info["replicas"][0]["node"].as_u64().unwrap();
    let other = (1..=3).find(|&n| n != home).unwrap();
    for key in 0..20 {
        write(key);
    }

    // Off: writes go on, with no Raft.
    let out = stdout(&cluster.cli(&["partition", "raft", "off", &partition]));
    assert!(out.contains("Raft off"), "{out}");
    assert_eq!(replica_state(&cluster, home), "raft off");
    for key in 20..40 {
        write(key);
    }

    // On again: a single-voter group that takes a replica, which catches up from the log.
    let out = stdout(&cluster.cli(&["partition", "raft", "on", &partition]));
    assert!(out.contains("Raft on"), "{out}");
    for key in 40..60 {
        write(key);
    }
    let out = stdout(&cluster.cli(&["partition", "add-replica", &partition, "--node", &other.to_string()]));
    assert!(out.contains(&format!("node {other} voter")), "{out}");
    write(60);

    // Off is refused while another member exists, and changes nothing.
    let refused = cluster.cli(&["partition", "raft", "off", &partition]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("one voter"), "{stderr}");
    write(61);

    // The leader may have moved to the new replica; bring it home before removing the other.
    stdout(&cluster.cli(&["partition", "transfer-leader", &partition, "--node", &home.to_string()]));
    stdout(&cluster.cli(&["partition", "remove-replica", &partition, "--node", &other.to_string()]));
    let out = stdout(&cluster.cli(&["partition", "raft", "off", &partition]));
    assert!(out.contains("Raft off"), "{out}");
    for key in 62..80 {
        write(key);
    }

    // Every node restarts; the partition comes back off, with every write.
    for id in 1..=3 {
        cluster.kill9(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    for id in 1..=3 {
        cluster.wait_serving(id);
    }
    wait_for("the partition to come back with Raft off", Duration::from_secs(30), || {
        replica_state(&cluster, home) == "raft off"
    });
    let (refs, _) = rt.block_on(cluster.client(42).read_refs(&repo("r.git"), false)).unwrap();
    assert_eq!(refs.len(), 80, "every acknowledged write survived");
    // And the switch repeats.
    let out = stdout(&cluster.cli(&["partition", "raft", "on", &partition]));
    assert!(out.contains("Raft on"), "{out}");
    write(80);
    let (refs, _) = rt.block_on(cluster.client(43).read_refs(&repo("r.git"), false)).unwrap();
    assert_eq!(refs.len(), 81);
}

#[test]
fn new_single_replica_partitions_start_without_raft_when_configured() {
    let cluster = TestCluster::start_configured(3, |config| {
        config.replicas = Some(1);
        config.raft.enabled_by_default = false;
    });
    let rt = runtime();
    let client = cluster.client(44);
    rt.block_on(client.create_repository(&repo("r.git"), None)).unwrap();
    write_key(&rt, &client, &repo("r.git"), 0);
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "r.git", "--json"]))).unwrap();
    let home = info["replicas"][0]["node"].as_u64().unwrap();
    assert_eq!(replica_state(&cluster, home), "raft off");
    // The directory runs Raft on every node regardless.
    let status = cluster.status();
    let directory = status["partitions"].as_array().unwrap().iter().find(|p| p["id"] == 0).unwrap();
    let replicas = directory["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{directory}");
    assert!(replicas.iter().all(|r| r["raft_off"] == false), "{directory}");
}
