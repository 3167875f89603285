//! Tests of the state machine's vocabulary: hashing against git, validation tables, command
//! encodings. What commands do to the state is tested with the store (`crate::store`).

use super::*;

const STORAGE: &str = "default";
use proptest::prelude::*;
use std::io::Write as _;
use std::process::{Command as Process, Stdio};

fn repo(path: &str) -> RepoId {
    RepoId::new(STORAGE, path).expect("a valid repository id")
}

fn name(text: &str) -> RefName {
    RefName::new(text).expect("a valid ref name")
}

fn blob(content: &str) -> NewObject {
    NewObject::new(ObjectKind::Blob, content.as_bytes().to_vec())
}

fn tx(path: &str, objects: Vec<NewObject>, refs: Vec<RefUpdate>) -> WriteOp {
    WriteOp::Transaction { repo: repo(path), objects, refs }
}

fn set(ref_name: &str, expected: Expected, new: Option<RefValue>) -> RefUpdate {
    RefUpdate { name: name(ref_name), expected, new }
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
    assert!(matches!(check_op(&command.op), Err(Rejection::InvalidStorageName { .. })));
    assert!(bad.validate().is_err());
}

#[test]
fn rejections_echo_bounded_text() {
    let huge = format!("refs/heads/{}", "ü".repeat(10_000));
    let Err(Rejection::InvalidRefName { name, .. }) = RefName::new(huge) else { panic!("accepted") };
    assert!(name.len() <= REJECTION_ECHO_BYTES_MAX + "…".len());
}

// ---- Directory ---------------------------------------------------------------------------

#[test]
fn directory_commands_display_and_encode() {
    let many: Vec<u64> = (1..=20).collect();
    for (op, text) in [
        (allocate("a", &[3, 1]), "allocate a partition for default:a on voters [3, 1]"),
        (route("a/f", 2), "route default:a/f to partition 2"),
        (unroute("a"), "unroute default:a"),
        (set_members(2, &[1], &[]), "set members of partition 2 as of index 0: voters [1], learners []"),
        (allocate("a", &many), "allocate a partition for default:a on voters [1, 2, 3, 4, 5, 6, 7, 8, … 20 in all]"),
    ] {
        let command = Command { client: ClientId(2), seq: 3, op };
        assert_eq!(command.to_string(), format!("client 2 seq 3: {text}"));
        assert_eq!(Command::decode(&command.encode()).unwrap(), command);
    }
}

// ---- Encodings -------------------------------------------------------------------------------

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
    let object = || NewObject::claimed(ObjectKind::Blob, vec![0; 3 * 1024 * 1024], Oid([0; 20]));
    let command = Command { client: ClientId(1), seq: 1, op: tx("a", vec![object(), object(), object()], vec![]) };
    assert!(matches!(validate(&command), Err(Rejection::CommandTooLarge { .. })));
    // Content within the bound that does not compress encodes to more than the bound.
    let mut seed = 1u64;
    let mut noise = || {
        let data: Vec<u8> = (0..OBJECT_SIZE_BYTES_MAX)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (seed >> 33) as u8
            })
            .collect();
        NewObject::new(ObjectKind::Blob, data)
    };
    let command = Command { client: ClientId(1), seq: 1, op: tx("a", vec![noise(), noise()], vec![]) };
    assert_eq!(command.op.data_bytes(), COMMAND_SIZE_BYTES_MAX, "the content alone is within the bound");
    let size_bytes = command.encode().len();
    assert!(size_bytes > COMMAND_SIZE_BYTES_MAX);
    assert_eq!(
        validate(&command),
        Err(Rejection::CommandTooLarge {
            size_bytes: size_bytes as u64,
            size_bytes_max: COMMAND_SIZE_BYTES_MAX as u64
        })
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Command::decode(&bytes);
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
