//! Objects larger than a message: uploaded in pieces through the CLI, read back whole from the
//! leader and from a follower, exported as a loose object Git accepts; and a request no retry
//! can fix fails at once with its cause.

use crate::cluster::{stdout, test_raft, wait_for, TestCluster};
use cohort::config::RawRaft;
use std::process::Command;
use std::time::{Duration, Instant};

/// Content no compressor shrinks much, the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn git_hash_object(path: &std::path::Path) -> String {
    let output = Command::new("git").args(["hash-object", path.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The partition of `path` and its voters, from `repo info`.
fn partition_of(cluster: &TestCluster, path: &str) -> (String, Vec<u64>, u64) {
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", path, "--json"]))).unwrap();
    let replicas = info["replicas"].as_array().unwrap();
    let voters = replicas.iter().filter(|r| r["role"] == "voter").map(|r| r["node"].as_u64().unwrap()).collect();
    (info["partition"].as_u64().unwrap().to_string(), voters, info["leader"].as_u64().unwrap_or(0))
}

#[test]
fn a_large_object_goes_up_in_pieces_and_comes_back_whole_from_every_replica() {
    // Logs keep few entries, so that a replica added later catches up by snapshot.
    let cluster = TestCluster::start_with(4, Some(3), RawRaft { log_retain_entries: 4, ..test_raft() });
    stdout(&cluster.cli(&["repo", "create", "big.git"]));
    let work = tempfile::tempdir().unwrap();
    // 24 MiB and a bit: three times a whole message, and 25 pieces, the last one short.
    let content = noise(24 * 1024 * 1024 + 12_345);
    let file = work.path().join("blob");
    std::fs::write(&file, &content).unwrap();
    let expected = git_hash_object(&file);

    let put = cluster.cli_at(&cluster.endpoints().join(","), &["object", "put", "big.git"], Some(&content));
    assert_eq!(stdout(&put).trim(), expected, "cohort's id is git's");

    let got = cluster.cli(&["object", "get", "big.git", &expected]);
    assert!(got.stdout == content, "read back from the leader: {} bytes", got.stdout.len());

    // A learner added afterwards receives it in a snapshot.
    let (partition, voters, _) = partition_of(&cluster, "big.git");
    let outsider = (1..=4).find(|n| !voters.contains(n)).unwrap();
    stdout(&cluster.cli(&["partition", "add-replica", &partition, "--node", &outsider.to_string(), "--learner"]));

    // Every replica holds it: a stale read on each node's own endpoint, once it has applied.
    for id in 1..=4 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = cluster.cli_at(&cluster.endpoint(id), &["object", "get", "--stale", "big.git", &expected], None);
            if got.status.success() && got.stdout == content {
                break;
            }
            assert!(Instant::now() < deadline, "node {id}: {}", String::from_utf8_lossy(&got.stderr));
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    assert!(cluster.metric(outsider, "cohort_snapshots_received_total") >= 1.0, "the learner got a snapshot");

    // Exported as a loose object, written piece by piece: Git reads it back.
    let bare = work.path().join("big-export.git");
    stdout(&cluster.cli(&["repo", "export", "big.git", bare.to_str().unwrap()]));
    let fsck = Command::new("git").args(["fsck", "--strict"]).current_dir(&bare).output().unwrap();
    assert!(fsck.status.success(), "{}", String::from_utf8_lossy(&fsck.stderr));
    let cat = Command::new("git").args(["cat-file", "blob", &expected]).current_dir(&bare).output().unwrap();
    assert!(cat.stdout == content, "git reads the exported object whole");

    // Uploading it again stores nothing new and answers the same id.
    let again = cluster.cli_at(&cluster.endpoints().join(","), &["object", "put", "big.git"], Some(&content));
    assert_eq!(stdout(&again).trim(), expected);
}

#[test]
fn what_no_retry_can_fix_fails_at_once_with_its_cause() {
    let cluster = TestCluster::start_configured(3, |config| config.limits.object_size_bytes_max = 2 * 1024 * 1024);
    stdout(&cluster.cli(&["repo", "create", "once.git"]));

    // An object over the nodes' limit: refused before any piece is sent, exit status 2.
    let started = Instant::now();
    let output = cluster.cli_at(&cluster.endpoints().join(","), &["object", "put", "once.git"], Some(&noise(3 << 20)));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    assert!(stderr.contains("too large") && stderr.contains("2097152"), "{stderr}");
    assert_eq!(output.status.code(), Some(2), "{stderr}");

    // The cluster refuses each (exit status 3); a client that retried them would take its
    // whole deadline (30 s) and hide the cause.
    let cases: [(&[&str], &str, i32); 2] = [
        (&["repo", "create", "once.git"], "already exists", 3),
        (&["ref", "update", "once.git", "refs/heads/main", "0123456789012345678901234567890123456789"], "not found", 3),
    ];
    for (args, cause, code) in cases {
        let started = Instant::now();
        let output = cluster.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(started.elapsed() < Duration::from_secs(1), "{args:?} took {:?}", started.elapsed());
        assert!(stderr.contains(cause), "{args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(code), "{args:?}: {stderr}");
    }
}

/// Input that fails after `good_bytes`, as a client that dies mid-upload would stop.
struct FailingInput {
    content: Vec<u8>,
    good_bytes: u64,
}

impl cohort_net::client::ReadAt for FailingInput {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset + buf.len() as u64 > self.good_bytes {
            return Err(std::io::Error::other("the client went away"));
        }
        buf.copy_from_slice(&self.content[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }
}

#[test]
fn an_abandoned_upload_is_dropped_once_idle_and_a_later_retry_still_succeeds() {
    let cluster = TestCluster::start_configured(3, |config| config.limits.upload_idle_timeout_ms = 1_000);
    stdout(&cluster.cli(&["repo", "create", "gone.git"]));
    let content = noise(5 * 1024 * 1024);
    let kind = cohort_core::state_machine::ObjectKind::Blob;
    let oid = cohort_core::state_machine::Oid::hash_object(kind, &content);
    let repo = crate::cluster::repo("gone.git");
    let client = cluster.client(77);
    let runtime = crate::cluster::runtime();
    let mut input = FailingInput { content: content.clone(), good_bytes: 3 * 1024 * 1024 };
    let failed = runtime.block_on(client.upload_object(&repo, kind, content.len() as u64, oid, vec![], &mut input));
    assert!(matches!(failed, Err(cohort_net::client::ClientError::Input(_))), "{failed:?}");

    // Its leader drops it after a second without a new piece.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(1..=3).any(|id| cluster.log(id).contains("dropped an upload idle")) {
        assert!(Instant::now() < deadline, "the abandoned upload is dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The object never appeared, and a whole upload still works.
    assert!(runtime.block_on(client.read_object_range(&repo, oid, 0, 1, false)).unwrap().is_none());
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &content).unwrap();
    runtime.block_on(client.upload_object(&repo, kind, content.len() as u64, oid, vec![], &mut file)).unwrap();
    let mut read = Vec::new();
    runtime.block_on(client.read_object_to(&repo, oid, false, &mut read)).unwrap();
    assert!(read == content);
}

#[test]
fn killing_the_leader_mid_upload_loses_nothing_and_leaves_no_upload_behind() {
    let mut cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "kill.git"]));
    let (_, _, leader) = partition_of(&cluster, "kill.git");
    assert_ne!(leader, 0, "the partition has a leader");
    let work = tempfile::tempdir().unwrap();
    let content = noise(48 * 1024 * 1024);
    let file = work.path().join("blob");
    std::fs::write(&file, &content).unwrap();
    let expected = git_hash_object(&file);

    let mut put = cluster.cli_command(&["object", "put", "kill.git", file.to_str().unwrap()]);
    let put = std::thread::spawn(move || put.output());
    // Once the leader holds part of the upload, it dies.
    wait_for("part of the upload", Duration::from_secs(60), || {
        put.is_finished() || cluster.metric(leader, "cohort_upload_bytes_held") >= 8.0 * 1024.0 * 1024.0
    });
    assert!(!put.is_finished(), "the put ended before the kill: {:?}", put.join().unwrap());
    cluster.kill9(leader);
    let output = put.join().unwrap().unwrap();
    assert_eq!(stdout(&output).trim(), expected, "the put went on with the new leader and finished");

    cluster.start_node(leader);
    cluster.wait_serving(leader);
    for id in 1..=3 {
        wait_for("every replica to hold the object", Duration::from_secs(30), || {
            let got = cluster.cli_at(&cluster.endpoint(id), &["object", "get", "--stale", "kill.git", &expected], None);
            got.status.success() && got.stdout == content
        });
        // The upload became the object: nothing of it is left to hold space.
        assert_eq!(cluster.metric(id, "cohort_uploads_in_progress"), 0.0, "node {id}");
        assert_eq!(cluster.metric(id, "cohort_upload_bytes_held"), 0.0, "node {id}");
    }
}
