//! Raft messages from a peer, built from arbitrary bytes but shaped so that most of them get
//! past the transport's checks and into `Partition::handle_message`: a three-replica partition
//! with a leader and a committed write takes each one (on the leader or a follower), from a
//! member or a stranger, at terms and indexes near its own or anywhere. Nothing panics, no
//! replica commits past the end of its log, and the cluster is driven on afterwards.
#![no_main]

use cohort_core::env::{Envelope, Payload};
use cohort_core::ids::{NodeId, PeerId};
use cohort_core::testing::Cluster;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};

const STEPS_MAX: usize = 20_000;
const MESSAGES_MAX: usize = 8;

/// Every kind of Raft message, including those raft-rs only sends to itself.
const KINDS: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

/// Near `around` most of the time, anywhere otherwise.
fn near(u: &mut Unstructured, around: u64) -> Result<u64> {
    Ok(match u.int_in_range(0u8..=7)? {
        0 => u.arbitrary()?,
        offset => (around + u64::from(offset)).saturating_sub(3),
    })
}

fn message(u: &mut Unstructured, cluster: &Cluster) -> Result<(NodeId, Message)> {
    let to = NodeId(u.int_in_range(1..=3)?);
    let status = cluster.status_of(to);
    let mut m = Message::default();
    m.set_msg_type(*u.choose(&KINDS)?);
    m.to = PeerId::new(to, 0).0;
    m.from = PeerId::new(NodeId(u.int_in_range(1..=4)?), u.int_in_range(0..=1)?).0;
    m.term = near(u, status.term)?;
    m.index = near(u, status.last_index)?;
    m.log_term = near(u, status.term)?;
    m.commit = near(u, status.commit_index)?;
    m.reject = u.arbitrary()?;
    m.reject_hint = near(u, status.last_index)?;
    m.request_snapshot = near(u, 0)?;
    m.context = match u.int_in_range(0u8..=3)? {
        0 => Vec::<u8>::new(),
        _ => u.arbitrary::<Vec<u8>>()?,
    }
    .into();
    let mut entries = Vec::new();
    let mut index = m.index;
    for _ in 0..u.int_in_range(0..=4)? {
        index = if u.ratio(1u8, 8)? { u.arbitrary()? } else { index.saturating_add(1) };
        let mut entry = Entry { index, term: near(u, status.term)?, ..Default::default() };
        entry.set_entry_type(match u.int_in_range(0..=2)? {
            0 => EntryType::EntryNormal,
            1 => EntryType::EntryConfChange,
            _ => EntryType::EntryConfChangeV2,
        });
        entry.data = u.arbitrary::<Vec<u8>>()?.into();
        entries.push(entry);
    }
    m.entries = entries.into();
    let from = PeerId(m.from).node();
    Ok((from, m))
}

fuzz_target!(|bytes: &[u8]| {
    let mut u = Unstructured::new(bytes);
    let mut cluster = Cluster::new(3, 11);
    assert!(cluster.drive_until(STEPS_MAX, |c| c.leader().is_some()), "a leader is elected");
    for _ in 0..MESSAGES_MAX {
        let Ok((from, message)) = message(&mut u, &cluster) else { break };
        let to = PeerId(message.to).node();
        if std::env::var_os("FUZZ_DEBUG").is_some() {
            eprintln!("to {to}: {message:?}");
        }
        cluster.inject(Envelope { partition: cluster.partition, from, to, payload: Payload::Raft(message) });
        for _ in 0..16 {
            cluster.step();
        }
        for node in cluster.nodes() {
            let status = cluster.status_of(node);
            assert!(status.commit_index <= status.last_index, "node {node} committed past its log: {status:?}");
        }
    }
    cluster.drive_until(2_000, |_| false);
});
