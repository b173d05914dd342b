//! Cluster membership: who is in the cluster, under which generation, and
//! how a cluster forms, as two state machines without I/O.
//!
//! Formation (the same after a failure, under a new generation):
//!
//! 1. The initializer listens on its control address. Every other worker
//!    connects to it and sends `Join { name, data_addr, fingerprint, .. }`.
//! 2. The initializer refuses a different application (fingerprint), its
//!    own name, a name already taken by a live connection, and workers
//!    beyond the cluster size. With `worker_count - 1` joined it sends each
//!    `Welcome { members, generation, .. }`: the initializer first, then the
//!    others sorted by name. A worker's index in that list is its place in
//!    the key-group map, so names (not join order) decide who owns what.
//! 3. Every worker opens a data link to every other and accepts one from
//!    each; with all of them up a worker sends `LinksUp`. With every
//!    `LinksUp` in and its own links up, the initializer sends `Start`.
//!
//! A formation step that waits on peers gives up after a deadline, and the
//! formation starts over under the next generation. After formation a
//! member is lost only when its own control link closes or goes silent (the
//! binding watches heartbeats). A worker that joins with a member's name
//! while that member's link is up (a restart whose old link's loss is not
//! noticed yet, or an impostor) is refused with "retry": it changes nothing.
//!
//! [`initializer::InitializerMembership`] is the initializer's side,
//! [`joiner::JoinerMembership`] every other worker's. Links are the
//! binding's connections, named by a [`LinkId`] it never reuses.

pub mod initializer;
pub mod joiner;

/// A cluster formation's number. Every formation gets a larger one than any
/// before it (the initializer records it durably before anyone hears of
/// it), and every message between workers carries it, so what a worker said
/// before a rollback is recognised and dropped.
pub type Generation = u64;

/// A connection as the binding numbers them: never reused in a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "link {}", self.0)
    }
}
