//! Three replicas driven by hand, in one thread, with no runtime.

use super::*;
use crate::ids::ClientId;
use crate::state_machine::{
    Expected, NewObject, ObjectKind, Oid, ReadResult, RefName, RefUpdate, RefValue, RelativePath, RepoId, WriteOp,
};
use crate::testing::{Cluster, Delivered};

pub(super) const STEPS_MAX: usize = 100_000;

fn repo() -> RepoId {
    RepoId { storage: "default".into(), relative_path: RelativePath::new("group/project.git").unwrap() }
}

pub(super) fn create_repo(seq: u64) -> Request {
    Request::Write(Command { client: ClientId(1), seq, op: WriteOp::CreateRepository { repo: repo(), fork_of: None } })
}

/// Writes a blob with `content` and points `refs/heads/main` at it, whatever it was.
pub(super) fn set_main(client: u64, seq: u64, content: &[u8]) -> (Request, Oid) {
    let oid = Oid::hash_object(ObjectKind::Blob, content);
    let op = WriteOp::Transaction {
        repo: repo(),
        objects: vec![NewObject::claimed(ObjectKind::Blob, content.to_vec(), oid)],
        refs: vec![RefUpdate {
            name: RefName::new("refs/heads/main").unwrap(),
            expected: Expected::Any,
            new: Some(RefValue::Direct(oid)),
        }],
    };
    (Request::Write(Command { client: ClientId(client), seq, op }), oid)
}

pub(super) fn list_refs(consistency: ReadConsistency) -> Request {
    Request::Read { query: ReadQuery::ListRefs { repo: repo() }, consistency }
}

fn log_retained(entries: u64) -> ReplicaOptions {
    ReplicaOptions { log_retain_entries: entries, ..ReplicaOptions::default() }
}

fn never_quiescing() -> ReplicaOptions {
    ReplicaOptions { quiesce_after_ticks: 0, ..ReplicaOptions::default() }
}

pub(super) fn elect(cluster: &mut Cluster) -> NodeId {
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some()), "a leader is elected");
    // Let the new leader commit its empty entry so that reads and writes can be served.
    let leader = cluster.leader().unwrap();
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        let status = c.status_of(leader);
        status.commit_index >= status.last_index && status.applied_index == status.commit_index
    }));
    leader
}

/// Sends `body` to the leader and drives until it is answered.
fn request_on_leader(cluster: &mut Cluster, body: Request) -> Response {
    let leader = elect(cluster);
    let request = cluster.request(leader, body);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()), "request is answered");
    cluster.response(request).unwrap().clone()
}

pub(super) fn assert_written(response: &Response) {
    assert!(matches!(response, Response::Written(Ok(_))), "expected a successful write, got {response:?}");
}

fn assert_one_leader_per_term(cluster: &Cluster) {
    let mut terms = std::collections::BTreeMap::new();
    for (node, term) in cluster.leaders() {
        if let Some(other) = terms.insert(term, node) {
            panic!("nodes {other} and {node} both lead term {term}");
        }
    }
}

#[test]
fn three_replicas_elect_exactly_one_leader() {
    let mut cluster = Cluster::new(3, 1);
    let leader = elect(&mut cluster);
    assert_one_leader_per_term(&cluster);
    let term = cluster.replica(leader).term();
    for node in cluster.nodes() {
        let status = cluster.status_of(node);
        assert_eq!(status.term, term);
        assert_eq!(status.leader, Some(leader), "node {node} knows the leader");
    }
}

#[test]
fn writes_replicate_and_every_replica_applies_the_same_state() {
    let mut cluster = Cluster::new(3, 2);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    for seq in 2..20 {
        let (body, _) = set_main(1, seq, format!("v{seq}").as_bytes());
        assert_written(&request_on_leader(&mut cluster, body));
    }
    let leader = cluster.leader().unwrap();
    let commit = cluster.status_of(leader).commit_index;
    assert!(cluster.drive_until(STEPS_MAX, |c| c.nodes().iter().all(|&n| c.status_of(n).applied_index == commit)));
    let digest = cluster.digest(leader);
    for node in cluster.nodes() {
        assert_eq!(cluster.digest(node), digest, "node {node} converged");
    }
    cluster.assert_logs_agree();
}

#[test]
fn followers_hear_of_a_commit_with_the_next_message_not_an_append_of_its_own() {
    use raft::eraftpb::MessageType;
    let mut cluster = Cluster::new(3, 4);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let leader = cluster.leader().unwrap();
    let commit_only_append = |c: &Cluster| {
        c.in_flight().any(|e| {
            e.from == leader
                && matches!(&e.payload, Payload::Raft(m) if m.get_msg_type() == MessageType::MsgAppend && m.entries.is_empty())
        })
    };
    let mut seen = false;
    for seq in 2..6 {
        let (body, _) = set_main(1, seq, format!("v{seq}").as_bytes());
        let request = cluster.request(leader, body);
        assert!(cluster.drive_until(STEPS_MAX, |c| {
            seen |= commit_only_append(c);
            c.response(request).is_some()
        }));
        assert_written(cluster.response(request).unwrap());
    }
    // The last write's commit reaches the followers all the same: with the next heartbeat.
    let commit = cluster.status_of(leader).commit_index;
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        seen |= commit_only_append(c);
        c.nodes().iter().all(|&n| c.status_of(n).applied_index == commit)
    }));
    assert!(!seen, "the leader sent an empty append just to advance its followers' commit");
}

#[test]
fn follower_answers_not_leader_with_a_hint() {
    let mut cluster = Cluster::new(3, 3);
    let leader = elect(&mut cluster);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let request = cluster.request(follower, create_repo(1));
    assert_eq!(cluster.response(request), Some(&Response::NotLeader { leader: Some(leader) }));
    let read = cluster.request(follower, list_refs(ReadConsistency::Linearizable));
    assert_eq!(cluster.response(read), Some(&Response::NotLeader { leader: Some(leader) }));
}

#[test]
fn losing_the_leader_elects_another_and_keeps_every_committed_write() {
    let mut cluster = Cluster::new(3, 4);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let (body, first) = set_main(1, 2, b"before");
    assert_written(&request_on_leader(&mut cluster, body));
    let old_leader = cluster.leader().unwrap();
    let old_term = cluster.replica(old_leader).term();

    cluster.crash(old_leader);
    let new_leader = elect(&mut cluster);
    assert_ne!(new_leader, old_leader);
    assert!(cluster.replica(new_leader).term() > old_term);
    assert_one_leader_per_term(&cluster);

    // The committed write survived the failover.
    match request_on_leader(&mut cluster, list_refs(ReadConsistency::Linearizable)) {
        Response::Read { result: ReadResult::Refs(refs), .. } => {
            assert_eq!(refs, vec![(RefName::new("refs/heads/main").unwrap(), RefValue::Direct(first))]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let (body, second) = set_main(1, 3, b"after");
    assert_written(&request_on_leader(&mut cluster, body));

    // The old leader comes back, catches up, and agrees.
    cluster.restart(old_leader);
    let commit = cluster.status_of(new_leader).commit_index;
    assert!(cluster.drive_until(STEPS_MAX, |c| c.status_of(old_leader).applied_index >= commit));
    let read = cluster.request(old_leader, list_refs(ReadConsistency::Stale));
    match cluster.response(read) {
        Some(Response::Read { result: ReadResult::Refs(refs), .. }) => {
            assert_eq!(refs, &vec![(RefName::new("refs/heads/main").unwrap(), RefValue::Direct(second))]);
        }
        other => panic!("unexpected {other:?}"),
    }
    let digest = cluster.digest(new_leader);
    assert_eq!(cluster.digest(old_leader), digest);
    cluster.assert_logs_agree();
}

#[test]
fn an_isolated_leader_steps_down_and_the_majority_goes_on() {
    let mut cluster = Cluster::new(3, 5);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let old_leader = cluster.leader().unwrap();
    cluster.isolate(old_leader);
    // Check-quorum: the isolated leader notices it lost its followers and steps down, while
    // the other two elect a new leader.
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        !c.replica(old_leader).is_leader() && c.leader().is_some_and(|l| l != old_leader)
    }));
    // A write sent to the isolated ex-leader is refused, not silently queued.
    let (body, _) = set_main(1, 2, b"x");
    let request = cluster.request(old_leader, body);
    assert!(matches!(cluster.response(request), Some(Response::NotLeader { .. })));
    cluster.heal();
    let (body, _) = set_main(1, 3, b"y");
    assert_written(&request_on_leader(&mut cluster, body));
    assert_one_leader_per_term(&cluster);
    cluster.assert_logs_agree();
}

#[test]
fn retried_write_returns_the_original_result_and_applies_once() {
    let mut cluster = Cluster::new(3, 6);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let (body, _) = set_main(1, 2, b"once");
    let first = request_on_leader(&mut cluster, body.clone());
    let applied_after_first = cluster.digest(cluster.leader().unwrap());
    let second = request_on_leader(&mut cluster, body);
    assert_eq!(first, second, "a retry answers like the original");
    assert_eq!(cluster.digest(cluster.leader().unwrap()), applied_after_first);
}

/// Every vote granted and every append acknowledged on the wire is backed by the sender's
/// durable log: the sender's persisted hard state records the vote, and its persisted log
/// holds the acknowledged index. Persistence completes late and at random here, so any
/// message sent before its Ready is durable would be caught.
#[test]
fn votes_and_append_acks_never_run_ahead_of_the_log() {
    use raft::eraftpb::MessageType;
    use rand::{Rng, SeedableRng};
    // Heartbeats all along: quiet stretches between writes must not end the run.
    let mut cluster = Cluster::with_options(3, 7, never_quiescing());
    cluster.auto_persist = false;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut votes_checked, mut acks_checked) = (0, 0);
    let mut seq = 0;
    for step in 0..20_000 {
        for envelope in cluster.in_flight() {
            let Some(m) = envelope.raft() else { continue };
            if m.reject {
                continue;
            }
            let durable = cluster.durable(envelope.from);
            match m.get_msg_type() {
                MessageType::MsgRequestVoteResponse => {
                    votes_checked += 1;
                    assert_eq!(durable.hard_state.vote, envelope.to.0, "vote sent before it was durable");
                    assert_eq!(durable.hard_state.term, m.term, "vote's term is durable");
                }
                MessageType::MsgAppendResponse => {
                    acks_checked += 1;
                    assert!(durable.last_index() >= m.index, "append acked before it was durable");
                }
                _ => {}
            }
        }
        if rng.gen_bool(0.3) {
            let nodes = cluster.nodes();
            let node = nodes[rng.gen_range(0..nodes.len())];
            cluster.complete_persists(node);
        }
        if step % 500 == 0 {
            if let Some(leader) = cluster.leader() {
                seq += 1;
                let body = if seq == 1 { create_repo(1) } else { set_main(1, seq, &seq.to_le_bytes()).0 };
                cluster.request(leader, body);
            }
        }
        if !cluster.step() {
            break;
        }
    }
    assert!(
        votes_checked > 0 && acks_checked > 10,
        "the run exercised votes ({votes_checked}) and acks ({acks_checked})"
    );
    assert!(cluster.responses.iter().any(|d| matches!(d.response, Response::Written(Ok(_)))), "writes committed");
}

#[test]
fn linearizable_read_sees_the_latest_write_and_stale_read_reports_its_index() {
    let mut cluster = Cluster::new(3, 8);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let (body, oid) = set_main(1, 2, b"latest");
    assert_written(&request_on_leader(&mut cluster, body));
    match request_on_leader(&mut cluster, list_refs(ReadConsistency::Linearizable)) {
        Response::Read { result: ReadResult::Refs(refs), applied_index } => {
            assert_eq!(refs, vec![(RefName::new("refs/heads/main").unwrap(), RefValue::Direct(oid))]);
            assert!(applied_index >= 3);
        }
        other => panic!("unexpected {other:?}"),
    }
    let leader = cluster.leader().unwrap();
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let read = cluster.request(follower, list_refs(ReadConsistency::Stale));
    assert!(matches!(cluster.response(read), Some(Response::Read { .. })));
}

#[test]
fn progress_under_message_loss() {
    let mut cluster = Cluster::new(3, 9);
    cluster.drop_rate = 0.2;
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    for seq in 2..10 {
        let (body, _) = set_main(1, seq, &seq.to_le_bytes());
        // Under loss a leader may change while a write is in flight: retry like a client.
        loop {
            match request_on_leader(&mut cluster, body.clone()) {
                Response::Written(result) => {
                    assert!(result.is_ok());
                    break;
                }
                Response::NotLeader { .. } | Response::Unknown | Response::Busy => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_one_leader_per_term(&cluster);
    cluster.assert_logs_agree();
}

#[test]
fn the_same_seed_replays_the_same_run() {
    fn run(seed: u64) -> (Vec<Delivered>, Vec<(NodeId, u64)>, Instant) {
        let mut cluster = Cluster::new(3, seed);
        cluster.drop_rate = 0.1;
        let _ = request_on_leader(&mut cluster, create_repo(1));
        let (body, _) = set_main(1, 2, b"d");
        let _ = request_on_leader(&mut cluster, body);
        (cluster.responses.clone(), cluster.leaders(), cluster.now)
    }
    assert_eq!(run(42), run(42));
}

#[test]
fn a_failed_log_write_fails_pending_writes_and_acknowledges_nothing() {
    let mut cluster = Cluster::new(1, 10);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let leader = cluster.leader().unwrap();
    cluster.auto_persist = false;
    let (body, _) = set_main(1, 2, b"never durable");
    let request = cluster.request(leader, body);
    assert_eq!(cluster.response(request), None, "not answered before it is durable");
    let error = crate::persist::PersistError(std::sync::Arc::new(std::io::Error::other("fsync failed")));
    cluster.fail_persists(leader, error);
    assert!(matches!(cluster.response(request), Some(Response::Failed(_))));
    let (body, _) = set_main(1, 3, b"after");
    let later = cluster.request(leader, body);
    assert!(matches!(cluster.response(later), Some(Response::Failed(_))));
}

#[test]
fn single_replica_partition_commits_on_its_own() {
    let mut cluster = Cluster::new(1, 11);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let (body, _) = set_main(1, 2, b"solo");
    assert_written(&request_on_leader(&mut cluster, body));
}

#[test]
fn a_follower_forwards_a_node_write_and_answers_once_it_applies() {
    let mut cluster = Cluster::new(3, 12);
    let leader = elect(&mut cluster);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let Request::Write(command) = create_repo(1) else { unreachable!() };
    let request = cluster.request(follower, Request::ForwardedWrite(command.clone()));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    let first = cluster.response(request).unwrap().clone();
    assert_written(&first);
    // A retry of the same (client, sequence), forwarded again, answers the original result.
    let retry = cluster.request(follower, Request::ForwardedWrite(command));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(retry).is_some()));
    assert_eq!(cluster.response(retry).unwrap(), &first);
}

#[test]
fn a_forwarded_write_that_is_lost_is_answered_unknown() {
    let mut cluster = Cluster::new(3, 13);
    let leader = elect(&mut cluster);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    // Cut the follower off after it knows the leader: its forward never arrives.
    cluster.isolate(follower);
    let Request::Write(command) = create_repo(1) else { unreachable!() };
    let request = cluster.request(follower, Request::ForwardedWrite(command));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_eq!(cluster.response(request), Some(&Response::Unknown));
}

fn change(cluster: &mut Cluster, change: MembershipChange) -> Response {
    request_on_leader(cluster, Request::ChangeMembership(change))
}

fn caught_up(cluster: &Cluster, node: NodeId) -> bool {
    let leader = cluster.leader().unwrap();
    let commit = cluster.status_of(leader).commit_index;
    cluster.status_of(node).applied_index >= commit
}

#[test]
fn a_learner_joins_empty_catches_up_from_the_log_and_is_promoted() {
    let mut cluster = Cluster::new(3, 20);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    for seq in 2..10 {
        assert_written(&request_on_leader(&mut cluster, set_main(1, seq, &seq.to_le_bytes()).0));
    }
    let new = NodeId(4);
    match change(&mut cluster, MembershipChange::AddLearner(new)) {
        Response::Membership(conf) => {
            assert_eq!(conf.voters, vec![1, 2, 3]);
            assert_eq!(conf.learner_nodes(), vec![NodeId(4)]);
            assert_ne!(conf.learners, vec![4], "a new member is a new incarnation, not the node id");
        }
        other => panic!("unexpected {other:?}"),
    }
    cluster.add_empty_replica(new);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, new)), "the learner catches up");
    let status = cluster.status_of(new);
    assert_eq!(status.role, Role::Learner);
    assert_eq!(status.conf_state.voters, vec![1, 2, 3], "it learned the membership from the log");
    let leader = cluster.leader().unwrap();
    assert_eq!(cluster.digest(new), cluster.digest(leader));
    // A stale read on the learner sees the data.
    let read = cluster.request(new, list_refs(ReadConsistency::Stale));
    assert!(
        matches!(cluster.response(read), Some(Response::Read { result: ReadResult::Refs(refs), .. }) if refs.len() == 1)
    );

    match change(&mut cluster, MembershipChange::Promote(new)) {
        Response::Membership(conf) => assert_eq!(conf.voter_nodes(), (1..=4).map(NodeId).collect::<Vec<_>>()),
        other => panic!("unexpected {other:?}"),
    }
    let follower = cluster.nodes().into_iter().find(|&n| n != cluster.leader().unwrap() && n != new).unwrap();
    match change(&mut cluster, MembershipChange::Remove(follower)) {
        Response::Membership(conf) => assert!(!conf.voter_nodes().contains(&follower) && conf.voters.len() == 3),
        other => panic!("unexpected {other:?}"),
    }
    assert_written(&request_on_leader(&mut cluster, set_main(1, 20, b"after changes").0));
    assert_one_leader_per_term(&cluster);
    cluster.assert_logs_agree();
}

#[test]
fn unsafe_or_impossible_membership_changes_are_refused() {
    let mut cluster = Cluster::new(3, 21);
    let leader = elect(&mut cluster);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let refused = |r: &Response| matches!(r, Response::Refused(_));
    assert!(refused(&change(&mut cluster, MembershipChange::Remove(leader))), "the leader itself");
    assert!(refused(&change(&mut cluster, MembershipChange::Promote(NodeId(9)))), "not a learner");
    assert!(refused(&change(&mut cluster, MembershipChange::AddLearner(follower))), "already a member");
    assert!(refused(&change(&mut cluster, MembershipChange::Remove(NodeId(9)))), "not a member");

    // Two changes at once: the second is refused while the first is in flight.
    let first = cluster.request(leader, Request::ChangeMembership(MembershipChange::AddLearner(NodeId(4))));
    let second = cluster.request(leader, Request::ChangeMembership(MembershipChange::AddLearner(NodeId(5))));
    assert!(matches!(cluster.response(second), Some(Response::Refused(reason)) if reason.contains("in flight")));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(first).is_some()));
    assert!(matches!(cluster.response(first), Some(Response::Membership(_))));

    // Five voters, two of them unreachable: removing a reachable one would leave 2 of 4
    // voters answering, no quorum.
    let mut cluster = Cluster::new(5, 24);
    let leader = elect(&mut cluster);
    let others: Vec<NodeId> = cluster.nodes().into_iter().filter(|&n| n != leader).collect();
    cluster.isolate(others[0]);
    cluster.isolate(others[1]);
    // Let check-quorum notice who stopped answering (an election timeout and more).
    let until = cluster.now + std::time::Duration::from_secs(5);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.now >= until));
    assert_eq!(cluster.leader(), Some(leader), "three of five still answer: the leader stays");
    let removal = cluster.request(leader, Request::ChangeMembership(MembershipChange::Remove(others[2])));
    assert!(
        matches!(cluster.response(removal), Some(Response::Refused(reason)) if reason.contains("no quorum")),
        "{:?}",
        cluster.response(removal)
    );
}

#[test]
fn the_last_voter_cannot_be_removed() {
    let mut cluster = Cluster::new(1, 22);
    let leader = elect(&mut cluster);
    match change(&mut cluster, MembershipChange::AddLearner(NodeId(2))) {
        Response::Membership(_) => {}
        other => panic!("unexpected {other:?}"),
    }
    // Removing the only voter: refused (it is also the leader).
    assert!(matches!(change(&mut cluster, MembershipChange::Remove(leader)), Response::Refused(_)));
}

#[test]
fn leadership_moves_to_the_voter_asked_for() {
    let mut cluster = Cluster::new(3, 23);
    let leader = elect(&mut cluster);
    let target = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    assert_eq!(request_on_leader(&mut cluster, Request::TransferLeader(target)), Response::Transferring);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader() == Some(target)), "leadership moved");
    assert!(matches!(request_on_leader(&mut cluster, Request::TransferLeader(NodeId(9))), Response::Refused(_)));
}

/// A removal is checked against the leader that proposes it, but it applies wherever it lands:
/// here the leader crashes after the removed voter has the entry and before it commits, and
/// the removed voter wins the next election and applies its own removal as leader. It steps
/// down (raft-rs leaves a removed leader leading, with no progress of its own to commit by,
/// and panics on the next acknowledgement), and the remaining voters elect one of them.
#[test]
fn a_leader_that_applies_its_own_removal_steps_down_and_the_others_go_on() {
    let mut cluster = Cluster::new(3, 25);
    let leader = elect(&mut cluster);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.nodes().into_iter().all(|n| caught_up(c, n))));
    let others: Vec<NodeId> = cluster.nodes().into_iter().filter(|&n| n != leader).collect();
    let (target, bystander) = (others[0], others[1]);
    // The bystander misses the removal, so only the target can win the next election.
    cluster.isolate(bystander);
    cluster.request(leader, Request::ChangeMembership(MembershipChange::Remove(target)));
    let removal_index = cluster.status_of(leader).last_index;
    assert!(cluster.drive_until(STEPS_MAX, |c| c.status_of(target).last_index >= removal_index));
    assert!(cluster.status_of(target).commit_index < removal_index, "the target has not seen it commit");
    cluster.crash(leader);
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader() == Some(target)), "the target wins the election");
    assert!(
        cluster.drive_until(STEPS_MAX, |c| c.status_of(target).conf_state.voters.len() == 2),
        "the target applies its own removal"
    );
    cluster.restart(leader);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != target)), "the others elect a leader");
    assert_ne!(cluster.status_of(target).role, Role::Leader, "the removed voter does not lead");
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    assert_one_leader_per_term(&cluster);
}

// ---- snapshots and log compaction ----

fn refused(response: &Response) -> bool {
    matches!(response, Response::Refused(_))
}

fn write_many(cluster: &mut Cluster, seqs: std::ops::Range<u64>) {
    for seq in seqs {
        assert_written(&request_on_leader(cluster, set_main(1, seq, &seq.to_le_bytes()).0));
    }
}

#[test]
fn replicas_compact_their_log_through_what_the_store_made_durable() {
    let mut cluster = Cluster::with_options(3, 30, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..60);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.nodes().iter().all(|&n| caught_up(c, n))));
    for node in cluster.nodes() {
        let durable = cluster.durable(node);
        let status = cluster.status_of(node);
        assert!(durable.compacted.index >= 55, "node {node} compacted through {:?}", durable.compacted);
        assert!(durable.compacted.index <= status.durable_index, "never past what the store holds durably");
        assert!(durable.entries.len() < 10, "node {node} holds {} entries", durable.entries.len());
    }
    cluster.assert_logs_agree();
}

#[test]
fn a_lagging_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::with_options(3, 31, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let leader = elect(&mut cluster);
    let lagging = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    cluster.isolate(lagging);
    write_many(&mut cluster, 2..60);
    assert_eq!(cluster.snapshots_delivered, 0);
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, lagging)), "the follower catches up");
    assert!(cluster.snapshots_delivered >= 1, "the follower needed a snapshot: its entries were compacted away");
    let leader = cluster.leader().unwrap();
    assert_eq!(cluster.digest(lagging), cluster.digest(leader));
    assert!(cluster.durable(lagging).snapshot.is_some(), "the installed snapshot is in its log");
    // It goes on replicating normally afterwards, and restarts from the snapshot it got.
    write_many(&mut cluster, 60..65);
    cluster.crash(lagging);
    cluster.restart(lagging);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, lagging)));
    let leader = cluster.leader().unwrap();
    assert_eq!(cluster.digest(lagging), cluster.digest(leader));
    cluster.assert_logs_agree();
}

#[test]
fn a_new_learner_catches_up_by_snapshot_and_learns_the_membership_from_it() {
    let mut cluster = Cluster::with_options(3, 32, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..40);
    let new = NodeId(4);
    assert!(matches!(change(&mut cluster, MembershipChange::AddLearner(new)), Response::Membership(_)));
    cluster.add_empty_replica(new);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, new)), "the learner catches up");
    assert!(cluster.snapshots_delivered >= 1, "the log's start was compacted away");
    let status = cluster.status_of(new);
    assert_eq!(status.role, Role::Learner);
    assert_eq!(status.conf_state.voters, vec![1, 2, 3]);
    let leader = cluster.leader().unwrap();
    assert_eq!(cluster.digest(new), cluster.digest(leader));
    // Its log never held the bootstrap's format entry (compacted away): it learns from the rows.
    assert_eq!(cluster.replica(new).format, Format::LATEST, "format learned from the snapshot");
    assert!(matches!(change(&mut cluster, MembershipChange::Promote(new)), Response::Membership(_)));
    write_many(&mut cluster, 40..45);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, new)));
    cluster.assert_logs_agree();
}

#[test]
fn a_replica_restarts_from_its_store_and_its_log() {
    let mut cluster = Cluster::with_options(3, 33, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..25);
    let leader = elect(&mut cluster);
    let digest = cluster.digest(leader);
    for node in cluster.nodes() {
        cluster.crash(node);
    }
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        let durable = cluster.crashed_durable(node).clone();
        assert!(durable.compacted.index > 0, "the log was compacted: the state is the store's");
        cluster.restart(node);
    }
    let leader = elect(&mut cluster);
    assert_eq!(cluster.digest(leader), digest, "no write lost across the restart");
    write_many(&mut cluster, 25..30);
    cluster.assert_logs_agree();
}

#[test]
fn a_node_removed_and_added_back_is_a_new_peer_that_its_old_replica_cannot_answer_for() {
    let mut cluster = Cluster::with_options(3, 34, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..20);
    let leader = elect(&mut cluster);
    let node = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    assert!(matches!(change(&mut cluster, MembershipChange::Remove(node)), Response::Membership(_)));
    // Its old replica lives on (its node has not seen the directory yet) while the node is
    // added back: the old replica must not answer for the new member.
    let conf = match change(&mut cluster, MembershipChange::AddLearner(node)) {
        Response::Membership(conf) => conf,
        other => panic!("unexpected {other:?}"),
    };
    let peer = conf.learners.iter().copied().map(PeerId).find(|p| p.node() == node).unwrap();
    assert_ne!(peer.0, node.0, "the new member is a new incarnation");
    write_many(&mut cluster, 20..25);
    cluster.drive_until(2_000, |_| false);
    let leader = cluster.leader().unwrap();
    let progress = cluster.status_of(leader).progress;
    let new_member = progress.iter().find(|p| p.node == node).expect("the new member has progress");
    assert_eq!(new_member.match_index, 0, "nothing the old replica said counts for the new member");
    // The node deletes its old replica and starts an empty one: it catches up by snapshot.
    cluster.delete_replica(node);
    cluster.add_empty_replica(node);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, node)), "the new replica catches up");
    assert_eq!(cluster.digest(node), cluster.digest(leader));
    assert!(matches!(change(&mut cluster, MembershipChange::Promote(node)), Response::Membership(_)));
    write_many(&mut cluster, 25..30);
    cluster.assert_logs_agree();
}

/// A node that lost its data directory: its voter gives way to a new, empty voter on the same
/// node in one change (a joint configuration, left on its own). The partition commits
/// throughout on the other two, nothing the old replica said counts for the new one, and the
/// new one then counts towards the quorum like any voter.
#[test]
fn a_lost_voter_is_replaced_by_a_new_one_in_one_change_and_the_new_one_counts() {
    let mut cluster = Cluster::with_options(3, 36, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..20);
    let leader = elect(&mut cluster);
    let lost = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let other = cluster.nodes().into_iter().find(|&n| n != leader && n != lost).unwrap();
    let old_peer = cluster.status_of(lost).conf_state.members().into_iter().map(PeerId).find(|p| p.node() == lost);
    // The node loses its disk: its replica is gone, and it is silent meanwhile.
    cluster.delete_replica(lost);
    cluster.report_liveness();
    cluster.drive_until(2_000, |_| false);
    assert!(refused(&change(&mut cluster, MembershipChange::Replace(leader))), "the leader has not lost its data");
    assert!(refused(&change(&mut cluster, MembershipChange::Replace(NodeId(9)))), "not a member");
    let conf = match change(&mut cluster, MembershipChange::Replace(lost)) {
        Response::Membership(conf) => conf,
        other => panic!("unexpected {other:?}"),
    };
    let new_peer = conf.voters.iter().copied().map(PeerId).find(|p| p.node() == lost).expect("still a voter");
    assert_ne!(Some(new_peer), old_peer, "a new incarnation");
    assert!(new_peer.incarnation() > 0);
    // Raft leaves the joint configuration on its own; writes commit on the other two meanwhile.
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        c.leader().is_some_and(|l| c.status_of(l).conf_state.voters_outgoing.is_empty())
    }));
    write_many(&mut cluster, 20..25);
    let leader = cluster.leader().unwrap();
    let conf = cluster.status_of(leader).conf_state;
    assert_eq!(conf.voter_nodes().len(), 3);
    assert!(!conf.voters.contains(&old_peer.unwrap().0) && conf.voters.contains(&new_peer.0));
    // The node comes back on an empty directory, as the new peer: it catches up by snapshot.
    cluster.add_empty_replica(lost);
    cluster.report_liveness();
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, lost)), "the new replica catches up");
    assert_eq!(cluster.digest(lost), cluster.digest(leader));
    // It is a voter that counts: with the third node gone, the leader and it still commit.
    cluster.crash(other);
    write_many(&mut cluster, 25..30);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, lost)));
    assert_eq!(cluster.digest(lost), cluster.digest(cluster.leader().unwrap()));
}

/// Check-quorum clears raft's `recent_active` of every member once per election timeout, and
/// an answer sets it again a heartbeat later: a membership change asked for in between must
/// still count the members the leader heard from lately (a `node replace` of 500 partitions
/// was refused for 13 of them this way).
#[test]
fn a_membership_change_right_after_check_quorum_counts_members_heard_lately() {
    let mut cluster = Cluster::with_options(3, 38, never_quiescing());
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let leader = elect(&mut cluster);
    let followers: Vec<NodeId> = cluster.nodes().into_iter().filter(|&n| n != leader).collect();
    // One follower's node is lost; the other answers.
    cluster.delete_replica(followers[1]);
    cluster.report_liveness();
    cluster.drive_until(2_000, |_| false);
    // As check-quorum leaves it: no member counted as recently active.
    let me = cluster.replica(leader).config.peer.0;
    for (&id, progress) in cluster.replica_mut(leader).raw.raft.mut_prs().iter_mut() {
        if id != me {
            progress.recent_active = false;
        }
    }
    let response = change(&mut cluster, MembershipChange::Replace(followers[1]));
    assert!(matches!(response, Response::Membership(_)), "unexpected {response:?}");
}

/// Replacing a voter needs a quorum in both halves of the joint configuration without it.
#[test]
fn a_voter_is_not_replaced_without_a_quorum_of_the_others() {
    let mut cluster = Cluster::with_options(3, 37, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let leader = elect(&mut cluster);
    let followers: Vec<NodeId> = cluster.nodes().into_iter().filter(|&n| n != leader).collect();
    cluster.isolate(followers[1]);
    cluster.drive_until(2_000, |_| false);
    // With one follower cut off, replacing the other leaves the leader alone in both halves.
    let response = change(&mut cluster, MembershipChange::Replace(followers[0]));
    assert!(refused(&response), "unexpected {response:?}");
}

#[test]
fn a_leader_holds_back_compaction_for_a_follower_just_behind_and_it_catches_up_from_the_log() {
    let mut cluster = Cluster::with_options(3, 35, log_retained(10));
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    write_many(&mut cluster, 2..8);
    let leader = elect(&mut cluster);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    // The follower misses a few writes; the leader's store makes them durable at once.
    cluster.isolate(follower);
    let behind = cluster.status_of(follower).last_index;
    write_many(&mut cluster, 8..13);
    let leader_status = cluster.status_of(leader);
    assert!(leader_status.durable_index > behind + 4, "the leader's state is durable past the follower");
    let compacted = cluster.durable(leader).compacted.index;
    assert!(compacted <= behind, "the leader kept the entries the follower lacks ({compacted} > {behind})");
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, follower)), "the follower catches up");
    assert_eq!(cluster.snapshots_delivered, 0, "from the log: the leader kept the entries it lacked");
    // Once it has them, the leader compacts.
    assert!(cluster.drive_until(STEPS_MAX, |c| c.durable(leader).compacted.index >= leader_status.durable_index));
    cluster.assert_logs_agree();
}

#[test]
fn a_new_leader_keeps_its_terms_entries_for_the_dead_leader_which_catches_up_from_the_log() {
    let (mut cluster, leader) = quiesced_cluster(46);
    cluster.crash(leader);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != leader)), "a new leader");
    let new_leader = cluster.leader().unwrap();
    // The new term's first entry is durable everywhere alive, and the partition quiesces
    // with the dead node excused.
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        let status = c.status_of(new_leader);
        all_quiesced(c) && status.durable_index == status.last_index
    }));
    let status = cluster.status_of(new_leader);
    assert!(
        status.compacted_index < status.last_index,
        "the leader kept its term's entries for the member it never heard from: {status:?}"
    );
    // The dead node returns: it catches up from the log, and then the leader compacts.
    cluster.restart(leader);
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, leader) && all_quiesced(c)), "caught up, then quiet");
    assert_eq!(cluster.snapshots_delivered, 0, "from the log, not by a snapshot");
    let status = cluster.status_of(new_leader);
    assert!(
        status.compacted_index == status.durable_index && status.durable_index == status.last_index,
        "once it caught up and the partition quiesced, nothing is held for it: {status:?}"
    );
    cluster.request(new_leader, create_repo(9));
    assert!(cluster.drive_until(STEPS_MAX, |c| {
        let status = c.status_of(new_leader);
        status.compacted_index == status.durable_index && status.durable_index == status.last_index
    }));
    cluster.assert_logs_agree();
}

#[test]
fn a_leader_with_a_voter_on_a_down_node_is_under_replicated_and_awake_replicas_without_a_leader_say_so() {
    let (mut cluster, leader) = quiesced_cluster(47);
    let healthy =
        |c: &Cluster| c.nodes().iter().all(|&n| !c.replica(n).is_under_replicated() && !c.replica(n).is_leaderless());
    assert!(healthy(&cluster), "a healthy partition is neither");
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    cluster.crash(follower);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.replica(leader).is_under_replicated()), "its voter's node is down");
    let other = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    assert!(!cluster.replica(other).is_under_replicated(), "only the leader counts it");
    cluster.restart(follower);
    assert!(cluster.drive_until(STEPS_MAX, healthy), "back: healthy again");
    // The leader dies: the others know no leader until one of them is elected.
    cluster.crash(leader);
    let survivors: Vec<NodeId> = cluster.nodes();
    assert!(cluster.drive_until(STEPS_MAX, |c| survivors.iter().any(|&n| c.replica(n).is_leaderless())));
    assert!(cluster
        .drive_until(STEPS_MAX, |c| c.leader().is_some() && survivors.iter().all(|&n| !c.replica(n).is_leaderless())));
    let new_leader = cluster.leader().unwrap();
    assert!(cluster.replica(new_leader).is_under_replicated(), "the old leader's node is down");
}

// ---- quiescing (quiesce.rs) ----

fn all_quiesced(cluster: &Cluster) -> bool {
    cluster.nodes().iter().all(|&n| cluster.replica(n).is_quiesced())
}

/// Elects a leader, writes once and drives until every replica is quiesced.
fn quiesced_cluster(seed: u64) -> (Cluster, NodeId) {
    let mut cluster = Cluster::new(3, seed);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced), "an idle partition quiesces");
    let leader = cluster.leader().unwrap();
    (cluster, leader)
}

fn no_election_since_start(cluster: &Cluster) -> bool {
    cluster.nodes().iter().all(|&n| {
        let cause = cluster.replica(n).last_election();
        cause.is_none() || cause == Some(ElectionCause::Requested) || cause == Some(ElectionCause::Timeout)
    })
}

#[test]
fn an_idle_partition_quiesces_and_then_nothing_happens() {
    let (mut cluster, leader) = quiesced_cluster(40);
    let term = cluster.replica(leader).term();
    for node in cluster.nodes() {
        assert_eq!(cluster.replica(node).poll_timeout(), None, "node {node}: a quiesced replica has no timer");
    }
    assert_eq!(cluster.in_flight().count(), 0, "nothing in flight");
    assert!(!cluster.step(), "a quiesced partition does nothing at all");
    assert_eq!(cluster.replica(leader).term(), term);
}

#[test]
fn a_write_to_a_quiesced_leader_wakes_the_partition_without_an_election() {
    let (mut cluster, leader) = quiesced_cluster(41);
    let term = cluster.replica(leader).term();
    let elections: Vec<_> = cluster.nodes().iter().map(|&n| cluster.replica(n).last_election()).collect();
    let (body, _) = set_main(1, 2, b"after a nap");
    let request = cluster.request(leader, body);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_written(cluster.response(request).unwrap());
    assert_eq!(cluster.replica(leader).last_wake().map(|(cause, _)| cause), Some(WakeCause::Request));
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced), "it quiesces again");
    assert_eq!(cluster.leader(), Some(leader));
    assert_eq!(cluster.replica(leader).term(), term, "no election");
    let after: Vec<_> = cluster.nodes().iter().map(|&n| cluster.replica(n).last_election()).collect();
    assert_eq!(elections, after, "no replica campaigned");
    let digest = cluster.digest(leader);
    assert!(cluster.nodes().iter().all(|&n| cluster.digest(n) == digest), "every replica applied the write");
}

#[test]
fn a_request_at_a_quiesced_follower_wakes_the_leader_without_an_election() {
    let (mut cluster, leader) = quiesced_cluster(42);
    let term = cluster.replica(leader).term();
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let request = cluster.request(follower, list_refs(ReadConsistency::Linearizable));
    assert!(matches!(cluster.response(request), Some(Response::NotLeader { leader: Some(l) }) if *l == leader));
    // The follower ticks again; it must hear from the leader before its election clock runs out.
    assert!(cluster.drive_until(STEPS_MAX, |c| !c.replica(leader).is_quiesced()), "the follower woke its leader");
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced), "and everything quiesces again");
    assert_eq!(cluster.replica(leader).term(), term, "no election");
    assert!(no_election_since_start(&cluster), "nobody campaigned after waking");
}

#[test]
fn quiesced_followers_elect_when_their_leaders_node_goes_down() {
    let (mut cluster, leader) = quiesced_cluster(43);
    let term = cluster.replica(leader).term();
    cluster.crash(leader);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != leader)), "a new leader");
    let new_leader = cluster.leader().unwrap();
    assert!(cluster.replica(new_leader).term() > term);
    assert_eq!(cluster.replica(new_leader).last_election(), Some(ElectionCause::LeaderNodeDown));
    let (body, _) = set_main(1, 2, b"under new management");
    let request = cluster.request(new_leader, body);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_written(cluster.response(request).unwrap());
}

#[test]
fn a_woken_follower_that_hears_nothing_holds_one_election_while_its_leaders_node_is_alive() {
    let (mut cluster, leader) = quiesced_cluster(51);
    let term = cluster.replica(leader).term();
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    // The leader's messages to the follower are lost (a full mailbox), but its node is alive.
    cluster.lose_messages(leader, follower);
    let read = cluster.request(follower, list_refs(ReadConsistency::Linearizable));
    assert!(matches!(cluster.response(read), Some(Response::NotLeader { .. })));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.replica(follower).elections_held() == 1), "it holds its election");
    assert!(cluster.replica(follower).last_election().is_none(), "instead of campaigning");
    // The leader's messages get through again before the next timeout: no election at all.
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced), "everything quiesces again");
    assert_eq!(cluster.replica(leader).term(), term);
    assert!(no_election_since_start(&cluster), "nobody campaigned");
    assert_eq!(cluster.replica(follower).elections_held(), 1);

    // Still silent after the hold: the follower campaigns when it ends (pre-vote, which the
    // leader and the other follower refuse while the leader lives).
    cluster.lose_messages(leader, follower);
    let read = cluster.request(follower, list_refs(ReadConsistency::Linearizable));
    assert!(matches!(cluster.response(read), Some(Response::NotLeader { .. })));
    assert!(
        cluster.drive_until(STEPS_MAX, |c| c.replica(follower).last_election() == Some(ElectionCause::AfterWake)),
        "one hold per contact with the leader: then it campaigns"
    );
    assert_eq!(cluster.replica(follower).elections_held(), 2, "after holding once");
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced));
    assert_eq!((cluster.leader(), cluster.replica(leader).term()), (Some(leader), term), "pre-vote kept the leader");
}

#[test]
fn followers_of_a_leader_whose_node_is_down_campaign_without_holding() {
    let mut cluster = Cluster::with_options(3, 52, never_quiescing());
    let leader = elect(&mut cluster);
    let term = cluster.replica(leader).term();
    cluster.crash(leader);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != leader)), "a new leader");
    assert!(cluster.replica(cluster.leader().unwrap()).term() > term);
    for node in cluster.nodes() {
        assert_eq!(cluster.replica(node).elections_held(), 0, "node {node}: liveness says the leader is gone");
    }
}

#[test]
fn a_follower_holding_its_election_campaigns_early_when_its_leaders_node_is_declared_down() {
    const SEEDS: u64 = 8;
    let mut waits = BTreeSet::new();
    let mut hold = Duration::ZERO;
    for seed in 0..SEEDS {
        let mut cluster = Cluster::with_options(3, 53 + 100 * seed, never_quiescing());
        let leader = elect(&mut cluster);
        let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
        cluster.lose_messages(leader, follower);
        assert!(cluster.drive_until(STEPS_MAX, |c| c.replica(follower).elections_held() == 1), "it holds");
        // The hold has just begun; liveness now declares the leader's node down.
        cluster.crash(leader);
        let declared = cluster.now;
        assert!(cluster.drive_until(STEPS_MAX, |c| c.replica(follower).last_election().is_some()), "it campaigns");
        let tick = cluster.options.tick_interval;
        hold = tick * (3 * cluster.options.heartbeat_ticks) as u32;
        let wait = cluster.now - declared;
        assert!(wait <= hold, "seed {seed}: campaigned {wait:?} after the declaration, later than the hold ({hold:?})");
        assert_eq!(cluster.replica(follower).elections_held(), 1, "and holds no second time");
        waits.insert(wait);
    }
    // Released at a tick drawn over an election timeout's span and capped at the hold's end:
    // spread, not all at the next tick (nor all at the hold's end).
    assert!(waits.len() >= 3, "released after {waits:?}");
    assert!(waits.first().is_some_and(|&first| first < hold), "released after {waits:?}");
}

/// Every follower holding its election for one leader is released by the same liveness
/// round; released at their next tick, they all campaigned at once and split the vote (an
/// end-to-end failover took an extra election timeout so). Each is released at a tick drawn
/// from its seeded source, so most failovers elect at the first term after the old leader's.
#[test]
fn followers_released_from_their_holds_together_do_not_split_the_vote() {
    const SEEDS: u64 = 40;
    let mut both_held = 0;
    let mut first_term_won = 0;
    for seed in 0..SEEDS {
        let mut cluster = Cluster::with_options(3, 1000 + seed, never_quiescing());
        let leader = elect(&mut cluster);
        let term = cluster.replica(leader).term();
        let followers: Vec<NodeId> = cluster.nodes().into_iter().filter(|&n| n != leader).collect();
        for &follower in &followers {
            cluster.lose_messages(leader, follower);
        }
        let holding = |c: &Cluster| followers.iter().all(|&f| c.replica(f).elections_held() == 1);
        assert!(cluster.drive_until(STEPS_MAX, |c| holding(c)
            || followers.iter().any(|&f| c.replica(f).last_election().is_some())));
        if !holding(&cluster) || followers.iter().any(|&f| cluster.replica(f).last_election().is_some()) {
            continue; // One follower's hold ended before the other's began.
        }
        both_held += 1;
        cluster.crash(leader);
        assert!(
            cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != leader)),
            "seed {seed}: a new leader"
        );
        let new_leader = cluster.leader().unwrap();
        if cluster.replica(new_leader).term() == term + 1 {
            first_term_won += 1;
        }
    }
    assert!(both_held >= SEEDS / 4, "only {both_held} of {SEEDS} seeds had both followers holding");
    assert!(
        first_term_won * 4 >= both_held * 3,
        "a split vote in {} of {both_held} failovers with both followers held",
        both_held - first_term_won
    );
}

/// A partition created by an earlier build switches to the latest store format under its
/// first leader of this build: the leader proposes the entry once, every replica applies it at
/// the same index (their rows agree), and a later leader, knowing it, proposes nothing.
#[test]
fn a_partition_of_an_earlier_format_switches_to_the_latest_under_its_next_leader() {
    let fresh = Cluster::new(3, 61);
    assert!(
        fresh.nodes().iter().all(|&n| fresh.replica(n).format == Format::LATEST),
        "a new partition's replicas know it from their bootstrap log, and propose nothing"
    );
    for earlier in [Format::Original, Format::PlacedByIndex] {
        let mut cluster = Cluster::new_in_format(3, 61, earlier);
        assert!(cluster.nodes().iter().all(|&n| cluster.replica(n).format == earlier));
        let leader = elect(&mut cluster);
        assert_eq!(cluster.replica(leader).format_proposed_in, Some(cluster.replica(leader).term()));
        let all_switched = |c: &Cluster| {
            c.nodes().iter().all(|&n| {
                c.format(n) == Format::LATEST && c.replica(n).format == Format::LATEST && c.state(n) == c.state(leader)
            })
        };
        assert!(cluster.drive_until(STEPS_MAX, all_switched), "every replica switches from {earlier:?}, rows alike");
        // The membership entries, the earlier format's entry, the leader's empty entry and the
        // switch.
        let bootstrapped = 3 + u64::from(earlier != Format::Original);
        assert_eq!(cluster.state(leader).0, bootstrapped + 2, "one switch entry");

        cluster.crash(leader);
        assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some_and(|l| l != leader)), "a new leader");
        let new_leader = cluster.leader().unwrap();
        assert_eq!(cluster.replica(new_leader).format_proposed_in, None, "knowing it, the new leader proposes nothing");
        for (seq, body) in [(1, create_repo(1)), (2, set_main(1, 2, b"placed by index").0)] {
            let request = cluster.request(new_leader, body);
            assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()), "write {seq}");
            assert_written(cluster.response(request).unwrap());
        }
        let oid = set_main(1, 2, b"placed by index").1;
        cluster.restart(leader);
        assert!(
            cluster.drive_until(STEPS_MAX, |c| c.state(leader) == c.state(new_leader)),
            "the old leader catches up"
        );
        assert_eq!(cluster.replica(leader).format, Format::LATEST, "learned from its store when it reopened");
        let query = ReadQuery::GetObject { repo: repo(), oid };
        let read = cluster.request(leader, Request::Read { query, consistency: ReadConsistency::Stale });
        assert!(cluster.drive_until(STEPS_MAX, |c| c.response(read).is_some()));
        let answer = cluster.response(read);
        assert!(matches!(answer, Some(Response::Read { result: ReadResult::Object(Some(_)), .. })), "{answer:?}");
    }
}

#[test]
fn a_quiesced_leader_cut_off_from_its_quorum_steps_down_and_the_others_elect() {
    let (mut cluster, leader) = quiesced_cluster(44);
    cluster.isolate(leader);
    assert!(
        cluster.drive_until(STEPS_MAX, |c| !c.replica(leader).is_leader()
            && c.nodes().iter().any(|&n| n != leader && c.replica(n).is_leader())),
        "the isolated leader steps down and the majority elects"
    );
    assert_eq!(cluster.replica(leader).last_wake().map(|(cause, _)| cause), Some(WakeCause::QuorumNodesDown));
}

#[test]
fn a_member_on_a_down_node_is_excused_and_caught_up_when_it_returns() {
    let mut cluster = Cluster::new(3, 45);
    let leader = elect(&mut cluster);
    let lagging = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    cluster.isolate(lagging);
    for seq in 1..=3 {
        let body = if seq == 1 { create_repo(1) } else { set_main(1, seq, &seq.to_le_bytes()).0 };
        let request = cluster.request(leader, body);
        assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
        assert_written(cluster.response(request).unwrap());
    }
    // The isolated member campaigns on its own (pre-vote keeps the term); the others quiesce.
    assert!(
        cluster.drive_until(STEPS_MAX, |c| c
            .nodes()
            .iter()
            .filter(|&&n| n != lagging)
            .all(|&n| c.replica(n).is_quiesced())),
        "one node down does not keep the partition awake"
    );
    cluster.heal();
    assert!(cluster.drive_until(STEPS_MAX, |c| caught_up(c, lagging) && all_quiesced(c)), "caught up, then quiet");
    assert_eq!(cluster.digest(lagging), cluster.digest(cluster.leader().unwrap()));
}

#[test]
fn quiescing_and_waking_under_message_loss_never_loses_a_write() {
    let mut cluster =
        Cluster::with_options(3, 46, ReplicaOptions { quiesce_after_ticks: 3, ..ReplicaOptions::default() });
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    cluster.drop_rate = 0.2;
    let mut written = 0;
    for seq in 2..=30u64 {
        let Some(leader) = cluster.leader() else {
            assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some()));
            continue;
        };
        let request = cluster.request(leader, set_main(1, seq, &seq.to_le_bytes()).0);
        cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some());
        if matches!(cluster.response(request), Some(Response::Written(Ok(_)))) {
            written += 1;
        }
        // Idle long enough to quiesce, or try to, between writes.
        let until = cluster.now + std::time::Duration::from_secs(2);
        cluster.drive_until(STEPS_MAX, |c| c.now >= until);
    }
    assert!(written > 10, "writes go through ({written})");
    cluster.drop_rate = 0.0;
    assert!(cluster.drive_until(STEPS_MAX, all_quiesced), "it settles");
    let digest = cluster.digest(cluster.leader().unwrap());
    assert!(cluster.nodes().iter().all(|&n| cluster.digest(n) == digest));
    assert_one_leader_per_term(&cluster);
    cluster.assert_logs_agree();
}

#[test]
fn an_unloaded_follower_reloads_at_rest_and_a_request_to_it_costs_no_election() {
    let (mut cluster, leader) = quiesced_cluster(48);
    assert!(cluster.unload_and_reload(leader).is_none(), "a leader never unloads");
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let term = cluster.replica(leader).term();
    let before = cluster.status_of(follower);
    let dormant = cluster.unload_and_reload(follower).expect("a quiesced follower with nothing in flight unloads");
    assert_eq!(dormant.leader.map(|p| p.node()), Some(leader));
    assert_eq!(dormant.position.index, before.applied_index);
    let after = cluster.status_of(follower);
    assert!(after.quiesced, "it reloads at rest");
    assert_eq!(cluster.replica(follower).poll_timeout(), None, "with no timer");
    assert_eq!(after.leader, Some(leader), "following the leader it followed");
    assert_eq!((after.term, after.applied_index, after.conf_state), (term, before.applied_index, before.conf_state));
    assert!(!cluster.step(), "reloading sends nothing");
    // A write through the reloaded follower wakes the partition and commits, in the same term.
    let Request::Write(command) = set_main(1, 2, b"through a reloaded follower").0 else { unreachable!() };
    let request = cluster.request(follower, Request::ForwardedWrite(command));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_written(cluster.response(request).unwrap());
    assert_eq!(cluster.replica(leader).term(), term, "no election");
    assert!(no_election_since_start(&cluster));
    assert!(cluster.drive_until(STEPS_MAX, |c| all_quiesced(c) && c.state(follower) == c.state(leader)));
    cluster.assert_logs_agree();
}

#[test]
fn a_resting_replica_that_is_no_voter_yet_does_not_campaign_when_a_request_wakes_it() {
    let mut cluster = Cluster::new(3, 50);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let new = NodeId(4);
    assert!(matches!(change(&mut cluster, MembershipChange::AddLearner(new)), Response::Membership(_)));
    cluster.isolate(new);
    cluster.add_empty_replica(new);
    // It restarts before hearing from the leader: it knows no membership, and rests.
    cluster.crash(new);
    cluster.restart_resting(new);
    let read = cluster.request(new, list_refs(ReadConsistency::Linearizable));
    assert!(matches!(cluster.response(read), Some(Response::NotLeader { leader: None })));
    assert!(cluster.replica(new).last_election().is_none(), "a replica outside the voters never campaigns");
}

#[test]
fn a_follower_with_work_in_flight_does_not_unload() {
    let (mut cluster, leader) = quiesced_cluster(49);
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    cluster.auto_persist = false;
    let request = cluster.request(leader, set_main(1, 2, b"in flight").0);
    cluster.drive_until(200, |c| c.status_of(follower).last_index > c.status_of(follower).applied_index);
    assert!(!cluster.replica(follower).is_quiesced(), "the write woke it");
    assert!(cluster.unload_and_reload(follower).is_none(), "an awake follower stays loaded");
    cluster.auto_persist = true;
    for node in cluster.nodes() {
        cluster.complete_persists(node);
    }
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_written(cluster.response(request).unwrap());
}

#[test]
fn a_restarted_cluster_rests_until_a_request_elects_a_leader_and_loses_nothing() {
    let (mut cluster, leader) = quiesced_cluster(47);
    let (body, _) = set_main(1, 2, b"before the restart");
    let request = cluster.request(leader, body);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(request).is_some()));
    assert_written(cluster.response(request).unwrap());
    let term = cluster.replica(leader).term();
    for node in cluster.nodes() {
        cluster.crash(node);
    }
    for node in [NodeId(1), NodeId(2), NodeId(3)] {
        cluster.restart_resting(node);
    }
    // Nothing to do: driving ends at once (no timer, no message), with no leader elected.
    assert!(!cluster.drive_until(STEPS_MAX, |c| c.leader().is_some()), "a resting cluster elects nobody");
    assert!(all_quiesced(&cluster), "restarted replicas rest");
    // A request wakes one; it elects, and the write before the restart is still there.
    let read = cluster.request(NodeId(2), list_refs(ReadConsistency::Linearizable));
    assert!(matches!(cluster.response(read), Some(Response::NotLeader { leader: None })));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some()), "the woken replica elects");
    assert!(cluster.replica(cluster.leader().unwrap()).term() > term);
    let leader = elect(&mut cluster);
    let read = cluster.request(leader, list_refs(ReadConsistency::Linearizable));
    assert!(cluster.drive_until(STEPS_MAX, |c| c.response(read).is_some()));
    match cluster.response(read) {
        Some(Response::Read { result: crate::state_machine::ReadResult::Refs(refs), .. }) => {
            assert_eq!(refs.len(), 1, "refs/heads/main survives: {refs:?}")
        }
        other => panic!("expected the refs, got {other:?}"),
    }
}

/// A message to `to` from `from`, at the partition's current term on `to`.
fn hostile(cluster: &Cluster, from: NodeId, to: NodeId, kind: raft::eraftpb::MessageType) -> raft::eraftpb::Message {
    let mut message = raft::eraftpb::Message::default();
    message.set_msg_type(kind);
    message.from = PeerId::new(from, 0).0;
    message.to = PeerId::new(to, 0).0;
    message.term = cluster.status_of(to).term;
    message
}

fn entry(index: u64, term: u64) -> raft::eraftpb::Entry {
    raft::eraftpb::Entry { index, term, ..Default::default() }
}

/// Peers are authenticated, but a buggy or hostile one may send what raft-rs would die of (a
/// commit past the log's end, entries out of order into committed ones) or what it must not
/// act on (its local messages, a snapshot outside a transfer, a forwarded membership change,
/// a term that would overflow): each is refused, and the partition goes on committing.
#[test]
fn messages_no_honest_peer_sends_are_refused_and_the_partition_goes_on() {
    use raft::eraftpb::{EntryType, MessageType};
    let mut cluster = Cluster::new(3, 5);
    let leader = elect(&mut cluster);
    assert_written(&request_on_leader(&mut cluster, create_repo(1)));
    let follower = cluster.nodes().into_iter().find(|&n| n != leader).unwrap();
    let term = cluster.status_of(follower).term;
    let last = cluster.status_of(follower).last_index;

    let mut messages = Vec::new();
    let mut heartbeat = hostile(&cluster, leader, follower, MessageType::MsgHeartbeat);
    heartbeat.commit = last + 100;
    messages.push((leader, heartbeat));
    let mut reaching_back = hostile(&cluster, leader, follower, MessageType::MsgAppend);
    (reaching_back.index, reaching_back.log_term) = (last, term);
    reaching_back.entries = vec![entry(1, term + 1)].into();
    messages.push((leader, reaching_back));
    let mut terms_backwards = hostile(&cluster, leader, follower, MessageType::MsgAppend);
    (terms_backwards.index, terms_backwards.log_term) = (last, term);
    terms_backwards.entries = vec![entry(last + 1, term), entry(last + 2, term - 1)].into();
    messages.push((leader, terms_backwards));
    for local in [MessageType::MsgHup, MessageType::MsgBeat, MessageType::MsgCheckQuorum, MessageType::MsgSnapshot] {
        messages.push((leader, hostile(&cluster, leader, follower, local)));
    }
    let mut membership = hostile(&cluster, follower, leader, MessageType::MsgPropose);
    let mut change = entry(0, 0);
    change.set_entry_type(EntryType::EntryConfChangeV2);
    membership.entries = vec![change].into();
    messages.push((follower, membership));
    let mut acked_too_far = hostile(&cluster, follower, leader, MessageType::MsgAppendResponse);
    acked_too_far.index = last + 1_000;
    messages.push((follower, acked_too_far));
    // Found by the `raft_message` fuzz target: each made raft-rs panic.
    let mut past_the_end = hostile(&cluster, leader, follower, MessageType::MsgAppend);
    (past_the_end.index, past_the_end.log_term, past_the_end.commit) = (last + 4, 0, last + 4);
    messages.push((leader, past_the_end));
    messages.push((follower, hostile(&cluster, follower, leader, MessageType::MsgPropose)));
    let mut no_context = hostile(&cluster, follower, leader, MessageType::MsgReadIndex);
    no_context.term = 0;
    messages.push((follower, no_context));
    messages.push((leader, hostile(&cluster, leader, follower, MessageType::MsgTransferLeader)));
    let mut termless = hostile(&cluster, leader, follower, MessageType::MsgHeartbeat);
    termless.term = 0;
    messages.push((leader, termless));
    let mut overflowing = hostile(&cluster, leader, follower, MessageType::MsgRequestVote);
    overflowing.term = u64::MAX;
    messages.push((leader, overflowing));

    for (from, message) in messages {
        let to = PeerId(message.to).node();
        cluster.inject(Envelope { partition: cluster.partition, from, to, payload: Payload::Raft(message) });
        assert!(cluster.step(), "the message is delivered");
        for node in [leader, follower] {
            let status = cluster.status_of(node);
            assert_eq!(status.term, term, "node {node}: no refused message moves the term");
            assert!(status.commit_index <= status.last_index, "node {node}: nothing committed past the log");
        }
    }
    assert_eq!(cluster.leader(), Some(leader), "no refused message started an election");
    let (write, _) = set_main(1, 2, b"after the hostile messages");
    assert_written(&request_on_leader(&mut cluster, write));
    cluster.assert_logs_agree();
}
