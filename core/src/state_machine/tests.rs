//! Tests of the state machine: hashing against git, validation tables, compare-and-set,
//! idempotency, forks, the directory, snapshots, and random command sequences.

use super::dedup::{DedupLimits, DedupTable, Lookup};
use super::*;
use proptest::prelude::*;
use std::io::Write as _;
use std::process::{Command as Process, Stdio};

const STORAGE: &str = "default";

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
    }
}

fn partition_info(authority: &str, voters: &[u64], learners: &[u64]) -> PartitionInfo {
    let mut peers: Vec<PeerId> = voters.iter().chain(learners).map(|&n| PeerId::new(NodeId(n), 0)).collect();
    peers.sort();
    PartitionInfo { authority: authority.to_string(), voters: nodes(voters), learners: nodes(learners), peers }
}

/// The answer of an `AllocatePartition` applied at `index`.
fn allocated(index: u64, partition: u64) -> WriteResult {
    Ok(WriteOk { index, object_ids: vec![], partition: Some(PartitionId(partition)) })
}

/// A state machine fed by one client, checking every invariant after every apply.
struct Harness {
    state: StateMachine,
    index: u64,
    seq: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness { state: StateMachine::new(), index: 0, seq: 0 }
    }

    /// A new write of client 1.
    fn write(&mut self, op: WriteOp) -> WriteResult {
        self.seq += 1;
        self.apply(ClientId(1), self.seq, op)
    }

    fn apply(&mut self, client: ClientId, seq: u64, op: WriteOp) -> WriteResult {
        self.index += 1;
        let command = Command { client, seq, op };
        let result = self.state.apply(self.index, &command);
        assert_eq!(self.state.applied_index(), self.index);
        assert_eq!(self.state.invariant_violation(), None, "after {command}");
        result
    }

    fn refs(&self, path: &str) -> Vec<(RefName, RefValue)> {
        match self.state.read(&ReadQuery::ListRefs { repo: repo(path) }) {
            ReadResult::Refs(refs) => refs,
            other => panic!("ListRefs answered {other:?}"),
        }
    }

    fn object(&self, path: &str, oid: Oid) -> Option<(ObjectKind, Vec<u8>)> {
        match self.state.read(&ReadQuery::GetObject { repo: repo(path), oid }) {
            ReadResult::Object(object) => object,
            other => panic!("GetObject answered {other:?}"),
        }
    }
}

// ---- Git hashing -------------------------------------------------------------------------

fn git_hash_object(kind: ObjectKind, data: &[u8]) -> Oid {
    let mut child = Process::new("git")
        .args(["hash-object", "-t", kind.as_str(), "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("git is installed");
    child.stdin.take().expect("stdin").write_all(data).expect("write to git");
    let output = child.wait_with_output().expect("git runs");
    assert!(output.status.success(), "git hash-object: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8").trim().parse().expect("git prints an oid")
}

#[test]
fn hashing_agrees_with_git_hash_object() {
    let blob = b"hello\n".to_vec();
    let blob_oid = Oid::hash_object(ObjectKind::Blob, &blob);
    assert_eq!(blob_oid.to_string(), "ce013625030ba8dba906f756967f9e9ca394464a");

    let mut tree = b"100644 hello.txt\0".to_vec();
    tree.extend_from_slice(&blob_oid.0);
    let tree_oid = Oid::hash_object(ObjectKind::Tree, &tree);

    let commit = format!(
        "tree {tree_oid}\nauthor A U Thor <author@example.com> 1700000000 +0000\n\
         committer A U Thor <author@example.com> 1700000000 +0000\n\nfirst commit\n"
    )
    .into_bytes();
    let commit_oid = Oid::hash_object(ObjectKind::Commit, &commit);

    let tag = format!(
        "object {commit_oid}\ntype commit\ntag v1.0\ntagger A U Thor <author@example.com> 1700000000 +0000\n\nrelease\n"
    )
    .into_bytes();

    let samples = [
        (ObjectKind::Blob, blob),
        (ObjectKind::Blob, Vec::new()),
        (ObjectKind::Blob, (0..=255u8).collect()),
        (ObjectKind::Tree, tree),
        (ObjectKind::Tree, Vec::new()),
        (ObjectKind::Commit, commit),
        (ObjectKind::Tag, tag),
    ];
    for (kind, data) in samples {
        assert_eq!(Oid::hash_object(kind, &data), git_hash_object(kind, &data), "{kind} of {} bytes", data.len());
    }
}

#[test]
fn oid_and_kind_text() {
    let oid: Oid = "ce013625030ba8dba906f756967f9e9ca394464a".parse().unwrap();
    assert_eq!(oid.to_string(), "ce013625030ba8dba906f756967f9e9ca394464a");
    for bad in [
        "",
        "ce01",
        "CE013625030BA8DBA906F756967F9E9CA394464A",
        "ce013625030ba8dba906f756967f9e9ca394464g",
        "ce013625030ba8dba906f756967f9e9ca394464a0",
        "ĉe013625030ba8dba906f756967f9e9ca39446",
    ] {
        assert!(bad.parse::<Oid>().is_err(), "{bad:?} parsed");
    }
    for kind in ObjectKind::ALL {
        assert_eq!(kind.as_str().parse::<ObjectKind>(), Ok(kind));
    }
    assert!("Blob".parse::<ObjectKind>().is_err());
    assert_eq!(Digest([0xab; 20]).to_string(), "ab".repeat(20));
}

// ---- Validation tables -------------------------------------------------------------------

fn git_check_ref_format(text: &str) -> bool {
    Process::new("git")
        .args(["check-ref-format", text])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git is installed")
        .success()
}

#[test]
fn ref_names() {
    let long_ok = format!("refs/heads/{}", "a".repeat(REF_NAME_BYTES_MAX - "refs/heads/".len()));
    let too_long = format!("{long_ok}a");
    let accepted = [
        "HEAD",
        "refs/heads/main",
        "refs/heads/feature/x-1_y",
        "refs/tags/v1.0",
        "refs/heads/@",
        "refs/heads/a@b",
        "refs/heads/ünïcode",
        "refs/remotes/origin/HEAD",
        "refs/x",
        "refs/heads/a.b.lockx",
        &long_ok,
    ];
    let rejected = [
        "",
        "main",
        "heads/main",
        "head",
        "HEAD/x",
        "@",
        "/refs/heads/a",
        "refs",
        "refs/",
        "refs/heads/",
        "refs/heads/a..b",
        "refs/heads/.hidden",
        "refs/heads/a.lock",
        "refs/heads/a.lock/b",
        "refs/heads/a.",
        "refs//heads",
        "refs/heads//a",
        "refs/heads/a b",
        "refs/heads/a~1",
        "refs/heads/a^",
        "refs/heads/a:b",
        "refs/heads/a?",
        "refs/heads/a*",
        "refs/heads/a[",
        "refs/heads/a\\b",
        "refs/heads/a@{1}",
        "refs/heads/a\x7f",
        "refs/heads/a\tb",
        "refs/heads/a\nb",
        "refs/heads/a\0",
        &too_long,
    ];
    for text in accepted {
        assert!(RefName::new(text).is_ok(), "{text:?} rejected: {:?}", RefName::new(text));
    }
    for text in rejected {
        match RefName::new(text) {
            Err(Rejection::InvalidRefName { .. }) => {}
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    // Where git has an opinion (names under refs/, passable as an argument), it agrees.
    for text in accepted.iter().chain(rejected.iter()) {
        if text.starts_with("refs/") && !text.contains('\0') && text.len() <= 300 {
            assert_eq!(RefName::new(*text).is_ok(), git_check_ref_format(text), "git disagrees on {text:?}");
        }
    }
    // Decoding validates too.
    let bytes = codec::encode(&"refs/heads/a..b".to_string());
    assert!(codec::decode::<RefName>("ref name", &bytes).is_err());
}

#[test]
fn relative_paths_and_storage_names() {
    let long_ok = "a".repeat(RELATIVE_PATH_BYTES_MAX);
    let too_long = "a".repeat(RELATIVE_PATH_BYTES_MAX + 1);
    for text in ["a", "a/b", "group/project.git", "a.b/c..d", "...", ".a/b.", &long_ok] {
        assert!(RelativePath::new(text).is_ok(), "{text:?} rejected");
    }
    for text in ["", "/a", "/", "a/../b", "..", ".", "./a", "a/.", "a//b", "a/", "a\\b", "a\0b", &too_long] {
        match RelativePath::new(text) {
            Err(Rejection::InvalidPath { .. }) => {}
            other => panic!("{text:?} gave {other:?}"),
        }
    }
    let bytes = codec::encode(&"a/../b".to_string());
    assert!(codec::decode::<RelativePath>("path", &bytes).is_err());

    for text in ["default", "s-1_a.b", "A9", &"s".repeat(STORAGE_NAME_BYTES_MAX)] {
        assert!(validate_storage_name(text).is_ok(), "{text:?} rejected");
    }
    for text in ["", "a/b", "a b", ".", "..", "ü", "a:b", &"s".repeat(STORAGE_NAME_BYTES_MAX + 1)] {
        assert!(matches!(validate_storage_name(text), Err(Rejection::InvalidStorageName { .. })), "{text:?}");
    }
    // A bad storage name is refused at validate and at apply, and in reads.
    let bad = RepoId { storage: "../etc".to_string(), relative_path: RelativePath::new("a").unwrap() };
    let command =
        Command { client: ClientId(1), seq: 1, op: WriteOp::CreateRepository { repo: bad.clone(), fork_of: None } };
    assert!(matches!(validate(&command), Err(Rejection::InvalidStorageName { .. })));
    let mut state = StateMachine::new();
    assert!(matches!(state.apply(1, &command), Err(Rejection::InvalidStorageName { .. })));
    assert!(state.repositories().is_empty());
    assert!(matches!(state.read(&ReadQuery::RepositoryExists { repo: bad }), ReadResult::Rejected(_)));
}

#[test]
fn rejections_echo_bounded_text() {
    let huge = format!("refs/heads/{}", "ü".repeat(10_000));
    let Err(Rejection::InvalidRefName { name, .. }) = RefName::new(huge) else { panic!("accepted") };
    assert!(name.len() <= REJECTION_ECHO_BYTES_MAX + "…".len());
}

// ---- Transactions and compare-and-set ------------------------------------------------------

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
    let before = (h.state.repositories.clone(), h.state.objects.clone());

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
    assert_eq!((h.state.repositories.clone(), h.state.objects.clone()), before);
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
    assert_eq!((h.state.repositories.clone(), h.state.objects.clone()), before);
}

#[test]
fn symbolic_head() {
    let mut h = Harness::new();
    h.write(create("a")).unwrap();
    let main = RefValue::Symbolic(name("refs/heads/main"));
    // An unborn branch: HEAD may point to a name that does not exist yet.
    h.write(tx("a", vec![], vec![set("HEAD", Expected::MustNotExist, Some(main.clone()))])).unwrap();
    assert_eq!(h.refs("a"), vec![(RefName::head(), main.clone())]);
    assert_eq!(main.to_string(), "ref: refs/heads/main");

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

// ---- Repositories, forks, object pool ------------------------------------------------------

#[test]
fn create_and_delete_repositories() {
    let mut h = Harness::new();
    h.write(create("b")).unwrap();
    h.write(create("a")).unwrap();
    assert_eq!(h.write(create("a")), Err(Rejection::RepositoryExists { repo: repo("a") }));
    assert_eq!(h.state.repositories(), vec![repo("a"), repo("b")]);
    assert_eq!(h.state.read(&ReadQuery::ListRepositories), ReadResult::Repositories(vec![repo("a"), repo("b")]));
    assert_eq!(h.state.read(&ReadQuery::RepositoryExists { repo: repo("a") }), ReadResult::Exists(true));
    h.write(delete("a")).unwrap();
    assert_eq!(h.state.read(&ReadQuery::RepositoryExists { repo: repo("a") }), ReadResult::Exists(false));
    assert_eq!(h.write(delete("a")), Err(Rejection::RepositoryNotFound { repo: repo("a") }));
    assert_eq!(
        h.state.read(&ReadQuery::ListRefs { repo: repo("a") }),
        ReadResult::Rejected(Rejection::RepositoryNotFound { repo: repo("a") })
    );
}

#[test]
fn forks_share_objects_and_delete_drops_unreferenced() {
    let mut h = Harness::new();
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
    assert_eq!(h.state.objects.len(), 1, "stored once");
    assert_eq!(h.state.objects.get(&shared.oid).unwrap().holders, 2);

    // Objects written to the parent after the fork are the parent's alone.
    h.write(tx("a", vec![later.clone()], vec![])).unwrap();
    assert_eq!(h.object("f", later.oid), None);
    let result = h.write(tx("f", vec![], vec![set("refs/heads/x", Expected::Any, Some(direct(&later)))]));
    assert_eq!(result, Err(Rejection::ObjectNotFound { oid: later.oid }));
    // The fork can point at what it inherited, and write its own.
    h.write(tx("f", vec![own.clone()], vec![set("refs/heads/x", Expected::Any, Some(direct(&shared)))])).unwrap();

    h.write(delete("a")).unwrap();
    assert_eq!(h.object("f", shared.oid), Some((ObjectKind::Blob, b"shared".to_vec())));
    assert!(h.state.objects.get(&later.oid).is_none(), "unreferenced object dropped");
    assert_eq!(h.state.objects.get(&shared.oid).unwrap().holders, 1);

    h.write(delete("f")).unwrap();
    assert_eq!(h.state.objects.len(), 0);
    assert!(h.state.repositories().is_empty());
}

#[test]
fn same_object_written_twice_is_held_once() {
    let mut h = Harness::new();
    let one = blob("one");
    h.write(create("a")).unwrap();
    let ok = h.write(tx("a", vec![one.clone(), one.clone()], vec![])).unwrap();
    assert_eq!(ok.object_ids, vec![one.oid, one.oid]);
    h.write(tx("a", vec![one.clone()], vec![])).unwrap();
    assert_eq!(h.state.objects.get(&one.oid).unwrap().holders, 1);
}

// ---- Idempotency ---------------------------------------------------------------------------

#[test]
fn retries_return_the_original_result() {
    let mut h = Harness::new();
    let client = ClientId(7);
    let one = blob("one");
    let first = h.apply(client, 1, create("a"));
    assert_eq!(first, Ok(WriteOk { index: 1, object_ids: vec![], partition: None }));
    let digest = h.state.digest();
    assert_eq!(h.apply(client, 1, create("a")), first, "a retry is not applied again");
    assert_eq!(h.state.digest(), digest);

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
    assert!(h.apply(ClientId(8), 0, create("b")).is_ok());
}

#[test]
fn sequence_too_old_once_the_window_is_full() {
    let mut h = Harness::new();
    let client = ClientId(3);
    h.apply(client, 0, create("a")).unwrap();
    for seq in 1..DEDUP_WINDOW_MAX as u64 {
        h.apply(client, seq, delete("missing")).unwrap_err();
    }
    // Full: seqs 0..=127. Seq 128 evicts seq 0.
    let newest = h.apply(client, DEDUP_WINDOW_MAX as u64, create("b"));
    assert!(newest.is_ok());
    let digest = h.state.digest();
    let too_old = h.apply(client, 0, create("a"));
    assert_eq!(too_old, Err(Rejection::SequenceTooOld { client, seq: 0, oldest_kept: 1 }));
    assert_eq!(h.state.digest(), digest, "SequenceTooOld is not recorded");
    assert!(too_old.unwrap_err().to_string().contains("older than"));
    assert_eq!(h.apply(client, 1, create("a")), Err(Rejection::RepositoryNotFound { repo: repo("missing") }));
    assert_eq!(h.apply(client, DEDUP_WINDOW_MAX as u64, create("zzz")), newest);
}

#[test]
fn least_recent_client_is_evicted() {
    let mut h = Harness::new();
    // Client 0 writes first, client 1 second and again near the end.
    let first = h.apply(ClientId(0), 1, create("a"));
    assert!(first.is_ok());
    let second = h.apply(ClientId(1), 1, create("b"));
    assert!(second.is_ok());
    for client in 2..DEDUP_CLIENTS_MAX as u64 {
        // Not through `Harness::apply`: its invariant check after every step would make this
        // loop quadratic.
        h.index += 1;
        h.state.apply(h.index, &Command { client: ClientId(client), seq: 1, op: delete("missing") }).unwrap_err();
    }
    assert_eq!(h.state.dedup.clients_len(), DEDUP_CLIENTS_MAX);
    h.apply(ClientId(1), 2, delete("missing")).unwrap_err();
    // One client too many: client 0 (lowest last index) goes, client 1 (recent) stays.
    h.apply(ClientId(1_000_000), 1, delete("missing")).unwrap_err();
    assert_eq!(h.state.dedup.clients_len(), DEDUP_CLIENTS_MAX);
    assert_eq!(h.apply(ClientId(1), 1, create("b")), second, "client 1 still remembered");
    assert_eq!(
        h.apply(ClientId(0), 1, create("a")),
        Err(Rejection::RepositoryExists { repo: repo("a") }),
        "client 0 forgotten: its retry is applied again"
    );
}

#[test]
fn dedup_bytes_are_bounded() {
    let limits = DedupLimits { window_max: 4, clients_max: 100, results_bytes_max: 2_000 };
    let mut table = DedupTable::with_limits(limits);
    let result: WriteResult = Ok(WriteOk { index: 1, object_ids: vec![Oid([1; 20]); 10], partition: None });
    let size_bytes = codec::encode(&result).len() as u64;
    for index in 1..=50u64 {
        table.record(index, ClientId(index % 7), index, result.clone());
        assert!(table.results_bytes() <= limits.results_bytes_max);
        assert_eq!(table.invariant_violation(), None);
        assert_eq!(table.lookup(ClientId(index % 7), index), Lookup::Retry(result.clone()));
    }
    // The budget holds fewer results than 7 clients' full windows: some clients were evicted.
    assert!(limits.results_bytes_max < 7 * 4 * size_bytes);
    assert!(table.clients_len() < 7);
}

// ---- Directory ---------------------------------------------------------------------------

#[test]
fn directory_allocates_partition_ids_from_one() {
    let mut h = Harness::new();
    assert_eq!(h.state.directory().next_partition(), PartitionId(1));
    let client = ClientId(4);
    let first = h.apply(client, 1, allocate("a", &[3, 1, 2]));
    assert_eq!(first, allocated(1, 1));
    assert_eq!(h.apply(client, 2, allocate("b", &[2])), allocated(2, 2));
    let other_storage = RepoId::new("other", "c").unwrap();
    let third = h.apply(client, 3, WriteOp::AllocatePartition { repo: other_storage.clone(), voters: nodes(&[1]) });
    assert_eq!(third, allocated(3, 3));

    let directory = h.state.directory();
    assert_eq!(directory.route(&repo("a")), Some(PartitionId(1)));
    assert_eq!(directory.route(&repo("b")), Some(PartitionId(2)));
    assert_eq!(directory.route(&other_storage), Some(PartitionId(3)));
    assert_eq!(directory.route(&repo("c")), None);
    assert_eq!(
        directory.partition(PartitionId(1)),
        Some(&partition_info(STORAGE, &[1, 2, 3], &[])),
        "voters are recorded sorted"
    );
    assert_eq!(directory.partition(PartitionId(3)).unwrap().authority, "other");
    assert_eq!(directory.partition(PartitionId(0)), None);
    assert_eq!(
        directory.partitions().map(|(id, _)| id).collect::<Vec<_>>(),
        vec![PartitionId(1), PartitionId(2), PartitionId(3)]
    );
    assert_eq!(directory.next_partition(), PartitionId(4));
    // Allocation is not repository creation: the partition's own state is untouched.
    assert!(h.state.repositories().is_empty());

    // A retry answers the allocated id again and allocates nothing.
    let digest = h.state.digest();
    assert_eq!(h.apply(client, 1, allocate("a", &[3, 1, 2])), first);
    assert_eq!(h.apply(client, 3, allocate("zzz", &[9])), third);
    assert_eq!(h.state.digest(), digest);
    assert_eq!(h.state.directory().next_partition(), PartitionId(4));

    // Allocating for a routed repository is refused, and burns no id.
    assert_eq!(h.apply(client, 4, allocate("a", &[1])), Err(Rejection::RepositoryExists { repo: repo("a") }));
    assert_eq!(h.state.directory().next_partition(), PartitionId(4));
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
    let before = h.state.directory().clone();
    for (op, reason) in invalid {
        let command = Command { client: ClientId(1), seq: 1000, op: op.clone() };
        match validate(&command) {
            Err(Rejection::InvalidMembers { reason: got }) => {
                assert!(got.contains(reason), "{command}: {got}")
            }
            other => panic!("{command}: {other:?}"),
        }
        let rejection = h.write(op).unwrap_err();
        assert!(matches!(rejection, Rejection::InvalidMembers { .. }), "{rejection}");
        assert!(rejection.to_string().starts_with("invalid partition members"));
        assert_eq!(h.state.directory(), &before);
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
    assert_eq!(h.state.directory().route(&repo("a/fork")), Some(PartitionId(1)));
    for missing in [0, 2, u64::MAX] {
        assert_eq!(h.write(route("b", missing)), Err(Rejection::PartitionNotFound { partition: PartitionId(missing) }));
    }
    assert_eq!(h.write(route("b", 7)).unwrap_err().to_string(), "partition 7 not found");
    assert_eq!(h.write(route("a", 1)), Err(Rejection::RepositoryExists { repo: repo("a") }));
    // The partition is checked first.
    assert_eq!(h.write(route("a", 5)), Err(Rejection::PartitionNotFound { partition: PartitionId(5) }));
    assert_eq!(h.state.directory().route(&repo("b")), None);

    assert!(h.write(unroute("a/fork")).is_ok());
    assert_eq!(h.state.directory().route(&repo("a/fork")), None);
    assert_eq!(h.write(unroute("a/fork")), Err(Rejection::RepositoryNotFound { repo: repo("a/fork") }));
    // A partition outlives its routes, and takes routes again.
    assert!(h.write(unroute("a")).is_ok());
    assert!(h.state.directory().partition(PartitionId(1)).is_some());
    assert!(h.write(route("a", 1)).is_ok());
    // A repository once unrouted can be allocated a new partition.
    assert!(h.write(unroute("a")).is_ok());
    assert_eq!(h.write(allocate("a", &[4])), allocated(h.index, 2));
}

#[test]
fn directory_set_partition_members() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1, 2, 3])).unwrap();
    let ok = h.write(set_members(1, &[4, 2, 3], &[9, 1])).unwrap();
    assert_eq!(ok.partition, None);
    assert_eq!(h.state.directory().partition(PartitionId(1)), Some(&partition_info(STORAGE, &[2, 3, 4], &[1, 9])));
    // Setting the same members again is fine; the authority never changes.
    h.write(set_members(1, &[2, 3, 4], &[1, 9])).unwrap();
    assert_eq!(h.state.directory().partition(PartitionId(1)).unwrap().authority, STORAGE);
    assert_eq!(h.write(set_members(2, &[1], &[])), Err(Rejection::PartitionNotFound { partition: PartitionId(2) }));
    assert_eq!(h.state.directory().partitions().count(), 1);
}

#[test]
fn directory_reads() {
    let mut h = Harness::new();
    let route_of = |h: &Harness, path: &str| match h.state.read(&ReadQuery::Route { repo: repo(path) }) {
        ReadResult::Route(route) => route,
        other => panic!("Route answered {other:?}"),
    };
    assert_eq!(route_of(&h, "a"), None);
    assert_eq!(h.state.read(&ReadQuery::Partitions), ReadResult::Partitions(vec![]));
    h.write(allocate("b", &[2, 1])).unwrap();
    h.write(allocate("a", &[3])).unwrap();
    h.write(allocate("c", &[1])).unwrap();
    h.write(route("b/z", 1)).unwrap();
    h.write(route("b/fork", 1)).unwrap();
    h.write(unroute("c")).unwrap();
    h.write(set_members(2, &[3], &[4])).unwrap();

    assert_eq!(route_of(&h, "b/fork"), Some((PartitionId(1), partition_info(STORAGE, &[1, 2], &[]))));
    assert_eq!(route_of(&h, "a"), Some((PartitionId(2), partition_info(STORAGE, &[3], &[4]))));
    assert_eq!(route_of(&h, "c"), None);
    assert_eq!(
        h.state.read(&ReadQuery::Partitions),
        ReadResult::Partitions(vec![
            (PartitionId(1), partition_info(STORAGE, &[1, 2], &[]), vec![repo("b"), repo("b/fork"), repo("b/z")]),
            (PartitionId(2), partition_info(STORAGE, &[3], &[4]), vec![repo("a")]),
            (PartitionId(3), partition_info(STORAGE, &[1], &[]), vec![]),
        ])
    );
    let bad = RepoId { storage: String::new(), relative_path: RelativePath::new("a").unwrap() };
    assert!(matches!(
        h.state.read(&ReadQuery::Route { repo: bad }),
        ReadResult::Rejected(Rejection::InvalidStorageName { .. })
    ));
}

#[test]
fn directory_limits() {
    let mut h = Harness::new();
    h.write(allocate("a", &[1])).unwrap();
    h.write(allocate("b", &[1])).unwrap();
    // Fill partition 1 up to the repositories a partition holds (directly: through `Harness`
    // every step would check every invariant).
    let directory = &mut h.state.directory;
    for number in 1..PARTITION_REPOSITORIES_MAX {
        directory.route_repository(&repo(&format!("f/{number}")), PartitionId(1)).unwrap();
    }
    assert_eq!(directory.invariant_violation(), None);
    assert_eq!(
        h.write(route("one-too-many", 1)),
        Err(Rejection::TooManyRepositories { count_max: PARTITION_REPOSITORIES_MAX as u64 })
    );
    assert!(h.write(route("elsewhere", 2)).is_ok());
    assert!(h.write(unroute("f/1")).is_ok());
    assert!(h.write(route("one-too-many", 1)).is_ok());

    // Partition ids are never reused; running out of them refuses allocation.
    h.state.directory.next_partition = u64::MAX;
    assert_eq!(h.state.invariant_violation(), None);
    assert_eq!(
        h.write(allocate("c", &[1])),
        Err(Rejection::TooManyPartitions { count_max: DIRECTORY_PARTITIONS_MAX as u64 })
    );
    assert_eq!(h.state.directory().route(&repo("c")), None);
}

#[test]
fn directory_commands_display_and_encode() {
    let many: Vec<u64> = (1..=20).collect();
    for (op, text) in [
        (allocate("a", &[3, 1]), "allocate a partition for default:a on voters [3, 1]"),
        (route("a/f", 2), "route default:a/f to partition 2"),
        (unroute("a"), "unroute default:a"),
        (set_members(2, &[1], &[]), "set members of partition 2: voters [1], learners []"),
        (allocate("a", &many), "allocate a partition for default:a on voters [1, 2, 3, 4, 5, 6, 7, 8, … 20 in all]"),
    ] {
        let command = Command { client: ClientId(2), seq: 3, op };
        assert_eq!(command.to_string(), format!("client 2 seq 3: {text}"));
        assert_eq!(Command::decode(&command.encode()).unwrap(), command);
    }
}

// ---- Snapshots and encodings ---------------------------------------------------------------

fn sample_state() -> StateMachine {
    let mut h = Harness::new();
    let one = blob("one");
    h.write(create("a")).unwrap();
    h.write(tx("a", vec![one.clone()], vec![set("refs/heads/main", Expected::Any, Some(direct(&one)))])).unwrap();
    h.write(fork("f", "a")).unwrap();
    h.write(tx("f", vec![], vec![set("refs/heads/main", Expected::MustNotExist, None)])).unwrap_err();
    h.write(allocate("a", &[1, 2, 3])).unwrap();
    h.write(allocate("b", &[2])).unwrap();
    h.write(route("f", 1)).unwrap();
    h.write(set_members(2, &[2, 3], &[4])).unwrap();
    h.state.apply_noop(h.index + 5);
    h.state
}

#[test]
fn snapshot_round_trip() {
    let state = sample_state();
    let bytes = state.to_snapshot_bytes();
    let restored = StateMachine::from_snapshot_bytes(&bytes).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.digest(), state.digest());
    assert_eq!(restored.applied_index(), state.applied_index());

    // The applied index is not in the digest.
    let mut later = state.clone();
    later.apply_noop(state.applied_index() + 1);
    assert_eq!(later.digest(), state.digest());

    assert!(StateMachine::from_snapshot_bytes(&bytes[..bytes.len() - 1]).is_err());
    assert!(StateMachine::from_snapshot_bytes(&[]).is_err());
    let mut wrong_version = bytes.clone();
    wrong_version[0] ^= 0xff;
    assert!(StateMachine::from_snapshot_bytes(&wrong_version).is_err());

    // Well-formed bytes of an inconsistent state are refused too.
    let mut miscounted = state.clone();
    miscounted.objects.hold_existing(&blob("one").oid);
    let error = StateMachine::from_snapshot_bytes(&miscounted.to_snapshot_bytes()).unwrap_err();
    assert!(error.reason.contains("holders"), "{error}");
    let mut behind = state.clone();
    behind.applied_index = 1;
    assert!(StateMachine::from_snapshot_bytes(&behind.to_snapshot_bytes()).is_err());
}

#[test]
fn snapshot_round_trip_with_a_directory() {
    let state = sample_state();
    assert_eq!(state.directory().partitions().count(), 2);
    let restored = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.directory(), state.directory());
    assert_eq!(restored.digest(), state.digest());

    // The directory is in the digest.
    let mut without = state.clone();
    without.directory = Directory::default();
    assert_ne!(without.digest(), state.digest());
    assert_eq!(without.invariant_violation(), None);

    // A restored directory keeps allocating where it left off, like the original.
    let mut left = state.clone();
    let mut right = restored;
    let command = Command { client: ClientId(1), seq: 1000, op: allocate("new", &[1]) };
    let index = state.applied_index() + 1;
    assert_eq!(left.apply(index, &command), allocated(index, 3));
    assert_eq!(right.apply(index, &command), allocated(index, 3));
    assert_eq!(left.digest(), right.digest());

    // Well-formed bytes of an inconsistent directory are refused.
    let refused = |state: &StateMachine, needle: &str| {
        let error = StateMachine::from_snapshot_bytes(&state.to_snapshot_bytes()).unwrap_err();
        assert!(error.reason.contains(needle), "{error}");
        assert!(state.invariant_violation().is_some());
    };
    let mut dangling = state.clone();
    dangling.directory.routes.insert(repo("g"), PartitionId(9));
    refused(&dangling, "unknown partition 9");
    let mut reused = state.clone();
    reused.directory.next_partition = 2;
    refused(&reused, "outside the allocated ids");
    let mut zero = state.clone();
    zero.directory.next_partition = 0;
    refused(&zero, "ids start at 1");
    let mut unsorted = state.clone();
    unsorted.directory.partitions.get_mut(&PartitionId(1)).unwrap().voters.reverse();
    refused(&unsorted, "not sorted");
    let mut no_voters = state.clone();
    no_voters.directory.partitions.get_mut(&PartitionId(2)).unwrap().voters.clear();
    refused(&no_voters, "no voters");
    let mut bad_authority = state.clone();
    bad_authority.directory.partitions.get_mut(&PartitionId(2)).unwrap().authority = "../x".to_string();
    refused(&bad_authority, "invalid storage name");

    // Counts out of step with the routes (not encoded, so only the in-memory check sees it).
    let mut miscounted = state.clone();
    miscounted.directory.routes.insert(repo("g"), PartitionId(2));
    assert_eq!(miscounted.invariant_violation(), Some("directory route counts out of step".to_string()));
}

#[test]
fn command_encoding() {
    let command = Command {
        client: ClientId(5),
        seq: 9,
        op: tx("a", vec![blob("x")], vec![set("refs/heads/aaaa", Expected::MustNotExist, None)]),
    };
    let bytes = command.encode();
    assert_eq!(Command::decode(&bytes).unwrap(), command);
    assert_eq!(validate(&command), Ok(()));
    // The same bytes with an invalid ref name do not decode.
    let at = bytes.windows(4).position(|w| w == b"aaaa").unwrap();
    let mut bad = bytes.clone();
    bad[at + 1..at + 3].copy_from_slice(b"..");
    assert!(Command::decode(&bad).is_err());
    assert!(Command::decode(&bytes[..bytes.len() - 1]).is_err());
    assert!(Command::decode(&vec![0; COMMAND_SIZE_BYTES_MAX + 1]).is_err());
    assert_eq!(command.to_string(), "client 5 seq 9: transaction on default:a: 1 objects, 1 ref updates");
}

#[test]
fn oversized_command_is_not_proposed() {
    let object = || NewObject { kind: ObjectKind::Blob, data: vec![0; 3 * 1024 * 1024], oid: Oid([0; 20]) };
    let command = Command { client: ClientId(1), seq: 1, op: tx("a", vec![object(), object(), object()], vec![]) };
    assert!(matches!(validate(&command), Err(Rejection::CommandTooLarge { .. })));
}

#[test]
#[should_panic(expected = "indexes must increase")]
fn applied_index_must_increase() {
    let mut state = StateMachine::new();
    state.apply_noop(3);
    let _ = state.apply(3, &Command { client: ClientId(1), seq: 1, op: create("a") });
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
    ]
}

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
    ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn replicas_agree_and_snapshots_restore(entries in arb_entries(), snapshot_at in 0..60usize) {
        let mut left = StateMachine::new();
        let mut right = StateMachine::new();
        let mut restored: Option<StateMachine> = None;
        let mut first_results: BTreeMap<(ClientId, u64), WriteResult> = BTreeMap::new();
        for (position, entry) in entries.iter().enumerate() {
            let index = position as u64 + 1;
            if position == snapshot_at {
                let bytes = left.to_snapshot_bytes();
                let state = StateMachine::from_snapshot_bytes(&bytes).expect("own snapshot restores");
                prop_assert_eq!(state.digest(), left.digest());
                restored = Some(state);
            }
            let Some(command) = entry else {
                left.apply_noop(index);
                right.apply_noop(index);
                if let Some(state) = restored.as_mut() { state.apply_noop(index); }
                continue;
            };
            let before = (left.repositories.clone(), left.objects.clone(), left.directory.clone());
            let result = left.apply(index, command);
            prop_assert_eq!(&right.apply(index, command), &result);
            if let Some(state) = restored.as_mut() {
                prop_assert_eq!(&state.apply(index, command), &result);
            }
            prop_assert_eq!(left.invariant_violation(), None);
            prop_assert_eq!(left.digest(), right.digest());
            // A rejection changes nothing but the dedup table.
            if result.is_err() {
                prop_assert_eq!(&(left.repositories.clone(), left.objects.clone(), left.directory.clone()), &before);
            }
            // Seqs stay far inside the window: every retry answers the first result.
            match first_results.get(&(command.client, command.seq)) {
                Some(first) => prop_assert_eq!(first, &result),
                None => {
                    // A new write: only an allocation names a partition, the one just routed.
                    if let Ok(ok) = &result {
                        match &command.op {
                            WriteOp::AllocatePartition { repo, .. } => {
                                let id = ok.partition.expect("an allocation names its partition");
                                prop_assert_eq!(left.directory().route(repo), Some(id));
                                prop_assert_eq!(left.directory().next_partition(), PartitionId(id.0 + 1));
                            }
                            _ => prop_assert_eq!(ok.partition, None),
                        }
                    }
                    first_results.insert((command.client, command.seq), result);
                }
            }
        }
        if let Some(state) = restored {
            prop_assert_eq!(&state, &left);
        }
        let again = StateMachine::from_snapshot_bytes(&left.to_snapshot_bytes()).expect("own snapshot restores");
        prop_assert_eq!(again.digest(), left.digest());
        prop_assert_eq!(again, left);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = StateMachine::from_snapshot_bytes(&bytes);
        let _ = Command::decode(&bytes);
    }

    #[test]
    fn corrupted_snapshots_never_panic(flips in prop::collection::vec((any::<prop::sample::Index>(), 1..=255u8), 1..4)) {
        let mut bytes = sample_state().to_snapshot_bytes();
        for (at, mask) in flips {
            let at = at.index(bytes.len());
            bytes[at] ^= mask;
        }
        if let Ok(state) = StateMachine::from_snapshot_bytes(&bytes) {
            prop_assert_eq!(state.invariant_violation(), None);
            // A restored state keeps working.
            let mut state = state;
            if let Some(index) = state.applied_index().checked_add(1) {
                let _ = state.apply(index, &Command { client: ClientId(1), seq: 1, op: create("z") });
                prop_assert_eq!(state.invariant_violation(), None);
            }
        }
    }

    #[test]
    fn names_never_panic(text in "\\PC{0,40}", raw in prop::collection::vec(any::<u8>(), 0..40)) {
        let _ = RefName::new(text.clone());
        let _ = RelativePath::new(text.clone());
        let _ = validate_storage_name(&text);
        let lossy = String::from_utf8_lossy(&raw).into_owned();
        let _ = RefName::new(format!("refs/{lossy}"));
        let _ = RelativePath::new(lossy);
    }
}
