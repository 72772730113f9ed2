//! Cluster introspection and administration (`rskv.v1.Cluster`): status, membership changes and
//! leader transfer — what `kv_client status`, `member …` and `transfer-leader` call.
//!
//! Membership changes are validated before openraft sees them (unknown ids, removing the last
//! voter, an address already used by another node, promoting a learner that has not caught up),
//! so an invalid request changes nothing and says why; the checks live in [`super::membership`],
//! shared with etcd's Cluster service.

use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::handle;
use super::membership::MembershipAdmin;
use super::membership::Promotion;
use super::Node;
use crate::error::Result;
use rskv_proto::kv as pb;
use rskv_proto::kv::cluster_server::Cluster;

pub use super::membership::PROMOTE_MAX_LAG;

/// Implements `rskv.v1.Cluster` on top of a [`Node`]; membership changes go through the shared
/// [`MembershipAdmin`].
pub struct ClusterService {
    node: Arc<Node>,
    admin: MembershipAdmin,
}

impl ClusterService {
    /// A service answering for `node`.
    pub fn new(node: Arc<Node>) -> ClusterService {
        ClusterService {
            admin: MembershipAdmin::new(node.clone()),
            node,
        }
    }
}

impl ClusterService {
    /// Membership changes are administration: with etcd's auth enabled, the `root` role.
    fn root<T>(&self, request: &Request<T>) -> Result<()> {
        self.node
            .auth
            .require_root(request.metadata())
            .map_err(super::auth::denied)
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
            members: self.admin.members(),
            engine: self.node.engine.name().to_string(),
            addr: self.node.config.advertised(),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        }
    }

    /// The reply to a membership change: the index it committed at (0: nothing to change) and
    /// the membership after it.
    fn membership(&self, index: Option<u64>) -> pb::MembershipResponse {
        pb::MembershipResponse {
            index: index.unwrap_or(0),
            members: self.admin.members(),
        }
    }

    async fn add_learner(&self, req: pb::AddLearnerRequest) -> Result<pb::MembershipResponse> {
        let index = self
            .admin
            .add_learner(req.id, &req.addr, &req.peer_addr, Promotion::OnceCaughtUp)
            .await?;
        Ok(self.membership(index))
    }

    async fn promote(&self, req: pb::PromoteRequest) -> Result<pb::MembershipResponse> {
        let index = self.admin.promote(req.id).await?;
        Ok(self.membership(index))
    }

    async fn remove(&self, req: pb::RemoveMemberRequest) -> Result<pb::MembershipResponse> {
        let index = self.admin.remove(req.id).await?;
        Ok(self.membership(Some(index)))
    }

    async fn transfer(&self, req: pb::TransferLeaderRequest) -> Result<pb::TransferLeaderResponse> {
        let target = self.admin.transfer(req.to).await?;
        let leader_addr = self
            .admin
            .members()
            .into_iter()
            .find(|m| m.id == target)
            .map(|m| m.addr)
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
        handle("add_learner", None, async {
            self.root(&request)?;
            self.add_learner(request.into_inner()).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("promote", None, async {
            self.root(&request)?;
            self.promote(request.into_inner()).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        handle("remove_member", None, async {
            self.root(&request)?;
            self.remove(request.into_inner()).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        handle("transfer_leader", None, async {
            self.root(&request)?;
            self.transfer(request.into_inner()).await
        })
        .await
    }
}
