//! Membership changes and leader transfer, validated before openraft sees them: the one
//! implementation behind rskv's own `Cluster` service ([`super::cluster_service`]) and etcd's
//! `Cluster` and `Maintenance` services ([`super::etcd`]).
//!
//! Each check refuses with a typed [`Refusal`], so an invalid request changes nothing and each API
//! says why in its own words: rskv's with its messages and reasons (`From<ChangeError> for
//! Error`), etcd's with etcd's codes and error strings (`etcd::cluster`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::ServerState;

use super::shutdown;
use super::write_error;
use super::Node;
use crate::error::Error;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use rskv_proto::kv as pb;

/// A learner may be promoted once it is at most this many entries behind the leader.
pub const PROMOTE_MAX_LAG: u64 = 500;

/// How a learner becomes a voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promotion {
    /// The node, joining (`--join`), has itself promoted once it has caught up: rskv's way of
    /// adding a voter, which never counts a node in a quorum before it holds the log.
    OnceCaughtUp,
    /// Only by request (`MemberPromote`, `kv_client member promote`): etcd's learner, which
    /// the tool that added it promotes.
    ByRequest,
}

/// Why a membership change or leader transfer was refused before anything was proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The id names no member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// Node ids start at 1.
    #[error("node id must be at least 1")]
    InvalidId,
    /// An address is missing or cannot be dialled; the text says which and why.
    #[error("{0}")]
    BadAddress(String),
    /// The id is a member already, with other addresses.
    #[error(
        "node {id} is already a member at {addr} (peer {peer_addr}); remove it first to change its address"
    )]
    AlreadyMember {
        /// The member.
        id: NodeId,
        /// Its client address.
        addr: String,
        /// Its peer address.
        peer_addr: String,
    },
    /// Another member uses one of the addresses.
    #[error("address in use by node {id} ({addr} / peer {peer_addr})")]
    AddressInUse {
        /// The member using it.
        id: NodeId,
        /// Its client address.
        addr: String,
        /// Its peer address.
        peer_addr: String,
    },
    /// Removing this voter would leave no voter.
    #[error("node {0} is the last voter; a cluster cannot remove its last voter")]
    LastVoter(NodeId),
    /// The learner has replicated nothing yet (it may not be running).
    #[error("learner {0} has not replicated anything yet; is it running?")]
    NothingReplicated(NodeId),
    /// The learner is more than [`PROMOTE_MAX_LAG`] entries behind.
    #[error(
        "learner {id} has replicated up to {matched} of {last}; promote it once it has caught up"
    )]
    Behind {
        /// The learner.
        id: NodeId,
        /// What it has replicated.
        matched: u64,
        /// The leader's last log index.
        last: u64,
    },
    /// Only a voter can lead.
    #[error("node {0} is a learner; only a voter can lead")]
    LearnerCannotLead(NodeId),
    /// A transfer without a target found no other voter.
    #[error("there is no other voter to lead")]
    NoOtherVoter,
}

/// A failed membership change: refused by a check (nothing proposed), or failed in Raft (not
/// the leader, another change in progress, not committed in time).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChangeError {
    /// Refused before anything was proposed.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// Raft or the node failed it.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl From<ChangeError> for Error {
    fn from(e: ChangeError) -> Error {
        match e {
            ChangeError::Refused(r @ (Refusal::NothingReplicated(_) | Refusal::Behind { .. })) => {
                Error::FailedPrecondition(r.to_string())
            }
            ChangeError::Refused(r) => Error::InvalidArgument(r.to_string()),
            ChangeError::Failed(e) => e,
        }
    }
}

/// What openraft answers a committed membership entry.
type ClientWriteResponse = openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>;
/// How openraft refuses or fails a membership entry.
type ClientWriteFailure = openraft::error::RaftError<
    crate::raft::TypeConfig,
    openraft::error::ClientWriteError<crate::raft::TypeConfig>,
>;

/// What a membership operation answers: `None` when there was nothing to change (already a
/// member with these addresses, already a voter).
pub type Changed = Option<u64>;

/// The membership operations of one node; it must lead for any change.
pub struct MembershipAdmin {
    node: Arc<Node>,
}

impl MembershipAdmin {
    /// Membership administration through `node`.
    pub fn new(node: Arc<Node>) -> MembershipAdmin {
        MembershipAdmin { node }
    }

    /// The membership as this node knows it, with match indexes when it leads.
    pub fn members(&self) -> Vec<pb::Member> {
        members(&self.node)
    }

    /// Fails with NOT_LEADER unless this node leads.
    ///
    /// # Errors
    /// [`Error::NotLeader`] naming the leader when known.
    pub fn require_leader(&self) -> Result<(), Error> {
        if self.node.raft.metrics().borrow_watched().state == ServerState::Leader {
            Ok(())
        } else {
            Err(Error::NotLeader {
                leader: self.node.leader(),
            })
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.node.config.limits.request_timeout_ms)
    }

    async fn change(&self, change: ChangeMembers<NodeId, NodeInfo>) -> Result<u64, ChangeError> {
        self.commit(
            "membership change not committed in time",
            self.node.raft.change_membership(change, false),
        )
        .await
    }

    /// Waits (bounded) for a membership entry openraft proposes; answers its log index. `late`
    /// says what did not happen in time.
    async fn commit(
        &self,
        late: &str,
        proposal: impl std::future::Future<Output = Result<ClientWriteResponse, ClientWriteFailure>>,
    ) -> Result<u64, ChangeError> {
        let resp = tokio::time::timeout(self.timeout(), proposal)
            .await
            .map_err(|_| Error::Timeout(late.into()))?
            .map_err(|e| {
                write_error(
                    &self.node.raft,
                    self.node.config.raft.election_timeout_max_ms,
                    e,
                )
            })?;
        Ok(resp.log_id.index)
    }

    /// The smallest id above every member's: what a member added without an id (etcd's
    /// `MemberAdd`) gets.
    pub fn next_free_id(&self) -> NodeId {
        self.members().iter().map(|m| m.id).max().unwrap_or(0) + 1
    }

    /// Adds node `id` as a learner at `addr` (client) and `peer_addr` (empty: `addr`'s port + 1),
    /// to become a voter as `promotion` says.
    ///
    /// # Errors
    /// A [`Refusal`] for a bad id or address, an address in use, or an id that is a member with
    /// other addresses; [`ChangeError::Failed`] when not leading or not committed in time.
    pub async fn add_learner(
        &self,
        id: NodeId,
        addr: &str,
        peer_addr: &str,
        promotion: Promotion,
    ) -> Result<Changed, ChangeError> {
        self.require_leader()?;
        if id == 0 {
            return Err(Refusal::InvalidId.into());
        }
        if addr.trim().is_empty() {
            return Err(Refusal::BadAddress("the node's client address is required".into()).into());
        }
        let peer_addr = if peer_addr.trim().is_empty() {
            crate::config::shifted_port(addr, 1).map_err(Refusal::BadAddress)?
        } else {
            peer_addr.to_string()
        };
        let mut info = NodeInfo::new(addr.trim(), peer_addr.trim());
        info.learner_until_promoted = promotion == Promotion::ByRequest;
        // A member's addresses go into the replicated membership: refuse one nobody can dial.
        crate::raft::check_dialable(&info).map_err(Refusal::BadAddress)?;
        for m in self.members() {
            if m.id == id {
                if m.addr == info.addr && m.peer_addr == info.peer_addr {
                    // Already a member with these addresses: joining again is a no-op.
                    return Ok(None);
                }
                return Err(Refusal::AlreadyMember {
                    id: m.id,
                    addr: m.addr,
                    peer_addr: m.peer_addr,
                }
                .into());
            }
            if m.addr == info.addr
                || m.peer_addr == info.peer_addr
                || m.addr == info.peer_addr
                || m.peer_addr == info.addr
            {
                return Err(Refusal::AddressInUse {
                    id: m.id,
                    addr: m.addr,
                    peer_addr: m.peer_addr,
                }
                .into());
            }
        }
        tracing::info!(id, node = %info, ?promotion, "adding learner");
        self.commit(
            "adding the learner did not commit in time",
            self.node.raft.add_learner(id, info, false),
        )
        .await
        .map(Some)
    }

    /// Promotes learner `id` to voter once it has caught up; `None` if it is a voter already.
    ///
    /// # Errors
    /// A [`Refusal`] for a non-member or a learner that has not caught up;
    /// [`ChangeError::Failed`] when not leading or not committed in time.
    pub async fn promote(&self, id: NodeId) -> Result<Changed, ChangeError> {
        self.require_leader()?;
        let all = self.members();
        let Some(member) = all.iter().find(|m| m.id == id) else {
            return Err(Refusal::NotMember(id).into());
        };
        if member.voter {
            return Ok(None);
        }
        let last = self
            .node
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        let Some(matched) = member.matched_index else {
            return Err(Refusal::NothingReplicated(id).into());
        };
        if last.saturating_sub(matched) > PROMOTE_MAX_LAG {
            return Err(Refusal::Behind { id, matched, last }.into());
        }
        tracing::info!(id, "promoting learner to voter");
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])))
            .await
            .map(Some)
    }

    /// Whether member `id` is a learner added to be promoted only by request
    /// ([`Promotion::ByRequest`]), which a joining node does not promote itself.
    pub fn promoted_only_by_request(&self, id: NodeId) -> bool {
        self.members()
            .iter()
            .any(|m| m.id == id && m.promoted_by_request)
    }

    /// Removes member `id`, voter or learner. The leader removing itself hands leadership over
    /// first and answers NOT_LEADER naming the new leader, which does the removal.
    ///
    /// # Errors
    /// A [`Refusal`] for a non-member or the last voter; [`ChangeError::Failed`] when not
    /// leading (or after the hand-off above) or not committed in time.
    pub async fn remove(&self, id: NodeId) -> Result<u64, ChangeError> {
        self.require_leader()?;
        let all = self.members();
        let Some(member) = all.iter().find(|m| m.id == id) else {
            return Err(Refusal::NotMember(id).into());
        };
        if !member.voter {
            tracing::info!(id, "removing learner");
            return self
                .change(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
                .await;
        }
        let voters = all.iter().filter(|m| m.voter).count();
        if voters <= 1 {
            return Err(Refusal::LastVoter(id).into());
        }
        if id == self.node.id {
            // The leader removing itself hands over first; the new leader does the removal.
            let deadline = tokio::time::Instant::now() + self.timeout();
            let to = shutdown::hand_off_leadership(&self.node, deadline)
                .await
                .map_err(Error::unavailable)?;
            tracing::info!(new_leader = ?to, "handed leadership over before removing myself");
            return Err(Error::NotLeader {
                leader: self.node.leader(),
            }
            .into());
        }
        tracing::info!(id, "removing voter");
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
            .await
    }

    /// Hands leadership to voter `to` (`None`: the most caught-up other voter) and waits until it
    /// leads; answers the new leader.
    ///
    /// # Errors
    /// A [`Refusal`] for a non-member, a learner, or no other voter; [`ChangeError::Failed`] when
    /// not leading or when the new leader is not in place in time.
    pub async fn transfer(&self, to: Option<NodeId>) -> Result<NodeId, ChangeError> {
        self.require_leader()?;
        let all = self.members();
        let target = match to {
            Some(to) => {
                let Some(member) = all.iter().find(|m| m.id == to) else {
                    return Err(Refusal::NotMember(to).into());
                };
                if !member.voter {
                    return Err(Refusal::LearnerCannotLead(to).into());
                }
                to
            }
            None => shutdown::most_caught_up_voter(&self.node).ok_or(Refusal::NoOtherVoter)?,
        };
        if target != self.node.id {
            let deadline = tokio::time::Instant::now() + self.timeout();
            shutdown::transfer_leadership(&self.node, target, deadline)
                .await
                .map_err(Error::unavailable)?;
        }
        Ok(target)
    }
}

/// The membership as status output shows it, with match indexes when this node leads.
pub(crate) fn members(node: &Node) -> Vec<pb::Member> {
    let metrics = node.raft.metrics().borrow_watched().clone();
    let membership = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    let replication = metrics.replication.clone().unwrap_or_default();
    membership
        .nodes()
        .map(|(id, info)| pb::Member {
            id: *id,
            addr: info.addr.clone(),
            peer_addr: info.peer_addr.clone(),
            voter: voters.contains(id),
            promoted_by_request: info.learner_until_promoted && !voters.contains(id),
            // None until the leader has confirmed any replication to the node.
            matched_index: replication
                .get(id)
                .and_then(|m| m.as_ref().map(|l| l.index)),
        })
        .collect()
}
