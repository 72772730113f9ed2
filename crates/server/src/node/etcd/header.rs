//! etcd's `ResponseHeader`: which cluster and member answered, at which revision and Raft term.
//!
//! Every etcd response carries one, and clients use it: `member_id` tells etcdctl which endpoint
//! leads (`Status.leader == header.member_id`), `revision` orders what a client has seen. The
//! cluster id is derived here from the cluster's bootstrap members ([`cluster_id`]); the revision
//! comes from a pluggable [`RevisionSource`], the applied log index until the multi-version store
//! supplies etcd's own revisions.

use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;

use crate::raft::NodeId;
use crate::raft::Raft;
use rskv_proto::etcd::etcdserverpb::ResponseHeader;

/// Where the current revision comes from: the multi-version store's current revision once it
/// exists; until then [`applied_index_revision`]. Called for every header, so it must be cheap
/// (an atomic load).
pub type RevisionSource = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A stable, non-zero cluster id from the ids of the members the cluster was bootstrapped with:
/// every initial member computes the same id from the same `cluster.initial_members`, whatever
/// their order, and the id outlives later membership changes. FNV-1a over the sorted ids, so it
/// does not change with the Rust version or the platform (std's hasher may).
pub fn cluster_id(members: impl IntoIterator<Item = NodeId>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut ids: Vec<NodeId> = members.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut hash = OFFSET;
    for byte in b"rskv-cluster"
        .iter()
        .copied()
        .chain(ids.iter().flat_map(|id| id.to_le_bytes()))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(PRIME);
    }
    // etcd treats 0 as "no cluster id"; never answer it for a real cluster.
    hash.max(1)
}

/// The revision source used until the multi-version store lands: the index this node's state
/// machine has applied. It grows with every applied entry, as a revision grows with every write
/// (faster: membership and session entries count too), so it orders what a client has seen.
pub fn applied_index_revision(raft: Raft) -> RevisionSource {
    Arc::new(move || i64::try_from(crate::raft::applied_index(&raft)).unwrap_or(i64::MAX))
}

/// Builds the headers of one member: its cluster and member ids, its Raft term, and the revision
/// from its [`RevisionSource`].
#[derive(Clone)]
pub struct HeaderSource {
    /// See [`cluster_id`].
    cluster_id: u64,
    /// This node's id: etcd's member id.
    member_id: NodeId,
    /// For the current term.
    raft: Raft,
    /// The current revision.
    revision: RevisionSource,
}

impl HeaderSource {
    /// Headers of member `member_id` of cluster `cluster_id`, with revisions from `revision`.
    pub fn new(
        cluster_id: u64,
        member_id: NodeId,
        raft: Raft,
        revision: RevisionSource,
    ) -> HeaderSource {
        HeaderSource {
            cluster_id,
            member_id,
            raft,
            revision,
        }
    }

    /// The same headers with revisions from `revision` (the multi-version store plugs in here).
    pub fn with_revision_source(mut self, revision: RevisionSource) -> HeaderSource {
        self.revision = revision;
        self
    }

    /// This cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This member's id.
    pub fn member_id(&self) -> NodeId {
        self.member_id
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        (self.revision)()
    }

    /// The header of a response that reports no particular revision: the current one.
    pub fn header(&self) -> ResponseHeader {
        self.header_at(self.revision())
    }

    /// The header of a response at `revision` (a write's or a read's own revision).
    pub fn header_at(&self, revision: i64) -> ResponseHeader {
        let raft_term = self.raft.metrics().borrow_watched().current_term;
        response_header(self.cluster_id, self.member_id, revision, raft_term)
    }
}

/// etcd's header from its four parts.
pub fn response_header(
    cluster_id: u64,
    member_id: NodeId,
    revision: i64,
    raft_term: u64,
) -> ResponseHeader {
    ResponseHeader {
        cluster_id,
        member_id,
        revision,
        raft_term,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_id_should_not_depend_on_member_order() {
        assert_eq!(cluster_id([3, 1, 2]), cluster_id([1, 2, 3]));
        assert_eq!(cluster_id([1, 2, 2, 3]), cluster_id([1, 2, 3]));
    }

    #[test]
    fn cluster_id_should_differ_between_clusters_and_never_be_zero() {
        assert_ne!(cluster_id([1, 2, 3]), cluster_id([1, 2, 4]));
        assert_ne!(cluster_id([1]), cluster_id([2]));
        assert_ne!(cluster_id([1, 2, 3]), 0);
        assert_ne!(cluster_id([]), 0);
    }

    #[test]
    fn cluster_id_should_be_stable_across_releases() {
        // The id is visible to clients; a change would look like another cluster.
        assert_eq!(cluster_id([1, 2, 3]), 0xc0d8_c397_c90e_7ee8);
    }
}
