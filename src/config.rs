//! A node's configuration: `RawConfig` is what the TOML file says, `Config` is that checked,
//! with every default filled in and every bound enforced.

use cohort_core::ids::NodeId;
use cohort_core::partition::ReplicaOptions;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One node of the cluster, as every node's config lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub id: u64,
    pub peer_address: String,
    pub client_address: String,
    pub http_address: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRaft {
    pub tick_interval_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// A replica compacts its log through what its store has made durable; a leader holds
    /// that back (for up to four election timeouts) for a live follower at most this many
    /// entries behind, so that it catches up from the log rather than by a whole snapshot.
    #[serde(default = "default_log_retain_entries")]
    pub log_retain_entries: u64,
    /// A partition whose leader has had nothing to do for this long quiesces: its replicas
    /// stop ticking and heartbeating until a request or a message wakes them. 0: never.
    #[serde(default = "default_quiesce_after_ms")]
    pub quiesce_after_ms: u64,
    /// A follower replica quiesced this long with nothing in flight is unloaded from memory:
    /// a few hundred bytes stay until a request or a message loads it again. 0: never.
    #[serde(default = "default_unload_after_ms")]
    pub unload_after_ms: u64,
    /// Whether a new partition with one replica (`replicas = 1`) runs Raft from its start. When
    /// false it starts without Raft: its writes go to the same log and are committed once
    /// durable (`cohort partition raft on` turns Raft on later, in place). Partitions of
    /// several replicas always run Raft.
    #[serde(default = "default_raft_enabled_by_default")]
    pub enabled_by_default: bool,
}

fn default_raft_enabled_by_default() -> bool {
    true
}

fn default_log_retain_entries() -> u64 {
    10_000
}

fn default_quiesce_after_ms() -> u64 {
    2_000
}

fn default_unload_after_ms() -> u64 {
    10_000
}

impl Default for RawRaft {
    fn default() -> RawRaft {
        RawRaft {
            tick_interval_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_retain_entries: default_log_retain_entries(),
            quiesce_after_ms: default_quiesce_after_ms(),
            unload_after_ms: default_unload_after_ms(),
            enabled_by_default: default_raft_enabled_by_default(),
        }
    }
}

/// The state store (`<data_dir>/state/store.redb`): its page cache, and how often what was
/// applied is made durable (the log is compacted only through durable state, so these also
/// bound how much log a restart replays).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawStore {
    pub cache_bytes: usize,
    pub durable_interval_ms: u64,
    pub durable_bytes: u64,
}

impl Default for RawStore {
    fn default() -> RawStore {
        let applier = cohort_core::node::ApplierOptions::default();
        RawStore {
            cache_bytes: cohort_core::limits::STORE_CACHE_BYTES_DEFAULT,
            durable_interval_ms: applier.durable_interval.as_millis() as u64,
            durable_bytes: applier.durable_bytes,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub frame_size_bytes_max: usize,
    pub outbox_messages_max: usize,
    /// Largest object a client may store; larger ones are refused before any piece is sent.
    #[serde(default = "default_object_size_bytes_max")]
    pub object_size_bytes_max: u64,
    /// An upload that has not grown for this long is dropped with its pieces.
    #[serde(default = "default_upload_idle_timeout_ms")]
    pub upload_idle_timeout_ms: u64,
    /// The largest snapshot a replica accepts from a peer (a transfer the disk has no room
    /// for is refused too).
    #[serde(default = "default_snapshot_size_bytes_max")]
    pub snapshot_size_bytes_max: u64,
}

fn default_snapshot_size_bytes_max() -> u64 {
    cohort_core::limits::SNAPSHOT_SIZE_BYTES_MAX_DEFAULT
}

fn default_upload_idle_timeout_ms() -> u64 {
    10 * 60 * 1000
}

fn default_object_size_bytes_max() -> u64 {
    cohort_net::api::OBJECT_SIZE_BYTES_MAX_DEFAULT
}

impl Default for RawLimits {
    fn default() -> RawLimits {
        RawLimits {
            frame_size_bytes_max: cohort_net::limits::FRAME_SIZE_BYTES_MAX,
            outbox_messages_max: cohort_net::limits::OUTBOX_MESSAGES_MAX,
            object_size_bytes_max: default_object_size_bytes_max(),
            upload_idle_timeout_ms: default_upload_idle_timeout_ms(),
            snapshot_size_bytes_max: default_snapshot_size_bytes_max(),
        }
    }
}

/// The TOML file, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub node_id: u64,
    #[serde(default = "default_storage")]
    pub storage: String,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    /// Shared by every node; authenticates peer connections.
    pub secret: String,
    /// When set, clients must present it (`authorization: Bearer <token>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default)]
    pub raft: RawRaft,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub store: RawStore,
    /// Voters of each new partition (a replica set chosen among the nodes); default: 3, or
    /// every node of a smaller cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// Workers that drive the node's partition replicas; default: one per runtime thread
    /// (`TOKIO_WORKER_THREADS`, else one per core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// What the node logs, as a `tracing` filter (`info`, `warn,cohort_core=debug`, ...);
    /// `COHORT_LOG` overrides it. Default: `info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
    /// TLS for peer connections (mutual) and the client API; plain TCP if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    /// Every node of the cluster, this one included.
    pub nodes: Vec<RawNode>,
}

/// PEM files; a relative path is relative to the config file's directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// The cluster CA's certificate: peers' certificates must be signed by it.
    pub ca_path: PathBuf,
    /// This node's certificate (chain), naming its peer and client addresses.
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

fn default_storage() -> String {
    "default".to_owned()
}

/// This machine's cores, as Rust's standard library counts them (cgroup quotas included).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The variable tokio reads for its runtime's thread count.
pub const RUNTIME_THREADS_VAR: &str = "TOKIO_WORKER_THREADS";

/// Reads a `TOKIO_WORKER_THREADS` value as tokio does: `None` when unset. Tokio panics at
/// startup on anything but a whole number of at least one, so such a value is an error here,
/// said before it gets that far (by `main`, and before it is passed to a node process).
pub fn parse_runtime_threads(value: Option<&std::ffi::OsStr>) -> Result<Option<usize>, String> {
    let Some(value) = value else { return Ok(None) };
    match value.to_str().and_then(|v| v.parse::<usize>().ok()) {
        Some(threads) if threads >= 1 => Ok(Some(threads)),
        _ => Err(format!("{RUNTIME_THREADS_VAR} must be a whole number of at least 1, not {value:?}")),
    }
}

/// This process's `TOKIO_WORKER_THREADS`, if set (see [`parse_runtime_threads`]).
fn runtime_threads_set() -> Result<Option<usize>, String> {
    parse_runtime_threads(std::env::var_os(RUNTIME_THREADS_VAR).as_deref())
}

/// The thread count this process's runtime has (or will have): `TOKIO_WORKER_THREADS` if set,
/// else tokio's default of one per core.
pub fn runtime_threads() -> Result<usize, String> {
    Ok(runtime_threads_set()?.unwrap_or_else(cores))
}

/// How many runtime threads each of `nodes` nodes sharing this machine gets: its share of the
/// cores, at least one. With a runtime thread per core in every node, three nodes on two cores
/// spent about a tenth more server CPU per write, waking threads across cores (`cargo bench
/// --bench vs_etcd`, 3 alternating runs each at 1 and 64 clients). A node alone on its machine
/// keeps tokio's default, one per core.
fn runtime_threads_per_node(nodes: usize) -> usize {
    (cores() / nodes.max(1)).max(1)
}

/// How many runtime threads a node sharing this machine with `nodes - 1` others is to get (as
/// `TOKIO_WORKER_THREADS`, set by `cohort dev` and the test cluster): the caller's own
/// `TOKIO_WORKER_THREADS` if it set one, else the node's share of the cores. A value tokio
/// would refuse is an error.
pub fn node_runtime_threads(nodes: usize) -> Result<usize, String> {
    Ok(runtime_threads_set()?.unwrap_or_else(|| runtime_threads_per_node(nodes)))
}

/// Nodes 1..=`count` on free loopback ports (peer, client, HTTP for each), for `cohort dev` and
/// tests. Every port is held until all are chosen, so none is handed out twice.
pub fn loopback_nodes(count: u64) -> std::io::Result<Vec<RawNode>> {
    let listeners =
        (0..3 * count).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<Vec<_>, _>>()?;
    let ports = listeners.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<Vec<_>, _>>()?;
    Ok((1..=count)
        .map(|id| {
            let base = 3 * (id - 1) as usize;
            RawNode {
                id,
                peer_address: format!("127.0.0.1:{}", ports[base]),
                client_address: format!("127.0.0.1:{}", ports[base + 1]),
                http_address: format!("127.0.0.1:{}", ports[base + 2]),
            }
        })
        .collect())
}

/// A checked node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddresses {
    pub id: NodeId,
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub http: SocketAddr,
    /// Whether the cluster serves clients over TLS.
    pub client_tls: bool,
}

impl NodeAddresses {
    pub fn client_url(&self) -> String {
        let scheme = if self.client_tls { "https" } else { "http" };
        format!("{scheme}://{}", self.client)
    }
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub node: NodeId,
    pub storage: String,
    pub data_dir: PathBuf,
    pub cluster_id: String,
    pub secret: Vec<u8>,
    pub token: Option<String>,
    pub replica: ReplicaOptions,
    pub store: cohort_core::store::StoreOptions,
    pub applier: cohort_core::node::ApplierOptions,
    pub frame_size_bytes_max: usize,
    pub outbox_messages_max: usize,
    pub object_size_bytes_max: u64,
    pub upload_idle_timeout: Duration,
    pub replicas: usize,
    pub workers: usize,
    pub tls: Option<cohort_net::tls::TlsFiles>,
    pub nodes: BTreeMap<NodeId, NodeAddresses>,
}

/// Most partition workers a node runs.
pub const WORKERS_MAX: usize = 1024;

/// Largest static cluster.
pub const CLUSTER_NODES_MAX: usize = 7;

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut raw: RawConfig =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        if let (Some(tls), Some(dir)) = (&mut raw.tls, path.parent()) {
            for file in [&mut tls.ca_path, &mut tls.cert_path, &mut tls.key_path] {
                *file = dir.join(&*file);
            }
        }
        Config::check(raw).map_err(|message| ConfigError::Invalid { path: path.to_owned(), message })
    }

    pub fn check(raw: RawConfig) -> Result<Config, String> {
        if raw.node_id == 0 {
            return Err("node_id must not be 0".into());
        }
        cohort_core::state_machine::validate_storage_name(&raw.storage).map_err(|e| format!("storage: {e}"))?;
        if raw.cluster_id.is_empty() {
            return Err("cluster_id must not be empty".into());
        }
        if raw.secret.len() < 8 {
            return Err("secret must be at least 8 characters".into());
        }
        let r = &raw.raft;
        if !(1..=60_000).contains(&r.tick_interval_ms) {
            return Err("raft.tick_interval_ms must be in 1..=60000".into());
        }
        if r.heartbeat_ticks == 0 || r.election_ticks <= r.heartbeat_ticks {
            return Err("raft.election_ticks must exceed raft.heartbeat_ticks, which must be at least 1".into());
        }
        if !(cohort_net::limits::FRAME_SIZE_BYTES_MIN..=cohort_net::limits::FRAME_SIZE_BYTES_MAX)
            .contains(&raw.limits.frame_size_bytes_max)
        {
            return Err(format!(
                "limits.frame_size_bytes_max must be in {}..={}",
                cohort_net::limits::FRAME_SIZE_BYTES_MIN,
                cohort_net::limits::FRAME_SIZE_BYTES_MAX
            ));
        }
        if r.log_retain_entries == 0 {
            return Err("raft.log_retain_entries must be at least 1".into());
        }
        let st = &raw.store;
        if st.cache_bytes < 1024 * 1024 {
            return Err("store.cache_bytes must be at least 1048576 (1 MiB)".into());
        }
        if !(1..=600_000).contains(&st.durable_interval_ms) {
            return Err("store.durable_interval_ms must be in 1..=600000".into());
        }
        if st.durable_bytes < 1024 {
            return Err("store.durable_bytes must be at least 1024".into());
        }
        if !(1..=cohort_core::state_machine::UPLOAD_SIZE_BYTES_MAX).contains(&raw.limits.object_size_bytes_max) {
            return Err(format!(
                "limits.object_size_bytes_max must be in 1..={}",
                cohort_core::state_machine::UPLOAD_SIZE_BYTES_MAX
            ));
        }
        if !(100..=7 * 24 * 3600 * 1000).contains(&raw.limits.upload_idle_timeout_ms) {
            return Err("limits.upload_idle_timeout_ms must be between 100 ms and a week".into());
        }
        if !(16..=1_000_000).contains(&raw.limits.outbox_messages_max) {
            return Err("limits.outbox_messages_max must be in 16..=1000000".into());
        }
        if raw.nodes.is_empty() || raw.nodes.len() > CLUSTER_NODES_MAX {
            return Err(format!("nodes must list 1 to {CLUSTER_NODES_MAX} nodes"));
        }
        let mut nodes = BTreeMap::new();
        for node in &raw.nodes {
            let parse = |what: &str, text: &str| -> Result<SocketAddr, String> {
                text.parse().map_err(|e| format!("node {}: {what} {text:?}: {e}", node.id))
            };
            let addresses = NodeAddresses {
                id: NodeId(node.id),
                peer: parse("peer_address", &node.peer_address)?,
                client: parse("client_address", &node.client_address)?,
                http: parse("http_address", &node.http_address)?,
                client_tls: raw.tls.is_some(),
            };
            if node.id == 0 || node.id > cohort_core::ids::PeerId::NODE_ID_MAX {
                return Err(format!("node ids must be in 1..={}", cohort_core::ids::PeerId::NODE_ID_MAX));
            }
            if nodes.insert(NodeId(node.id), addresses).is_some() {
                return Err(format!("node {} is listed twice", node.id));
            }
        }
        if !nodes.contains_key(&NodeId(raw.node_id)) {
            return Err(format!("node_id {} is not among nodes", raw.node_id));
        }
        let replicas = raw.replicas.unwrap_or(nodes.len().min(3));
        if !(1..=nodes.len()).contains(&replicas) {
            return Err(format!("replicas must be between 1 and the {} nodes", nodes.len()));
        }
        // One worker per runtime thread: more would only take turns on the same threads.
        let workers = match raw.workers {
            Some(workers) => workers,
            None => runtime_threads()?.min(WORKERS_MAX),
        };
        if !(1..=WORKERS_MAX).contains(&workers) {
            return Err(format!("workers must be in 1..={WORKERS_MAX}"));
        }
        Ok(Config {
            node: NodeId(raw.node_id),
            storage: raw.storage,
            data_dir: raw.data_dir,
            cluster_id: raw.cluster_id,
            secret: raw.secret.into_bytes(),
            token: raw.token,
            replica: ReplicaOptions {
                tick_interval: Duration::from_millis(raw.raft.tick_interval_ms),
                election_ticks: raw.raft.election_ticks,
                heartbeat_ticks: raw.raft.heartbeat_ticks,
                log_retain_entries: raw.raft.log_retain_entries,
                quiesce_after_ticks: raw.raft.quiesce_after_ms.div_ceil(raw.raft.tick_interval_ms),
                unload_after_ticks: raw.raft.unload_after_ms.div_ceil(raw.raft.tick_interval_ms),
                snapshot_size_bytes_max: raw.limits.snapshot_size_bytes_max,
                raft_enabled_by_default: raw.raft.enabled_by_default,
                bootstrap_format: cohort_core::store::Format::LATEST,
            },
            store: cohort_core::store::StoreOptions { cache_size_bytes: raw.store.cache_bytes },
            applier: cohort_core::node::ApplierOptions {
                durable_bytes: raw.store.durable_bytes,
                durable_interval: Duration::from_millis(raw.store.durable_interval_ms),
                ..cohort_core::node::ApplierOptions::default()
            },
            frame_size_bytes_max: raw.limits.frame_size_bytes_max,
            outbox_messages_max: raw.limits.outbox_messages_max,
            object_size_bytes_max: raw.limits.object_size_bytes_max,
            upload_idle_timeout: Duration::from_millis(raw.limits.upload_idle_timeout_ms),
            replicas,
            workers,
            tls: raw.tls.map(|t| cohort_net::tls::TlsFiles {
                ca_path: t.ca_path,
                cert_path: t.cert_path,
                key_path: t.key_path,
            }),
            nodes,
        })
    }

    pub fn me(&self) -> &NodeAddresses {
        &self.nodes[&self.node]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_sharing_a_machine_split_its_cores_and_each_keeps_one() {
        let cores = cores();
        assert_eq!(runtime_threads_per_node(1), cores);
        assert_eq!(runtime_threads_per_node(2), (cores / 2).max(1));
        assert_eq!(runtime_threads_per_node(cores + 1), 1);
        assert_eq!(runtime_threads_per_node(0), cores, "no nodes is read as one");
    }

    #[test]
    fn runtime_threads_are_a_whole_number_of_at_least_one() {
        use std::ffi::OsStr;
        assert_eq!(parse_runtime_threads(None), Ok(None));
        assert_eq!(parse_runtime_threads(Some(OsStr::new("3"))), Ok(Some(3)));
        // As tokio reads it: no spaces around the number.
        for bad in ["", "0", "-1", "two", "1.5", " 1"] {
            let error = parse_runtime_threads(Some(OsStr::new(bad))).unwrap_err();
            assert!(error.contains("TOKIO_WORKER_THREADS must be a whole number"), "{bad:?}: {error}");
        }
    }

    fn raw() -> RawConfig {
        RawConfig {
            node_id: 1,
            storage: "default".into(),
            data_dir: "/tmp/x".into(),
            cluster_id: "c".into(),
            secret: "0123456789".into(),
            token: None,
            raft: RawRaft::default(),
            limits: RawLimits::default(),
            store: RawStore::default(),
            replicas: None,
            workers: None,
            log_level: None,
            tls: None,
            nodes: vec![RawNode {
                id: 1,
                peer_address: "127.0.0.1:1".into(),
                client_address: "127.0.0.1:2".into(),
                http_address: "127.0.0.1:3".into(),
            }],
        }
    }

    #[test]
    fn a_good_config_checks_and_round_trips_through_toml() {
        let text = toml::to_string(&raw()).unwrap();
        let parsed: RawConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, raw());
        let config = Config::check(parsed).unwrap();
        assert_eq!(config.me().client_url(), "http://127.0.0.1:2");
    }

    #[test]
    fn tls_paths_are_relative_to_the_config_file_and_clients_are_served_over_https() {
        let dir = tempfile::tempdir().unwrap();
        let mut raw = raw();
        raw.tls = Some(RawTls {
            ca_path: "tls/ca.pem".into(),
            cert_path: "/etc/cohort/node.pem".into(),
            key_path: "node.key".into(),
        });
        let path = dir.path().join("node.toml");
        std::fs::write(&path, toml::to_string(&raw).unwrap()).unwrap();
        let config = Config::load(&path).unwrap();
        let tls = config.tls.as_ref().unwrap();
        assert_eq!(tls.ca_path, dir.path().join("tls/ca.pem"));
        assert_eq!(tls.cert_path, PathBuf::from("/etc/cohort/node.pem"));
        assert_eq!(tls.key_path, dir.path().join("node.key"));
        assert_eq!(config.me().client_url(), "https://127.0.0.1:2");
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        type Case = (fn(&mut RawConfig), &'static str);
        let cases: Vec<Case> = vec![
            (|c| c.node_id = 2, "node_id 2 is not among nodes"),
            (|c| c.secret = "short".into(), "secret"),
            (|c| c.raft.election_ticks = 1, "election_ticks"),
            (|c| c.nodes[0].peer_address = "nowhere".into(), "peer_address"),
            (|c| c.nodes.push(c.nodes[0].clone()), "listed twice"),
            (|c| c.storage = "../x".into(), "storage"),
            (|c| c.replicas = Some(2), "replicas"),
            (|c| c.store.durable_interval_ms = 0, "durable_interval_ms"),
            (|c| c.store.cache_bytes = 10, "cache_bytes"),
        ];
        for (break_it, expected) in cases {
            let mut c = raw();
            break_it(&mut c);
            let error = Config::check(c).unwrap_err();
            assert!(error.contains(expected), "{error:?} should mention {expected:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let mut text = toml::to_string(&raw()).unwrap();
        text.insert_str(0, "colour = \"blue\"\n");
        assert!(toml::from_str::<RawConfig>(&text).is_err());
    }
}
