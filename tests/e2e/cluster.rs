//! A cluster of real `cohort node` processes for tests, each with its own config and data
//! directory under one temporary directory.

use cohort::config::{RawConfig, RawLimits, RawNode, RawRaft, RawStore, RawTls};
use cohort_core::state_machine::{Expected, NewObject, ObjectKind, Oid, RefName, RefValue, RelativePath, RepoId};
use cohort_net::client::{Client, ClientConfig, RefChange};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const TICK_MS: u64 = 50;
pub const ELECTION_TICKS: usize = 10;
/// The longest randomized election timeout.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(TICK_MS * 2 * ELECTION_TICKS as u64);

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub configs: Vec<RawConfig>,
    pub children: BTreeMap<u64, Child>,
}

pub fn repo(path: &str) -> RepoId {
    RepoId { storage: "default".into(), relative_path: RelativePath::new(path).unwrap() }
}

/// Raft timing for tests: fast elections.
pub fn test_raft() -> RawRaft {
    RawRaft { tick_interval_ms: TICK_MS, election_ticks: ELECTION_TICKS, heartbeat_ticks: 2, ..RawRaft::default() }
}

impl TestCluster {
    pub fn start(count: u64) -> TestCluster {
        TestCluster::start_with_replicas(count, None)
    }

    pub fn start_with_replicas(count: u64, replicas: Option<usize>) -> TestCluster {
        TestCluster::start_with(count, replicas, test_raft())
    }

    pub fn start_with(count: u64, replicas: Option<usize>, raft: RawRaft) -> TestCluster {
        TestCluster::start_configured(count, |config| {
            config.replicas = replicas;
            config.raft = raft.clone();
        })
    }

    /// A cluster of `count` nodes, each node's configuration changed by `configure` first.
    pub fn start_configured(count: u64, configure: impl Fn(&mut RawConfig)) -> TestCluster {
        TestCluster::start_in(tempfile::tempdir().unwrap(), count, configure)
    }

    /// A cluster whose peers and clients talk TLS, with a throwaway CA and node certificates
    /// (in `tls/` of its directory).
    pub fn start_tls(count: u64) -> TestCluster {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["127.0.0.1".to_owned()];
        let certificates = cohort_net::tls::throwaway_certificates(&hosts, count as usize).unwrap();
        let files = certificates.write(&dir.path().join("tls")).unwrap();
        TestCluster::start_in(dir, count, |config| {
            let mine = &files[config.node_id as usize - 1];
            config.tls = Some(RawTls {
                ca_path: mine.ca_path.clone(),
                cert_path: mine.cert_path.clone(),
                key_path: mine.key_path.clone(),
            });
        })
    }

    fn start_in(dir: tempfile::TempDir, count: u64, configure: impl Fn(&mut RawConfig)) -> TestCluster {
        let nodes = cohort::config::loopback_nodes(count).unwrap();
        let configs: Vec<RawConfig> = (1..=count)
            .map(|id| RawConfig {
                node_id: id,
                storage: "default".into(),
                data_dir: dir.path().join(format!("node-{id}")),
                cluster_id: "e2e".into(),
                secret: "e2e-secret-0123".into(),
                token: None,
                raft: test_raft(),
                limits: RawLimits::default(),
                store: RawStore::default(),
                replicas: None,
                workers: None,
                log_level: None,
                tls: None,
                nodes: nodes.clone(),
            })
            .map(|mut config| {
                configure(&mut config);
                config
            })
            .collect();
        for config in &configs {
            std::fs::write(dir.path().join(format!("node-{}.toml", config.node_id)), toml::to_string(config).unwrap())
                .unwrap();
        }
        let mut cluster = TestCluster { dir, configs, children: BTreeMap::new() };
        for id in 1..=count {
            cluster.start_node(id);
        }
        for id in 1..=count {
            cluster.wait_serving(id);
        }
        cluster
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.configs[id as usize - 1].data_dir.clone()
    }

    /// The sum of a metric's samples on node `id` (0 if it is not exported).
    pub fn metric(&self, id: u64, name: &str) -> f64 {
        let metrics = http_get(&self.node(id).http_address, "/metrics");
        metrics
            .lines()
            .filter(|line| line.split([' ', '{']).next() == Some(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.toml"))
    }

    pub fn start_node(&mut self, id: u64) {
        self.start_node_with(id, &[]);
    }

    /// Starts node `id` with `extra` arguments after `cohort node --config FILE`.
    pub fn start_node_with(&mut self, id: u64, extra: &[&str]) {
        assert!(!self.children.contains_key(&id), "node {id} is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{id}.log")))
            .unwrap();
        let threads = cohort::config::node_runtime_threads(self.configs.len()).unwrap();
        let child = Command::new(node_binary())
            .env(cohort::config::RUNTIME_THREADS_VAR, threads.to_string())
            .args(["node", "--config"])
            .arg(self.config_path(id))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.insert(id, child);
    }

    pub fn wait_serving(&self, id: u64) {
        self.wait_serving_within(id, Duration::from_secs(20));
    }

    /// Like `wait_serving`, for a node that may take `limit` to start (many partitions).
    pub fn wait_serving_within(&self, id: u64, limit: Duration) {
        let address = self.node(id).client_address.clone();
        let deadline = Instant::now() + limit;
        while std::net::TcpStream::connect(&address).is_err() {
            // The log's tail only: a large node's whole log is too long to read.
            assert!(Instant::now() < deadline, "node {id} never served; log's end:\n{}", tail(&self.log(id), 50));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn node(&self, id: u64) -> &RawNode {
        &self.configs[0].nodes[(id - 1) as usize]
    }

    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    pub fn kill9(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node is running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends SIGTERM and waits; returns whether it exited cleanly within `limit`.
    pub fn terminate(&mut self, id: u64, limit: Duration) -> bool {
        let mut child = self.children.remove(&id).expect("node is running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        (1..=self.configs.len() as u64).map(|id| self.endpoint(id)).collect()
    }

    pub fn endpoint(&self, id: u64) -> String {
        let scheme = if self.configs[0].tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.node(id).client_address)
    }

    /// The CA clients must trust, if the cluster talks TLS.
    pub fn ca_path(&self) -> Option<PathBuf> {
        self.configs[0].tls.as_ref().map(|tls| tls.ca_path.clone())
    }

    pub fn client(&self, client_id: u64) -> Client {
        let mut config = ClientConfig::new(self.endpoints(), client_id);
        config.deadline = Duration::from_secs(20);
        config.attempt_timeout = Duration::from_secs(2);
        config.ca_pem = self.ca_path().map(|path| std::fs::read(path).unwrap());
        Client::new(config).unwrap()
    }

    /// Waits (up to `within`) until node `id` alone, read stale, holds `count` references of
    /// `repo`: its replica caught up.
    pub fn wait_caught_up(&self, rt: &tokio::runtime::Runtime, id: u64, repo: &RepoId, count: usize, within: Duration) {
        let mut config = ClientConfig::new(vec![self.endpoint(id)], 0xca7c);
        config.deadline = Duration::from_secs(10);
        config.ca_pem = self.ca_path().map(|path| std::fs::read(path).unwrap());
        let local = Client::new(config).unwrap();
        let deadline = Instant::now() + within;
        loop {
            let (refs, _) = rt.block_on(local.read_refs(repo, true)).unwrap_or_default();
            if refs.len() == count {
                return;
            }
            assert!(Instant::now() < deadline, "node {id} caught up to {} of {count} refs", refs.len());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The entry node `id`'s replica of `partition` has compacted its log through (0: none,
    /// or no such replica), as `cohort status` reports it.
    pub fn compacted_index(&self, id: u64, partition: u64) -> u64 {
        let json: serde_json::Value = serde_json::from_str(&stdout(&self.cli(&["status", "--json"]))).unwrap();
        let partitions = json["partitions"].as_array().cloned().unwrap_or_default();
        let replicas = partitions.iter().find(|p| p["id"] == partition).and_then(|p| p["replicas"].as_array().cloned());
        let replica = replicas.unwrap_or_default().into_iter().find(|r| r["node"] == id);
        replica.and_then(|r| r["compacted_index"].as_u64()).unwrap_or(0)
    }

    /// Runs the CLI against the whole cluster.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_at(&self.endpoints().join(","), args, None)
    }

    /// The CLI with `args` against every node, to run on another thread.
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cohort"));
        command
            .args(args)
            .env("COHORT_ENDPOINTS", self.endpoints().join(","))
            .env("COHORT_LOG", "error")
            .stdin(Stdio::null());
        if let Some(ca) = self.ca_path() {
            command.env("COHORT_CA", ca);
        }
        command
    }

    pub fn cli_at(&self, endpoints: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        use std::io::Write;
        let mut command = Command::new(env!("CARGO_BIN_EXE_cohort"));
        command
            .args(args)
            .env("COHORT_ENDPOINTS", endpoints)
            .env("COHORT_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ca) = self.ca_path() {
            command.env("COHORT_CA", ca);
        }
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(bytes) = stdin {
            input.write_all(bytes).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// `cohort status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The leader of `partition` as the status reports it, once one is known.
    pub fn leader_of(&self, partition: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status();
            let leader = status["partitions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == partition)
                .map(|p| p["leader"].as_u64().unwrap())
                .unwrap_or(0);
            if leader != 0 && self.children.contains_key(&leader) {
                return leader;
            }
            assert!(Instant::now() < deadline, "partition {partition} has no leader: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the nodes' logs of a failed test where a person can read them.
            let keep = std::env::temp_dir().join(format!("cohort-e2e-failed-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for config in &self.configs {
                let name = format!("node-{}.log", config.node_id);
                let _ = std::fs::copy(self.dir.path().join(&name), keep.join(&name));
            }
            eprintln!("node logs kept in {}", keep.display());
        }
        for (_, child) in self.children.iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `refs/heads/k<key>` of `repo` = a blob of `value`; returns its id.
pub async fn put(client: &Client, repo: &RepoId, key: u32, value: &str) -> Result<Oid, String> {
    let object = NewObject::new(ObjectKind::Blob, value.as_bytes().to_vec());
    let oid = object.oid;
    let change = RefChange {
        name: RefName::new(format!("refs/heads/k{key}")).unwrap(),
        expected: Expected::Any,
        new: Some(RefValue::Direct(oid)),
    };
    client.write(repo, vec![object], vec![change]).await.map(|_| oid).map_err(|e| e.to_string())
}

/// Writes each key of `keys` (value `<prefix><key>`), which must be acknowledged, and records
/// it in `acknowledged`.
pub fn put_all(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    repo: &RepoId,
    keys: std::ops::Range<u32>,
    prefix: &str,
    acknowledged: &mut BTreeMap<u32, Oid>,
) {
    for key in keys {
        let oid = rt.block_on(put(client, repo, key, &format!("{prefix}{key}"))).expect("an acknowledged write");
        acknowledged.insert(key, oid);
    }
}

/// Every write in `acknowledged` (by `put`) is in `repo`, read linearizably.
pub async fn check_all(client: &Client, repo: &RepoId, acknowledged: &BTreeMap<u32, Oid>) {
    let (refs, _) = client.read_refs(repo, false).await.expect("read refs");
    let refs: BTreeMap<String, RefValue> = refs.into_iter().map(|(n, v)| (n.as_str().to_owned(), v)).collect();
    for (key, oid) in acknowledged {
        assert_eq!(
            refs.get(&format!("refs/heads/k{key}")),
            Some(&RefValue::Direct(*oid)),
            "acknowledged write k{key} survives"
        );
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

pub fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "command failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// One plain HTTP GET; returns the whole response.
pub fn http_get(address: &str, path: &str) -> String {
    // The HTTP server starts just after the client API: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(address) {
            Ok(stream) => break stream,
            Err(error) => {
                assert!(Instant::now() < deadline, "HTTP at {address}: {error}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Polls `done` every 100 ms until it holds; fails the test after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the blob `value <key>` to `repo` and points `refs/heads/k<key>` at it.
pub fn write_key(rt: &tokio::runtime::Runtime, client: &Client, repo: &RepoId, key: u32) {
    let object = NewObject::new(ObjectKind::Blob, format!("value {key}").into_bytes());
    let change = RefChange {
        name: RefName::new(format!("refs/heads/k{key}")).unwrap(),
        expected: Expected::Any,
        new: Some(RefValue::Direct(object.oid)),
    };
    rt.block_on(client.write(repo, vec![object], vec![change])).unwrap();
}

/// The binary the nodes run: this build's, or the one `COHORT_NODE_BINARY` names, so that a
/// benchmark can compare two builds' nodes under the same load generator (cargo rebuilds
/// `target/release/cohort` over a copy put there).
fn node_binary() -> std::path::PathBuf {
    std::env::var_os("COHORT_NODE_BINARY").map_or_else(|| env!("CARGO_BIN_EXE_cohort").into(), Into::into)
}
