//! Writing and reading through the CLI, as the README shows.

use crate::cluster::{stdout, TestCluster};
use std::process::Command;

fn git_hash_object(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = Command::new("git")
        .args(["hash-object", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap().trim().to_owned()
}

#[test]
fn cli_creates_writes_reads_and_reports_status() {
    let cluster = TestCluster::start(3);
    let endpoints = cluster.endpoints().join(",");
    stdout(&cluster.cli(&["repo", "create", "team/app.git"]));
    let content = b"hello, cohort\n";
    let oid = stdout(&cluster.cli_at(&endpoints, &["object", "put", "team/app.git"], Some(content))).trim().to_owned();
    assert_eq!(oid, git_hash_object(content), "object ids agree with git hash-object");
    let got = cluster.cli_at(&endpoints, &["object", "get", "team/app.git", &oid], None);
    assert_eq!(got.stdout, content);

    stdout(&cluster.cli(&["ref", "update", "team/app.git", "refs/heads/main", &oid, "--must-not-exist"]));
    let again = cluster.cli(&["ref", "update", "team/app.git", "refs/heads/main", &oid, "--must-not-exist"]);
    assert!(!again.status.success(), "a failed precondition exits non-zero");
    let message = String::from_utf8_lossy(&again.stderr);
    assert!(message.contains(&oid), "the message names the current value: {message}");

    stdout(&cluster.cli(&["ref", "update", "team/app.git", "refs/heads/dev", &oid]));
    let listed = stdout(&cluster.cli(&["ref", "list", "team/app.git"]));
    assert_eq!(listed, format!("{oid} refs/heads/dev\n{oid} refs/heads/main\n"), "sorted like git show-ref");

    stdout(&cluster.cli(&["repo", "create", "team/app-fork.git", "--fork-of", "team/app.git"]));
    let forked = stdout(&cluster.cli(&["ref", "list", "team/app-fork.git"]));
    assert_eq!(forked, listed, "a fork starts with its parent's references");
    let repos = stdout(&cluster.cli(&["repo", "list"]));
    assert!(repos.contains("team/app.git") && repos.contains("team/app-fork.git"), "{repos}");

    let status = cluster.status();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["up"] == true && n["id"].as_u64().is_some()));
    let partitions = status["partitions"].as_array().unwrap();
    let data = partitions.iter().find(|p| p["id"] == 1).expect("the repository's partition");
    assert!(data["leader"].as_u64().unwrap() >= 1 && data["term"].as_u64().unwrap() >= 1);
    let replicas = data["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 3, "{data}");
    assert!(replicas
        .iter()
        .all(|r| r["node"].as_u64().is_some() && r["role"].is_string() && r["applied_index"].as_u64().is_some()));

    stdout(&cluster.cli(&["repo", "delete", "team/app-fork.git"]));
    let missing = cluster.cli(&["ref", "list", "team/app-fork.git"]);
    assert!(!missing.status.success());
}

#[test]
fn a_single_node_cluster_serves_on_its_own() {
    let cluster = TestCluster::start(1);
    stdout(&cluster.cli(&["repo", "create", "solo.git"]));
    let oid = stdout(&cluster.cli_at(&cluster.endpoints().join(","), &["object", "put", "solo.git"], Some(b"x")))
        .trim()
        .to_owned();
    stdout(&cluster.cli(&["ref", "update", "solo.git", "refs/heads/main", &oid]));
    assert_eq!(stdout(&cluster.cli(&["ref", "list", "solo.git"])), format!("{oid} refs/heads/main\n"));
}
