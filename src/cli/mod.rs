//! The command line: parsing (clap) and one module per subcommand.

mod debug;
mod dev;
mod node;
mod object;
mod partition;
mod refs;
mod repo;
mod status;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use cohort_core::state_machine::{RelativePath, RepoId};
use cohort_net::client::{Client, ClientConfig};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(name = "cohort", version, about = "A storage node for Git-style repositories replicated with Raft")]
pub struct Cli {
    /// Client URLs of the cluster's nodes, comma-separated.
    #[arg(long, env = "COHORT_ENDPOINTS", value_delimiter = ',', global = true)]
    pub endpoints: Vec<String>,
    /// The cluster CA's certificate (PEM), for `https` endpoints.
    #[arg(long, env = "COHORT_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// Client token, when the cluster requires one.
    #[arg(long, env = "COHORT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Storage of the repositories named on the command line.
    #[arg(long, default_value = "default", global = true)]
    pub storage: String,
    /// Seconds a command may take, retries included.
    #[arg(long, default_value_t = 30, global = true)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node (`--config`), or replace a node that lost its data directory (`replace`).
    Node(node::NodeArgs),
    /// Run a local cluster on loopback, one child process per node.
    Dev(dev::DevArgs),
    /// Create, delete and list repositories.
    #[command(subcommand)]
    Repo(repo::RepoCommand),
    /// Write and read objects.
    #[command(subcommand)]
    Object(object::ObjectCommand),
    /// Update and list references.
    #[command(subcommand)]
    Ref(refs::RefCommand),
    /// Partitions: their members and leaders.
    #[command(subcommand)]
    Partition(partition::PartitionCommand),
    /// Look inside a stopped node's data directory, without writing to it: the log, a
    /// partition, its entries, the routing table, and every checksum (`verify`).
    #[command(subcommand)]
    Debug(debug::DebugCommand),
    /// The cluster's nodes, their replicas counted by role and state, and the partitions (listed
    /// when few, or with `--all`).
    Status {
        #[arg(long)]
        json: bool,
        /// List every partition, however many.
        #[arg(long)]
        all: bool,
        /// Redraw every two seconds until interrupted.
        #[arg(long, conflicts_with = "json")]
        watch: bool,
    },
}

pub fn init_tracing(cli: &Cli) {
    // Nodes log at info unless their TOML says otherwise (`log_level`); client commands only
    // say what went wrong. `COHORT_LOG` overrides both.
    let default = match &cli.command {
        Command::Node(node::NodeArgs { config: Some(config), command: None, .. }) => {
            configured_log_level(config).unwrap_or_else(|| "info".to_owned())
        }
        Command::Dev(_) => "info".to_owned(),
        _ => "warn".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("COHORT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&default))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal who did not turn them off (NO_COLOR): a node's
    // log file (`cohort dev` sends each node's output to one) is read by tools and grep.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Runs the command. For `cohort node`, returns the node if it stopped cleanly: the caller
/// seals its state store once the runtime is gone (`crate::node::seal_store`), then drops it,
/// which unlocks its data directory.
/// The `log_level` of the node's TOML, if it has one. Read before the config is checked (the
/// check's errors are reported once logging is set up).
fn configured_log_level(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    toml::from_str::<crate::config::RawConfig>(&text).ok()?.log_level
}

pub async fn run(cli: Cli) -> anyhow::Result<Option<crate::node::StoppedNode>> {
    match &cli.command {
        Command::Node(args) => match (&args.command, &args.config) {
            (Some(command), _) => node::run(&cli, command).await,
            (None, Some(config)) => {
                let config = crate::config::Config::load(config)?;
                return crate::node::run(config, args.join, shutdown_signal()).await;
            }
            (None, None) => anyhow::bail!("`cohort node` needs --config FILE (or a subcommand: replace)"),
        },
        Command::Dev(args) => dev::run(args).await,
        Command::Repo(command) => repo::run(&cli, command).await,
        Command::Object(command) => object::run(&cli, command).await,
        Command::Ref(command) => refs::run(&cli, command).await,
        Command::Partition(command) => partition::run(&cli, command).await,
        Command::Status { json, all, watch } => status::run(&cli, *json, *all, *watch).await,
        Command::Debug(command) => debug::run(command),
    }?;
    Ok(None)
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// A routing client over `--endpoints`.
pub fn client(cli: &Cli) -> anyhow::Result<Client> {
    anyhow::ensure!(!cli.endpoints.is_empty(), "no endpoints: pass --endpoints URL[,URL...] or set COHORT_ENDPOINTS");
    let mut config = ClientConfig::new(cli.endpoints.clone(), rand::random());
    config.token = cli.token.clone();
    config.deadline = Duration::from_secs(cli.timeout);
    config.attempt_timeout = config.deadline.min(Duration::from_secs(5));
    if let Some(path) = &cli.ca {
        config.ca_pem =
            Some(std::fs::read(path).with_context(|| format!("reading the CA certificate {}", path.display()))?);
    }
    Ok(Client::new(config)?)
}

pub fn repo_id(cli: &Cli, relative_path: &str) -> anyhow::Result<RepoId> {
    let relative_path =
        RelativePath::new(relative_path).with_context(|| format!("repository path {relative_path:?}"))?;
    Ok(RepoId { storage: cli.storage.clone(), relative_path })
}
