//! Cluster introspection (`rskv.v1.Cluster`): what `kv_client status` shows.

use std::sync::Arc;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::handle;
use super::Node;
use crate::pb::kv as pb;
use crate::pb::kv::cluster_server::Cluster;

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

#[tonic::async_trait]
impl Cluster for ClusterService {
    #[tracing::instrument(skip_all, fields(node_id = self.node.id))]
    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        handle("status", None, async { Ok(self.status_now()) }).await
    }
}

impl ClusterService {
    fn status_now(&self) -> pb::StatusResponse {
        let metrics = self.node.raft.metrics().borrow_watched().clone();
        let membership = metrics.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let (leader_id, leader_addr) = match self.node.leader() {
            Some((id, addr)) => (Some(id), addr),
            None => (metrics.current_leader, String::new()),
        };
        pb::StatusResponse {
            id: self.node.id,
            role: role_name(metrics.state).to_string(),
            term: metrics.current_term,
            leader_id,
            leader_addr,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            committed: metrics.local_committed.map(|l| l.index).unwrap_or(0),
            applied: metrics.last_applied.map(|l| l.index).unwrap_or(0),
            members,
            engine: self.node.engine.name().to_string(),
            addr: self.node.config.advertised(),
            snapshot_index: metrics.snapshot.map(|l| l.index).unwrap_or(0),
            purged_index: metrics.purged.map(|l| l.index).unwrap_or(0),
        }
    }
}
