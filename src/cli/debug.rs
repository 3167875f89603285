//! `cohort debug`: offline inspection of a stopped node's data directory. Nothing here writes
//! to it: the log is replayed read-only (a torn tail is reported, not cut), and the state
//! store is read from a copy in a temporary directory (opening a redb file may write to it).

use anyhow::Context as _;
use clap::{Args, Subcommand};
use cohort_core::env::Disk;
use cohort_core::ids::{PartitionId, DIRECTORY};
use cohort_core::persist::{EntryKind, RecoveredPartition};
use cohort_core::snapshot::{check_file, SnapshotStore};
use cohort_core::state_machine::Command;
use cohort_core::store::seal::SealCheck;
use cohort_core::store::{self, Rows as _, Store, StoreOptions, STORE_FILE};
use cohort_net::node::WAL_DIR;
use cohort_storage::log::record::{decode_segment, Record};
use cohort_storage::log::segment::{list_segments, segment_path};
use cohort_storage::log::{replay_read_only, LogError, ReadOnlyReplay};
use cohort_storage::FsDisk;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// The write-ahead log's segments: size, records, checkpoints, writes, a torn tail.
    Wal(Target),
    /// One partition's replica: hard state, membership, log range, snapshots, applied index.
    Partition {
        partition: u64,
        #[command(flatten)]
        target: Target,
    },
    /// One partition's log entries, decoded (`--from`/`--to`: an index range, inclusive).
    Log {
        partition: u64,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// The routing table: every partition the directory records, its members and repositories.
    Routes(Target),
    /// Checks every checksum: log segments (and a replay), snapshot files, the state store (its
    /// seal from a clean stop, redb's integrity check, each partition's rows). Exit status 0
    /// only if all are good.
    Verify(Target),
}

#[derive(Args, Debug)]
pub struct Target {
    /// The node's data directory (`data_dir` in its TOML). The node must be stopped.
    #[arg(long)]
    data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(command: &DebugCommand) -> anyhow::Result<()> {
    let target = match command {
        DebugCommand::Wal(target) | DebugCommand::Routes(target) | DebugCommand::Verify(target) => target,
        DebugCommand::Partition { target, .. } | DebugCommand::Log { target, .. } => target,
    };
    // Held while reading: no node starts on the directory meanwhile.
    let _lock = crate::data_dir_lock::DataDirLock::shared(&target.data_dir)?;
    match command {
        DebugCommand::Wal(target) => wal(target),
        DebugCommand::Partition { partition: id, target } => partition(target, PartitionId(*id)),
        DebugCommand::Log { partition, from, to, target } => log(target, PartitionId(*partition), *from, *to),
        DebugCommand::Routes(target) => routes(target),
        DebugCommand::Verify(target) => verify(target),
    }
}

/// The data directory, read through the same `Disk` the node uses (reads only, here).
fn open_disk(data_dir: &Path) -> anyhow::Result<Arc<dyn Disk>> {
    anyhow::ensure!(data_dir.is_dir(), "{} is not a directory", data_dir.display());
    Ok(Arc::new(FsDisk::new(data_dir)?))
}

/// A copy of the state store file, in a temporary directory, as a `Disk` rooted there.
fn store_copy(data_dir: &Path) -> anyhow::Result<(tempfile::TempDir, Arc<dyn Disk>)> {
    let copy = tempfile::tempdir()?;
    let from = data_dir.join(STORE_FILE);
    let to = copy.path().join(STORE_FILE);
    std::fs::create_dir_all(to.parent().expect("a parent"))?;
    std::fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    let disk: Arc<dyn Disk> = Arc::new(FsDisk::new(copy.path())?);
    Ok((copy, disk))
}

/// The state store, opened on a copy.
fn open_store(data_dir: &Path) -> anyhow::Result<(tempfile::TempDir, Store)> {
    let (copy, disk) = store_copy(data_dir)?;
    let store = Store::open(&disk, &StoreOptions::default()).context("opening a copy of the state store")?;
    Ok((copy, store))
}

fn print(target: &Target, value: &Value, text: impl FnOnce() -> String) {
    if target.json {
        println!("{}", serde_json::to_string_pretty(value).expect("JSON values print"));
    } else {
        print!("{}", text());
    }
}

fn wal(target: &Target) -> anyhow::Result<()> {
    let disk = open_disk(&target.data_dir)?;
    let dir = Path::new(WAL_DIR);
    let mut segments = Vec::new();
    for seq in list_segments(&*disk, dir)? {
        let path = segment_path(dir, seq);
        let bytes = disk.read(&path)?;
        let mut segment = json!({ "seq": seq, "file": path, "size_bytes": bytes.len() });
        match decode_segment(&bytes) {
            Ok(decoded) => {
                let (mut checkpoint_records, mut checkpointed, mut write_records, mut writes, mut entries) =
                    (0, 0, 0, 0, 0);
                for (_, record) in &decoded.records {
                    match record {
                        Record::SegmentHeader(_) => {}
                        Record::Checkpoint(checkpoint) => {
                            checkpoint_records += 1;
                            checkpointed += checkpoint.partitions.len();
                        }
                        Record::Writes(batch) => {
                            write_records += 1;
                            writes += batch.len();
                            entries += batch.iter().map(|w| w.entries.len()).sum::<usize>();
                        }
                    }
                }
                segment["records"] = json!(decoded.records.len());
                segment["checkpoint_records"] = json!(checkpoint_records);
                segment["checkpointed_partitions"] = json!(checkpointed);
                segment["write_records"] = json!(write_records);
                segment["writes"] = json!(writes);
                segment["entries"] = json!(entries);
                segment["torn_tail"] =
                    json!(decoded.torn_tail.map(|t| json!({ "offset": t.offset, "reason": t.reason })));
                // The zeros the log writes ahead of its records (the next start cuts them).
                segment["zeros_from"] = json!(decoded.zeros_from);
            }
            Err(error) => segment["error"] = json!(error.to_string()),
        }
        segments.push(segment);
    }
    let replay = match replay_read_only(&*disk, dir) {
        Ok(replay) => json!({ "partitions": replay.partitions.len() }),
        Err(error) => json!({ "error": error.to_string() }),
    };
    let value = json!({ "dir": target.data_dir.join(dir), "segments": segments, "replay": replay });
    print(target, &value, || {
        let mut out = format!("{} segments in {}\n", segments.len(), target.data_dir.join(dir).display());
        for s in &segments {
            out += &format!("  {}  {} bytes", s["file"].as_str().unwrap_or_default(), s["size_bytes"]);
            if let Some(error) = s["error"].as_str() {
                out += &format!("  CORRUPT: {error}\n");
                continue;
            }
            out += &format!(
                "  {} records: {} checkpoint ({} partitions), {} of writes ({} writes, {} entries)",
                s["records"],
                s["checkpoint_records"],
                s["checkpointed_partitions"],
                s["write_records"],
                s["writes"],
                s["entries"]
            );
            if let Some(zeros_from) = s["zeros_from"].as_u64() {
                out += &format!("  zeros from {zeros_from} (written ahead of the records)");
            }
            if let Some(torn) = s["torn_tail"].as_object() {
                out += &format!("  torn tail at {}: {}", torn["offset"], torn["reason"].as_str().unwrap_or_default());
            }
            out += "\n";
        }
        match value["replay"]["error"].as_str() {
            Some(error) => out += &format!("replay: {error}\n"),
            None => out += &format!("replay: {} partitions\n", value["replay"]["partitions"]),
        }
        out
    });
    Ok(())
}

fn replay(data_dir: &Path) -> anyhow::Result<ReadOnlyReplay> {
    let disk = open_disk(data_dir)?;
    Ok(replay_read_only(&*disk, Path::new(WAL_DIR))?)
}

fn recovered(replay: &ReadOnlyReplay, partition: PartitionId) -> anyhow::Result<&RecoveredPartition> {
    replay.partitions.get(&partition).with_context(|| format!("the log holds no replica of partition {partition}"))
}

fn partition(target: &Target, partition: PartitionId) -> anyhow::Result<()> {
    let replay = replay(&target.data_dir)?;
    let log = recovered(&replay, partition)?;
    let hard = &log.hard_state;
    let conf = &log.conf_state;
    let last = log.entries.last().map_or(log.compacted.index, |e| e.index);
    let (_copy, store) = open_store(&target.data_dir)?;
    let rows = store.read()?;
    let applied = rows.partition(partition)?.map(|record| {
        json!({ "index": record.applied.index, "term": record.applied.term, "voters": record.conf_state.voters, "learners": record.conf_state.learners })
    });
    let disk = open_disk(&target.data_dir)?;
    let mut snapshots = Vec::new();
    let mut peer = None;
    for (authority, p) in SnapshotStore::all(&*disk)? {
        if p == partition {
            let files = SnapshotStore::new(disk.clone(), authority.as_str(), p);
            peer = files.read_peer().ok().flatten().map(|peer| peer.to_string());
            for (position, path) in files.snapshots()? {
                snapshots.push(json!({ "index": position.index, "term": position.term, "file": path }));
            }
        }
    }
    let value = json!({
        "partition": partition.0,
        "peer": peer,
        "hard_state": { "term": hard.term, "vote": hard.vote, "commit": hard.commit },
        "conf_state": { "voters": conf.voters, "learners": conf.learners, "voters_outgoing": conf.voters_outgoing, "learners_next": conf.learners_next },
        "log": { "compacted": { "index": log.compacted.index, "term": log.compacted.term }, "first": log.compacted.index + 1, "last": last, "entries": log.entries.len() },
        "snapshot_in_log": log.snapshot.map(|s| json!({ "index": s.index, "term": s.term })),
        "snapshot_files": snapshots,
        "store_applied": applied,
    });
    print(target, &value, || {
        format!(
            "partition {partition} (peer {})\n  hard state: term {} vote {} commit {}\n  membership: voters {:?} learners {:?}\n  log: compacted through {} (term {}), entries {}..={} ({} held)\n  snapshot files: {}\n  store: applied {}\n",
            value["peer"].as_str().unwrap_or("unrecorded"),
            hard.term,
            hard.vote,
            hard.commit,
            conf.voters,
            conf.learners,
            log.compacted.index,
            log.compacted.term,
            log.compacted.index + 1,
            last,
            log.entries.len(),
            if snapshots.is_empty() { "none".to_owned() } else { serde_json::to_string(&snapshots).expect("prints") },
            value["store_applied"]["index"].as_u64().map_or("nothing".to_owned(), |i| format!("through {i}")),
        )
    });
    Ok(())
}

/// What a log entry holds, in a line.
fn describe(kind: EntryKind, data: &[u8], context: &[u8]) -> String {
    const SHOWN_CHARS_MAX: usize = 300;
    match kind {
        EntryKind::Normal if data.is_empty() => {
            format!("(empty: {})", cohort_core::partition::describe_empty_entry(context))
        }
        EntryKind::Normal => match Command::decode(data) {
            Ok(command) => {
                let text = format!("{command:?}");
                match text.char_indices().nth(SHOWN_CHARS_MAX) {
                    Some((cut, _)) => format!("{}…", &text[..cut]),
                    None => text,
                }
            }
            Err(error) => format!("undecodable command: {error}"),
        },
        EntryKind::ConfChange | EntryKind::ConfChangeV2 => "membership change".to_owned(),
    }
}

fn log(target: &Target, partition: PartitionId, from: Option<u64>, to: Option<u64>) -> anyhow::Result<()> {
    let replay = replay(&target.data_dir)?;
    let log = recovered(&replay, partition)?;
    let range = from.unwrap_or(0)..=to.unwrap_or(u64::MAX);
    let entries: Vec<Value> = log
        .entries
        .iter()
        .filter(|e| range.contains(&e.index))
        .map(|e| {
            json!({
                "index": e.index,
                "term": e.term,
                "kind": format!("{:?}", e.kind),
                "size_bytes": e.data.len(),
                "content": describe(e.kind, &e.data, &e.context),
            })
        })
        .collect();
    let value = json!({ "partition": partition.0, "compacted": log.compacted.index, "entries": entries });
    print(target, &value, || {
        let mut out = format!(
            "partition {partition}: entries after {} (compacted){}\n",
            log.compacted.index,
            if entries.is_empty() { ": none held in this range" } else { "" }
        );
        for e in &entries {
            let number = |key: &str| e[key].as_u64().unwrap_or_default();
            out += &format!(
                "  {:>8}  term {:<4} {:<12} {:>8} B  {}\n",
                number("index"),
                number("term"),
                e["kind"].as_str().unwrap_or_default(),
                number("size_bytes"),
                e["content"].as_str().unwrap_or_default()
            );
        }
        out
    });
    Ok(())
}

fn routes(target: &Target) -> anyhow::Result<()> {
    let (_copy, store) = open_store(&target.data_dir)?;
    let rows = store.read()?;
    let mut partitions = Vec::new();
    for (partition, info) in store::read::directory_partitions(&rows, DIRECTORY)? {
        let repositories: Vec<String> = store::read::directory_routed_to(&rows, DIRECTORY, partition)?
            .into_iter()
            .map(|repo| format!("{}:{}", repo.storage, repo.relative_path.as_str()))
            .collect();
        partitions.push(json!({
            "partition": partition.0,
            "authority": info.authority,
            "voters": info.voters.iter().map(|n| n.0).collect::<Vec<_>>(),
            "learners": info.learners.iter().map(|n| n.0).collect::<Vec<_>>(),
            "peers": info.peers.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "members_as_of": info.members_as_of,
            "repositories": repositories,
        }));
    }
    let value = json!({ "partitions": partitions });
    print(target, &value, || {
        let mut out = format!("{} partitions in this node's copy of the directory\n", partitions.len());
        for p in &partitions {
            let repositories = p["repositories"].as_array().map_or(0, Vec::len);
            let shown: Vec<&str> =
                p["repositories"].as_array().into_iter().flatten().filter_map(Value::as_str).take(5).collect();
            out += &format!(
                "  partition {:<6} {:<10} voters {} learners {}  {} repositories{}{}\n",
                p["partition"],
                p["authority"].as_str().unwrap_or_default(),
                p["voters"],
                p["learners"],
                repositories,
                if shown.is_empty() { String::new() } else { format!(": {}", shown.join(" ")) },
                if repositories > shown.len() { " …" } else { "" }
            );
        }
        out
    });
    Ok(())
}

/// What `verify` found wrong, and with which file.
struct Findings {
    data_dir: PathBuf,
    checked: Vec<Value>,
    problems: Vec<Value>,
}

impl Findings {
    fn ok(&mut self, file: &Path, what: &str) {
        self.checked.push(json!({ "file": self.data_dir.join(file), "check": what }));
    }

    fn problem(&mut self, file: &Path, problem: impl std::fmt::Display) {
        self.problems.push(json!({ "file": self.data_dir.join(file), "problem": problem.to_string() }));
    }
}

fn verify(target: &Target) -> anyhow::Result<()> {
    let disk = open_disk(&target.data_dir)?;
    let mut findings = Findings { data_dir: target.data_dir.clone(), checked: Vec::new(), problems: Vec::new() };

    // The log: every record's checksum, segment by segment; then a replay (its structure).
    let dir = Path::new(WAL_DIR);
    let seqs = list_segments(&*disk, dir)?;
    let mut segments_good = true;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = segment_path(dir, seq);
        match decode_segment(&disk.read(&path)?) {
            Err(error) => {
                segments_good = false;
                findings.problem(&path, error);
            }
            Ok(decoded) => match decoded.torn_tail {
                Some(torn) if i + 1 < seqs.len() => {
                    segments_good = false;
                    findings.problem(&path, format!("torn at offset {} in a segment that is not the last: {}", torn.offset, torn.reason));
                }
                Some(torn) => findings.problem(
                    &path,
                    format!(
                        "torn tail at offset {}: {} (a crash cut its last write, or a byte of its last record changed; the next start cuts it)",
                        torn.offset, torn.reason
                    ),
                ),
                None => match decoded.zeros_from {
                    Some(offset) if i + 1 < seqs.len() => {
                        segments_good = false;
                        findings.problem(&path, format!("zeros from offset {offset} in a segment that is not the last"));
                    }
                    _ => findings.ok(&path, &format!("{} records, every checksum", decoded.records.len())),
                },
            },
        }
    }
    if segments_good {
        match replay_read_only(&*disk, dir) {
            Ok(replay) => findings.ok(dir, &format!("replays: {} partitions", replay.partitions.len())),
            Err(LogError::Corrupt { path, offset, reason }) => {
                findings.problem(&path, format!("at offset {offset}: {reason}"))
            }
            Err(error) => findings.problem(dir, error),
        }
    }

    // Snapshot files, each whole.
    for (authority, partition) in SnapshotStore::all(&*disk)? {
        for (_, path) in SnapshotStore::new(disk.clone(), authority.as_str(), partition).snapshots()? {
            match check_file(&disk, &path) {
                Ok(meta) => findings.ok(&path, &format!("snapshot at index {}, checksum", meta.position.index)),
                Err(error) => findings.problem(&path, error),
            }
        }
    }

    // The state store: its seal, redb's own check, then every partition's rows.
    let store_file = Path::new(STORE_FILE);
    if disk.exists(store_file)? {
        match store::seal::check(&*disk)? {
            SealCheck::Matches => findings.ok(store_file, "every byte, against the seal of the last clean stop"),
            SealCheck::Absent => findings.ok(store_file, "no seal (the node did not stop cleanly): redb's checks only"),
            SealCheck::Differs { reason } => {
                findings.problem(store_file, format!("changed since the node stopped cleanly: {reason}"))
            }
        }
        let (_copy, copy_disk) = store_copy(&target.data_dir)?;
        match Store::check_integrity(&copy_disk) {
            Ok(true) => findings.ok(store_file, "redb integrity check"),
            Ok(false) => findings.problem(store_file, "redb's integrity check had to repair it"),
            Err(error) => findings.problem(store_file, format!("redb's integrity check: {error}")),
        }
        let opened = open_store(&target.data_dir);
        match opened
            .as_ref()
            .map_err(|e| format!("{e:#}"))
            .and_then(|(_, store)| store.read().map_err(|e| e.to_string()))
        {
            Ok(rows) => {
                let mut partitions = 0;
                for (partition, record) in rows.partitions()? {
                    partitions += 1;
                    match store::check::check_partition(
                        &rows,
                        partition,
                        record.applied.index,
                        &store::DedupLimits::DEFAULT,
                    ) {
                        Ok(counts) if counts == record.counts => {}
                        Ok(counts) => findings.problem(
                            store_file,
                            format!(
                                "partition {partition}: its rows count {counts:?}, its record says {:?}",
                                record.counts
                            ),
                        ),
                        Err(problem) => findings.problem(store_file, problem),
                    }
                }
                findings.ok(store_file, &format!("rows of {partitions} partitions"));
            }
            Err(error) => findings.problem(store_file, error),
        }
    }

    let good = findings.problems.is_empty();
    let value = json!({ "ok": good, "checked": findings.checked, "problems": findings.problems });
    print(target, &value, || {
        let mut out = String::new();
        for c in &findings.checked {
            out += &format!(
                "ok       {}: {}\n",
                c["file"].as_str().unwrap_or_default(),
                c["check"].as_str().unwrap_or_default()
            );
        }
        for p in &findings.problems {
            out += &format!(
                "PROBLEM  {}: {}\n",
                p["file"].as_str().unwrap_or_default(),
                p["problem"].as_str().unwrap_or_default()
            );
        }
        out += &if good { "all good\n".to_owned() } else { format!("{} problems\n", findings.problems.len()) };
        out
    });
    anyhow::ensure!(good, "{} problems in {}", findings.problems.len(), target.data_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort_core::ids::ClientId;
    use cohort_core::state_machine::{RelativePath, RepoId, WriteOp};

    #[test]
    fn entries_are_described_by_what_they_hold() {
        let repo = RepoId { storage: "default".into(), relative_path: RelativePath::new("team/app.git").unwrap() };
        let command = Command { client: ClientId(7), seq: 3, op: WriteOp::CreateRepository { repo, fork_of: None } };
        let described = describe(EntryKind::Normal, &command.encode(), &[]);
        assert!(described.contains("CreateRepository") && described.contains("team/app.git"), "{described}");
        assert!(describe(EntryKind::Normal, &[], &[]).contains("new leader's first entry"));
        assert!(describe(EntryKind::Normal, &[], b"cohort-raft-off").contains("turns Raft off"));
        assert!(describe(EntryKind::Normal, &[], b"cohort-raft-on").contains("turns Raft on"));
        assert!(describe(EntryKind::Normal, &[], b"cohort-place-by-index").contains("objects placed by index"));
        assert!(describe(EntryKind::Normal, &[], b"cohort-format-dedup-ring").contains("dedup results in rings"));
        assert!(describe(EntryKind::Normal, b"\xff\xff garbage", &[]).starts_with("undecodable command"));
        assert_eq!(describe(EntryKind::ConfChangeV2, b"\x01", &[]), "membership change");
        let huge = Command {
            client: ClientId(7),
            seq: 4,
            op: WriteOp::DeleteRepository {
                repo: RepoId {
                    storage: "default".into(),
                    relative_path: RelativePath::new(format!("{}.git", "a".repeat(400))).unwrap(),
                },
            },
        };
        assert!(describe(EntryKind::Normal, &huge.encode(), &[]).ends_with('…'), "a long command is cut");
    }
}
