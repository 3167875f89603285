//! Bad input does not hurt a node.

use crate::cluster::{runtime, stdout, TestCluster};
use cohort_net::api::proto::{self, cohort_client::CohortClient};
use std::io::Write;
use std::time::Duration;

#[test]
fn garbage_on_the_peer_port_and_bad_paths_leave_the_node_serving() {
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "ok.git"]));
    for id in 1..=3 {
        let address = cluster.node(id).peer_address.clone();
        for garbage in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &[0xff; 4096][..],
            &u32::MAX.to_le_bytes()[..],
            &[5, 0, 0, 0, 9, 9, 9, 9, 9][..],
        ] {
            if let Ok(mut stream) = std::net::TcpStream::connect(&address) {
                let _ = stream.write_all(garbage);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    // Straight to the API, past the CLI's own checks: the node must refuse them itself.
    let rt = runtime();
    let long = "x".repeat(5000);
    for bad in ["../escape.git", "/abs.git", "a//b.git", "nul\u{0}.git", long.as_str()] {
        let code = rt.block_on(async {
            let mut client = CohortClient::connect(cluster.endpoint(1)).await.unwrap();
            let request = proto::CreateRepositoryRequest {
                repo: Some(proto::Repo { storage: "default".into(), relative_path: bad.into() }),
                id: Some(proto::WriteId { client_id: 5, sequence: 1 }),
                fork_of: None,
            };
            client.create_repository(request).await.unwrap_err().code()
        });
        assert_eq!(code, tonic::Code::InvalidArgument, "{bad:?} is refused as invalid");
    }
    let out = cluster.cli(&["repo", "create", "../escape.git"]);
    assert!(!out.status.success(), "the CLI refuses it too");
    // Every node still serves and the cluster still writes.
    stdout(&cluster.cli(&["repo", "create", "still-ok.git"]));
    let status = cluster.status();
    assert!(status["nodes"].as_array().unwrap().iter().all(|n| n["up"] == true), "{status}");
}

#[test]
fn sigterm_stops_a_node_cleanly() {
    let mut cluster = TestCluster::start(1);
    stdout(&cluster.cli(&["repo", "create", "t.git"]));
    assert!(cluster.terminate(1, Duration::from_secs(15)), "exit status 0 within 15 s");
    cluster.start_node(1);
    cluster.wait_serving(1);
    let listed = stdout(&cluster.cli(&["repo", "list"]));
    assert!(listed.contains("t.git"), "{listed}");
}
