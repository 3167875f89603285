//! Writing and reading through the CLI, as the README shows.

use crate::cluster::{stdout, wait_for, TestCluster};
use std::process::Command;
use std::time::Duration;

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

    // Every node looks the fork up, and keeps its route. Deleted, then created again as a
    // repository of its own, it lives in a new partition, and every node routes it there.
    for endpoint in cluster.endpoints() {
        assert_eq!(stdout(&cluster.cli_at(&endpoint, &["ref", "list", "team/app-fork.git"], None)), listed);
    }
    stdout(&cluster.cli(&["repo", "delete", "team/app-fork.git"]));
    let missing = cluster.cli(&["ref", "list", "team/app-fork.git"]);
    assert!(!missing.status.success());
    let created = stdout(&cluster.cli(&["repo", "create", "team/app-fork.git"]));
    let partition: u64 = created.trim().rsplit(' ').next().unwrap().parse().expect("created ... in partition N");
    assert_ne!(partition, 1, "a repository of its own gets a new partition");
    for endpoint in cluster.endpoints() {
        // A node's directory replica may apply the change a moment after the leader's.
        wait_for("every node to route the repository to its new partition", Duration::from_secs(10), || {
            let info = cluster.cli_at(&endpoint, &["repo", "info", "team/app-fork.git", "--json"], None);
            let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap_or_default();
            info["partition"] == partition
        });
        assert_eq!(stdout(&cluster.cli_at(&endpoint, &["ref", "list", "team/app-fork.git"], None)), "");
    }
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

#[test]
fn listings_are_read_a_page_at_a_time() {
    let cluster = TestCluster::start(3);
    let names: Vec<String> = (0..5).map(|i| format!("paged/{i}.git")).collect();
    for name in &names {
        stdout(&cluster.cli(&["repo", "create", name]));
    }
    let rt = crate::cluster::runtime();
    let client = cluster.client(41);
    rt.block_on(async {
        // Repositories, two to a page, in order; an empty page is the last.
        let first = client.list_repositories_page(None, 2).await.unwrap();
        let listed: Vec<String> = first.iter().map(|(r, _)| r.relative_path.as_str().to_owned()).collect();
        assert_eq!(listed, names[..2]);
        let rest = client.list_repositories_page(Some(&first[1].0), 10).await.unwrap();
        assert_eq!(rest.len(), 3);
        assert!(client.list_repositories_page(Some(&rest[2].0), 10).await.unwrap().is_empty());
        assert_eq!(client.list_repositories().await.unwrap().len(), 5);
        assert_eq!(client.list_partitions().await.unwrap().len(), 5);

        // One node's replicas, two to a page from a start, and counted in the summary.
        let endpoint = &cluster.endpoint(1);
        let page = client.status_page(endpoint, 0, 2).await.unwrap();
        assert_eq!(page.partitions.iter().map(|p| p.id).collect::<Vec<_>>(), vec![0, 1]);
        let page = client.status_page(endpoint, 4, 2).await.unwrap();
        assert_eq!(page.partitions.iter().map(|p| p.id).collect::<Vec<_>>(), vec![4, 5]);
        assert!(client.status_page(endpoint, 6, 2).await.unwrap().partitions.is_empty());
        let summary = client.status_summary_of(endpoint).await.unwrap();
        assert!(summary.partitions.is_empty(), "a summary lists no replica");
        let counts = summary.summary.expect("a summary");
        assert_eq!(counts.hosted, 6, "five partitions and the directory: {counts:?}");
        assert_eq!(counts.leaders + counts.followers + counts.candidates + counts.learners + counts.unloaded, 6);
        assert_eq!(client.status_of(endpoint).await.unwrap().partitions.len(), 6);
    });
    let text = stdout(&cluster.cli(&["status"]));
    assert!(text.contains("REPLICAS BY NODE") && text.contains("6 hosted"), "{text}");
    assert!(text.contains("paged/4.git"), "few replicas are listed: {text}");
    let info = stdout(&cluster.cli(&["repo", "info", "paged/3.git"]));
    assert!(info.contains("paged/3.git"), "{info}");
}
