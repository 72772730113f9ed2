//! Cluster introspection and administration (`rskv.v1.Cluster`): status, membership changes and
//! leader transfer — what `kv_client status`, `member …` and `transfer-leader` call.
//!
//! Membership changes are validated here before openraft sees them (unknown ids, removing the last
//! voter, an address already used by another node, promoting a learner that has not caught up),
//! so an invalid request changes nothing and says why.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::handle;
use super::shutdown;
use super::write_error;
use super::Node;
use crate::error::Error;
use crate::error::Result;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use rskv_proto::kv as pb;
use rskv_proto::kv::cluster_server::Cluster;

/// A learner may be promoted once it is at most this many entries behind the leader.
pub const PROMOTE_MAX_LAG: u64 = 500;

/// Implements `rskv.v1.Cluster` on top of a [`Node`].
pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    /// A service answering for `node`.
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService { node }
    }
}

/// The role names used in status output.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// The membership as status output shows it, with match indexes when this node leads.
fn members(node: &Node) -> Vec<pb::Member> {
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
            // None until the leader has confirmed any replication to the node.
            matched_index: replication
                .get(id)
                .and_then(|m| m.as_ref().map(|l| l.index)),
        })
        .collect()
}

impl ClusterService {
    fn status_now(&self) -> pb::StatusResponse {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let (leader_id, leader_addr) = match self.node.leader() {
            Some((id, addr)) => (Some(id), addr),
            None => (metrics.current_leader, String::new()),
        };
        let quorum = self.node.quorum();
        pb::StatusResponse {
            quorum_ack_ms: quorum.ack_ms,
            quorum: quorum.ok,
            sessions: self.node.state_machine.open_sessions() as u64,
            id: self.node.id,
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id,
            leader_addr,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed: metrics.local_committed.map(|l| l.index).unwrap_or(0),
            applied: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            members: members(&self.node),
            engine: self.node.engine.name().to_string(),
            addr: self.node.config.advertised(),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        }
    }

    /// Fails with NOT_LEADER unless this node leads.
    fn require_leader(&self) -> Result<()> {
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

    async fn change(
        &self,
        change: ChangeMembers<NodeId, NodeInfo>,
    ) -> Result<pb::MembershipResponse> {
        let resp = tokio::time::timeout(
            self.timeout(),
            self.node.raft.change_membership(change, false),
        )
        .await
        .map_err(|_| Error::Timeout("membership change not committed in time".into()))?
        .map_err(|e| {
            write_error(
                &self.node.raft,
                self.node.config.raft.election_timeout_max_ms,
                e,
            )
        })?;
        Ok(pb::MembershipResponse {
            index: resp.log_id.index,
            members: members(&self.node),
        })
    }

    async fn add_learner(&self, req: pb::AddLearnerRequest) -> Result<pb::MembershipResponse> {
        self.require_leader()?;
        if req.id == 0 {
            return Err(Error::InvalidArgument("node id must be at least 1".into()));
        }
        if req.addr.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "the node's client address is required".into(),
            ));
        }
        let peer_addr = if req.peer_addr.trim().is_empty() {
            crate::config::shifted_port(&req.addr, 1).map_err(Error::InvalidArgument)?
        } else {
            req.peer_addr.clone()
        };
        let info = NodeInfo::new(req.addr.trim(), peer_addr.trim());
        // A member's addresses go into the replicated membership: refuse one nobody can dial.
        crate::raft::check_dialable(&info).map_err(Error::InvalidArgument)?;
        for m in members(&self.node) {
            if m.id == req.id {
                if m.addr == info.addr && m.peer_addr == info.peer_addr {
                    // Already a member with these addresses: joining again is a no-op.
                    return Ok(pb::MembershipResponse {
                        index: 0,
                        members: members(&self.node),
                    });
                }
                return Err(Error::InvalidArgument(format!(
                    "node {} is already a member at {} (peer {}); remove it first to change its address",
                    m.id, m.addr, m.peer_addr
                )));
            }
            if m.addr == info.addr
                || m.peer_addr == info.peer_addr
                || m.addr == info.peer_addr
                || m.peer_addr == info.addr
            {
                return Err(Error::InvalidArgument(format!(
                    "address in use by node {} ({} / peer {})",
                    m.id, m.addr, m.peer_addr
                )));
            }
        }
        tracing::info!(id = req.id, node = %info, "adding learner");
        let resp = tokio::time::timeout(
            self.timeout(),
            self.node.raft.add_learner(req.id, info, false),
        )
        .await
        .map_err(|_| Error::Timeout("adding the learner did not commit in time".into()))?
        .map_err(|e| {
            write_error(
                &self.node.raft,
                self.node.config.raft.election_timeout_max_ms,
                e,
            )
        })?;
        Ok(pb::MembershipResponse {
            index: resp.log_id.index,
            members: members(&self.node),
        })
    }

    async fn promote(&self, req: pb::PromoteRequest) -> Result<pb::MembershipResponse> {
        self.require_leader()?;
        let all = members(&self.node);
        let Some(member) = all.iter().find(|m| m.id == req.id) else {
            return Err(Error::InvalidArgument(format!(
                "node {} is not a member",
                req.id
            )));
        };
        if member.voter {
            return Ok(pb::MembershipResponse {
                index: 0,
                members: all,
            });
        }
        let last = self
            .node
            .raft
            .metrics()
            .borrow_watched()
            .last_log_index
            .unwrap_or(0);
        let Some(matched) = member.matched_index else {
            return Err(Error::FailedPrecondition(format!(
                "learner {} has not replicated anything yet; is it running?",
                req.id
            )));
        };
        if last.saturating_sub(matched) > PROMOTE_MAX_LAG {
            return Err(Error::FailedPrecondition(format!(
                "learner {} has replicated up to {matched} of {last}; promote it once it has caught up",
                req.id
            )));
        }
        tracing::info!(id = req.id, "promoting learner to voter");
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([req.id])))
            .await
    }

    async fn remove(&self, req: pb::RemoveMemberRequest) -> Result<pb::MembershipResponse> {
        self.require_leader()?;
        let all = members(&self.node);
        let Some(member) = all.iter().find(|m| m.id == req.id) else {
            return Err(Error::InvalidArgument(format!(
                "node {} is not a member",
                req.id
            )));
        };
        if !member.voter {
            tracing::info!(id = req.id, "removing learner");
            return self
                .change(ChangeMembers::RemoveNodes(BTreeSet::from([req.id])))
                .await;
        }
        let voters = all.iter().filter(|m| m.voter).count();
        if voters <= 1 {
            return Err(Error::InvalidArgument(format!(
                "node {} is the last voter; a cluster cannot remove its last voter",
                req.id
            )));
        }
        if req.id == self.node.id {
            // The leader removing itself hands over first; the new leader does the removal.
            let deadline = tokio::time::Instant::now() + self.timeout();
            let to = shutdown::hand_off_leadership(&self.node, deadline)
                .await
                .map_err(Error::unavailable)?;
            tracing::info!(new_leader = ?to, "handed leadership over before removing myself");
            return Err(Error::NotLeader {
                leader: self.node.leader(),
            });
        }
        tracing::info!(id = req.id, "removing voter");
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([req.id])))
            .await
    }

    async fn transfer(&self, req: pb::TransferLeaderRequest) -> Result<pb::TransferLeaderResponse> {
        self.require_leader()?;
        let all = members(&self.node);
        let target = match req.to {
            Some(to) => {
                let Some(member) = all.iter().find(|m| m.id == to) else {
                    return Err(Error::InvalidArgument(format!("node {to} is not a member")));
                };
                if !member.voter {
                    return Err(Error::InvalidArgument(format!(
                        "node {to} is a learner; only a voter can lead"
                    )));
                }
                to
            }
            None => shutdown::most_caught_up_voter(&self.node)
                .ok_or_else(|| Error::InvalidArgument("there is no other voter to lead".into()))?,
        };
        if target != self.node.id {
            let deadline = tokio::time::Instant::now() + self.timeout();
            shutdown::transfer_leadership(&self.node, target, deadline)
                .await
                .map_err(Error::unavailable)?;
        }
        let leader_addr = all
            .iter()
            .find(|m| m.id == target)
            .map(|m| m.addr.clone())
            .unwrap_or_default();
        Ok(pb::TransferLeaderResponse {
            leader_id: target,
            leader_addr,
        })
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        handle("status", None, async { Ok(self.status_now()) }).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("add_learner", None, self.add_learner(request.into_inner())).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("promote", None, self.promote(request.into_inner())).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("remove_member", None, self.remove(request.into_inner())).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        handle("transfer_leader", None, self.transfer(request.into_inner())).await
    }
}
