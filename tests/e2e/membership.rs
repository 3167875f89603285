//! Adding, promoting and removing replicas and moving leadership on a live partition.

use crate::cluster::{self, repo, runtime, stdout, test_raft, write_key, TestCluster};
use cohort::config::RawRaft;
use cohort_core::state_machine::{Expected, NewObject, ObjectKind, RefName, RefValue};
use cohort_net::client::RefChange;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn members(info: &serde_json::Value) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let mut voters = BTreeSet::new();
    let mut learners = BTreeSet::new();
    for r in info["replicas"].as_array().unwrap() {
        let node = r["node"].as_u64().unwrap();
        if r["role"] == "voter" {
            voters.insert(node);
        } else {
            learners.insert(node);
        }
    }
    (voters, learners)
}

/// Partitions the node at `id` hosts, as its own status says.
fn hosted(cluster: &TestCluster, id: u64) -> BTreeSet<u64> {
    let out = cluster.cli_at(&cluster.endpoint(id), &["status", "--json"], None);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    status["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["replicas"].as_array().unwrap().iter().any(|r| r["node"] == id))
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

/// Waits until every voter has compacted its log past its start (through what its store made
/// durable), so that a new replica cannot catch up from the log alone.
fn wait_compacted(cluster: &TestCluster, partition: u64, voters: &BTreeSet<u64>) {
    wait_for("every voter to compact its log", || {
        voters.iter().all(|&v| cluster.compacted_index(v, partition) >= RETAINED_ENTRIES)
    });
}

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    cluster::wait_for(what, Duration::from_secs(30), done)
}

/// Replicas compact their log through what their store made durable; a leader keeps at most
/// this many entries for a follower just behind. A new replica then cannot catch up from the
/// log alone.
const RETAINED_ENTRIES: u64 = 100;
const WRITES: u32 = 2000;

fn compacting_raft() -> RawRaft {
    RawRaft { log_retain_entries: RETAINED_ENTRIES, ..test_raft() }
}

#[test]
fn replicas_are_added_promoted_removed_and_leadership_moves() {
    let mut cluster = TestCluster::start_with(5, Some(3), compacting_raft());
    let rt = runtime();
    let client = cluster.client(31);
    rt.block_on(client.create_repository(&repo("m.git"), None)).unwrap();
    let write = |key: u32| write_key(&rt, &client, &repo("m.git"), key);
    for key in 0..WRITES {
        write(key);
    }
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "m.git", "--json"]))).unwrap();
    let partition = info["partition"].as_u64().unwrap().to_string();
    let (voters, _) = members(&info);
    let outsider = (1..=5).find(|n| !voters.contains(n)).unwrap();
    wait_compacted(&cluster, partition.parse().unwrap(), &voters);

    // A learner joins, catches up, and serves stale reads.
    let out =
        stdout(&cluster.cli(&["partition", "add-replica", &partition, "--node", &outsider.to_string(), "--learner"]));
    assert!(out.contains(&format!("node {outsider} learner")), "{out}");
    wait_for("the learner to catch up", || {
        let out = cluster.cli_at(&cluster.endpoint(outsider), &["ref", "list", "m.git", "--stale"], None);
        String::from_utf8_lossy(&out.stdout).lines().count() == WRITES as usize
    });
    assert!(
        cluster.metric(outsider, "cohort_snapshots_received_total") >= 1.0,
        "the learner caught up by snapshot: the log's start was compacted away"
    );

    // It becomes a voter; an original voter leaves and deletes its replica.
    let out = stdout(&cluster.cli(&["partition", "promote", &partition, "--node", &outsider.to_string()]));
    assert!(out.contains(&format!("node {outsider} voter")), "{out}");
    let leader = info["leader"].as_u64().unwrap();
    let leaving = *voters.iter().find(|&&v| v != leader).unwrap();
    stdout(&cluster.cli(&["partition", "remove-replica", &partition, "--node", &leaving.to_string()]));
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "m.git", "--json"]))).unwrap();
    let (voters, learners) = members(&info);
    assert!(
        voters.contains(&outsider) && !voters.contains(&leaving) && learners.is_empty() && voters.len() == 3,
        "{info}"
    );
    let p: u64 = partition.parse().unwrap();
    wait_for("the removed node to drop its replica", || !hosted(&cluster, leaving).contains(&p));

    // Refusals are clear and change nothing.
    let refused = cluster.cli(&["partition", "add-replica", &partition, "--node", &outsider.to_string(), "--learner"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already a member"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Leadership moves to the newcomer; then it is killed and writes go on.
    stdout(&cluster.cli(&["partition", "transfer-leader", &partition, "--node", &outsider.to_string()]));
    wait_for("leadership to move", || cluster.leader_of(p) == outsider);
    cluster.kill9(outsider);
    for key in WRITES..WRITES + 20 {
        write(key);
    }

    // Everything restarts; every acknowledged write is there and every node knows its replicas.
    for id in 1..=5 {
        if cluster.children.contains_key(&id) {
            cluster.kill9(id);
        }
    }
    for id in 1..=5 {
        cluster.start_node(id);
    }
    for id in 1..=5 {
        cluster.wait_serving(id);
    }
    let (refs, _) = rt.block_on(cluster.client(32).read_refs(&repo("m.git"), false)).unwrap();
    assert_eq!(refs.len(), WRITES as usize + 20, "every acknowledged write survived");
    wait_for("every member to host the partition again", || voters.iter().all(|&v| hosted(&cluster, v).contains(&p)));
    assert!(!hosted(&cluster, leaving).contains(&p), "the removed node did not bring its replica back");
}

#[test]
fn a_node_killed_while_receiving_a_snapshot_recovers_and_catches_up() {
    let mut cluster = TestCluster::start_with(4, Some(3), compacting_raft());
    let rt = runtime();
    let client = cluster.client(41);
    rt.block_on(client.create_repository(&repo("big.git"), None)).unwrap();
    // Large enough that the transfer takes a while: 48 blobs of 256 KiB.
    const BLOBS: usize = 48;
    for key in 0..BLOBS {
        // Incompressible (objects are stored zlib-compressed): the snapshot must take long
        // enough to send that the node can be killed while it arrives.
        let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ key as u64;
        let data: Vec<u8> = (0..256 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let object = NewObject::new(ObjectKind::Blob, data);
        let change = RefChange {
            name: RefName::new(format!("refs/heads/b{key}")).unwrap(),
            expected: Expected::Any,
            new: Some(RefValue::Direct(object.oid)),
        };
        rt.block_on(client.write(&repo("big.git"), vec![object], vec![change])).unwrap();
    }
    // Enough small writes after them that the log is compacted past the start.
    for key in 0..2 * RETAINED_ENTRIES {
        let object = NewObject::new(ObjectKind::Blob, format!("small {key}").into_bytes());
        let change = RefChange {
            name: RefName::new("refs/heads/small").unwrap(),
            expected: Expected::Any,
            new: Some(RefValue::Direct(object.oid)),
        };
        rt.block_on(client.write(&repo("big.git"), vec![object], vec![change])).unwrap();
    }
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "big.git", "--json"]))).unwrap();
    let partition = info["partition"].as_u64().unwrap();
    let (voters, _) = members(&info);
    let outsider = (1..=4).find(|n| !voters.contains(n)).unwrap();
    wait_compacted(&cluster, partition, &voters);
    let authority_dir = cluster.data_dir(outsider).join("partitions/default").join(partition.to_string());
    let incoming = authority_dir.join("incoming.tmp");

    // Add the learner from another thread; kill it as soon as its snapshot starts arriving.
    let mut cli = cluster.cli_command(&[
        "partition",
        "add-replica",
        &partition.to_string(),
        "--node",
        &outsider.to_string(),
        "--learner",
    ]);
    let adding = std::thread::spawn(move || cli.output());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::metadata(&incoming).is_ok_and(|m| m.len() > 0) {
            break;
        }
        assert!(Instant::now() < deadline, "no snapshot started arriving at node {outsider}");
        std::thread::sleep(Duration::from_millis(1));
    }
    cluster.kill9(outsider);
    let snapshot_files = || -> Vec<String> {
        std::fs::read_dir(&authority_dir)
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
            .unwrap_or_default()
    };
    let complete: Vec<String> = snapshot_files().into_iter().filter(|n| n.starts_with("snap-")).collect();
    assert!(complete.is_empty(), "killed mid-transfer, node {outsider} has no installed snapshot: {complete:?}");

    // It restarts, drops the partial file, receives the snapshot again and catches up.
    cluster.start_node(outsider);
    cluster.wait_serving(outsider);
    let added = adding.join().unwrap().unwrap();
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    wait_for("the restarted node to catch up", || {
        let out = cluster.cli_at(&cluster.endpoint(outsider), &["ref", "list", "big.git", "--stale"], None);
        String::from_utf8_lossy(&out.stdout).lines().count() == BLOBS + 1
    });
    assert!(cluster.metric(outsider, "cohort_snapshots_received_total") >= 1.0);
    assert!(!snapshot_files().contains(&"incoming.tmp".to_string()), "the partial transfer is gone");
}
