//! Killing leaders and whole clusters loses no acknowledged write.

use crate::cluster::{check_all, put, put_all, repo, runtime, TestCluster, ELECTION_TIMEOUT_MAX};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[test]
fn killing_the_leader_loses_nothing_and_writes_resume() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let client = cluster.client(11);
    let f = repo("f.git");
    rt.block_on(client.create_repository(&f, None)).unwrap();
    let mut acknowledged = BTreeMap::new();
    put_all(&rt, &client, &f, 0..20, "v", &mut acknowledged);
    let leader = cluster.leader_of(1);
    cluster.kill9(leader);
    let killed_at = Instant::now();
    // Writes go on: the first one succeeds within two election timeouts of the kill (one for
    // the followers to notice, one for a split vote or the client finding the new leader).
    let oid = rt.block_on(put(&client, &f, 100, "after-kill")).expect("a write after the leader died");
    let failover = killed_at.elapsed();
    eprintln!("failover: the first write after the kill succeeded after {failover:?}");
    acknowledged.insert(100, oid);
    assert!(failover < 2 * ELECTION_TIMEOUT_MAX, "failover took {failover:?}");
    put_all(&rt, &client, &f, 20..40, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &f, &acknowledged));

    // The old leader comes back and catches up: a stale read from it alone sees everything.
    cluster.start_node(leader);
    cluster.wait_serving(leader);
    cluster.wait_caught_up(&rt, leader, &f, acknowledged.len(), Duration::from_secs(20));
}

#[test]
fn restarting_the_whole_cluster_keeps_every_acknowledged_write() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let client = cluster.client(21);
    let f = repo("f.git");
    rt.block_on(client.create_repository(&f, None)).unwrap();
    let mut acknowledged = BTreeMap::new();
    put_all(&rt, &client, &f, 0..30, "w", &mut acknowledged);
    // Crash two nodes hard and stop one cleanly, then bring all back.
    cluster.kill9(1);
    cluster.kill9(2);
    assert!(cluster.terminate(3, Duration::from_secs(15)), "SIGTERM stops a node cleanly");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    for id in 1..=3 {
        cluster.wait_serving(id);
    }
    let client = cluster.client(22);
    rt.block_on(check_all(&client, &f, &acknowledged));
    // And the cluster takes writes again.
    rt.block_on(put(&client, &f, 999, "after-restart")).unwrap();
}

/// A node whose data directory is wiped comes back under its old id having forgotten every
/// vote and entry it promised: its peers refuse it (it is never heard from, so it can neither
/// vote nor acknowledge as its old self), and the other two go on losing nothing. The
/// documented replacement (`cohort node --join`, then `cohort node replace`) brings it back
/// as a new member that holds everything and counts towards every quorum.
#[test]
fn a_node_back_with_a_wiped_data_directory_is_refused_as_its_old_self_until_replaced_and_nothing_is_lost() {
    let mut cluster = TestCluster::start(3);
    let rt = runtime();
    let client = cluster.client(31);
    let f = repo("f.git");
    rt.block_on(client.create_repository(&f, None)).unwrap();
    let mut acknowledged = BTreeMap::new();
    put_all(&rt, &client, &f, 0..20, "v", &mut acknowledged);
    let identity = |cluster: &TestCluster, id| std::fs::read_to_string(cluster.data_dir(id).join("identity")).unwrap();
    let before = identity(&cluster, 3);
    cluster.kill9(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node(3);
    cluster.wait_serving(3);
    assert_ne!(identity(&cluster, 3), before, "a new data directory is a new instance");
    let refused = |cluster: &TestCluster, id| cluster.metric(id, "cohort_transport_peers_refused_identity_total");
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused(&cluster, 1) == 0.0 || refused(&cluster, 2) == 0.0 {
        assert!(Instant::now() < deadline, "nodes 1 and 2 never refused the wiped node 3");
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [1, 2] {
        assert!(cluster.log(id).contains("came back with another data directory"), "node {id} says why");
        // Never heard from: down once node liveness's timeout passes.
        let down = |cluster: &TestCluster| {
            let metrics = crate::cluster::http_get(&cluster.node(id).http_address, "/metrics");
            metrics.lines().any(|l| l == "cohort_peer_alive{peer=\"3\"} 0")
        };
        while !down(&cluster) {
            assert!(Instant::now() < deadline, "node {id} never counted node 3 down");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    put_all(&rt, &client, &f, 20..40, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &f, &acknowledged));
    // Restarting a survivor does not forget whom it knew.
    cluster.kill9(2);
    cluster.start_node(2);
    cluster.wait_serving(2);
    let deadline = Instant::now() + Duration::from_secs(20);
    while refused(&cluster, 2) == 0.0 {
        assert!(Instant::now() < deadline, "restarted node 2 accepted the wiped node 3");
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(check_all(&client, &f, &acknowledged));

    // Replacement refuses a node that bootstrapped its new directory as if the cluster were new.
    let replace = |cluster: &TestCluster| cluster.cli(&["node", "replace", "3", "--timeout", "60"]);
    let output = replace(&cluster);
    assert!(!output.status.success(), "replaced a node not started with --join");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--join"), "says how: {output:?}");
    // The documented way: an empty data directory made to join, then `node replace`.
    cluster.kill9(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node_with(3, &["--join"]);
    cluster.wait_serving(3);
    let output = replace(&cluster);
    assert!(output.status.success(), "node replace failed: {output:?}\nnode 3's log:\n{}", cluster.log(3));
    let said = crate::cluster::stdout(&output);
    assert!(said.contains("retired node 3's old data directory") && said.contains("is replaced"), "{said}");
    assert!(identity(&cluster, 3).contains("origin = join"));
    // Run again, it finds everything done.
    let again = replace(&cluster);
    assert!(again.status.success(), "a second run failed: {again:?}");
    assert!(crate::cluster::stdout(&again).contains("0 partitions have a replica on node 3 to replace"));
    // Node 3 holds every acknowledged write: a stale read from it alone sees them all.
    cluster.wait_caught_up(&rt, 3, &f, acknowledged.len(), Duration::from_secs(30));
    // Lost and replaced again: the directory still names the first replacement's peer of node
    // 3 until the last step replaces it, and its leader keeps addressing that peer; the new
    // node 3 must not take it (it would start every replica empty, under the lost peers).
    cluster.kill9(3);
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node_with(3, &["--join"]);
    cluster.wait_serving(3);
    // As the operator is told: run again once the others take the lost one as stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    let output = loop {
        let output = replace(&cluster);
        if output.status.success() || Instant::now() >= deadline {
            break output;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(output.status.success(), "second replace failed: {output:?}\nnode 3's log:\n{}", cluster.log(3));
    let said = crate::cluster::stdout(&output);
    assert!(said.contains("1 partitions have a replica on node 3 to replace"), "{said}");
    // Only a node made to join, and hosting no directory replica yet, is told its peer.
    let peer = cohort_core::ids::PeerId::new(cohort_core::ids::NodeId(1), 99).0;
    let told = rt.block_on(client.join_directory_at(&cluster.endpoint(1), peer));
    assert!(told.is_err(), "node 1 took a directory peer: {told:?}");
    let peer = cohort_core::ids::PeerId::new(cohort_core::ids::NodeId(3), 99).0;
    let told = rt.block_on(client.join_directory_at(&cluster.endpoint(3), peer));
    assert!(told.is_err(), "node 3 took a second directory peer: {told:?}");
    cluster.wait_caught_up(&rt, 3, &f, acknowledged.len(), Duration::from_secs(30));
    // And it is a voter of the directory and of the partition: with node 1 gone, nodes 2 and
    // 3 are a quorum of both.
    cluster.kill9(1);
    put_all(&rt, &client, &f, 40..50, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &f, &acknowledged));
    let created = rt.block_on(client.create_repository(&repo("after-replace.git"), None));
    assert!(created.is_ok(), "the directory takes writes on nodes 2 and 3: {created:?}");
    // The directory's replicas are only ever replaced, never removed or added one by one.
    let removal = cluster.cli(&["partition", "remove-replica", "0", "--node", "2"]);
    assert!(!removal.status.success(), "removed a directory replica");
    assert!(String::from_utf8_lossy(&removal.stderr).contains("only replaced"), "{removal:?}");
    // Nor is the directory replica of a node never retired, which would be left without one
    // (refused by whichever node answers: one that has not retired node 2, or node 2 leading).
    let replaced = rt.block_on(client.change_members(0, 2, "replace"));
    assert!(
        matches!(&replaced, Err(cohort_net::client::ClientError::Rejected(reason))
            if reason.contains("not retired") || reason.contains("node 2 leads")),
        "{replaced:?}"
    );
}
