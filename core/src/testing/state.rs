//! A partition's state to copy around in tests of snapshots: a store holding one repository
//! of random (incompressible) blobs, applied at term 3, with three voters.

use crate::ids::{ClientId, PartitionId};
use crate::persist::{ConfState, LogPosition};
use crate::state_machine::{
    Command, Expected, NewObject, ObjectKind, Oid, RefName, RefUpdate, RefValue, RelativePath, RepoId, WriteOp,
};
use crate::store::{Commit, PartitionWriter, Store};
use rand::{rngs::StdRng, Rng, SeedableRng};

/// `partition`'s state in a fresh in-memory store: the repository `a/b.git` holding `blobs`
/// random blobs of `blob_bytes` each (drawn from `seed`), each under its own branch, then a
/// membership of voters 1, 2 and 3. A snapshot of it is about `blobs × blob_bytes` long.
pub fn partition_state(partition: PartitionId, blobs: u64, blob_bytes: usize, seed: u64) -> Store {
    let mut rng = StdRng::seed_from_u64(seed);
    let repo = RepoId { storage: "default".into(), relative_path: RelativePath::new("a/b.git").unwrap() };
    let create = WriteOp::CreateRepository { repo: repo.clone(), fork_of: None };
    let mut commands = vec![Command { client: ClientId(1), seq: 1, op: create }];
    for i in 0..blobs {
        let data: Vec<u8> = (0..blob_bytes).map(|_| rng.gen()).collect();
        let oid = Oid::hash_object(ObjectKind::Blob, &data);
        let op = WriteOp::Transaction {
            repo: repo.clone(),
            objects: vec![NewObject::claimed(ObjectKind::Blob, data, oid)],
            refs: vec![RefUpdate {
                name: RefName::new(format!("refs/heads/b{i}")).unwrap(),
                expected: Expected::Any,
                new: Some(RefValue::Direct(oid)),
            }],
        };
        commands.push(Command { client: ClientId(1), seq: i + 2, op });
    }
    let store = Store::in_memory();
    store
        .write(Commit::Durable, |rows| {
            let mut writer = PartitionWriter::open(rows, partition)?;
            for (i, command) in commands.iter().enumerate() {
                assert!(writer.apply(LogPosition { index: i as u64 + 1, term: 3 }, command)?.is_ok());
            }
            writer.apply_membership(
                LogPosition { index: commands.len() as u64 + 1, term: 3 },
                ConfState { voters: vec![1, 2, 3], ..ConfState::default() },
            );
            writer.finish()
        })
        .unwrap();
    store
}
