//! Checkers: pure functions that judge a recorded run and explain what went wrong, and the
//! names under which a run reports what each one found.
//!
//! They take what the simulation recorded (a [`History`](crate::history::History), and more
//! later) and return a typed verdict; none of them needs a runtime, so they are tested on
//! hand-written and generated histories as well as on simulated runs.

pub mod linearizability;
pub mod lost_writes;

pub use linearizability::{check_linearizable, KeyReport, Report, Violation, STATES_PER_KEY_MAX_DEFAULT};
pub use lost_writes::{check_no_lost_writes, LostWrite};

use serde::{Deserialize, Serialize};
use std::fmt;

/// What caught a failure. Every failure a run reports names one, so a campaign can say which
/// checker catches which bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Checker {
    /// No order of the operations of some key explains what clients saw.
    Linearizability,
    /// An acknowledged write was not seen by an operation that began after it.
    LostWrite,
    /// Two leaders in one term, or two different entries applied at one index.
    RaftSafety,
    /// After the heal, a member of a partition lacks its replica or differs from the leader.
    Convergence,
    /// After the heal, a partition took no write or read within the bound.
    Liveness,
    /// Idle partitions did not quiesce, or waking quiesced partitions with every node up
    /// started an election.
    Quiesce,
    /// The run died: an assertion or panic in a node or the harness.
    Crash,
}

impl Checker {
    pub const ALL: [Checker; 7] = [
        Checker::Linearizability,
        Checker::LostWrite,
        Checker::RaftSafety,
        Checker::Convergence,
        Checker::Liveness,
        Checker::Quiesce,
        Checker::Crash,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Checker::Linearizability => "linearizability",
            Checker::LostWrite => "lost-write",
            Checker::RaftSafety => "raft-safety",
            Checker::Convergence => "convergence",
            Checker::Liveness => "liveness",
            Checker::Quiesce => "quiesce",
            Checker::Crash => "crash",
        }
    }

    pub fn from_name(name: &str) -> Option<Checker> {
        Checker::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Checker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One thing a run found wrong, and the checker that found it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub checker: Checker,
    pub message: String,
}

impl Failure {
    pub fn new(checker: Checker, message: impl Into<String>) -> Failure {
        Failure { checker, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.checker, self.message)
    }
}
