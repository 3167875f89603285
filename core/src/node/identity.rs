//! Node identity: which data directory a node id runs on.
//!
//! A node id names a place in the cluster's configuration; the Raft state that node promised
//! (votes, acknowledged entries) lives in its data directory. A node whose directory was wiped
//! or swapped and that came back under its old id would vote and acknowledge as replicas that
//! forgot what they promised, which breaks Raft's safety. So each data directory gets a random
//! *instance* id at its first start (`identity`, beside the log), every peer connection
//! presents it (covered by the handshake's proof), and each node remembers durably the instance
//! it first saw for every peer (`peers`). A peer presenting another instance is refused until
//! an operator replaces it.
//!
//! Replacing node N (`cohort node replace N`) *retires* the instance each other node remembers
//! for N: a retired instance is refused for good, and the next instance N presents is admitted
//! as the first was. The replacement's directory says it was made to join (`origin = join`):
//! it does not bootstrap the directory as the cluster's first nodes did, but waits until the
//! cluster adds it as a new member (see `Router::join_directory`), as the directory peer the
//! operator names for it (`directory-peer`).
//!
//! The files are small text files an operator can read, each replaced atomically.

use crate::env::{write_file_atomic, Disk, DiskError};
use crate::ids::{NodeId, PeerId};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

const IDENTITY_FILE: &str = "identity";
const PEERS_FILE: &str = "peers";
const DIRECTORY_PEER_FILE: &str = "directory-peer";

/// A data directory's random id, chosen at its first start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(pub u128);

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<InstanceId, Self::Err> {
        u128::from_str_radix(s, 16).map(InstanceId)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("node identity files: {0}")]
    Disk(#[from] DiskError),
    #[error("{file} is damaged: {reason}")]
    Corrupt { file: &'static str, reason: String },
    #[error(
        "this data directory belongs to node {node} of cluster {cluster_id:?}, not to node {expected_node} of cluster {expected_cluster:?}"
    )]
    WrongDirectory { node: NodeId, cluster_id: String, expected_node: NodeId, expected_cluster: String },
    #[error(
        "node {node} came back with another data directory (instance {presented}; this node knew {remembered}): \
         it lost what it promised as a Raft member and is refused until an operator replaces it"
    )]
    Replaced { node: NodeId, remembered: InstanceId, presented: InstanceId },
    #[error("node {node} presented instance {instance}, which an operator retired when replacing that node")]
    Retired { node: NodeId, instance: InstanceId },
}

/// How a data directory came to be: with the cluster's first nodes, which bootstrap the
/// directory together, or made to join an existing cluster as a replacement node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Bootstrap,
    Join,
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Bootstrap => "bootstrap",
            Origin::Join => "join",
        }
    }
}

/// Who this data directory is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub cluster_id: String,
    pub node: NodeId,
    pub instance: InstanceId,
    pub origin: Origin,
}

impl Identity {
    /// Reads the data directory's identity, or gives a new directory one (drawn from `seed`,
    /// made as `origin` says) and writes it durably before anything else is. A directory of
    /// another node or cluster is an error: starting on it would make this node someone else.
    /// An existing directory keeps the origin it was made with.
    pub fn open_or_create(
        disk: &dyn Disk,
        cluster_id: &str,
        node: NodeId,
        seed: u128,
        origin: Origin,
    ) -> Result<Identity, IdentityError> {
        let path = Path::new(IDENTITY_FILE);
        if !disk.exists(path)? {
            let identity = Identity { cluster_id: cluster_id.to_owned(), node, instance: InstanceId(seed), origin };
            write_file_atomic(disk, path, identity.encode().as_bytes())?;
            return Ok(identity);
        }
        let identity = Identity::decode(&disk.read(path)?)?;
        if identity.node != node || identity.cluster_id != cluster_id {
            return Err(IdentityError::WrongDirectory {
                node: identity.node,
                cluster_id: identity.cluster_id,
                expected_node: node,
                expected_cluster: cluster_id.to_owned(),
            });
        }
        Ok(identity)
    }

    fn encode(&self) -> String {
        format!(
            "# cohort data directory: written at its first start, never changed\ncluster = {}\nnode = {}\ninstance = {}\norigin = {}\n",
            self.cluster_id,
            self.node.0,
            self.instance,
            self.origin.name()
        )
    }

    fn decode(bytes: &[u8]) -> Result<Identity, IdentityError> {
        let corrupt = |reason: &str| IdentityError::Corrupt { file: IDENTITY_FILE, reason: reason.to_owned() };
        let fields = key_values(bytes).map_err(|reason| corrupt(&reason))?;
        let field = |key: &str| fields.get(key).ok_or_else(|| corrupt(&format!("no {key}")));
        Ok(Identity {
            cluster_id: field("cluster")?.clone(),
            node: NodeId(field("node")?.parse().map_err(|_| corrupt("node is not a number"))?),
            instance: field("instance")?.parse().map_err(|_| corrupt("instance is not a hex id"))?,
            // Directories made before replacements existed were all their cluster's first.
            origin: match fields.get("origin").map(String::as_str) {
                None | Some("bootstrap") => Origin::Bootstrap,
                Some("join") => Origin::Join,
                Some(_) => return Err(corrupt("origin is neither bootstrap nor join")),
            },
        })
    }
}

/// The directory peer an operator named for this node, made to join (`cohort node replace`,
/// step 3; `Router::join_directory_as`), remembered durably: a restart before the directory's
/// leader reached that peer would otherwise forget it, and the node would never join.
pub fn save_directory_peer(disk: &dyn Disk, peer: PeerId) -> Result<(), IdentityError> {
    let text = format!(
        "# the directory peer an operator named for this node, made to join (cohort node replace)\npeer = {}\n",
        peer.0
    );
    Ok(write_file_atomic(disk, Path::new(DIRECTORY_PEER_FILE), text.as_bytes())?)
}

/// What `save_directory_peer` saved, if anything.
pub fn load_directory_peer(disk: &dyn Disk) -> Result<Option<PeerId>, IdentityError> {
    let path = Path::new(DIRECTORY_PEER_FILE);
    if !disk.exists(path)? {
        return Ok(None);
    }
    let corrupt = |reason: String| IdentityError::Corrupt { file: DIRECTORY_PEER_FILE, reason };
    let fields = key_values(&disk.read(path)?).map_err(corrupt)?;
    let peer = fields.get("peer").ok_or_else(|| corrupt("no peer".into()))?;
    let peer = PeerId(peer.parse().map_err(|_| corrupt(format!("{peer:?} is not a peer id")))?);
    Ok(Some(peer))
}

/// `key = value` lines (`#` comments), each key once.
fn key_values(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut fields = BTreeMap::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (key, value) = line.split_once('=').ok_or_else(|| format!("not a `key = value` line: {line:?}"))?;
        if fields.insert(key.trim().to_owned(), value.trim().to_owned()).is_some() {
            return Err(format!("{} given twice", key.trim()));
        }
    }
    Ok(fields)
}

/// The instance this node first saw for each peer (since its last replacement), and the
/// instances retired by replacements, remembered durably.
pub struct PeerInstances {
    disk: std::sync::Arc<dyn Disk>,
    known: Mutex<BTreeMap<NodeId, Known>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Known {
    current: Option<InstanceId>,
    retired: Vec<InstanceId>,
}

/// `peers` lines: `<node> = <instance>` for the current one, `retired <node> = <instance>,...`.
const RETIRED_PREFIX: &str = "retired ";

impl fmt::Debug for PeerInstances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.known.lock().expect("not poisoned").iter()).finish()
    }
}

impl PeerInstances {
    pub fn open(disk: std::sync::Arc<dyn Disk>) -> Result<PeerInstances, IdentityError> {
        let path = Path::new(PEERS_FILE);
        let mut known: BTreeMap<NodeId, Known> = BTreeMap::new();
        if disk.exists(path)? {
            let corrupt = |reason: String| IdentityError::Corrupt { file: PEERS_FILE, reason };
            let instance = |text: &str| text.trim().parse().map_err(|_| corrupt(format!("{text:?} is not a hex id")));
            for (key, value) in key_values(&disk.read(path)?).map_err(corrupt)? {
                let (retired, node) = match key.strip_prefix(RETIRED_PREFIX) {
                    Some(node) => (true, node.trim()),
                    None => (false, key.as_str()),
                };
                let node = NodeId(node.parse().map_err(|_| corrupt(format!("{node:?} is not a node id")))?);
                let entry = known.entry(node).or_default();
                if retired {
                    entry.retired = value.split(',').map(instance).collect::<Result<_, _>>()?;
                } else {
                    entry.current = Some(instance(&value)?);
                }
            }
        }
        Ok(PeerInstances { disk, known: Mutex::new(known) })
    }

    /// Whether `node` may connect as `instance`: the first instance seen (since the node was
    /// last replaced) is remembered, durably before this returns; any other is refused, and
    /// a retired one always is.
    pub fn admit(&self, node: NodeId, instance: InstanceId) -> Result<(), IdentityError> {
        let mut known = self.known.lock().expect("not poisoned");
        let entry = known.get(&node).cloned().unwrap_or_default();
        if entry.retired.contains(&instance) {
            return Err(IdentityError::Retired { node, instance });
        }
        match entry.current {
            Some(remembered) if remembered == instance => Ok(()),
            Some(remembered) => Err(IdentityError::Replaced { node, remembered, presented: instance }),
            None => {
                let mut next = known.clone();
                next.insert(node, Known { current: Some(instance), ..entry });
                self.write(&next)?;
                *known = next;
                Ok(())
            }
        }
    }

    /// Retires the instance remembered for `node` (an operator is replacing that node): it is
    /// refused from now on, and the next instance `node` presents is admitted. Returns the
    /// instance retired, if one was remembered; durable before this returns.
    pub fn retire(&self, node: NodeId) -> Result<Option<InstanceId>, IdentityError> {
        let mut known = self.known.lock().expect("not poisoned");
        let Some(current) = known.get(&node).and_then(|k| k.current) else { return Ok(None) };
        let mut next = known.clone();
        let entry = next.get_mut(&node).expect("present above");
        entry.current = None;
        entry.retired.push(current);
        self.write(&next)?;
        *known = next;
        Ok(Some(current))
    }

    fn write(&self, known: &BTreeMap<NodeId, Known>) -> Result<(), IdentityError> {
        let mut text = String::from("# the data directory instance first seen for each peer node, and those retired\n");
        for (node, entry) in known {
            if let Some(instance) = entry.current {
                text.push_str(&format!("{} = {instance}\n", node.0));
            }
            if !entry.retired.is_empty() {
                let retired: Vec<String> = entry.retired.iter().map(InstanceId::to_string).collect();
                text.push_str(&format!("{RETIRED_PREFIX}{} = {}\n", node.0, retired.join(",")));
            }
        }
        Ok(write_file_atomic(&*self.disk, Path::new(PEERS_FILE), text.as_bytes())?)
    }

    /// The instance remembered for `node`, if any.
    pub fn remembered(&self, node: NodeId) -> Option<InstanceId> {
        self.known.lock().expect("not poisoned").get(&node).and_then(|k| k.current)
    }

    /// Whether an instance of `node` was ever retired (the node was replaced).
    pub fn was_replaced(&self, node: NodeId) -> bool {
        self.known.lock().expect("not poisoned").get(&node).is_some_and(|k| !k.retired.is_empty())
    }
}
