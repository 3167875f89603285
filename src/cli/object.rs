//! `cohort object put|get`.

use super::{client, repo_id, Cli};
use anyhow::Context as _;
use clap::Subcommand;
use cohort_core::state_machine::{NewObject, ObjectKind, Oid};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum ObjectCommand {
    /// Store an object read from FILE (or stdin); prints its id, as `git hash-object` would.
    Put {
        repo: String,
        #[arg(long = "type", default_value = "blob")]
        kind: String,
        file: Option<PathBuf>,
    },
    /// Write an object's content to stdout.
    Get { repo: String, oid: String },
}

pub async fn run(cli: &Cli, command: &ObjectCommand) -> anyhow::Result<()> {
    let client = client(cli)?;
    match command {
        ObjectCommand::Put { repo, kind, file } => {
            let repo = repo_id(cli, repo)?;
            let kind: ObjectKind = kind.parse().map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            let data = match file {
                Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
                None => {
                    let mut data = Vec::new();
                    std::io::stdin().read_to_end(&mut data).context("reading stdin")?;
                    data
                }
            };
            let object = NewObject::new(kind, data);
            let oid = object.oid;
            client.write(&repo, vec![object], Vec::new()).await?;
            println!("{oid}");
        }
        ObjectCommand::Get { repo, oid } => {
            let repo = repo_id(cli, repo)?;
            let oid: Oid = oid.parse().map_err(|e| anyhow::anyhow!("object id {oid:?}: {e}"))?;
            match client.read_object(&repo, oid, false).await? {
                Some((_, data)) => std::io::stdout().write_all(&data).context("writing stdout")?,
                None => anyhow::bail!("object {oid} not found in {repo}"),
            }
        }
    }
    Ok(())
}
