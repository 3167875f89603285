//! `cohort repo create|delete|list|info|export`.

use super::{client, repo_id, Cli};
use anyhow::Context as _;
use clap::Subcommand;
use cohort_core::state_machine::{ObjectHasher, ObjectKind, Oid, RefName, RefValue, RepoId};
use cohort_net::client::{Client, ListedObject};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Write the repository to DIR as a bare Git repository (loose objects, packed-refs,
    /// HEAD), which `git` reads: `git log`, `git clone`, `git fsck`. DIR must not exist, or be
    /// empty.
    Export { relative_path: String, dir: PathBuf },
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
        RepoCommand::Export { relative_path, dir } => {
            let repo = repo_id(cli, relative_path)?;
            let (objects, refs) = export(&client, &repo, dir).await?;
            println!("exported {repo} to {}: {objects} objects, {refs} references", dir.display());
        }
        RepoCommand::List => {
            for (repo, partition) in client.list_repositories().await? {
                println!("{repo}\tpartition {partition}");
            }
        }
    }
    Ok(())
}

/// Writes `repo` as a bare Git repository in `dir`; returns how many objects and references
/// it wrote. References are read first: every object they reach is held by then, and a
/// repository never drops an object it holds, so the objects listed after are a superset.
async fn export(client: &Client, repo: &RepoId, dir: &Path) -> anyhow::Result<(usize, usize)> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!("{} exists and is not empty", dir.display());
    }
    let (refs, _) = client.read_refs(repo, false).await?;
    for sub in ["objects/info", "objects/pack", "refs/heads", "refs/tags"] {
        std::fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let mut objects = 0;
    let mut after: Option<Oid> = None;
    loop {
        let (page, complete) = client.list_objects(repo, after).await?;
        for (oid, object) in &page {
            let hex = oid.to_string();
            let path = dir.join("objects").join(&hex[..2]).join(&hex[2..]);
            std::fs::create_dir_all(path.parent().expect("objects/xx"))?;
            match object {
                ListedObject::Loose(loose) => {
                    // What the node sent must be the object it names.
                    cohort_core::store::loose::decode(oid, loose).map_err(|e| anyhow::anyhow!("{e}"))?;
                    std::fs::write(&path, loose).with_context(|| format!("writing {}", path.display()))?;
                }
                ListedObject::Large { kind, size_bytes } => {
                    export_large(client, repo, *oid, *kind, *size_bytes, &path).await?;
                }
            }
            objects += 1;
        }
        after = page.last().map(|(oid, _)| *oid).or(after);
        if complete || page.is_empty() {
            break;
        }
    }
    write_refs(dir, &refs)?;
    std::fs::write(dir.join("config"), "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n")?;
    std::fs::write(dir.join("description"), format!("{repo}, exported by cohort\n"))?;
    Ok((objects, refs.len()))
}

/// Writes a large object as a loose object file, compressing and hashing it as its pieces
/// arrive (never whole in memory), and keeps it only if it is the object it names.
async fn export_large(
    client: &Client,
    repo: &RepoId,
    oid: Oid,
    kind: ObjectKind,
    size_bytes: u64,
    path: &Path,
) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let mut encoder = flate2::write::ZlibEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
    encoder.write_all(format!("{kind} {size_bytes}\0").as_bytes())?;
    let mut out = HashingWriter { inner: encoder, hasher: Some(ObjectHasher::new(kind, size_bytes)) };
    match client.read_object_to(repo, oid, false, &mut out).await? {
        Some((read_kind, read_size)) if (read_kind, read_size) == (kind, size_bytes) => {}
        other => anyhow::bail!("object {oid} changed while exporting: {other:?}"),
    }
    let actual = out.hasher.take().expect("hashed once").finish();
    if actual != oid {
        anyhow::bail!("object {oid} read back hashes to {actual}");
    }
    out.inner.finish()?.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("renaming {}", partial.display()))?;
    Ok(())
}

/// Hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Option<ObjectHasher>,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let written = self.inner.write(data)?;
        self.hasher.as_mut().expect("hashing until finished").update(&data[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `HEAD`, `packed-refs` (direct references under refs/, sorted) and loose files for symbolic
/// references under refs/, as Git lays them out.
fn write_refs(dir: &Path, refs: &[(RefName, RefValue)]) -> anyhow::Result<()> {
    // No `peeled` trait: git then peels annotated tags itself.
    let mut packed = String::from("# pack-refs with: sorted \n");
    let mut head = "ref: refs/heads/main\n".to_owned();
    for (name, value) in refs {
        match (name.is_under_refs(), value) {
            (false, RefValue::Direct(oid)) => head = format!("{oid}\n"),
            (false, RefValue::Symbolic(target)) => head = format!("ref: {target}\n"),
            (true, RefValue::Direct(oid)) => packed.push_str(&format!("{oid} {name}\n")),
            (true, RefValue::Symbolic(target)) => {
                let path = dir.join(name.as_str());
                std::fs::create_dir_all(path.parent().expect("refs/..."))?;
                std::fs::write(&path, format!("ref: {target}\n"))?;
            }
        }
    }
    std::fs::write(dir.join("packed-refs"), packed)?;
    std::fs::write(dir.join("HEAD"), head)?;
    Ok(())
}
