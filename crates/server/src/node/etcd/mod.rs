//! # etcd's v3 API on an rskv node
//!
//! rskv answers etcd's gRPC API (`etcdserverpb`, compiled into `rskv_proto::etcd`) on the same
//! client port as its own, so `etcdctl` and etcd's client libraries work unchanged. This module
//! holds what every etcd service needs, and the services:
//!
//! - [`EtcdContext`]: shared by every etcd service: the response [`header`] (cluster id, member
//!   id, Raft term and a pluggable revision source) and the [`forward`]er to the leader.
//! - [`cluster`]: etcd's `Cluster` (member list, add, remove, update, promote) on rskv's
//!   membership, through the same [`super::membership::MembershipAdmin`] as rskv's own
//!   `Cluster` service.
//! - [`maintenance`]: etcd's `Maintenance` (status, alarms, defragment, move-leader).
//! - [`errors`]: etcd's error statuses, with etcd's exact messages.
//! - [`kv`], [`watch`], [`lease`]: etcd's `KV`, `Watch` and `Lease` over the multi-version
//!   store (`rskv_storage::mvcc`): writes replicated as its commands, watches read from its
//!   history, lease expiry kept by the leader's [`lease::Lessor`].
//! - [`lock`], [`election`]: etcd's `Lock` and `Election`, etcd's concurrency recipes run by the
//!   member as etcd's server runs them, built of [`concurrency`]'s steps over the member's own
//!   `KV`, `Lease` and history.
//!
//! Every service is built from an [`EtcdContext`] (whose revision source is the store's revision,
//! [`EtcdContext::with_revision_source`]), answers headers with [`EtcdContext::header_at`], and
//! sends what only the leader can do through [`EtcdContext::forwarder`].
//!
//! The layering is the node's: these services use Raft (metrics, membership) and the node's
//! membership administration, never the storage's internals.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod errors;
pub mod forward;
pub mod header;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use tonic::Response;
use tonic::Status;

pub use errors::EtcdError;
pub use forward::Forwarder;
pub use header::HeaderSource;
pub use header::RevisionSource;

use super::proposer::Proposer;
use super::Node;
use crate::raft::Command;
use crate::raft::NodeId;
use crate::raft::Raft;
use errors::status_of;
use rskv_proto::etcd::etcdserverpb::ResponseHeader;
use rskv_storage::types::EtcdReply;

/// The etcd server version reported by `Status`: etcdctl and the client libraries check it
/// against the API they speak, and the 3.5 API is what `proto/etcd/` carries.
pub const ETCD_VERSION: &str = "3.5.0";

/// What every etcd service of a node shares: how to build response headers and how to reach the
/// leader. Cheap to clone.
#[derive(Clone)]
pub struct EtcdContext {
    /// Builds response headers.
    header: HeaderSource,
    /// Reaches the leader for requests only it can serve.
    forwarder: Arc<Forwarder>,
    /// Raft metrics (term, leader, indexes) for status replies.
    raft: Raft,
    /// Who a request comes from and what it may do.
    auth: crate::node::auth::Authorizer,
}

impl EtcdContext {
    /// The context of `node`: its cluster id (see [`header::cluster_id`]), its id as member id,
    /// the applied index as revision until a multi-version store plugs its own in.
    pub fn new(node: &Node) -> EtcdContext {
        let cluster_id = cluster_id_of(&node.config);
        let timeout = Duration::from_millis(node.config.limits.request_timeout_ms);
        EtcdContext {
            header: HeaderSource::new(
                cluster_id,
                node.id,
                node.raft.clone(),
                header::applied_index_revision(node.raft.clone()),
            ),
            forwarder: Arc::new(Forwarder::new(
                node.id,
                node.raft.clone(),
                timeout,
                (node.peer_dial(), node.config.peer_liveness()),
                node.events.clone(),
            )),
            raft: node.raft.clone(),
            auth: node.auth.clone(),
        }
    }

    /// The same context with revisions from `revision` (the multi-version store's current
    /// revision).
    pub fn with_revision_source(mut self, revision: RevisionSource) -> EtcdContext {
        self.header = self.header.with_revision_source(revision);
        self
    }

    /// This member's id.
    pub fn member_id(&self) -> NodeId {
        self.header.member_id()
    }

    /// The cluster's id.
    pub fn cluster_id(&self) -> u64 {
        self.header.cluster_id()
    }

    /// The current revision.
    pub fn revision(&self) -> i64 {
        self.header.revision()
    }

    /// A header at the current revision.
    pub fn header(&self) -> ResponseHeader {
        self.header.header()
    }

    /// A header at `revision`.
    pub fn header_at(&self, revision: i64) -> ResponseHeader {
        self.header.header_at(revision)
    }

    /// The way to the leader.
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// The auth checks of this member.
    pub fn auth(&self) -> &crate::node::auth::Authorizer {
        &self.auth
    }

    /// A copy of this node's Raft metrics.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<crate::raft::TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }
}

/// The cluster id from `config`: the hash of the bootstrap members' ids (`cluster.initial_members`,
/// or this node alone for a single-node cluster). A node started with `cluster.join` and without
/// `cluster.initial_members` does not know them and reports 0 ("unknown", as etcd's clients read
/// it); give it the cluster's `initial_members` too and it reports the cluster's id.
fn cluster_id_of(config: &crate::config::Config) -> u64 {
    let joining_blind =
        !config.cluster.join.is_empty() && config.cluster.initial_members.is_empty();
    if joining_blind {
        return 0;
    }
    match config.bootstrap_members() {
        Ok(members) => header::cluster_id(members.into_keys()),
        Err(e) => {
            // validate() already refused a config like this; keep serving rather than panic.
            tracing::warn!(error = %e, "cannot derive the etcd cluster id; reporting 0");
            0
        }
    }
}

/// Replicates an etcd `command` and waits for it to be applied: its reply and the store's
/// revision after it, or etcd's status when the store refused it (or the node could not
/// propose). `what` names the request in the internal error of a reply without an etcd part,
/// which only a bug can produce.
pub(crate) async fn propose(
    proposer: &Proposer,
    command: Command,
    what: &str,
) -> Result<(EtcdReply, i64), Status> {
    let (_, response) = proposer.write(command).await.map_err(status_of)?;
    etcd_reply(response, what)
}

/// An applied etcd command's reply and the revision after it, or etcd's status when the store
/// refused it (see [`propose`]).
pub(crate) fn etcd_reply(
    response: crate::raft::CommandResponse,
    what: &str,
) -> Result<(EtcdReply, i64), Status> {
    match response.etcd {
        Some(EtcdReply::Refused(e)) => Err(kv::mvcc_status(&e)),
        Some(EtcdReply::AuthRefused(e)) => Err(crate::node::auth::auth_status(e)),
        Some(reply) => Ok((reply, response.revision)),
        None => Err(Status::internal(format!(
            "{what} was answered without its etcd reply"
        ))),
    }
}

/// The status of an etcd command's reply of the wrong kind (a bug): `what` names the request.
pub(crate) fn unexpected(what: &str, reply: &EtcdReply) -> Status {
    Status::internal(format!("{what} was answered with {reply:?}"))
}

/// Runs one etcd request and records its method, status code and latency like rskv's own.
pub(crate) async fn observe<T>(
    method: &'static str,
    request: impl Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let started = std::time::Instant::now();
    let result = request.await;
    let code = match &result {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    };
    crate::metrics::request_done(method, code, started.elapsed());
    result.map(Response::new)
}
