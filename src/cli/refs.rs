//! `cohort ref update|list`.

use super::{client, repo_id, Cli};
use clap::Subcommand;
use cohort_core::state_machine::{Expected, Oid, RefName, RefValue};
use cohort_net::client::RefChange;

#[derive(Subcommand, Debug)]
pub enum RefCommand {
    /// Point a reference at an object (or, with --symbolic, at another reference), optionally
    /// only if it currently has a given value.
    Update {
        repo: String,
        refname: String,
        #[arg(required_unless_present = "symbolic")]
        new_oid: Option<String>,
        /// Make it a symbolic reference to this one (e.g. `HEAD` to `refs/heads/main`).
        #[arg(long, conflicts_with = "new_oid")]
        symbolic: Option<String>,
        /// Only if the reference currently points at this object.
        #[arg(long, conflicts_with = "must_not_exist")]
        old: Option<String>,
        /// Only if the reference does not exist yet.
        #[arg(long)]
        must_not_exist: bool,
    },
    /// Print `<oid> <refname>` lines sorted by name, like `git show-ref`.
    List {
        repo: String,
        /// Read from the endpoint's own replica, which may be behind (learners included).
        #[arg(long)]
        stale: bool,
    },
}

fn oid(text: &str) -> anyhow::Result<Oid> {
    text.parse().map_err(|e| anyhow::anyhow!("object id {text:?}: {e}"))
}

pub async fn run(cli: &Cli, command: &RefCommand) -> anyhow::Result<()> {
    let client = client(cli)?;
    match command {
        RefCommand::Update { repo, refname, new_oid, symbolic, old, must_not_exist } => {
            let repo = repo_id(cli, repo)?;
            let name = RefName::new(refname).map_err(|e| anyhow::anyhow!("{e}"))?;
            let expected = match (old, must_not_exist) {
                (Some(old), _) => Expected::Value(RefValue::Direct(oid(old)?)),
                (None, true) => Expected::MustNotExist,
                (None, false) => Expected::Any,
            };
            let new = match (new_oid, symbolic) {
                (Some(new_oid), _) => RefValue::Direct(oid(new_oid)?),
                (None, Some(target)) => RefValue::Symbolic(RefName::new(target).map_err(|e| anyhow::anyhow!("{e}"))?),
                (None, None) => unreachable!("clap requires one"),
            };
            let change = RefChange { name, expected, new: Some(new) };
            client.write(&repo, Vec::new(), vec![change]).await?;
        }
        RefCommand::List { repo, stale } => {
            let repo = repo_id(cli, repo)?;
            let (refs, _) = client.read_refs(&repo, *stale).await?;
            for (name, value) in refs {
                match value {
                    RefValue::Direct(oid) => println!("{oid} {name}"),
                    RefValue::Symbolic(target) => println!("ref: {target} {name}"),
                }
            }
        }
    }
    Ok(())
}
