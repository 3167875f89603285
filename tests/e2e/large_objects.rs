//! Objects larger than a message: uploaded in pieces through the CLI, read back whole from the
//! leader and from a follower, exported as a loose object Git accepts; and a request no retry
//! can fix fails at once with its cause.

use crate::cluster::{stdout, TestCluster};
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

#[test]
fn a_large_object_goes_up_in_pieces_and_comes_back_whole_from_every_replica() {
    let cluster = TestCluster::start(3);
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

    // Every replica holds it: a stale read on each node's own endpoint, once it has applied.
    for id in 1..=3 {
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
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "once.git"]));
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
