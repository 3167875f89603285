//! What an operator touches: `cohort dev`, the HTTP endpoints, the client token.

use crate::cluster::{http_get, stdout, wait_for, TestCluster};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn health_metrics_and_status_page_are_served() {
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "m.git"]));
    let http = cluster.node(1).http_address.clone();
    assert!(http_get(&http, "/health").contains("200 OK"));
    // Some node leads; each node's metrics count what it saw.
    let mut proposals = 0.0;
    for id in 1..=3 {
        let metrics = http_get(&cluster.node(id).http_address, "/metrics");
        for name in [
            "cohort_partitions_leader",
            "cohort_partitions_follower",
            "cohort_leader_changes_total",
            "cohort_commit_latency_seconds_bucket",
            "cohort_fsync_latency_seconds_bucket",
            "cohort_store_fsync_latency_seconds_bucket",
            "cohort_transport_messages_sent_total",
            "cohort_transport_messages_dropped_total",
        ] {
            assert!(metrics.contains(name), "node {id} exports {name}:\n{metrics}");
        }
        proposals += metrics
            .lines()
            .find(|l| l.starts_with("cohort_proposals_total"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    assert!(proposals >= 2.0, "the directory and the new partition each took a proposal");
    // The page draws itself from /status.json (a browser test checks what it shows).
    let page = http_get(&http, "/");
    assert!(page.contains("Partitions") && page.contains("/status.json"), "{page}");
    let body = crate::observability::wait_healthy(&http);
    assert_eq!(body["node"], 1);
    assert_eq!(body["nodes"].as_array().unwrap().len(), 3);
}

#[test]
fn a_configured_token_is_required() {
    let mut cluster = TestCluster::start(1);
    cluster.configs[0].token = Some("sesame-token".into());
    std::fs::write(cluster.config_path(1), toml::to_string(&cluster.configs[0]).unwrap()).unwrap();
    assert!(cluster.terminate(1, Duration::from_secs(15)));
    cluster.start_node(1);
    cluster.wait_serving(1);
    let refused = cluster.cli(&["repo", "create", "t.git"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("token"), "{}", String::from_utf8_lossy(&refused.stderr));
    let wrong = cluster.cli(&["--token", "nope", "repo", "create", "t.git"]);
    assert!(!wrong.status.success());
    stdout(&cluster.cli(&["--token", "sesame-token", "repo", "create", "t.git"]));
}

#[test]
fn cohort_dev_starts_a_cluster_and_restarts_it_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cluster");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_cohort"))
            .args(["dev", "--nodes", "3", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let wait_endpoints = |dev: &mut std::process::Child| -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(data.join("endpoints")) {
                if !text.trim().is_empty() {
                    return text.trim().to_owned();
                }
            }
            if let Some(status) = dev.try_wait().unwrap() {
                let mut out = String::new();
                let _ = dev.stdout.take().unwrap().read_to_string(&mut out);
                let logs: String = (1..=3)
                    .map(|id| std::fs::read_to_string(data.join(format!("node-{id}/node.log"))).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n---\n");
                panic!("cohort dev exited early ({status}): {out}\nnode logs:\n{logs}");
            }
            assert!(Instant::now() < deadline, "cohort dev never wrote its endpoints");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let cli = |endpoints: &str, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cohort")).args(args).env("COHORT_ENDPOINTS", endpoints).output().unwrap()
    };
    let stop = |mut dev: std::process::Child| {
        unsafe { libc::kill(dev.id() as i32, libc::SIGTERM) };
        let status = dev.wait().unwrap();
        assert!(status.success(), "cohort dev stops cleanly: {status}");
        let mut out = String::new();
        dev.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        out
    };

    let mut dev = start();
    let endpoints = wait_endpoints(&mut dev);
    assert_eq!(endpoints.split(',').count(), 3);
    for id in 1..=3 {
        assert!(data.join(format!("node-{id}/node.toml")).exists());
    }
    stdout(&cli(&endpoints, &["repo", "create", "dev.git"]));
    let out = stop(dev);
    assert!(out.contains("export COHORT_ENDPOINTS="), "{out}");
    assert!(out.contains("node 3 stopped"), "every child is stopped: {out}");
    std::fs::remove_file(data.join("endpoints")).unwrap();

    // Same data dir: the same cluster comes back with its repositories.
    let mut dev = start();
    let again = wait_endpoints(&mut dev);
    assert_eq!(again, endpoints, "the same nodes and addresses");
    let listed = stdout(&cli(&endpoints, &["repo", "list"]));
    assert!(listed.contains("dev.git"), "{listed}");
    stop(dev);
}

#[test]
fn partition_show_reports_each_replica_and_status_watch_redraws_in_place() {
    let cluster = TestCluster::start(3);
    stdout(&cluster.cli(&["repo", "create", "show.git"]));
    // Every replica caught up: each one's lag behind the commit is 0.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown: serde_json::Value =
            serde_json::from_str(&stdout(&cluster.cli(&["partition", "show", "1", "--json"]))).unwrap();
        let replicas = shown["replicas"].as_array().unwrap();
        if replicas.len() == 3 && replicas.iter().all(|r| r["lag_entries"] == 0) {
            break shown;
        }
        assert!(Instant::now() < deadline, "never caught up: {shown}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let replicas = shown["replicas"].as_array().unwrap();
    assert_eq!(replicas.iter().filter(|r| r["leader"] == true).count(), 1, "{shown}");
    assert_eq!(shown["leader"], replicas.iter().find(|r| r["leader"] == true).unwrap()["node"]);
    assert!(
        replicas.iter().all(|r| ["awake", "quiesced", "unloaded"].contains(&r["state"].as_str().unwrap())),
        "{shown}"
    );
    assert_eq!(shown["repositories"], serde_json::json!(["default/show.git"]));
    // The leader's view of each follower: how it replicates to it, how far behind in time
    // (nothing lacked: zero), and when it last heard from it (a quiesced partition hears
    // nothing, so only that it was heard since the leader took over).
    for follower in replicas.iter().filter(|r| r["leader"] == false) {
        assert!(["replicate", "probe"].contains(&follower["progress"].as_str().unwrap_or("")), "{shown}");
        assert_eq!(follower["behind_seconds"].as_f64(), Some(0.0), "{shown}");
        assert!(follower["last_heard_seconds"].as_f64().is_some_and(|s| s >= 0.0), "{shown}");
    }
    let text = stdout(&cluster.cli(&["partition", "show", "1"]));
    assert!(text.contains("partition 1: leader node") && text.contains("behind") && text.contains("heard"), "{text}");
    // Node 3 stops: the leader sees it fall behind in time once a write lacks it, and hears
    // nothing more from it. (If node 3 led, it is the other follower that is checked.)
    let leader = shown["leader"].as_u64().unwrap();
    let mut cluster = cluster;
    let stopped = if leader == 3 { 2 } else { 3 };
    cluster.kill9(stopped);
    stdout(&cluster.cli_at(&cluster.endpoints().join(","), &["object", "put", "show.git"], Some(b"lacked")));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let shown: serde_json::Value =
            serde_json::from_str(&stdout(&cluster.cli(&["partition", "show", "1", "--json"]))).unwrap();
        let replicas = shown["replicas"].as_array().unwrap();
        let dead = replicas.iter().find(|r| r["node"] == stopped).unwrap();
        if dead["behind_seconds"].as_f64().is_some_and(|s| s >= 1.0)
            && dead["last_heard_seconds"].as_f64().is_some_and(|s| s >= 1.0)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the leader never saw node {stopped} fall behind: {shown}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = crate::cluster::http_get(&cluster.node(leader).http_address, "/metrics");
    let lag_max = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cohort_replica_lag_seconds_max ")?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(lag_max >= 1.0, "the leader's worst follower lag in time: {lag_max}");
    assert!(metrics.contains("cohort_partitions_lag_seconds{le=\"+Inf\"}"), "the histogram over partitions");
    cluster.start_node(stopped);
    cluster.wait_serving(stopped);
    assert!(!cluster.cli(&["partition", "show", "99"]).status.success(), "an unknown partition is an error");

    // `status --watch` draws, clears the screen and draws again until stopped.
    let mut watch = cluster.cli_command(&["status", "--watch"]);
    let child = watch.stdout(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "interrupting the watch is a clean exit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("\x1b[2J\x1b[H").count() >= 2, "redrawn at least twice: {text}");
    assert!(text.matches("NODES").count() >= 2 && text.contains("show.git"), "{text}");
}

#[test]
fn a_node_logs_at_the_level_its_toml_sets() {
    let cluster = TestCluster::start_configured(1, |config| config.log_level = Some("warn".into()));
    stdout(&cluster.cli(&["repo", "create", "quiet.git"]));
    let log = cluster.log(1);
    assert!(!log.contains("INFO"), "info lines are filtered out at warn: {log}");
    let cluster = TestCluster::start_configured(1, |config| config.log_level = Some("info".into()));
    // The client port answers as soon as it is bound, a moment before the line is written.
    wait_for("the node's info line", Duration::from_secs(10), || cluster.log(1).contains("node serving"));
    let log = cluster.log(1);
    assert!(!log.contains('\x1b'), "a log file holds no terminal colour codes: {log}");
}
