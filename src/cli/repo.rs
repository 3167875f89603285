//! `cohort repo create|delete|list`.

use super::{client, repo_id, Cli};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum RepoCommand {
    /// Create a repository (in a new partition, or in its parent's with --fork-of).
    Create {
        relative_path: String,
        #[arg(long)]
        fork_of: Option<String>,
    },
    /// Delete a repository and its data.
    Delete { relative_path: String },
    /// List every repository and its partition.
    List,
    /// The repository's partition: its members with their roles, and its leader.
    Info {
        relative_path: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cli: &Cli, command: &RepoCommand) -> anyhow::Result<()> {
    let client = client(cli)?;
    match command {
        RepoCommand::Create { relative_path, fork_of } => {
            let repo = repo_id(cli, relative_path)?;
            let reply = client.create_repository(&repo, fork_of.as_deref()).await?;
            println!("created {repo} in partition {}", reply.partition);
        }
        RepoCommand::Delete { relative_path } => {
            let repo = repo_id(cli, relative_path)?;
            client.delete_repository(&repo).await?;
            println!("deleted {repo}");
        }
        RepoCommand::Info { relative_path, json } => {
            let repo = repo_id(cli, relative_path)?;
            let info = client.repo_info(&repo).await?;
            super::partition::print(&client, &[info], *json, true).await?;
        }
        RepoCommand::List => {
            for (repo, partition) in client.list_repositories().await? {
                println!("{repo}\tpartition {partition}");
            }
        }
    }
    Ok(())
}
