//! `cohort debug` on stopped nodes' data directories: what it shows, that it writes nothing,
//! and that `verify` finds a byte flipped anywhere in a log segment, a snapshot or the state
//! store, naming the file.

use crate::cluster::{put_all, repo, runtime, stdout, TestCluster};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn debug(args: &[&str], data_dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .arg("debug")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--json")
        .env("COHORT_LOG", "error")
        .output()
        .unwrap()
}

fn debug_json(args: &[&str], data_dir: &Path) -> serde_json::Value {
    let out = debug(args, data_dir);
    assert!(out.status.success(), "cohort debug {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Every file under `dir`, relative, with its bytes.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_owned(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn copy_tree(from: &Path, to: &Path) {
    for (relative, bytes) in files(from) {
        let path = to.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

#[test]
fn debug_shows_a_stopped_nodes_log_partitions_and_routes_and_verify_finds_every_flipped_byte() {
    // Four nodes, three replicas per partition: adding the fourth as a replica once the log is
    // compacted makes the leader save a snapshot and the new replica receive one, so snapshot
    // files are on disk too.
    let mut cluster = TestCluster::start_configured(4, |config| {
        config.replicas = Some(3);
        config.raft.log_retain_entries = 4;
    });
    let rt = runtime();
    let client = cluster.client(81);
    let r = repo("debug.git");
    rt.block_on(client.create_repository(&r, None)).unwrap();
    let mut acknowledged = BTreeMap::new();
    put_all(&rt, &client, &r, 0..40, "v", &mut acknowledged);
    let info: serde_json::Value =
        serde_json::from_str(&stdout(&cluster.cli(&["repo", "info", "debug.git", "--json"]))).unwrap();
    let partition = info["partition"].as_u64().unwrap();
    let members: Vec<u64> = info["replicas"].as_array().unwrap().iter().map(|r| r["node"].as_u64().unwrap()).collect();
    let outsider = (1..=4).find(|n| !members.contains(n)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !members.iter().all(|&m| cluster.compacted_index(m, partition) >= 20) {
        assert!(Instant::now() < deadline, "the members never compacted their logs");
        std::thread::sleep(Duration::from_millis(100));
    }
    stdout(&cluster.cli(&[
        "partition",
        "add-replica",
        &partition.to_string(),
        "--node",
        &outsider.to_string(),
        "--learner",
    ]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.metric(outsider, "cohort_snapshots_received_total") < 1.0 {
        assert!(Instant::now() < deadline, "node {outsider} never received a snapshot");
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in 1..=4 {
        assert!(cluster.terminate(id, Duration::from_secs(15)), "node {id} stops cleanly");
    }

    let dir = cluster.data_dir(outsider);
    let before = files(&dir);
    let wal = debug_json(&["wal"], &dir);
    let segments = wal["segments"].as_array().unwrap();
    assert!(!segments.is_empty() && segments.iter().all(|s| s["error"].is_null() && s["torn_tail"].is_null()), "{wal}");
    assert_eq!(wal["replay"]["partitions"], 2, "the directory and the repository's partition: {wal}");
    let routes = debug_json(&["routes"], &dir);
    let routed = &routes["partitions"][0];
    assert_eq!(routed["repositories"], serde_json::json!(["default:debug.git"]), "{routes}");
    assert_eq!(routed["learners"], serde_json::json!([outsider]), "{routes}");
    let partition = partition.to_string();
    let shown = debug_json(&["partition", &partition], &dir);
    let count = |key: &str| shown["conf_state"][key].as_array().map_or(0, Vec::len);
    assert_eq!((count("voters"), count("learners")), (3, 1), "{shown}");
    assert!(shown["hard_state"]["commit"].as_u64().unwrap() >= 40, "{shown}");
    assert_eq!(shown["store_applied"]["index"], shown["hard_state"]["commit"], "applied all it committed: {shown}");
    assert!(
        !shown["snapshot_files"].as_array().unwrap().is_empty(),
        "the new replica keeps the snapshot it installed: {shown}"
    );
    // Whatever the directory's log still holds, decoded, within the range asked for.
    let log = debug_json(&["log", "0", "--from", "1", "--to", "1000"], &dir);
    let entries = log["entries"].as_array().unwrap();
    assert!(entries.iter().all(|e| !e["content"].as_str().unwrap().contains("undecodable")), "{log}");
    assert!(entries.iter().all(|e| (1..=1000).contains(&e["index"].as_u64().unwrap())), "{log}");
    let clean = debug_json(&["verify"], &dir);
    assert_eq!(clean["ok"], true, "{clean}");
    assert_eq!(files(&dir), before, "cohort debug wrote nothing in the data directory");

    // Flip one byte at a random offset of each kind of file, in a copy of the directory each
    // time: verify fails and names the file.
    let targets: Vec<PathBuf> = before
        .keys()
        .filter(|p| {
            let name = p.to_string_lossy();
            name.starts_with("wal/") || name.ends_with("store.redb") || name.contains("/snap-")
        })
        .cloned()
        .collect();
    for kind in ["wal/", "store.redb", "/snap-"] {
        assert!(targets.iter().any(|p| p.to_string_lossy().contains(kind)), "a {kind} file to corrupt: {targets:?}");
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xdeb);
    for target in &targets {
        for _ in 0..4 {
            let copy = tempfile::tempdir().unwrap();
            copy_tree(&dir, copy.path());
            let path = copy.path().join(target);
            let mut bytes = std::fs::read(&path).unwrap();
            // In a log segment, among its records: most of the last one is the zeros the log
            // writes ahead of them (a flip there reads as a torn tail, which verify also reports).
            let zeros_from = if target.to_string_lossy().starts_with("wal/") {
                cohort_storage::log::record::decode_segment(&bytes).unwrap().zeros_from
            } else {
                None
            };
            let written = zeros_from.map_or(bytes.len(), |zeros_from| zeros_from as usize);
            let offset = rng.gen_range(0..written);
            bytes[offset] ^= 1 << rng.gen_range(0..8);
            std::fs::write(&path, &bytes).unwrap();
            let out = debug(&["verify"], copy.path());
            assert_eq!(out.status.code(), Some(1), "a flip at {offset} of {} was found", target.display());
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let named = report["problems"].as_array().unwrap().iter().any(|p| p["file"].as_str() == path.to_str());
            assert!(named, "the report names {} (flip at {offset}): {report}", path.display());
        }
    }
}

/// A running node holds its data directory: `cohort debug` refuses to read it (it would read
/// files being written), and a second node refuses to start on it (two writers would corrupt
/// the log and the store). Once the node is gone, both work.
#[test]
fn a_running_nodes_directory_is_neither_read_offline_nor_run_twice() {
    let mut cluster = TestCluster::start(3);
    let data_dir = cluster.data_dir(1);
    let out = debug(&["wal"], &data_dir);
    assert!(!out.status.success(), "read a running node's directory");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("stop the node first") && said.contains("pid "), "{said}");
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["node", "--config"])
        .arg(cluster.config_path(1))
        .env("COHORT_LOG", "error")
        .output()
        .unwrap();
    assert!(!second.status.success(), "a second node ran on the same data directory");
    assert!(String::from_utf8_lossy(&second.stderr).contains("one node per data directory"), "{second:?}");
    // Killed, the node holds nothing: the kernel released its lock.
    cluster.kill9(1);
    debug_json(&["wal"], &data_dir);
}
