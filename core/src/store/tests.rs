//! Tests of the state machine in the store: compare-and-set, atomic transactions, forks and
//! the object pool, idempotency, the directory, snapshot streams, and random command
//! sequences applied to replicas that must agree. Every change is followed by a whole check of
//! the partition's rows (`check::check_partition`) against its record.

use super::check::{check_partition, digest};
use super::dedup::{DedupLimits, DEDUP_CLIENTS_MAX, DEDUP_WINDOW_MAX};
use super::snapshot::{export, import};
use super::tables::{self, Holders, ObjectAt, TableId};
use super::*;
use crate::ids::{ClientId, NodeId, PeerId};
use crate::persist::LogPosition;
use crate::state_machine::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const STORAGE: &str = "default";
/// The partition the tests apply to; it holds repositories and a directory alike.
const P: PartitionId = PartitionId(5);

fn repo(path: &str) -> RepoId {
    RepoId::new(STORAGE, path).expect("a valid repository id")
}

fn name(text: &str) -> RefName {
    RefName::new(text).expect("a valid ref name")
}

fn blob(content: &str) -> NewObject {
    NewObject::new(ObjectKind::Blob, content.as_bytes().to_vec())
}

fn create(path: &str) -> WriteOp {
    WriteOp::CreateRepository { repo: repo(path), fork_of: None }
}

fn fork(path: &str, parent: &str) -> WriteOp {
    WriteOp::CreateRepository { repo: repo(path), fork_of: Some(RelativePath::new(parent).unwrap()) }
}

fn delete(path: &str) -> WriteOp {
    WriteOp::DeleteRepository { repo: repo(path) }
}

fn tx(path: &str, objects: Vec<NewObject>, refs: Vec<RefUpdate>) -> WriteOp {
    WriteOp::Transaction { repo: repo(path), objects, refs }
}

fn set(ref_name: &str, expected: Expected, new: Option<RefValue>) -> RefUpdate {
    RefUpdate { name: name(ref_name), expected, new }
}

fn direct(object: &NewObject) -> RefValue {
    RefValue::Direct(object.oid)
}

fn nodes(ids: &[u64]) -> Vec<NodeId> {
    ids.iter().map(|id| NodeId(*id)).collect()
}

fn allocate(path: &str, voters: &[u64]) -> WriteOp {
    WriteOp::AllocatePartition { repo: repo(path), voters: nodes(voters) }
}

fn route(path: &str, partition: u64) -> WriteOp {
    WriteOp::RouteRepository { repo: repo(path), partition: PartitionId(partition) }
}

fn unroute(path: &str) -> WriteOp {
    WriteOp::UnrouteRepository { repo: repo(path) }
}

fn set_members(partition: u64, voters: &[u64], learners: &[u64]) -> WriteOp {
    let peers = voters.iter().chain(learners).map(|&n| PeerId::new(NodeId(n), 0)).collect();
    WriteOp::SetPartitionMembers {
        partition: PartitionId(partition),
        voters: nodes(voters),
        learners: nodes(learners),
        peers,
        as_of: 0,
    }
}

fn partition_info(authority: &str, voters: &[u64], learners: &[u64]) -> PartitionInfo {
    let mut peers: Vec<PeerId> = voters.iter().chain(learners).map(|&n| PeerId::new(NodeId(n), 0)).collect();
    peers.sort();
    PartitionInfo {
        authority: authority.to_string(),
        voters: nodes(voters),
        learners: nodes(learners),
        peers,
        members_as_of: 0,
    }
}

/// The answer of an `AllocatePartition` applied at `index`.
fn allocated(index: u64, partition: u64) -> WriteResult {
    Ok(WriteOk { index, object_ids: vec![], partition: Some(PartitionId(partition)) })
}

/// One partition of a store, fed by one client, checked whole after every apply.
struct Harness {
    store: Store,
    index: u64,
    seq: u64,
    limits: DedupLimits,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_limits(DedupLimits::DEFAULT)
    }

    fn with_limits(limits: DedupLimits) -> Harness {
        Harness { store: Store::in_memory(), index: 0, seq: 0, limits }
    }

    /// A partition whose first entry places objects by index, as the bootstrap log of the
    /// build before dedup rings did.
    fn placing_by_index() -> Harness {
        Harness::in_format(Format::PlacedByIndex)
    }

    /// A partition of `format`, as a bootstrap log switching to it makes one.
    fn in_format(format: Format) -> Harness {
        let mut h = Harness::new();
        if format != Format::Original {
            h.switch_format(format);
        }
        h
    }

    /// Applies the entry that switches the partition to `format` from here.
    fn switch_format(&mut self, format: Format) {
        self.index += 1;
        let position = LogPosition { index: self.index, term: 1 };
        let limits = self.limits;
        self.store
            .write(Commit::Lazy, |rows| {
                let mut writer = PartitionWriter::with_limits(rows, P, limits)?;
                writer.apply_format(position, format)?;
                writer.finish().map(|_| ())
            })
            .expect("the store takes the write");
        self.assert_consistent();
    }

    fn format(&self) -> Format {
        Format::of(&self.store.read().unwrap(), P).unwrap()
    }

    /// A new write of client 1.
    fn write(&mut self, op: WriteOp) -> WriteResult {
        self.seq += 1;
        self.apply(ClientId(1), self.seq, op)
    }

    fn apply(&mut self, client: ClientId, seq: u64, op: WriteOp) -> WriteResult {
        let result = self.apply_unchecked(client, seq, op);
        self.assert_consistent();
        result
    }

    /// Applies without the whole check (for loops that would make it quadratic).
    fn apply_unchecked(&mut self, client: ClientId, seq: u64, op: WriteOp) -> WriteResult {
        self.index += 1;
        let command = Command { client, seq, op };
        let position = LogPosition { index: self.index, term: 1 };
        let limits = self.limits;
        self.store
            .write(Commit::Lazy, |rows| {
                let mut writer = PartitionWriter::with_limits(rows, P, limits)?;
                let result = writer.apply(position, &command)?;
                writer.finish()?;
                Ok(result)
            })
            .expect("the store takes the write")
    }

    fn assert_consistent(&self) {
        let rows = self.store.read().unwrap();
        let record = rows.partition(P).unwrap().expect("a record");
        assert_eq!(record.applied.index, self.index);
        let counts = check_partition(&rows, P, self.index, &self.limits).unwrap_or_else(|problem| panic!("{problem}"));
        assert_eq!(counts, record.counts, "the record's counts are the rows'");
    }

    fn read(&self, query: ReadQuery) -> ReadResult {
        read::read(&self.store.read().unwrap(), P, &query).unwrap()
    }

    fn refs(&self, path: &str) -> Vec<(RefName, RefValue)> {
        match self.read(ReadQuery::ListRefs { repo: repo(path) }) {
            ReadResult::Refs(refs) => refs,
            other => panic!("ListRefs answered {other:?}"),
        }
    }

    fn object(&self, path: &str, oid: Oid) -> Option<(ObjectKind, Vec<u8>)> {
        match self.read(ReadQuery::GetObject { repo: repo(path), oid }) {
            ReadResult::Object(object) => object,
            other => panic!("GetObject answered {other:?}"),
        }
    }

    fn digest(&self) -> Digest {
        digest(&self.store.read().unwrap(), P).unwrap()
    }

    /// Digest of every table but the dedup ones: what a rejected write must leave alone.
    fn digest_without_dedup(&self) -> Vec<(TableId, Vec<u8>, Vec<u8>)> {
        let rows = self.store.read().unwrap();
        let mut out = Vec::new();
        for table in TableId::ALL {
            if matches!(table, TableId::DedupClients | TableId::DedupResults | TableId::DedupOrder) {
                continue;
            }
            rows.scan(table, &keys::partition_prefix(P), &mut |key, value| {
                out.push((table, key.to_vec(), value.to_vec()));
                Ok(std::ops::ControlFlow::Continue(()))
            })
            .unwrap();
        }
        out
    }

    fn holders(&self, oid: &Oid) -> u64 {
        let rows = self.store.read().unwrap();
        rows.get(TableId::Holders, &keys::object(P, oid))
            .unwrap()
            .map_or(0, |bytes| Holders::decode(&bytes).unwrap().count)
    }

    /// Whole objects stored, placed by id or by index.
    fn objects_stored(&self) -> usize {
        self.rows_of(TableId::Objects) + self.rows_of(TableId::ObjectsAt)
    }

    fn counts(&self) -> Counts {
        self.store.read().unwrap().partition(P).unwrap().unwrap_or_default().counts
    }

    fn route_of(&self, path: &str) -> Option<(PartitionId, PartitionInfo)> {
        match self.read(ReadQuery::Route { repo: repo(path) }) {
            ReadResult::Route(route) => route,
            other => panic!("Route answered {other:?}"),
        }
    }

    /// Every partition, read two to a page.
    fn partitions(&self) -> Vec<(PartitionId, PartitionInfo, Vec<RepoId>)> {
        let mut all: Vec<(PartitionId, PartitionInfo, Vec<RepoId>)> = Vec::new();
        loop {
            let after = all.last().map(|p| p.0);
            match self.read(ReadQuery::Partitions { after, limit: 2 }) {
                ReadResult::Partitions(page) if page.is_empty() => return all,
                ReadResult::Partitions(page) => {
                    assert!(page.len() <= 2, "a page holds at most its limit");
                    all.extend(page);
                }
                other => panic!("Partitions answered {other:?}"),
            }
        }
    }

    /// The rows of `P` as a snapshot stream.
    fn export(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        export(&self.store.read().unwrap(), P, &mut bytes).unwrap();
        bytes
    }
}

// ---- Transactions and compare-and-set ------------------------------------------------------

/// Tables open lazily, when first used; the store creates every one when it opens, so a
/// reader of a new store, and a writer that touches one table, meet no missing table.
#[test]
fn every_table_exists_in_a_new_store_and_tables_open_when_first_used() {
    let store = Store::in_memory();
    let rows = store.read().unwrap();
    for table in TableId::ALL {
        assert_eq!(rows.get(table, b"absent").unwrap(), None, "table {}", table.name());
    }
    let replaced = store.write(Commit::Lazy, |rows| rows.insert(TableId::Refs, b"key", b"one")).unwrap();
    assert!(!replaced, "a new row replaces nothing");
    let replaced = store.write(Commit::Lazy, |rows| rows.insert(TableId::Refs, b"key", b"two")).unwrap();
    assert!(replaced, "the second insert replaces the first");
    assert_eq!(store.read().unwrap().get(TableId::Refs, b"key").unwrap(), Some(b"two".to_vec()));
}

#[test]
fn compare_and_set() {
    let mut h = Harness::new();
    assert!(h.write(create("a")).is_ok());
    let one = blob("one");
    let two = blob("two");
    let main = "refs/heads/main";

    let ok = h.write(tx("a", vec![one.clone()], vec![set(main, Expected::MustNotExist, Some(direct(&one)))])).unwrap();
    assert_eq!(ok, WriteOk { index: 2, object_ids: vec![one.oid], partition: None });
    assert_eq!(h.refs("a"), vec![(name(main), direct(&one))]);
    assert_eq!(h.object("a", one.oid), Some((ObjectKind::Blob, b"one".to_vec())));

    // MustNotExist on an existing ref fails, and the message names the current value.
    let rejection =
        h.write(tx("a", vec![two.clone()], vec![set(main, Expected::MustNotExist, Some(direct(&two)))])).unwrap_err();
    assert_eq!(
        rejection,
        Rejection::PreconditionFailed {
            name: name(main),
            expected: Expected::MustNotExist,
            current: Some(direct(&one)),
        }
    );
    let message = rejection.to_string();
    assert!(message.contains(&one.oid.to_string()) && message.contains(main), "{message}");
    assert_eq!(h.object("a", two.oid), None, "a rejected transaction writes no object");

    // Value mismatch, then match.
    let rejection =
        h.write(tx("a", vec![two.clone()], vec![set(main, Expected::Value(direct(&two)), Some(direct(&two)))]));
    assert!(matches!(rejection, Err(Rejection::PreconditionFailed { current: Some(_), .. })));
    assert!(h
        .write(tx("a", vec![two.clone()], vec![set(main, Expected::Value(direct(&one)), Some(direct(&two)))]))
        .is_ok());
    assert_eq!(h.refs("a"), vec![(name(main), direct(&two))]);

    // Any overwrites, to an object the repository already holds.
    assert!(h.write(tx("a", vec![], vec![set(main, Expected::Any, Some(direct(&one)))])).is_ok());
    assert_eq!(h.refs("a"), vec![(name(main), direct(&one))]);

    // Delete with a precondition; the message of an absent current value says so.
    assert!(h.write(tx("a", vec![], vec![set(main, Expected::Value(direct(&one)), None)])).is_ok());
    assert!(h.refs("a").is_empty());
    let rejection = h.write(tx("a", vec![], vec![set(main, Expected::Value(direct(&one)), None)])).unwrap_err();
    assert!(rejection.to_string().contains("absent"), "{rejection}");
    // Deleting an absent ref with Any is a no-op success.
    assert!(h.write(tx("a", vec![], vec![set(main, Expected::Any, None)])).is_ok());
}

#[test]
fn transactions_are_atomic() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let one = blob("one");
    let two = blob("two");
    h.write(tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&one)))])).unwrap();
    let before = h.digest_without_dedup();

    // The first update alone would succeed; the second fails; nothing is applied.
    let result = h.write(tx(
        "a",
        vec![two.clone()],
        vec![
            set("refs/heads/dev", Expected::MustNotExist, Some(direct(&two))),
            set("refs/heads/main", Expected::Value(direct(&two)), Some(direct(&two))),
        ],
    ));
    assert!(matches!(result, Err(Rejection::PreconditionFailed { .. })));
    assert_eq!(h.digest_without_dedup(), before);
    assert_eq!(h.object("a", two.oid), None);

    // Preconditions see the state before the transaction, and a name is updated at most once.
    let result = h.write(tx(
        "a",
        vec![],
        vec![set("refs/heads/x", Expected::Any, Some(direct(&one))), set("refs/heads/x", Expected::Any, None)],
    ));
    assert_eq!(result, Err(Rejection::DuplicateRefUpdate { name: name("refs/heads/x") }));

    // A direct target must be held or written in the same transaction.
    let unknown = blob("unknown");
    let result = h.write(tx("a", vec![], vec![set("refs/heads/x", Expected::Any, Some(direct(&unknown)))]));
    assert_eq!(result, Err(Rejection::ObjectNotFound { oid: unknown.oid }));

    // A claimed id must match the content.
    let mut lying = blob("lying");
    lying.oid = one.oid;
    let result = h.write(tx("a", vec![lying.clone()], vec![]));
    assert_eq!(result, Err(Rejection::ObjectIdMismatch { claimed: one.oid, actual: blob("lying").oid }));

    // Too large: refused before proposing and at apply.
    let huge = NewObject::new(ObjectKind::Blob, vec![0; OBJECT_SIZE_BYTES_MAX + 1]);
    let command = Command { client: ClientId(1), seq: 99, op: tx("a", vec![huge], vec![]) };
    assert!(matches!(validate(&command), Err(Rejection::ObjectTooLarge { .. })));
    assert!(matches!(h.write(command.op), Err(Rejection::ObjectTooLarge { .. })));

    // Missing repository.
    assert_eq!(h.write(tx("nope", vec![], vec![])), Err(Rejection::RepositoryNotFound { repo: repo("nope") }));
    assert_eq!(h.digest_without_dedup(), before);
}

#[test]
fn symbolic_head() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let main = RefValue::Symbolic(name("refs/heads/main"));
    // An unborn branch: HEAD may point to a name that does not exist yet.
    h.write(tx("a", vec![], vec![set("HEAD", Expected::MustNotExist, Some(main.clone()))])).unwrap();
    assert_eq!(h.refs("a"), vec![(RefName::head(), main.clone())]);

    let dev = RefValue::Symbolic(name("refs/heads/dev"));
    let rejection =
        h.write(tx("a", vec![], vec![set("HEAD", Expected::Value(dev.clone()), Some(dev.clone()))])).unwrap_err();
    assert!(rejection.to_string().contains("ref: refs/heads/main"), "{rejection}");
    h.write(tx("a", vec![], vec![set("HEAD", Expected::Value(main), Some(dev))])).unwrap();

    let to_itself =
        h.write(tx("a", vec![], vec![set("HEAD", Expected::Any, Some(RefValue::Symbolic(RefName::head())))]));
    assert!(matches!(to_itself, Err(Rejection::InvalidSymbolicTarget { .. })));

    // Detached HEAD.
    let one = blob("one");
    h.write(tx("a", vec![one.clone()], vec![set("HEAD", Expected::Any, Some(direct(&one)))])).unwrap();
    assert_eq!(h.refs("a"), vec![(RefName::head(), direct(&one))]);
}

/// A repository's references stay within their bound whether or not an unconditional update
/// reads the reference it sets (it does not when there is room for every update to add one).
#[test]
fn the_reference_bound_holds_for_unconditional_updates() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let one = blob("one");
    h.write(tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&one)))])).unwrap();
    let key = keys::repo(P, &repo("a"));
    let refs_counted = |h: &Harness| {
        let bytes = h.store.read().unwrap().get(TableId::Repositories, &key).unwrap().expect("a record");
        tables::decode::<tables::RepoRecord>("repository", &bytes).unwrap().refs
    };
    // The repository's record says it is two references short of its bound (only the record:
    // its rows no longer check out, so nothing below checks them).
    let bound = REPOSITORY_REFS_MAX as u64;
    let record = tables::encode(&tables::RepoRecord { refs: bound - 2 });
    h.store.write(Commit::Lazy, |rows| rows.insert(TableId::Repositories, &key, &record)).unwrap();
    let put = |names: &[&str]| {
        let updates = names.iter().map(|n| set(n, Expected::Any, Some(direct(&one)))).collect();
        tx("a", vec![], updates)
    };
    // Room for both to be new: neither is read, and both are counted as added.
    assert!(h.apply_unchecked(ClientId(2), 1, put(&["refs/heads/x", "refs/heads/y"])).is_ok());
    assert_eq!(refs_counted(&h), bound);
    // At the bound, each is read: one that replaces a reference goes through, one that would
    // add one is refused.
    assert!(h.apply_unchecked(ClientId(2), 2, put(&["refs/heads/main"])).is_ok());
    assert_eq!(
        h.apply_unchecked(ClientId(2), 3, put(&["refs/heads/x", "refs/heads/z"])),
        Err(Rejection::TooManyRefs { repo: repo("a"), count: bound + 1, count_max: bound })
    );
    assert_eq!(refs_counted(&h), bound);
}

// ---- Repositories, forks, object pool ------------------------------------------------------

#[test]
fn create_and_delete_repositories() {
    let mut h = Harness::new();
    h.write(create("b")).unwrap();
    h.write(create("a")).unwrap();
    assert_eq!(h.write(create("a")), Err(Rejection::RepositoryExists { repo: repo("a") }));
    assert_eq!(h.read(ReadQuery::ListRepositories), ReadResult::Repositories(vec![repo("a"), repo("b")]));
    assert_eq!(h.read(ReadQuery::RepositoryExists { repo: repo("a") }), ReadResult::Exists(true));
    h.write(delete("a")).unwrap();
    assert_eq!(h.read(ReadQuery::RepositoryExists { repo: repo("a") }), ReadResult::Exists(false));
    assert_eq!(h.write(delete("a")), Err(Rejection::RepositoryNotFound { repo: repo("a") }));
    assert_eq!(
        h.read(ReadQuery::ListRefs { repo: repo("a") }),
        ReadResult::Rejected(Rejection::RepositoryNotFound { repo: repo("a") })
    );
    assert_eq!(h.counts().repositories, 1);
}

#[test]
fn forks_share_objects_and_delete_drops_unreferenced() {
    for h in [Harness::new(), Harness::placing_by_index()] {
        forks_share_objects_and_delete_drops_unreferenced_in(h);
    }
}

fn forks_share_objects_and_delete_drops_unreferenced_in(mut h: Harness) {
    let shared = blob("shared");
    let later = blob("later");
    let own = blob("own");
    h.write(create("a")).unwrap();
    h.write(tx("a", vec![shared.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&shared)))])).unwrap();
    h.write(tx("a", vec![], vec![set("HEAD", Expected::Any, Some(RefValue::Symbolic(name("refs/heads/main"))))]))
        .unwrap();

    assert_eq!(h.write(fork("f", "nope")), Err(Rejection::RepositoryNotFound { repo: repo("nope") }));
    h.write(fork("f", "a")).unwrap();
    assert_eq!(h.refs("f"), h.refs("a"), "a fork starts with its parent's refs");
    assert_eq!(h.object("f", shared.oid), Some((ObjectKind::Blob, b"shared".to_vec())));
    assert_eq!(h.objects_stored(), 1, "stored once");
    assert_eq!(h.holders(&shared.oid), 2);

    // Objects written to the parent after the fork are the parent's alone.
    h.write(tx("a", vec![later.clone()], vec![])).unwrap();
    assert_eq!(h.object("f", later.oid), None);
    let result = h.write(tx("f", vec![], vec![set("refs/heads/x", Expected::Any, Some(direct(&later)))]));
    assert_eq!(result, Err(Rejection::ObjectNotFound { oid: later.oid }));
    // The fork can point at what it inherited, and write its own.
    h.write(tx("f", vec![own.clone()], vec![set("refs/heads/x", Expected::Any, Some(direct(&shared)))])).unwrap();

    h.write(delete("a")).unwrap();
    assert_eq!(h.object("f", shared.oid), Some((ObjectKind::Blob, b"shared".to_vec())));
    assert_eq!(h.holders(&later.oid), 0, "unreferenced object dropped");
    assert_eq!(h.holders(&shared.oid), 1);

    h.write(delete("f")).unwrap();
    assert_eq!(h.objects_stored(), 0);
    assert_eq!(h.read(ReadQuery::ListRepositories), ReadResult::Repositories(vec![]));
}

#[test]
fn same_object_written_twice_is_held_once() {
    for mut h in [Harness::new(), Harness::placing_by_index()] {
        let one = blob("one");
        h.write(create("a")).unwrap();
        let ok = h.write(tx("a", vec![one.clone(), one.clone()], vec![])).unwrap();
        assert_eq!(ok.object_ids, vec![one.oid, one.oid]);
        h.write(tx("a", vec![one.clone()], vec![])).unwrap();
        assert_eq!(h.holders(&one.oid), 1);
        assert_eq!(h.objects_stored(), 1);
    }
}

#[test]
fn objects_are_stored_in_git_loose_format() {
    for mut h in [Harness::new(), Harness::placing_by_index()] {
        let object = NewObject::new(ObjectKind::Blob, b"hello\n".to_vec());
        h.write(create("a")).unwrap();
        h.write(tx("a", vec![object.clone()], vec![])).unwrap();
        let rows = h.store.read().unwrap();
        let stored = read::loose_object(&rows, P, &object.oid).unwrap();
        assert_eq!(stored, loose::encode(ObjectKind::Blob, b"hello\n"));
        assert_eq!(loose::decode(&object.oid, &stored).unwrap(), (ObjectKind::Blob, b"hello\n".to_vec()));
    }
}

/// A partition that placed objects by id goes on serving them after it places new ones by
/// index: both kinds read, fork, and go with their last holder, each from its own table.
#[test]
fn objects_placed_by_id_stay_where_they_are_when_the_partition_places_by_index() {
    let mut h = Harness::new();
    assert_eq!(h.format(), Format::Original);
    let (old, new, both) = (blob("old"), blob("new"), blob("both"));
    h.write(create("a")).unwrap();
    h.write(tx("a", vec![old.clone(), both.clone()], vec![])).unwrap();
    assert_eq!((h.rows_of(TableId::Objects), h.rows_of(TableId::ObjectsAt)), (2, 0));

    h.switch_format(Format::PlacedByIndex);
    assert_eq!(h.format(), Format::PlacedByIndex);
    h.switch_format(Format::PlacedByIndex); // A second switch changes nothing.
    h.switch_format(Format::Original); // Nor one to an earlier format.
    assert_eq!(h.format(), Format::PlacedByIndex);
    let ok = h.write(tx("a", vec![new.clone(), both.clone()], vec![])).unwrap();
    assert_eq!((h.rows_of(TableId::Objects), h.rows_of(TableId::ObjectsAt)), (2, 1), "only the new object moves in");
    let rows = h.store.read().unwrap();
    let holders =
        |oid: &Oid| Holders::decode(&rows.get(TableId::Holders, &keys::object(P, oid)).unwrap().unwrap()).unwrap();
    assert_eq!(holders(&new.oid), Holders { count: 1, at: Some(ObjectAt { index: ok.index, number: 0 }) });
    assert_eq!(holders(&both.oid), Holders { count: 1, at: None });
    drop(rows);

    h.write(fork("f", "a")).unwrap();
    for object in [&old, &new, &both] {
        assert_eq!(h.object("f", object.oid), Some((ObjectKind::Blob, object.data.clone())));
        assert_eq!(h.holders(&object.oid), 2);
    }
    h.write(delete("a")).unwrap();
    assert_eq!(h.objects_stored(), 3, "the fork holds them all");
    h.write(delete("f")).unwrap();
    assert_eq!((h.rows_of(TableId::Objects), h.rows_of(TableId::ObjectsAt)), (0, 0));
}

/// The whole check finds an object placed by index whose row is missing, and one nobody holds.
#[test]
fn the_check_finds_objects_placed_by_index_missing_or_unheld() {
    let mut h = Harness::placing_by_index();
    let one = blob("one");
    h.write(create("a")).unwrap();
    let ok = h.write(tx("a", vec![one.clone()], vec![])).unwrap();
    let at_key = keys::object_at(P, ok.index, 0);
    let loose = h.store.read().unwrap().get(TableId::ObjectsAt, &at_key).unwrap().unwrap();
    let check = |h: &Harness| check_partition(&h.store.read().unwrap(), P, h.index, &DedupLimits::DEFAULT);
    h.store.write(Commit::Lazy, |rows| rows.remove(TableId::ObjectsAt, &at_key)).unwrap();
    let problem = check(&h).unwrap_err();
    assert!(problem.contains("where nothing is stored"), "{problem}");
    h.store
        .write(Commit::Lazy, |rows| rows.insert(TableId::ObjectsAt, &keys::object_at(P, ok.index, 1), &loose))
        .unwrap();
    let problem = check(&h).unwrap_err();
    assert!(problem.contains("held by nobody"), "{problem}");
    h.store
        .write(Commit::Lazy, |rows| {
            rows.remove(TableId::ObjectsAt, &keys::object_at(P, ok.index, 1))?;
            rows.insert(TableId::ObjectsAt, &at_key, &loose)
        })
        .unwrap();
    assert!(check(&h).is_ok());
    h.store.write(Commit::Lazy, |rows| rows.remove(TableId::Placement, &keys::partition_prefix(P))).unwrap();
    let problem = check(&h).unwrap_err();
    assert!(problem.contains("places them by id"), "{problem}");
}

// ---- Idempotency ---------------------------------------------------------------------------

/// The formats whose dedup rows differ: the original's and the rings.
const DEDUP_FORMATS: [Format; 2] = [Format::Original, Format::DedupRing];

#[test]
fn retries_return_the_original_result() {
    for format in DEDUP_FORMATS {
        let mut h = Harness::in_format(format);
        let client = ClientId(7);
        let one = blob("one");
        let first = h.apply(client, 1, create("a"));
        assert_eq!(first, Ok(WriteOk { index: h.index, object_ids: vec![], partition: None }));
        let digest = h.digest();
        assert_eq!(h.apply(client, 1, create("a")), first, "a retry is not applied again");
        assert_eq!(h.digest(), digest);

        // A rejection is remembered too, even once its cause is gone.
        let update = || tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Value(direct(&one)), None)]);
        let rejected = h.apply(client, 2, update());
        assert!(matches!(rejected, Err(Rejection::PreconditionFailed { .. })));
        h.apply(client, 3, tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&one)))]))
            .unwrap();
        assert_eq!(h.apply(client, 2, update()), rejected);

        // Another client with the same seq is another write.
        assert_eq!(h.apply(ClientId(8), 1, create("a")), Err(Rejection::RepositoryExists { repo: repo("a") }));

        // A window that is not full has forgotten nothing: a lower, unseen seq is applied.
        assert!(h.apply(ClientId(8), 0, create("b")).is_ok(), "{format:?}");
    }
}

#[test]
fn sequence_too_old_once_the_window_is_full() {
    for format in DEDUP_FORMATS {
        let mut h = Harness::in_format(format);
        let client = ClientId(3);
        h.apply(client, 0, create("a")).unwrap();
        for seq in 1..DEDUP_WINDOW_MAX {
            h.apply_unchecked(client, seq, delete("missing")).unwrap_err();
        }
        h.assert_consistent();
        // Full: seqs 0..=127. Seq 128 evicts seq 0.
        let newest = h.apply(client, DEDUP_WINDOW_MAX, create("b"));
        assert!(newest.is_ok());
        let digest = h.digest();
        let too_old = h.apply(client, 0, create("a"));
        assert_eq!(too_old, Err(Rejection::SequenceTooOld { client, seq: 0, oldest_kept: 1 }), "{format:?}");
        assert_eq!(h.digest(), digest, "SequenceTooOld is not recorded");
        assert!(too_old.unwrap_err().to_string().contains("older than"));
        assert_eq!(h.apply(client, 1, create("a")), Err(Rejection::RepositoryNotFound { repo: repo("missing") }));
        assert_eq!(h.apply(client, DEDUP_WINDOW_MAX, create("zzz")), newest);
    }
}

/// A ring answers for the window below its highest sequence, whatever its slots held before:
/// a slot from an earlier turn answers for nothing.
#[test]
fn a_ring_answers_for_the_window_below_its_highest_sequence() {
    let limits = DedupLimits { window_max: 4, ..DedupLimits::DEFAULT };
    let mut h = Harness::with_limits(limits);
    h.switch_format(Format::DedupRing);
    let client = ClientId(5);
    let first = h.apply(client, 1, create("a"));
    assert!(first.is_ok());
    // Seq 9 lands in seq 1's slot, two turns on; slots 2 and 3 stay empty.
    let far = h.apply(client, 9, create("b"));
    assert!(far.is_ok());
    assert_eq!(h.apply(client, 1, create("zzz")), Err(Rejection::SequenceTooOld { client, seq: 1, oldest_kept: 6 }));
    assert_eq!(h.apply(client, 9, create("zzz")), far, "the newest is remembered");
    // Seq 6 is in the window and its slot (2) empty: it was never applied.
    assert_eq!(h.apply(client, 6, create("a")), Err(Rejection::RepositoryExists { repo: repo("a") }));
    assert_eq!(h.apply(client, 6, create("c")), Err(Rejection::RepositoryExists { repo: repo("a") }), "now a retry");
    // Seq 13 lands in seq 9's slot; the window moves on to 10..=13.
    assert!(h.apply(client, 13, create("c")).is_ok());
    assert_eq!(h.apply(client, 9, create("zzz")), Err(Rejection::SequenceTooOld { client, seq: 9, oldest_kept: 10 }));
    assert_eq!(h.rows_of(TableId::DedupResults), 2, "seq 13 took seq 9's slot, seq 6 has its own");
    assert_eq!(h.rows_of(TableId::DedupOrder), 0, "rings keep no order");
}

#[test]
fn least_recent_client_is_evicted() {
    for format in DEDUP_FORMATS {
        let mut h = Harness::in_format(format);
        // Client 0 writes first, client 1 second and again near the end.
        let first = h.apply(ClientId(0), 1, create("a"));
        assert!(first.is_ok());
        let second = h.apply(ClientId(1), 1, create("b"));
        assert!(second.is_ok());
        for client in 2..DEDUP_CLIENTS_MAX {
            h.apply_unchecked(ClientId(client), 1, delete("missing")).unwrap_err();
        }
        h.assert_consistent();
        assert_eq!(h.counts().dedup_clients, DEDUP_CLIENTS_MAX);
        h.apply(ClientId(1), 2, delete("missing")).unwrap_err();
        // One client too many: client 0 (lowest last index) goes, client 1 (recent) stays. The
        // original evicts one client, a ring an eighth of them at once.
        h.apply(ClientId(1_000_000), 1, delete("missing")).unwrap_err();
        let remembered = match format.dedup_ring() {
            true => DEDUP_CLIENTS_MAX - DEDUP_CLIENTS_MAX / 8,
            false => DEDUP_CLIENTS_MAX,
        };
        assert_eq!(h.counts().dedup_clients, remembered, "{format:?}");
        assert_eq!(h.apply(ClientId(1), 1, create("b")), second, "client 1 still remembered");
        assert_eq!(
            h.apply(ClientId(0), 1, create("a")),
            Err(Rejection::RepositoryExists { repo: repo("a") }),
            "client 0 forgotten: its retry is applied again"
        );
        if format.dedup_ring() {
            // From 4,097 clients down to 3,584: client 0 and clients 2 to 513 went.
            let evicted = DEDUP_CLIENTS_MAX / 8 + 1;
            let absent = h.apply(ClientId(evicted), 1, create("b"));
            assert_eq!(absent, Err(Rejection::RepositoryExists { repo: repo("b") }), "client {evicted} forgotten");
            let kept = h.apply(ClientId(evicted + 1), 1, create("b"));
            assert_eq!(kept, Err(Rejection::RepositoryNotFound { repo: repo("missing") }), "remembered");
        }
    }
}

#[test]
fn dedup_bytes_are_bounded() {
    for format in DEDUP_FORMATS {
        let limits = DedupLimits { window_max: 4, clients_max: 100, results_bytes_max: 2_000 };
        let mut h = Harness::with_limits(limits);
        if format != Format::Original {
            h.switch_format(format);
        }
        h.write(create("a")).unwrap();
        let objects: Vec<NewObject> = (0..10).map(|i| blob(&format!("object {i}"))).collect();
        for index in 1..=50u64 {
            let client = ClientId(index % 7);
            let result = h.apply(client, index, tx("a", objects.clone(), vec![]));
            assert!(result.is_ok());
            assert!(h.counts().dedup_results_bytes <= limits.results_bytes_max);
            assert_eq!(h.apply(client, index, create("zzz")), result, "just recorded, still remembered");
        }
        // The budget holds fewer results than 7 clients' full windows: some clients were evicted.
        let size_bytes = tables::encode(&h.apply(ClientId(1), 1_000, tx("a", objects.clone(), vec![]))).len() as u64;
        assert!(limits.results_bytes_max < 7 * 4 * size_bytes);
        assert!(h.counts().dedup_clients < 7, "{format:?}");
    }
}

/// Switching a partition to rings keeps every result a ring answers for: retries across the
/// switch return their first result, those below a client's window are too old, and the rows
/// check out.
#[test]
fn switching_to_rings_keeps_the_results_in_each_window() {
    let limits = DedupLimits { window_max: 4, ..DedupLimits::DEFAULT };
    let mut h = Harness::with_limits(limits);
    let (a, b) = (ClientId(1), ClientId(2));
    let created = h.apply(a, 1, create("a"));
    let mut results = BTreeMap::new();
    for seq in 2..=6 {
        results.insert(seq, h.apply_unchecked(a, seq, delete("missing")));
    }
    // Client b's seqs are far apart: only its highest is in its ring's window.
    let b_low = h.apply(b, 1, create("b"));
    let b_high = h.apply(b, 100, create("c"));
    assert!(created.is_ok() && b_low.is_ok() && b_high.is_ok());
    assert_eq!(h.rows_of(TableId::DedupOrder), 2);

    h.switch_format(Format::DedupRing);
    assert_eq!(h.format(), Format::DedupRing);
    assert_eq!(h.rows_of(TableId::DedupOrder), 0, "rings keep no order");
    assert_eq!(h.rows_of(TableId::DedupResults), 4 + 1, "client a's window of 4, client b's highest");
    for (seq, result) in &results {
        match *seq >= 3 {
            true => assert_eq!(&h.apply(a, *seq, create("zzz")), result, "seq {seq} remembered"),
            false => assert!(matches!(h.apply(a, *seq, create("zzz")), Err(Rejection::SequenceTooOld { .. }))),
        }
    }
    assert_eq!(h.apply(b, 100, create("zzz")), b_high);
    assert_eq!(h.apply(b, 1, create("zzz")), Err(Rejection::SequenceTooOld { client: b, seq: 1, oldest_kept: 97 }));
    // New writes go on from the converted rings.
    assert!(h.apply(a, 7, create("d")).is_ok());
    assert!(matches!(h.apply(a, 3, create("zzz")), Err(Rejection::SequenceTooOld { oldest_kept: 4, .. })));
}

// ---- Directory ---------------------------------------------------------------------------

#[test]
fn the_routes_version_counts_committed_writes_that_change_routes() {
    let mut h = Harness::new();
    let version = |h: &Harness| h.store.routes_version();
    assert_eq!(version(&h), 0);
    assert!(h.write(allocate("a", &[1])).is_ok());
    assert_eq!(version(&h), 1, "a new route");
    assert!(h.write(create("elsewhere")).is_ok());
    assert!(h.write(tx("elsewhere", vec![blob("x")], vec![])).is_ok());
    assert_eq!(version(&h), 1, "writes that route nothing leave it");
    assert!(h.write(allocate("a", &[1])).is_err());
    assert_eq!(version(&h), 1, "a refused allocation routes nothing");
    assert!(h.write(route("a/fork", 1)).is_ok());
    assert!(h.write(unroute("a/fork")).is_ok());
    assert_eq!(version(&h), 3, "routed, then unrouted");
    // A transaction that changed routes and then failed committed nothing.
    let failed = h.store.write(Commit::Lazy, |rows| {
        rows.insert(TableId::Routes, b"some key", b"some value")?;
        Err::<(), _>(StoreError::Corrupt { reason: "abandoned".into() })
    });
    assert!(failed.is_err());
    assert_eq!(version(&h), 3);
}

#[test]
fn directory_allocates_partition_ids_from_one() {
    let mut h = Harness::new();
    let client = ClientId(4);
    let first = h.apply(client, 1, allocate("a", &[3, 1, 2]));
    assert_eq!(first, allocated(1, 1));
    assert_eq!(h.apply(client, 2, allocate("b", &[2])), allocated(2, 2));
    let other_storage = RepoId::new("other", "c").unwrap();
    let third = h.apply(client, 3, WriteOp::AllocatePartition { repo: other_storage.clone(), voters: nodes(&[1]) });
    assert_eq!(third, allocated(3, 3));

    assert_eq!(h.route_of("a").map(|r| r.0), Some(PartitionId(1)));
    assert_eq!(h.route_of("b").map(|r| r.0), Some(PartitionId(2)));
    assert_eq!(h.route_of("c"), None);
    assert_eq!(h.route_of("a").unwrap().1, partition_info(STORAGE, &[1, 2, 3], &[]), "voters are recorded sorted");
    let partitions = h.partitions();
    assert_eq!(
        partitions.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![PartitionId(1), PartitionId(2), PartitionId(3)]
    );
    assert_eq!(partitions[2].1.authority, "other");
    assert_eq!(partitions[2].2, vec![other_storage]);
    assert_eq!(h.counts().next_partition, 4);
    // Allocation is not repository creation: the partition's own repositories are untouched.
    assert_eq!(h.read(ReadQuery::ListRepositories), ReadResult::Repositories(vec![]));

    // A retry answers the allocated id again and allocates nothing.
    let digest = h.digest();
    assert_eq!(h.apply(client, 1, allocate("a", &[3, 1, 2])), first);
    assert_eq!(h.apply(client, 3, allocate("zzz", &[9])), third);
    assert_eq!(h.digest(), digest);
    assert_eq!(h.counts().next_partition, 4);

    // Allocating for a routed repository is refused, and burns no id.
    assert_eq!(h.apply(client, 4, allocate("a", &[1])), Err(Rejection::RepositoryExists { repo: repo("a") }));
    assert_eq!(h.counts().next_partition, 4);
    assert_eq!(h.apply(client, 5, allocate("d", &[1])), allocated(h.index, 4));
}

#[test]
fn directory_member_checks() {
    let too_many_voters: Vec<u64> = (1..=PARTITION_VOTERS_MAX as u64 + 1).collect();
    let too_many_learners: Vec<u64> = (10..10 + PARTITION_LEARNERS_MAX as u64 + 1).collect();
    let most_voters: Vec<u64> = (1..=PARTITION_VOTERS_MAX as u64).collect();
    let most_learners: Vec<u64> = (10..10 + PARTITION_LEARNERS_MAX as u64).collect();
    let invalid: Vec<(WriteOp, &str)> = vec![
        (allocate("a", &[]), "no voters"),
        (allocate("a", &too_many_voters), "more than 7"),
        (allocate("a", &[1, 2, 1]), "node 1 is listed twice"),
        (allocate("a", &[0, 1]), "node 0"),
        (set_members(1, &[], &[2]), "no voters"),
        (set_members(1, &[1, 2], &[2]), "node 2 is listed twice"),
        (set_members(1, &[1], &[3, 3]), "node 3 is listed twice"),
        (set_members(1, &[1], &[0]), "node 0"),
        (set_members(1, &[1], &too_many_learners), "learners, more than"),
    ];
    let mut h = Harness::new();
    h.write(allocate("p", &[1])).unwrap();
    let before = h.partitions();
    for (op, reason) in invalid {
        let command = Command { client: ClientId(1), seq: 1000, op: op.clone() };
        match validate(&command) {
            Err(Rejection::InvalidMembers { reason: got }) => assert!(got.contains(reason), "{command}: {got}"),
            other => panic!("{command}: {other:?}"),
        }
        let rejection = h.write(op).unwrap_err();
        assert!(matches!(rejection, Rejection::InvalidMembers { .. }), "{rejection}");
        assert!(rejection.to_string().starts_with("invalid partition members"));
        assert_eq!(h.partitions(), before);
    }
    // The limits themselves are accepted.
    assert!(h.write(allocate("a", &most_voters)).is_ok());
    assert!(h.write(set_members(1, &most_voters, &most_learners)).is_ok());
    // An invalid repository id is refused before the members are looked at.
    let bad = RepoId { storage: "a/b".to_string(), relative_path: RelativePath::new("x").unwrap() };
    for op in [
        WriteOp::AllocatePartition { repo: bad.clone(), voters: vec![] },
        WriteOp::RouteRepository { repo: bad.clone(), partition: PartitionId(1) },
        WriteOp::UnrouteRepository { repo: bad.clone() },
    ] {
        let command = Command { client: ClientId(1), seq: 1000, op: op.clone() };
        assert!(matches!(validate(&command), Err(Rejection::InvalidStorageName { .. })));
        assert!(matches!(h.write(op), Err(Rejection::InvalidStorageName { .. })));
    }
}

#[test]
fn directory_routes_forks_and_unroutes() {
    let mut h = Harness::new();
    assert_eq!(h.write(allocate("a", &[1, 2, 3])), allocated(1, 1));
    // A fork goes into its parent's partition.
    assert_eq!(h.write(route("a/fork", 1)), Ok(WriteOk { index: 2, object_ids: vec![], partition: None }));
    assert_eq!(h.route_of("a/fork").map(|r| r.0), Some(PartitionId(1)));
    for missing in [0, 2, u64::MAX] {
        assert_eq!(h.write(route("b", missing)), Err(Rejection::PartitionNotFound { partition: PartitionId(missing) }));
    }
    assert_eq!(h.write(route("b", 7)).unwrap_err().to_string(), "partition 7 not found");
    assert_eq!(h.write(route("a", 1)), Err(Rejection::RepositoryExists { repo: repo("a") }));
    // The partition is checked first.
    assert_eq!(h.write(route("a", 5)), Err(Rejection::PartitionNotFound { partition: PartitionId(5) }));
    assert_eq!(h.route_of("b"), None);

    assert!(h.write(unroute("a/fork")).is_ok());
    assert_eq!(h.route_of("a/fork"), None);
    assert_eq!(h.write(unroute("a/fork")), Err(Rejection::RepositoryNotFound { repo: repo("a/fork") }));
    // A partition outlives its routes, and takes routes again.
    assert!(h.write(unroute("a")).is_ok());
    assert_eq!(h.partitions().len(), 1);
    assert!(h.write(route("a", 1)).is_ok());
    // A repository once unrouted can be allocated a new partition.
    assert!(h.write(unroute("a")).is_ok());
    assert_eq!(h.write(allocate("a", &[4])), allocated(h.index, 2));
}

#[test]
fn the_index_of_routes_by_partition_is_checked_against_the_routes() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1])).unwrap();
    h.write(route("a/fork", 1)).unwrap();
    let check = |h: &Harness| check_partition(&h.store.read().unwrap(), P, h.index, &h.limits);
    assert!(check(&h).is_ok());
    let indexed = keys::partition_route(P, PartitionId(1), &repo("a/fork"));
    h.store.write(Commit::Lazy, |rows| rows.remove(TableId::PartitionRoutes, &indexed).map(|_| ())).unwrap();
    assert_eq!(check(&h), Err(format!("partition {P}: 2 routes, 1 indexed by partition")));
    // Indexed under another partition than the route's.
    let wrong = keys::partition_route(P, PartitionId(2), &repo("a/fork"));
    h.store.write(Commit::Lazy, |rows| rows.insert(TableId::PartitionRoutes, &wrong, &[])).unwrap();
    assert!(check(&h).unwrap_err().contains("indexed under partition 2 but not routed there"));
}

#[test]
fn directory_set_partition_members() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1, 2, 3])).unwrap();
    let ok = h.write(set_members(1, &[4, 2, 3], &[9, 1])).unwrap();
    assert_eq!(ok.partition, None);
    assert_eq!(h.route_of("a").unwrap().1, partition_info(STORAGE, &[2, 3, 4], &[1, 9]));
    // Setting the same members again is fine; the authority never changes.
    h.write(set_members(1, &[2, 3, 4], &[1, 9])).unwrap();
    assert_eq!(h.route_of("a").unwrap().1.authority, STORAGE);
    assert_eq!(h.write(set_members(2, &[1], &[])), Err(Rejection::PartitionNotFound { partition: PartitionId(2) }));
    assert_eq!(h.partitions().len(), 1);
}

#[test]
fn directory_keeps_the_latest_membership_report() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1, 2, 3])).unwrap();
    let as_of = |op: WriteOp, index: u64| match op {
        WriteOp::SetPartitionMembers { partition, voters, learners, peers, .. } => {
            WriteOp::SetPartitionMembers { partition, voters, learners, peers, as_of: index }
        }
        _ => unreachable!("set_members builds SetPartitionMembers"),
    };
    h.write(as_of(set_members(1, &[1, 2, 4], &[]), 40)).unwrap();
    let recorded = h.route_of("a").unwrap().1;
    assert_eq!((recorded.voters.clone(), recorded.members_as_of), (nodes(&[1, 2, 4]), 40));
    // A deposed leader's late report of older members changes nothing, and is no error.
    h.write(as_of(set_members(1, &[1, 2, 3], &[]), 39)).unwrap();
    assert_eq!(h.route_of("a").unwrap().1, recorded);
    // A report as of the same or a later index is recorded.
    h.write(as_of(set_members(1, &[1, 4], &[5]), 40)).unwrap();
    h.write(as_of(set_members(1, &[1, 4, 5], &[]), 57)).unwrap();
    let recorded = h.route_of("a").unwrap().1;
    assert_eq!((recorded.voters, recorded.learners, recorded.members_as_of), (nodes(&[1, 4, 5]), vec![], 57));
}

#[test]
fn directory_reads() {
    let mut h = Harness::new();
    assert_eq!(h.route_of("a"), None);
    assert_eq!(h.partitions(), vec![]);
    h.write(allocate("b", &[2, 1])).unwrap();
    h.write(allocate("a", &[3])).unwrap();
    h.write(allocate("c", &[1])).unwrap();
    h.write(route("b/z", 1)).unwrap();
    h.write(route("b/fork", 1)).unwrap();
    h.write(unroute("c")).unwrap();
    h.write(set_members(2, &[3], &[4])).unwrap();

    assert_eq!(h.route_of("b/fork"), Some((PartitionId(1), partition_info(STORAGE, &[1, 2], &[]))));
    assert_eq!(h.route_of("a"), Some((PartitionId(2), partition_info(STORAGE, &[3], &[4]))));
    assert_eq!(h.route_of("c"), None);
    assert_eq!(
        h.partitions(),
        vec![
            (PartitionId(1), partition_info(STORAGE, &[1, 2], &[]), vec![repo("b"), repo("b/fork"), repo("b/z")]),
            (PartitionId(2), partition_info(STORAGE, &[3], &[4]), vec![repo("a")]),
            (PartitionId(3), partition_info(STORAGE, &[1], &[]), vec![]),
        ]
    );
    // One partition, from the index of routes by partition (kept by routing and unrouting).
    assert_eq!(
        h.read(ReadQuery::Partition { partition: PartitionId(1) }),
        ReadResult::Partition(Some((
            partition_info(STORAGE, &[1, 2], &[]),
            vec![repo("b"), repo("b/fork"), repo("b/z")]
        )))
    );
    assert_eq!(
        h.read(ReadQuery::Partition { partition: PartitionId(3) }),
        ReadResult::Partition(Some((partition_info(STORAGE, &[1], &[]), vec![])))
    );
    assert_eq!(h.read(ReadQuery::Partition { partition: PartitionId(4) }), ReadResult::Partition(None));
    // Routes by repository, a page at a time.
    let routes = |after: Option<&str>| match h.read(ReadQuery::Routes { after: after.map(repo), limit: 2 }) {
        ReadResult::Routes(page) => page,
        other => panic!("Routes answered {other:?}"),
    };
    assert_eq!(routes(None), vec![(repo("a"), PartitionId(2)), (repo("b"), PartitionId(1))]);
    assert_eq!(routes(Some("b")), vec![(repo("b/fork"), PartitionId(1)), (repo("b/z"), PartitionId(1))]);
    assert_eq!(routes(Some("b/z")), vec![]);
    let bad = RepoId { storage: String::new(), relative_path: RelativePath::new("a").unwrap() };
    assert!(matches!(
        h.read(ReadQuery::Route { repo: bad }),
        ReadResult::Rejected(Rejection::InvalidStorageName { .. })
    ));
}

#[test]
fn directory_limits() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1])).unwrap();
    h.write(allocate("b", &[1])).unwrap();
    // Fill partition 1 up to the repositories a partition holds, in one transaction.
    h.index += 1;
    let position = LogPosition { index: h.index, term: 1 };
    h.store
        .write(Commit::Lazy, |rows| {
            let mut writer = PartitionWriter::open(rows, P)?;
            writer.apply_noop(position);
            let mut record = writer.finish()?;
            let mut directory = directory::DirectoryWriter { rows, directory: P, counts: &mut record.counts };
            for number in 1..PARTITION_REPOSITORIES_MAX {
                directory.route_repository(&repo(&format!("f/{number}")), PartitionId(1))?.unwrap();
            }
            rows.set_partition(P, &record)
        })
        .unwrap();
    h.assert_consistent();
    assert_eq!(
        h.write(route("one-too-many", 1)),
        Err(Rejection::TooManyRepositories { count_max: PARTITION_REPOSITORIES_MAX as u64 })
    );
    assert!(h.write(route("elsewhere", 2)).is_ok());
    assert!(h.write(unroute("f/1")).is_ok());
    assert!(h.write(route("one-too-many", 1)).is_ok());

    // Partition ids are never reused; running out of them refuses allocation.
    h.store
        .write(Commit::Lazy, |rows| {
            let mut record = rows.partition(P)?.unwrap();
            record.counts.next_partition = u64::MAX;
            rows.set_partition(P, &record)
        })
        .unwrap();
    assert_eq!(
        h.apply_unchecked(ClientId(1), 1000, allocate("c", &[1])),
        Err(Rejection::TooManyPartitions { count_max: DIRECTORY_PARTITIONS_MAX as u64 })
    );
    assert_eq!(h.route_of("c"), None);
}

// ---- Order and atomicity -------------------------------------------------------------------

#[test]
#[should_panic(expected = "entries apply in order, once")]
fn entries_apply_in_order_once() {
    let store = Store::in_memory();
    let _ = store.write(Commit::Lazy, |rows| {
        let mut writer = PartitionWriter::open(rows, P)?;
        writer.apply_noop(LogPosition { index: 1, term: 1 });
        writer.apply_noop(LogPosition { index: 1, term: 1 });
        Ok(())
    });
}

#[test]
fn a_failed_transaction_keeps_nothing() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let digest = h.digest();
    let before = h.store.read().unwrap().partition(P).unwrap();
    let outcome: Result<(), StoreError> = h.store.write(Commit::Lazy, |rows| {
        let mut writer = PartitionWriter::open(rows, P)?;
        let command = Command { client: ClientId(1), seq: 50, op: create("b") };
        writer.apply(LogPosition { index: 2, term: 1 }, &command)?.unwrap();
        writer.finish()?;
        Err(StoreError::Corrupt { reason: "the batch failed after applying".into() })
    });
    assert!(outcome.is_err());
    assert_eq!(h.digest(), digest);
    assert_eq!(h.store.read().unwrap().partition(P).unwrap(), before, "nor the applied index");
}

// ---- Snapshot streams ----------------------------------------------------------------------

/// A partition with repositories, a fork, a rejection remembered and a directory, placing
/// objects by index.
fn sample() -> Harness {
    let mut h = Harness::placing_by_index();
    let one = blob("one");
    h.write(create("a")).unwrap();
    h.write(tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&one)))])).unwrap();
    h.write(fork("f", "a")).unwrap();
    h.write(tx("f", vec![], vec![set("refs/heads/main", Expected::MustNotExist, None)])).unwrap_err();
    h.write(allocate("a", &[1, 2, 3])).unwrap();
    h.write(allocate("b", &[2])).unwrap();
    h.write(route("f", 1)).unwrap();
    h.write(set_members(2, &[2, 3], &[4])).unwrap();
    h
}

/// The index the tests' snapshot streams are imported as applied through: past any their
/// states name (`snapshot_rows_naming_a_later_index_are_refused` tests the bound).
const SNAPSHOT_APPLIED: u64 = 1_000_000;

/// Imports `bytes` as partition `partition` of `store`, committing only if they check out.
fn import_into(store: &Store, partition: PartitionId, bytes: &[u8]) -> Result<Counts, String> {
    let outcome = store.write(Commit::Lazy, |rows| {
        match import(rows, partition, SNAPSHOT_APPLIED, &mut &bytes[..], &DedupLimits::DEFAULT) {
            Ok(counts) => {
                rows.set_partition(partition, &PartitionRecord { counts, ..PartitionRecord::default() })?;
                Ok(Ok(counts))
            }
            // Aborts the transaction: nothing of the stream is kept.
            Err(error) => Err(StoreError::Corrupt { reason: error.to_string() }),
        }
    });
    match outcome {
        Ok(inner) => inner,
        Err(error) => Err(error.to_string()),
    }
}

#[test]
fn snapshot_streams_round_trip() {
    let h = sample();
    let bytes = h.export();
    let other = Store::in_memory();
    let counts = import_into(&other, P, &bytes).unwrap();
    assert_eq!(counts, h.counts());
    assert_eq!(digest(&other.read().unwrap(), P).unwrap(), h.digest());
    // Another partition id takes the same rows under its own prefix: the digest ignores it.
    let q = PartitionId(77);
    import_into(&other, q, &bytes).unwrap();
    assert_eq!(digest(&other.read().unwrap(), q).unwrap(), h.digest());
    let mut again = Vec::new();
    export(&other.read().unwrap(), q, &mut again).unwrap();
    assert_eq!(again, bytes, "one state, one stream");

    // A restored directory keeps allocating where it left off.
    let command = Command { client: ClientId(1), seq: 1000, op: allocate("new", &[1]) };
    let index = h.index + 1;
    let position = LogPosition { index, term: 1 };
    let applied = other
        .write(Commit::Lazy, |rows| {
            let mut record = rows.partition(q)?.unwrap();
            record.applied = LogPosition { index: index - 1, term: 1 };
            rows.set_partition(q, &record)?;
            let mut writer = PartitionWriter::open(rows, q)?;
            let result = writer.apply(position, &command)?;
            writer.finish()?;
            Ok(result)
        })
        .unwrap();
    assert_eq!(applied, allocated(index, 3));
}

/// A stream's rows may not name an index past the position it claims (an object placed at a
/// later index, a client's later write): applying that index would meet them.
#[test]
fn snapshot_rows_naming_a_later_index_are_refused() {
    let h = sample();
    let bytes = h.export();
    let imports_as_of = |applied: u64| {
        let store = Store::in_memory();
        let outcome = store.write(Commit::Lazy, |rows| {
            import(rows, P, applied, &mut &bytes[..], &DedupLimits::DEFAULT)
                .map_err(|error| StoreError::Corrupt { reason: error.to_string() })
        });
        outcome.map_err(|error| error.to_string())
    };
    assert_eq!(imports_as_of(h.index).unwrap(), h.counts());
    // The sample's object was placed by its third entry, and client 1 wrote last at its end.
    let error = imports_as_of(2).unwrap_err();
    assert!(error.contains("past the state's index 2"), "{error}");
    let error = imports_as_of(h.index - 1).unwrap_err();
    assert!(error.contains("client 1's last write is past the state's index"), "{error}");
}

#[test]
fn bad_snapshot_streams_are_refused_and_keep_nothing() {
    let h = sample();
    let bytes = h.export();
    let other = Store::in_memory();
    import_into(&other, P, &bytes).unwrap();
    let digest_before = digest(&other.read().unwrap(), P).unwrap();
    let refused = |bytes: &[u8], needle: &str| {
        let error = import_into(&other, P, bytes).unwrap_err();
        assert!(error.contains(needle), "{error}");
        assert_eq!(digest(&other.read().unwrap(), P).unwrap(), digest_before, "a refused stream keeps nothing");
    };
    refused(&bytes[..bytes.len() - 1], "reading");
    refused(&[], "reading");
    refused(&[42], "unknown table 42");
    // A huge announced key is refused before it is read.
    refused(&[TableId::Refs as u8, 0xff, 0xff, 0xff, 0x7f], "more than");
    // Rows out of order (the same row twice).
    let mut doubled = bytes[..bytes.len() - 1].to_vec();
    let first_row_len = 1 + 4 + u32::from_le_bytes(bytes[1..5].try_into().unwrap()) as usize;
    let first_value_len = u32::from_le_bytes(bytes[first_row_len..first_row_len + 4].try_into().unwrap()) as usize;
    doubled.extend_from_slice(&bytes[..first_row_len + 4 + first_value_len]);
    doubled.push(0);
    refused(&doubled, "out of order");

    // Well-formed rows of an inconsistent state: a reference to an object the repository does
    // not hold.
    let h = sample();
    h.store
        .write(Commit::Lazy, |rows| {
            let value = tables::encode(&RefValue::Direct(Oid([7; 20])));
            rows.insert(TableId::Refs, &keys::reference(P, &repo("a"), &name("refs/heads/bad")), &value)?;
            let mut record: tables::RepoRecord =
                tables::decode("repository", &rows.get(TableId::Repositories, &keys::repo(P, &repo("a")))?.unwrap())?;
            record.refs += 1;
            rows.insert(TableId::Repositories, &keys::repo(P, &repo("a")), &tables::encode(&record))
        })
        .unwrap();
    refused(&h.export(), "does not hold");
}

#[test]
fn removing_a_partition_deletes_its_range_only() {
    let h = sample();
    let bytes = h.export();
    let q = PartitionId(6);
    import_into(&h.store, q, &bytes).unwrap();
    h.store.remove_partition(q).unwrap();
    let rows = h.store.read().unwrap();
    assert_eq!(rows.partition(q).unwrap(), None);
    for table in TableId::ALL {
        assert!(rows.first(table, &keys::partition_prefix(q)).unwrap().is_none(), "{table:?} emptied");
    }
    drop(rows);
    h.assert_consistent();
}

// ---- Objects uploaded in pieces -------------------------------------------------------------

const PIECE: u32 = UPLOAD_CHUNK_BYTES_MIN;

/// Content of `len` bytes that differs from piece to piece.
fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 7) as u8 ^ salt).collect()
}

fn begin(path: &str, size_bytes: usize) -> WriteOp {
    WriteOp::BeginUpload { repo: repo(path), kind: ObjectKind::Blob, size_bytes: size_bytes as u64, chunk_bytes: PIECE }
}

fn piece(path: &str, data: &[u8], number: usize) -> WriteOp {
    let start = number * PIECE as usize;
    let end = (start + PIECE as usize).min(data.len());
    WriteOp::UploadChunk { repo: repo(path), offset: start as u64, data: data[start..end].to_vec() }
}

fn finish(path: &str, oid: Oid, refs: Vec<RefUpdate>) -> WriteOp {
    WriteOp::FinishUpload { repo: repo(path), oid, refs }
}

impl Harness {
    /// Uploads `data` into `path` as client 2's write `seq`, every piece once, and finishes.
    fn upload(&mut self, path: &str, seq: u64, data: &[u8], refs: Vec<RefUpdate>) -> WriteResult {
        let client = ClientId(2);
        self.apply(client, seq, begin(path, data.len()))?;
        for number in 0..data.len().div_ceil(PIECE as usize) {
            self.apply(client, seq, piece(path, data, number))?;
        }
        self.apply(client, seq, finish(path, Oid::hash_object(ObjectKind::Blob, data), refs))
    }

    fn range(&self, path: &str, oid: Oid, offset: u64, len_max: u64) -> Option<ObjectRange> {
        match self.read(ReadQuery::ObjectRange { repo: repo(path), oid, offset, len_max }) {
            ReadResult::ObjectRange(range) => range,
            other => panic!("ObjectRange answered {other:?}"),
        }
    }

    fn rows_of(&self, table: TableId) -> usize {
        let rows = self.store.read().unwrap();
        let mut count = 0;
        rows.scan(table, &keys::partition_prefix(P), &mut |_, _| {
            count += 1;
            Ok(std::ops::ControlFlow::Continue(()))
        })
        .unwrap();
        count
    }
}

#[test]
fn an_upload_becomes_an_object_only_when_finished_and_reads_back_by_range() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let data = content(5 * PIECE as usize + 17, 3);
    let oid = Oid::hash_object(ObjectKind::Blob, &data);
    let client = ClientId(2);
    let blob = h.apply(client, 1, begin("a", data.len())).unwrap().index;
    for number in 0..6 {
        h.apply(client, 1, piece("a", &data, number)).unwrap();
        assert_eq!(h.range("a", oid, 0, 10), None, "not visible before it finishes");
        assert!(h.refs("a").is_empty());
    }
    match h.read(ReadQuery::Upload { repo: repo("a"), client, seq: 1 }) {
        ReadResult::Upload(Some(status)) => assert_eq!(status.received_bytes, data.len() as u64),
        other => panic!("{other:?}"),
    }
    let main = set("refs/heads/main", Expected::MustNotExist, Some(RefValue::Direct(oid)));
    let finished = h.apply(client, 1, finish("a", oid, vec![main.clone()])).unwrap();
    assert_eq!(finished.object_ids, vec![oid]);
    assert_eq!(h.refs("a"), vec![(name("refs/heads/main"), RefValue::Direct(oid))]);
    assert_eq!(h.counts().uploads, 0);
    assert_eq!(h.rows_of(TableId::Uploads), 0);

    // Any range, across pieces, reads what was written.
    for (offset, len) in
        [(0, 1), (0, data.len()), (PIECE as usize - 3, 10), (2 * PIECE as usize, PIECE as usize), (data.len() - 5, 100)]
    {
        let range = h.range("a", oid, offset as u64, len as u64).expect("the object");
        assert_eq!((range.kind, range.size_bytes), (ObjectKind::Blob, data.len() as u64));
        assert_eq!(range.data, data[offset..(offset + len).min(data.len())], "offset {offset} len {len}");
    }
    assert!(h.range("a", oid, data.len() as u64, 10).unwrap().data.is_empty(), "past the end: nothing");
    assert!(
        matches!(
            h.read(ReadQuery::GetObject { repo: repo("a"), oid }),
            ReadResult::Rejected(Rejection::ObjectTooLarge { .. })
        ),
        "a large object is not read whole"
    );
    match h.read(ReadQuery::LooseObjects { repo: repo("a"), after: None, bytes_max: 1 << 20 }) {
        ReadResult::LooseObjects { objects, complete: true } => {
            assert_eq!(
                objects,
                vec![(oid, PagedObject::Large { kind: ObjectKind::Blob, size_bytes: data.len() as u64 })]
            );
        }
        other => panic!("{other:?}"),
    }

    // The finishing write is remembered: retried, or begun again, it answers the same.
    assert_eq!(h.apply(client, 1, finish("a", oid, vec![main])), Ok(finished.clone()));
    assert_eq!(h.apply(client, 1, begin("a", data.len())), Ok(finished));
    assert_ne!(blob, 0);
}

#[test]
fn pieces_come_in_order_and_a_retried_piece_changes_nothing() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let data = content(3 * PIECE as usize, 1);
    let client = ClientId(2);
    h.apply(client, 7, begin("a", data.len())).unwrap();
    assert_eq!(
        h.apply(client, 7, piece("a", &data, 1)),
        Err(Rejection::UploadOutOfOrder { offset: PIECE as u64, expected: 0 })
    );
    h.apply(client, 7, piece("a", &data, 0)).unwrap();
    let before = h.digest_without_dedup();
    h.apply(client, 7, piece("a", &data, 0)).unwrap();
    assert_eq!(h.digest_without_dedup(), before, "a retried piece is not stored again");
    let short = WriteOp::UploadChunk { repo: repo("a"), offset: PIECE as u64, data: vec![1; 10] };
    assert!(matches!(h.apply(client, 7, short), Err(Rejection::InvalidUpload { .. })));
    assert!(matches!(h.apply(client, 8, piece("a", &data, 0)), Err(Rejection::UploadNotFound { .. })));
    let other_shape =
        WriteOp::BeginUpload { repo: repo("a"), kind: ObjectKind::Blob, size_bytes: 5, chunk_bytes: PIECE };
    assert!(matches!(h.apply(client, 7, other_shape), Err(Rejection::UploadMismatch { .. })));
    let oid = Oid::hash_object(ObjectKind::Blob, &data);
    assert_eq!(
        h.apply(client, 7, finish("a", oid, vec![])),
        Err(Rejection::UploadIncomplete { received_bytes: PIECE as u64, size_bytes: data.len() as u64 })
    );
    assert_eq!(h.rows_of(TableId::Chunks), 0, "a rejected finish drops the upload's pieces");
    assert_eq!(h.counts().uploads, 0);
}

#[test]
fn a_finish_that_fails_keeps_nothing_of_the_upload() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let data = content(2 * PIECE as usize + 1, 9);
    let before = h.digest_without_dedup();
    let client = ClientId(2);
    h.apply(client, 1, begin("a", data.len())).unwrap();
    for number in 0..3 {
        h.apply(client, 1, piece("a", &data, number)).unwrap();
    }
    let lie = Oid([7; 20]);
    assert!(matches!(h.apply(client, 1, finish("a", lie, vec![])), Err(Rejection::ObjectIdMismatch { .. })));
    assert_eq!(h.digest_without_dedup(), before);

    // A failed precondition too.
    let refs = vec![set("refs/heads/main", Expected::Value(RefValue::Direct(lie)), None)];
    assert!(matches!(h.upload("a", 2, &data, refs), Err(Rejection::PreconditionFailed { .. })));
    assert_eq!(h.digest_without_dedup(), before);

    // Abandoned, then aborted.
    h.apply(client, 3, begin("a", data.len())).unwrap();
    h.apply(client, 3, piece("a", &data, 0)).unwrap();
    h.apply(client, 3, WriteOp::AbortUpload { repo: repo("a") }).unwrap();
    assert_eq!(h.digest_without_dedup(), before);
}

#[test]
fn an_object_uploaded_twice_is_stored_once_and_goes_with_its_last_holder() {
    for h in [Harness::new(), Harness::placing_by_index()] {
        an_object_uploaded_twice_is_stored_once_and_goes_with_its_last_holder_in(h);
    }
}

fn an_object_uploaded_twice_is_stored_once_and_goes_with_its_last_holder_in(mut h: Harness) {
    h.write(create("a")).unwrap();
    h.write(create("b")).unwrap();
    let data = content(4 * PIECE as usize, 5);
    let oid = Oid::hash_object(ObjectKind::Blob, &data);
    h.upload("a", 1, &data, vec![]).unwrap();
    h.upload("b", 2, &data, vec![]).unwrap();
    h.upload("b", 3, &data, vec![]).unwrap();
    assert_eq!((h.rows_of(TableId::LargeObjects), h.rows_of(TableId::Chunks)), (1, 4));
    assert_eq!(h.holders(&oid), 2);
    h.write(delete("a")).unwrap();
    assert_eq!(h.range("b", oid, 0, 4).unwrap().data, data[..4]);
    h.write(delete("b")).unwrap();
    assert_eq!((h.rows_of(TableId::LargeObjects), h.rows_of(TableId::Chunks)), (0, 0));
}

/// In a partition placing objects by index, an object stored whole and then uploaded keeps its
/// place, one uploaded and then written whole stays in pieces, and each goes with its last
/// holder.
#[test]
fn objects_stored_whole_and_in_pieces_keep_their_place_under_placement_by_index() {
    let mut h = Harness::placing_by_index();
    h.write(create("a")).unwrap();
    h.write(create("b")).unwrap();
    let whole = NewObject::new(ObjectKind::Blob, content(3 * PIECE as usize, 7));
    h.write(tx("a", vec![whole.clone()], vec![])).unwrap();
    h.upload("b", 1, &whole.data, vec![]).unwrap();
    assert_eq!(h.holders(&whole.oid), 2);
    let stored = |h: &Harness| {
        [TableId::ObjectsAt, TableId::Objects, TableId::LargeObjects, TableId::Chunks].map(|table| h.rows_of(table))
    };
    assert_eq!(stored(&h), [1, 0, 0, 0], "stored whole, where it was placed; the upload's pieces dropped");

    let pieces = content(3 * PIECE as usize + 1, 8);
    h.upload("a", 2, &pieces, vec![]).unwrap();
    let in_pieces = NewObject::new(ObjectKind::Blob, pieces);
    h.write(tx("b", vec![in_pieces.clone()], vec![])).unwrap();
    assert_eq!(h.holders(&in_pieces.oid), 2);
    assert_eq!(stored(&h), [1, 0, 1, 4], "stored once in pieces");
    assert_eq!(h.object("b", whole.oid), Some((ObjectKind::Blob, whole.data.clone())));
    let len = in_pieces.data.len() as u64;
    assert_eq!(h.range("b", in_pieces.oid, 0, len).unwrap().data, in_pieces.data, "read in pieces");

    h.write(delete("a")).unwrap();
    assert_eq!(stored(&h), [1, 0, 1, 4]);
    h.write(delete("b")).unwrap();
    assert_eq!(stored(&h), [0, 0, 0, 0]);
}

#[test]
fn snapshots_carry_uploads_and_large_objects_and_refuse_a_damaged_piece() {
    let mut h = sample();
    let data = content(3 * PIECE as usize + 100, 2);
    h.upload("a", 1, &data, vec![]).unwrap();
    h.apply(ClientId(2), 2, begin("a", data.len())).unwrap();
    h.apply(ClientId(2), 2, piece("a", &data, 0)).unwrap();
    let bytes = h.export();
    let other = Store::in_memory();
    assert_eq!(import_into(&other, P, &bytes).unwrap(), h.counts());
    assert_eq!(digest(&other.read().unwrap(), P).unwrap(), h.digest());

    // One byte of a finished object's piece changed: its hash no longer matches.
    let position = bytes.windows(64).position(|w| w == &data[PIECE as usize..PIECE as usize + 64]).unwrap();
    let mut damaged = bytes.clone();
    damaged[position + 10] ^= 1;
    let error = import_into(&Store::in_memory(), P, &damaged).unwrap_err();
    assert!(error.contains("hashes to"), "{error}");
}

// ---- Random command sequences --------------------------------------------------------------

const PATHS: [&str; 3] = ["a", "b", "a/fork"];
const CONTENTS: [&str; 4] = ["one", "two", "three", ""];
const NAMES: [&str; 4] = ["HEAD", "refs/heads/main", "refs/heads/dev", "refs/tags/v1"];

fn arb_value() -> impl Strategy<Value = RefValue> {
    prop_oneof![
        3 => (0..CONTENTS.len()).prop_map(|i| direct(&blob(CONTENTS[i]))),
        1 => (0..NAMES.len()).prop_map(|i| RefValue::Symbolic(name(NAMES[i]))),
    ]
}

fn arb_expected() -> impl Strategy<Value = Expected> {
    prop_oneof![Just(Expected::Any), Just(Expected::MustNotExist), arb_value().prop_map(Expected::Value)]
}

fn arb_update() -> impl Strategy<Value = RefUpdate> {
    (0..NAMES.len(), arb_expected(), proptest::option::weighted(0.8, arb_value()))
        .prop_map(|(i, expected, new)| set(NAMES[i], expected, new))
}

fn arb_object() -> impl Strategy<Value = NewObject> {
    (0..CONTENTS.len(), proptest::bool::weighted(0.05)).prop_map(|(i, lying)| {
        let mut object = blob(CONTENTS[i]);
        if lying {
            object.oid = Oid([0xab; 20]);
        }
        object
    })
}

fn arb_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        2 => (0..PATHS.len(), proptest::option::of(0..PATHS.len())).prop_map(|(p, parent)| match parent {
            None => create(PATHS[p]),
            Some(parent) => fork(PATHS[p], PATHS[parent]),
        }),
        1 => (0..PATHS.len()).prop_map(|p| delete(PATHS[p])),
        // Mostly on "a", which every sequence creates first, so that most transactions meet a
        // repository.
        8 => (prop_oneof![3 => Just(0), 1 => 0..PATHS.len()], prop::collection::vec(arb_object(), 0..3),
            prop::collection::vec(arb_update(), 0..3))
            .prop_map(|(p, objects, refs)| tx(PATHS[p], objects, refs)),
        // The directory.
        2 => (0..PATHS.len(), arb_nodes()).prop_map(|(p, voters)| allocate(PATHS[p], &voters)),
        1 => (0..PATHS.len(), arb_partition()).prop_map(|(p, partition)| route(PATHS[p], partition)),
        1 => (0..PATHS.len()).prop_map(|p| unroute(PATHS[p])),
        1 => (arb_partition(), arb_nodes(), arb_nodes())
            .prop_map(|(partition, voters, learners)| set_members(partition, &voters, &learners)),
        // Uploads into "a" of one of two objects of three pieces, finished with its id or
        // a lie.
        2 => Just(begin("a", UPLOADED_BYTES)),
        4 => (0..2u8, 0..3usize).prop_map(|(salt, number)| piece("a", &content(UPLOADED_BYTES, salt), number)),
        2 => (0..2u8, proptest::bool::weighted(0.2)).prop_map(|(salt, lying)| {
            let oid = if lying { Oid([1; 20]) } else { Oid::hash_object(ObjectKind::Blob, &content(UPLOADED_BYTES, salt)) };
            finish("a", oid, vec![])
        }),
        1 => Just(WriteOp::AbortUpload { repo: repo("a") }),
    ]
}

const UPLOADED_BYTES: usize = 2 * PIECE as usize + 10;

/// Mostly the first ids allocated; sometimes partition 0 (never allocated) or a later one.
fn arb_partition() -> impl Strategy<Value = u64> {
    prop_oneof![3 => 1..3u64, 1 => 0..6u64]
}

/// Member lists, mostly valid; sometimes empty, with a duplicate or with node 0.
fn arb_nodes() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(prop_oneof![9 => 1..6u64, 1 => Just(0u64)], 0..4)
}

/// A command, or `None` for a no-op entry; the first creates repository "a".
fn arb_entries() -> impl Strategy<Value = Vec<Option<Command>>> {
    let command =
        (0..3u64, 0..8u64, arb_op()).prop_map(|(client, seq, op)| Command { client: ClientId(client), seq, op });
    prop::collection::vec(proptest::option::weighted(0.9, command), 0..60).prop_map(|mut entries| {
        entries.insert(0, Some(Command { client: ClientId(9), seq: 0, op: create("a") }));
        entries
    })
}

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() }
}

/// Where a partition's log switches formats: to placing objects by index at the first index,
/// to dedup rings at the second (the first then changes nothing if it comes later).
type Switches = (u64, u64);

/// Applies one entry (a command, or a no-op) at `index` to `store`'s partition `partition`;
/// at one of `switches`, the entry that switches the format instead.
fn apply_entry(
    store: &Store,
    partition: PartitionId,
    index: u64,
    entry: &Option<Command>,
    switches: Switches,
) -> Option<WriteResult> {
    store
        .write(Commit::Lazy, |rows| {
            let mut writer = PartitionWriter::open(rows, partition)?;
            let position = LogPosition { index, term: 1 };
            let result = match entry {
                _ if index == switches.1 => {
                    writer.apply_format(position, Format::DedupRing)?;
                    None
                }
                _ if index == switches.0 => {
                    writer.apply_format(position, Format::PlacedByIndex)?;
                    None
                }
                Some(command) => Some(writer.apply(position, command)?),
                None => {
                    writer.apply_noop(position);
                    None
                }
            };
            writer.finish()?;
            Ok(result)
        })
        .unwrap()
}

proptest! {
    #![proptest_config(config())]

    /// Two replicas fed the same entries answer and end the same; a third restored from a
    /// snapshot stream midway catches up to the same state; every state checks out whole. The
    /// partition switches formats at `switches` (never, past the end), and its retries answer
    /// their first results across them (seqs stay inside every window).
    #[test]
    fn replicas_agree_and_snapshots_restore(entries in arb_entries(), snapshot_at in 0..60usize, switches in (2..70u64, 2..90u64)) {
        let (left, right) = (Store::in_memory(), Store::in_memory());
        let mut restored: Option<(Store, u64)> = None;
        let mut first_results: BTreeMap<(ClientId, u64), WriteResult> = BTreeMap::new();
        let without_dedup = |store: &Store| {
            let rows = store.read().unwrap();
            let mut out = Vec::new();
            for table in [TableId::Repositories, TableId::Refs, TableId::Held, TableId::Objects, TableId::Holders,
                TableId::Routes, TableId::Members, TableId::RouteCounts, TableId::PartitionRoutes, TableId::ObjectsAt,
                TableId::Placement] {
                rows.scan(table, &keys::partition_prefix(P), &mut |k, v| {
                    out.push((table, k.to_vec(), v.to_vec()));
                    Ok(std::ops::ControlFlow::Continue(()))
                }).unwrap();
            }
            out
        };
        for (position, entry) in entries.iter().enumerate() {
            let index = position as u64 + 1;
            if position == snapshot_at {
                let mut bytes = Vec::new();
                export(&left.read().unwrap(), P, &mut bytes).unwrap();
                let store = Store::in_memory();
                let counts = import_into(&store, P, &bytes).expect("own stream imports");
                let record = left.read().unwrap().partition(P).unwrap().unwrap_or_default();
                prop_assert_eq!(counts, record.counts);
                store.write(Commit::Lazy, |rows| rows.set_partition(P, &record)).unwrap();
                prop_assert_eq!(digest(&store.read().unwrap(), P).unwrap(), digest(&left.read().unwrap(), P).unwrap());
                restored = Some((store, index));
            }
            let before = without_dedup(&left);
            let result = apply_entry(&left, P, index, entry, switches);
            prop_assert_eq!(&apply_entry(&right, P, index, entry, switches), &result);
            if let Some((store, _)) = &restored {
                prop_assert_eq!(&apply_entry(store, P, index, entry, switches), &result);
            }
            let rows = left.read().unwrap();
            let record = rows.partition(P).unwrap().unwrap();
            prop_assert_eq!(check_partition(&rows, P, record.applied.index, &DedupLimits::DEFAULT), Ok(record.counts));
            prop_assert_eq!(digest(&rows, P).unwrap(), digest(&right.read().unwrap(), P).unwrap());
            let (Some(command), Some(result)) = (entry, result) else { continue };
            // A rejection changes nothing but the dedup table (a finishing write also drops
            // its upload).
            let upload_op = matches!(command.op, WriteOp::BeginUpload { .. } | WriteOp::UploadChunk { .. }
                | WriteOp::FinishUpload { .. } | WriteOp::AbortUpload { .. });
            if result.is_err() && !upload_op {
                prop_assert_eq!(&without_dedup(&left), &before);
            }
            // Seqs stay far inside the window: every retry answers the first result (of the
            // writes the dedup table records).
            if !command.op.is_recorded() && !first_results.contains_key(&(command.client, command.seq)) {
                continue;
            }
            match first_results.get(&(command.client, command.seq)) {
                Some(first) => prop_assert_eq!(first, &result),
                None => {
                    if let Ok(ok) = &result {
                        match &command.op {
                            WriteOp::AllocatePartition { repo, .. } => {
                                let id = ok.partition.expect("an allocation names its partition");
                                prop_assert_eq!(directory::route(&rows, P, repo).unwrap(), Some(id));
                                prop_assert_eq!(record.counts.next_partition, id.0 + 1);
                            }
                            _ => prop_assert_eq!(ok.partition, None),
                        }
                    }
                    first_results.insert((command.client, command.seq), result);
                }
            }
        }
        if let Some((store, _)) = restored {
            prop_assert_eq!(digest(&store.read().unwrap(), P).unwrap(), digest(&left.read().unwrap(), P).unwrap());
            prop_assert_eq!(store.read().unwrap().partition(P).unwrap(), left.read().unwrap().partition(P).unwrap());
        }
    }

    /// Damaged streams are refused or import a state that checks out whole; never a panic.
    #[test]
    fn damaged_snapshot_streams_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4)) {
        let mut bytes = sample().export();
        for (at, mask) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        let store = Store::in_memory();
        if let Ok(counts) = import_into(&store, P, &bytes) {
            let rows = store.read().unwrap();
            prop_assert_eq!(check_partition(&rows, P, SNAPSHOT_APPLIED, &DedupLimits::DEFAULT), Ok(counts));
        }
    }
}
