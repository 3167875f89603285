//! Checks a peer's Raft message against what an honest replica could have sent, before
//! raft-rs sees it. Peers are authenticated, but raft-rs panics (`fatal!`) on some messages no
//! honest replica sends: a commit index past the end of this log, entries that contradict
//! committed ones. A replica must not die of another's bug or malice, so such a message is
//! refused (dropped, and logged with its reason) instead.
//!
//! Every check holds for every message raft-rs itself sends to a correct replica, so refusing
//! never costs an honest cluster anything. What a check cannot tell from here (a lying
//! leader's entries after the commit index, a vote) is Raft's trust in its members, which
//! authentication bounds.

use super::storage::PartitionStorage;
use raft::eraftpb::{EntryType, Message, MessageType};

/// The highest term a message may carry: room for every increment that could follow, so term
/// arithmetic never overflows.
const TERM_MAX: u64 = u64::MAX / 2;

/// Why a peer's message was refused.
pub(super) type Refusal = &'static str;

pub(super) fn check(raft: &raft::Raft<PartitionStorage>, message: &Message) -> Result<(), Refusal> {
    if message.term > TERM_MAX || message.log_term > TERM_MAX {
        return Err("term out of range");
    }
    if message.from == raft.id {
        return Err("a message from this replica's own id");
    }
    // raft-rs takes term 0 for a message of its own; between replicas forwarded proposals and
    // read requests travel without a term (raft-rs would die forwarding one with a term), and
    // every other message with one.
    let termless = matches!(message.get_msg_type(), MessageType::MsgPropose | MessageType::MsgReadIndex);
    if termless != (message.term == 0) {
        return Err(if termless { "a forwarded request with a term" } else { "a message without a term" });
    }
    match message.get_msg_type() {
        // Local to a replica; never sent between replicas.
        MessageType::MsgHup
        | MessageType::MsgBeat
        | MessageType::MsgUnreachable
        | MessageType::MsgSnapStatus
        | MessageType::MsgCheckQuorum => Err("a message raft sends to itself only"),
        MessageType::MsgSnapshot => Err("a snapshot outside a transfer"),
        // Asked of the leader only (`transfer_leader`), so no replica forwards it; raft-rs
        // would die forwarding one that carries a term.
        MessageType::MsgTransferLeader => Err("a forwarded leadership transfer"),
        // A follower forwards one client write at a time, never a membership change (see
        // `forward`).
        MessageType::MsgPropose if message.entries.is_empty() => Err("a forwarded proposal of nothing"),
        MessageType::MsgPropose if message.entries.iter().any(|e| e.get_entry_type() != EntryType::EntryNormal) => {
            Err("a forwarded proposal of a membership change")
        }
        // A forwarded read carries its context as its one entry.
        MessageType::MsgReadIndex if message.entries.len() != 1 => Err("a forwarded read without its context"),
        MessageType::MsgAppend => check_append(message),
        // A leader's heartbeat carries min(our match, its commit): never past our log's end.
        MessageType::MsgHeartbeat if message.commit > raft.raft_log.last_index() => {
            Err("a heartbeat committing past this log's end")
        }
        // A follower matches at most what a leader has sent, which it holds.
        MessageType::MsgAppendResponse if !message.reject && message.index > raft.raft_log.last_index() => {
            Err("an append acknowledged past this log's end")
        }
        _ => Ok(()),
    }
}

/// The entry before the appended ones has a term (raft-rs gives any index past its log's end
/// term 0, so `log_term` 0 would "match" there and commit past the end), and entries follow it
/// one by one, with terms that never decrease from `log_term` and never pass the message's.
/// raft-rs answers an append before this log's commit index without looking at it, so with
/// this, entries it takes never reach back into committed ones.
fn check_append(message: &Message) -> Result<(), Refusal> {
    if message.index > 0 && message.log_term == 0 {
        return Err("an append after an entry without a term");
    }
    let mut previous = (message.index, message.log_term.max(1));
    for entry in &message.entries {
        if previous.0.checked_add(1) != Some(entry.index) {
            return Err("entries out of order");
        }
        if entry.term < previous.1 || entry.term > message.term {
            return Err("entry terms out of order");
        }
        previous = (entry.index, entry.term);
    }
    Ok(())
}
