//! `cohort object put|get`: objects of any size. Small ones travel in one write; larger ones
//! are uploaded in pieces and read back in pieces, so neither the CLI nor a node holds a whole
//! large object in memory.

use super::{client, repo_id, Cli};
use anyhow::Context as _;
use clap::Subcommand;
use cohort_core::state_machine::{NewObject, ObjectHasher, ObjectKind, Oid};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::PathBuf;

/// Objects up to this size go in one write; larger ones are uploaded in pieces.
const INLINE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(Subcommand, Debug)]
pub enum ObjectCommand {
    /// Store an object read from FILE (or stdin); prints its id, as `git hash-object` would.
    Put {
        repo: String,
        #[arg(long = "type", default_value = "blob")]
        kind: String,
        file: Option<PathBuf>,
    },
    /// Write an object's content to stdout, as it arrives.
    Get {
        repo: String,
        oid: String,
        /// Read from whichever node answers, which may not have the latest writes.
        #[arg(long)]
        stale: bool,
    },
}

pub async fn run(cli: &Cli, command: &ObjectCommand) -> anyhow::Result<()> {
    let client = client(cli)?;
    match command {
        ObjectCommand::Put { repo, kind, file } => {
            let repo = repo_id(cli, repo)?;
            let kind: ObjectKind = kind.parse().map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            // The id hashes the size first, so the content is read through once before any
            // of it is sent: a file in place, or stdin spooled to a temporary file.
            let mut input = match file {
                Some(path) => File::open(path).with_context(|| format!("opening {}", path.display()))?,
                None => {
                    let mut spool = tempfile::tempfile().context("creating a temporary file for stdin")?;
                    std::io::copy(&mut std::io::stdin().lock(), &mut spool).context("reading stdin")?;
                    spool
                }
            };
            let (size_bytes, oid) = hash_file(&mut input, kind)?;
            if size_bytes <= INLINE_BYTES_MAX {
                let mut data = Vec::with_capacity(size_bytes as usize);
                input.rewind()?;
                input.read_to_end(&mut data).context("reading the object")?;
                client.write(&repo, vec![NewObject::claimed(kind, data, oid)], Vec::new()).await?;
            } else {
                client.upload_object(&repo, kind, size_bytes, oid, Vec::new(), &mut input).await?;
            }
            println!("{oid}");
        }
        ObjectCommand::Get { repo, oid, stale } => {
            let repo = repo_id(cli, repo)?;
            let oid: Oid = oid.parse().map_err(|e| anyhow::anyhow!("object id {oid:?}: {e}"))?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            match client.read_object_to(&repo, oid, *stale, &mut out).await? {
                Some(_) => out.flush().context("writing stdout")?,
                None => anyhow::bail!("object {oid} not found in {repo}"),
            }
        }
    }
    Ok(())
}

/// The size and Git id of a `kind` object holding the whole of `file`.
fn hash_file(file: &mut File, kind: ObjectKind) -> anyhow::Result<(u64, Oid)> {
    let size_bytes = file.seek(std::io::SeekFrom::End(0))?;
    file.rewind()?;
    let mut hasher = ObjectHasher::new(kind, size_bytes);
    let mut buffer = vec![0u8; 1 << 20];
    let mut left = size_bytes;
    while left > 0 {
        let read = file.read(&mut buffer[..left.min(1 << 20) as usize]).context("reading the object")?;
        if read == 0 {
            anyhow::bail!("the input shrank while being read");
        }
        hasher.update(&buffer[..read]);
        left -= read as u64;
    }
    Ok((size_bytes, hasher.finish()))
}
