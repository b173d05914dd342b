//! Checkpoints as a protocol: aligned barriers, coordinated by the
//! initializer, as two state machines without I/O.
//!
//! The path of one checkpoint N (the binding crate carries out each step):
//!
//! 1. The initializer's [`coordinator::Coordinator`] finds N due and begins
//!    it: `Checkpoint { N }` goes to every worker over the control links.
//! 2. Each worker's [`participant::Participant`] begins N on that message or
//!    on the first barrier N from a peer: it records its sources' positions,
//!    sends barrier N on every outgoing data link, stops taking source
//!    input, and holds data that arrives on a link after that link's
//!    barrier.
//! 3. With barrier N in from every peer, the worker snapshots its state and
//!    sink positions, releases what it held and resumes; off the executor
//!    thread its sinks pre-commit and its part file is written durably; then
//!    it reports `CheckpointDone { N }`.
//! 4. With every part done, the coordinator has "N committed" appended to
//!    the commit log durably, and only then sends `Committed { N }`: sources
//!    acknowledge what N covers, sinks commit, older part files go.
//!
//! The file formats are in [`crate::checkpoint_store`]; recovery, which
//! rolls every worker back to the last committed checkpoint, is driven by
//! [`crate::node`].

pub mod coordinator;
pub mod participant;

/// A checkpoint's id: 1, 2, 3, ... in the order the coordinator begins them.
pub type CheckpointId = u64;
