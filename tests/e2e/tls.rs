//! A cluster over TLS: peers use mutual TLS, clients check the nodes' certificates.

use crate::cluster::{check_all, put_all, repo, runtime, stdout, TestCluster};
use cohort_net::tls::{throwaway_certificates, PeerTls};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt as _;

const REJECTED: &str = "cohort_transport_connections_rejected_total";

#[test]
fn a_cluster_over_tls_replicates_fails_over_and_refuses_peers_and_clients_without_the_right_certificates() {
    let mut cluster = TestCluster::start_tls(3);
    let rt = runtime();
    let client = cluster.client(71);
    let f = repo("tls.git");
    rt.block_on(client.create_repository(&f, None)).unwrap();
    let mut acknowledged = BTreeMap::new();
    put_all(&rt, &client, &f, 0..20, "v", &mut acknowledged);

    // Replication, elections and catching up all cross TLS: the leader dies, the others elect
    // and go on; it comes back and catches up.
    let leader = cluster.leader_of(1);
    cluster.kill9(leader);
    put_all(&rt, &client, &f, 20..40, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &f, &acknowledged));
    cluster.start_node(leader);
    cluster.wait_serving(leader);
    cluster.wait_caught_up(&rt, leader, &f, acknowledged.len(), Duration::from_secs(20));

    // The CLI over https, given the CA.
    let status = stdout(&cluster.cli(&["status"]));
    assert!(status.contains(&cluster.endpoint(1)), "status names https endpoints: {status}");
    // Without the CA, an https endpoint is refused before anything is sent.
    let mut command = cluster.cli_command(&["status"]);
    command.env_remove("COHORT_CA");
    let out = command.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CA certificate"));
    // With another CA, or in plain text, no node answers.
    let strangers = throwaway_certificates(&["127.0.0.1".to_owned()], 1).unwrap();
    let other_ca = cluster.dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, &strangers.ca_pem).unwrap();
    let plain: Vec<String> = cluster.endpoints().iter().map(|e| e.replace("https://", "http://")).collect();
    for (endpoints, ca) in [(cluster.endpoints().join(","), other_ca.clone()), (plain.join(","), other_ca)] {
        let mut command = cluster.cli_command(&["--timeout", "3", "status"]);
        command.env("COHORT_ENDPOINTS", endpoints).env("COHORT_CA", ca);
        let out = command.output().unwrap();
        assert!(!out.status.success(), "a client without the cluster's CA got an answer");
    }

    // A peer whose certificate another CA signed gets no session: the node refuses it and
    // counts the refusal.
    let before = cluster.metric(1, REJECTED);
    let address: std::net::SocketAddr = cluster.node(1).peer_address.parse().unwrap();
    let stranger = PeerTls::new(&strangers.nodes[0]).unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
        if let Ok(mut session) = stranger.connect(address.ip(), tcp).await {
            let mut byte = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(5), session.read(&mut byte)).await;
            assert!(matches!(read, Ok(Err(_)) | Ok(Ok(0))), "the stranger's session was closed: {read:?}");
        }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster.metric(1, REJECTED) <= before {
        assert!(Instant::now() < deadline, "node 1 did not count the refused peer");
        std::thread::sleep(Duration::from_millis(50));
    }
    // And the cluster is none the worse.
    put_all(&rt, &client, &f, 40..45, "v", &mut acknowledged);
    rt.block_on(check_all(&client, &f, &acknowledged));
}
