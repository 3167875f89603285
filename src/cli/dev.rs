//! `cohort dev`: a local cluster on loopback. Writes one config per node, starts each node as
//! a child process (`cohort node --config ...`), waits until all serve, prints the endpoints,
//! and stops the children on Ctrl-C or SIGTERM. A child that dies is reported, not restarted.

use crate::config::{loopback_nodes, RawConfig, RawLimits, RawRaft, RawStore, RawTls};
use anyhow::Context as _;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Voters of each new partition (default: 3, or every node of a smaller cluster).
    #[arg(long)]
    pub replicas: Option<usize>,
    /// Where the nodes keep their data; a fresh temporary directory if not given. A directory
    /// that already holds a cluster is started again with its data.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Serve peers (mutual TLS) and clients over TLS, with a throwaway CA and node
    /// certificates made in the data directory (`tls/`). Only for a new cluster.
    #[arg(long)]
    pub tls: bool,
}

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}")).join("node.toml")
}

/// The configs of a new cluster in `dir`, on free loopback ports.
fn new_cluster(dir: &Path, count: u64, replicas: Option<usize>, tls: bool) -> anyhow::Result<Vec<RawConfig>> {
    let nodes = loopback_nodes(count)?;
    let secret = format!("{:032x}", rand::random::<u128>());
    let tls_files = if tls {
        // Every node is on loopback: one set of names serves them all.
        let hosts = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certificates =
            cohort_net::tls::throwaway_certificates(&hosts, count as usize).context("making throwaway certificates")?;
        let files = certificates.write(&dir.join("tls")).context("writing the certificates")?;
        files.into_iter().map(Some).collect()
    } else {
        vec![None; count as usize]
    };
    Ok((1..=count)
        .zip(tls_files)
        .map(|(id, tls)| RawConfig {
            node_id: id,
            storage: "default".into(),
            data_dir: dir.join(format!("node-{id}")).join("data"),
            cluster_id: "cohort-dev".into(),
            secret: secret.clone(),
            token: None,
            raft: RawRaft::default(),
            limits: RawLimits::default(),
            store: RawStore::default(),
            replicas,
            workers: None,
            log_level: None,
            tls: tls.map(|files| RawTls {
                ca_path: files.ca_path,
                cert_path: files.cert_path,
                key_path: files.key_path,
            }),
            nodes: nodes.clone(),
        })
        .collect())
}

fn load_existing(dir: &Path) -> anyhow::Result<Option<Vec<RawConfig>>> {
    if !config_path(dir, 1).exists() {
        return Ok(None);
    }
    let mut configs = Vec::new();
    for id in 1.. {
        let path = config_path(dir, id);
        if !path.exists() {
            break;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        configs.push(toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?);
    }
    Ok(Some(configs))
}

/// Waits up to 30 s (a loaded machine starts debug builds slowly).
async fn wait_until_serving(address: &str) -> bool {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(address).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn run(args: &DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!((1..=7).contains(&args.nodes), "--nodes must be between 1 and 7");
    let (dir, _temporary) = match &args.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let temporary = tempfile_dir()?;
            (temporary.clone(), Some(temporary))
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The configs name files under it; nodes resolve relative names from their config's
    // directory, not from here.
    let dir = std::path::absolute(&dir).with_context(|| format!("resolving {}", dir.display()))?;
    let configs = match load_existing(&dir)? {
        Some(configs) => {
            println!("restarting the {}-node cluster in {}", configs.len(), dir.display());
            let has_tls = configs.first().is_some_and(|c: &RawConfig| c.tls.is_some());
            anyhow::ensure!(
                !args.tls || has_tls,
                "--tls applies to a new cluster; the one in {} has no TLS",
                dir.display()
            );
            configs
        }
        None => {
            if let Some(replicas) = args.replicas {
                anyhow::ensure!(
                    (1..=args.nodes as usize).contains(&replicas),
                    "--replicas must be between 1 and --nodes"
                );
            }
            let configs = new_cluster(&dir, args.nodes, args.replicas, args.tls)?;
            for config in &configs {
                let path = config_path(&dir, config.node_id);
                std::fs::create_dir_all(path.parent().expect("has a parent"))?;
                std::fs::write(&path, toml::to_string(config)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            configs
        }
    };
    let exe = std::env::current_exe().context("locating the cohort binary")?;
    let mut children: Vec<(u64, Child)> = Vec::new();
    let threads = crate::config::node_runtime_threads(configs.len()).map_err(anyhow::Error::msg)?;
    for config in &configs {
        let path = config_path(&dir, config.node_id);
        let log = std::fs::File::create(dir.join(format!("node-{}", config.node_id)).join("node.log"))?;
        let child = Command::new(&exe)
            .env(crate::config::RUNTIME_THREADS_VAR, threads.to_string())
            .arg("node")
            .arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {}", config.node_id))?;
        children.push((config.node_id, child));
    }
    let nodes = &configs[0].nodes;
    for node in nodes {
        anyhow::ensure!(
            wait_until_serving(&node.client_address).await,
            "node {} did not start serving; see its node.log",
            node.id
        );
    }
    let tls = configs[0].tls.as_ref();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoints: Vec<String> = nodes.iter().map(|n| format!("{scheme}://{}", n.client_address)).collect();
    let endpoints = endpoints.join(",");
    std::fs::write(dir.join("endpoints"), format!("{endpoints}\n"))?;
    println!("cohort dev: {} nodes serving, data in {}", nodes.len(), dir.display());
    for node in nodes {
        println!(
            "  node {}: client {scheme}://{}  http http://{}  log {}",
            node.id,
            node.client_address,
            node.http_address,
            dir.join(format!("node-{}", node.id)).join("node.log").display()
        );
        let var = crate::config::RUNTIME_THREADS_VAR;
        println!(
            "          restart by hand: {var}={threads} cohort node --config {}",
            config_path(&dir, node.id).display()
        );
    }
    println!("export COHORT_ENDPOINTS={endpoints}");
    if let Some(tls) = tls {
        // The configs' paths are absolute: `new_cluster` wrote them from `dir`.
        println!("export COHORT_CA={}", tls.ca_path.display());
    }

    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                children.retain_mut(|(id, child)| match child.try_wait() {
                    Ok(Some(status)) => {
                        println!("node {id} exited ({status}); the others go on");
                        false
                    }
                    _ => true,
                });
            }
        }
    }
    println!("stopping {} nodes", children.len());
    for (_, child) in &children {
        // SIGTERM: each node finishes in-flight writes and syncs its log.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    for (id, child) in &mut children {
        let status = child.wait();
        println!("node {id} stopped ({})", status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
    }
    Ok(())
}

/// A new directory under the system's temporary directory, kept after exit so its data can
/// be inspected (its path is printed).
fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohort-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
