//! etcd's `Cluster` service on rskv's membership.
//!
//! Members map one to one: etcd's member `ID` is the rskv node id, `name` is `node-<id>`,
//! `peerURLs` is `["http://<peer_addr>"]`, `clientURLs` is `["http://<addr>"]` (`https://` for a
//! port serving TLS: etcd's clients dial a member's URL in TLS or not by its scheme), and
//! `isLearner` is true for a non-voter. Changes go through [`MembershipAdmin`], the same checks
//! as rskv's own `Cluster` service; a follower forwards them to the leader.
//!
//! `MemberAdd` gives only peer URLs, while rskv needs an id and a client address too. rskv picks
//! the next free id (etcd a random one) and takes the client address from rskv's port layout: the
//! peer port is the client port + 1, so a peer URL `http://host:P` means client address
//! `host:P-1`. A member added with `isLearner` is etcd's learner: it stays one until
//! `MemberPromote`, whatever its progress. One added as a voter is added as a learner too, and
//! promotes itself: start the node with that id and address and `--join`, it finds itself a
//! member already, catches up and has itself promoted, as every joining rskv node does (rskv
//! never counts a node in a quorum before it holds the log). `MemberUpdate` cannot move a member
//! to another address (rskv records a member's addresses once): it succeeds only when nothing
//! changes.

use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::status_of;
use super::errors::EtcdError;
use super::forward::Routed;
use super::observe;
use super::EtcdContext;
use crate::error::Error;
use crate::node::membership::ChangeError;
use crate::node::membership::MembershipAdmin;
use crate::node::membership::Promotion;
use crate::node::membership::Refusal;
use crate::raft::NodeId;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::cluster_client::ClusterClient;
use rskv_proto::etcd::etcdserverpb::cluster_server::Cluster;
use rskv_proto::kv as pb;

/// Implements `etcdserverpb.Cluster` with the shared etcd context and the node's membership
/// administration.
pub struct EtcdClusterService {
    ctx: EtcdContext,
    admin: MembershipAdmin,
    schemes: Schemes,
}

/// The URL schemes of the members' client and peer ports: `https` where they serve TLS. Every
/// member of a cluster is configured alike, so this node's settings stand for all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schemes {
    /// For `clientURLs`.
    pub client: &'static str,
    /// For `peerURLs`.
    pub peer: &'static str,
}

impl Schemes {
    /// `https` for a port serving TLS, else `http`.
    pub fn of(client_tls: bool, peer_tls: bool) -> Schemes {
        let scheme = |tls| if tls { "https" } else { "http" };
        Schemes {
            client: scheme(client_tls),
            peer: scheme(peer_tls),
        }
    }
}

impl EtcdClusterService {
    /// The service of one node, naming members' URLs with `schemes`.
    pub fn new(ctx: EtcdContext, admin: MembershipAdmin, schemes: Schemes) -> EtcdClusterService {
        EtcdClusterService {
            ctx,
            admin,
            schemes,
        }
    }

    fn members(&self) -> Vec<etcd::Member> {
        let member = |m| etcd_member(m, self.schemes);
        self.admin.members().iter().map(member).collect()
    }
}

/// etcd's view of an rskv member.
pub fn etcd_member(m: &pb::Member, schemes: Schemes) -> etcd::Member {
    etcd::Member {
        id: m.id,
        name: member_name(m.id),
        peer_ur_ls: vec![format!("{}://{}", schemes.peer, m.peer_addr)],
        client_ur_ls: vec![format!("{}://{}", schemes.client, m.addr)],
        is_learner: !m.voter,
    }
}

/// A member's name: rskv nodes have ids, not names.
pub fn member_name(id: NodeId) -> String {
    format!("node-{id}")
}

/// The `host:port` of an etcd member URL: `http://host:port`, `https://host:port` or a bare
/// `host:port` (whether a port serves TLS is its node's configuration, not the URL's).
pub fn url_addr(url: &str) -> Option<String> {
    let url = url.trim();
    let rest = match url.split_once("://") {
        Some(("http" | "https", rest)) => rest,
        Some(_) => return None,
        None => url,
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    if host.is_empty() || rest.contains('/') {
        return None;
    }
    let port: u16 = port.parse().ok()?;
    (port > 0).then(|| format!("{host}:{port}"))
}

/// The client and peer addresses for a member added by peer URL: rskv's layout puts the client
/// port just below the peer port.
pub fn addrs_from_peer_urls(peer_urls: &[String]) -> Result<(String, String), EtcdError> {
    let [url] = peer_urls else {
        return Err(EtcdError::MemberBadUrls);
    };
    let peer = url_addr(url).ok_or(EtcdError::MemberBadUrls)?;
    let (host, port) = peer.rsplit_once(':').ok_or(EtcdError::MemberBadUrls)?;
    let port: u16 = port.parse().map_err(|_| EtcdError::MemberBadUrls)?;
    let client_port = port.checked_sub(1).filter(|p| *p > 0);
    let client_port = client_port.ok_or(EtcdError::MemberBadUrls)?;
    Ok((format!("{host}:{client_port}"), peer))
}

/// etcd's answer for a failed membership change.
pub fn change_status(e: ChangeError) -> Status {
    let etcd = match &e {
        ChangeError::Refused(r) => match r {
            Refusal::NotMember(_) => EtcdError::MemberNotFound,
            Refusal::InvalidId | Refusal::BadAddress(_) => EtcdError::MemberBadUrls,
            Refusal::AlreadyMember { .. } => EtcdError::MemberExist,
            Refusal::AddressInUse { .. } => EtcdError::PeerUrlExist,
            Refusal::LastVoter(_) => EtcdError::MemberNotEnoughStarted,
            Refusal::NothingReplicated(_) | Refusal::Behind { .. } => EtcdError::LearnerNotReady,
            Refusal::LearnerCannotLead(_) | Refusal::NoOtherVoter => EtcdError::BadLeaderTransferee,
        },
        ChangeError::Failed(e) => return status_of(e.clone()),
    };
    tracing::info!(why = %e, answer = etcd.message(), "etcd membership request refused");
    etcd.into()
}

/// Whether a change failed because leadership moved (or was handed over, as the leader removing
/// itself does): then it goes to the new leader.
fn leadership_moved(e: &ChangeError) -> bool {
    matches!(e, ChangeError::Failed(Error::NotLeader { .. }))
}

type Client = ClusterClient<Channel>;

impl EtcdClusterService {
    async fn list(
        &self,
        request: Request<etcd::MemberListRequest>,
    ) -> Result<etcd::MemberListResponse, Status> {
        // A linearizable list is the leader's; a plain one is this member's view, as etcd's.
        if request.get_ref().linearizable {
            let call = |ch, r| async move { Client::new(ch).member_list(r).await };
            if let Routed::Forwarded(resp) = self.ctx.forwarder().to_leader(request, call).await? {
                return Ok(resp);
            }
        }
        let members = self.members();
        if members.is_empty() {
            // A node started to join that has not heard from the cluster yet knows no member,
            // itself included: an empty list would be an answer about no cluster at all.
            return Err(EtcdError::NoLeader.into());
        }
        Ok(etcd::MemberListResponse {
            header: Some(self.ctx.header()),
            members,
        })
    }

    async fn add(
        &self,
        request: Request<etcd::MemberAddRequest>,
    ) -> Result<etcd::MemberAddResponse, Status> {
        let call = |ch, r| async move { Client::new(ch).member_add(r).await };
        let req = match self.ctx.forwarder().to_leader(request, call).await? {
            Routed::Here(req) => req,
            Routed::Forwarded(resp) => return Ok(resp),
        };
        let (addr, peer_addr) = addrs_from_peer_urls(&req.peer_ur_ls).map_err(|e| {
            tracing::info!(urls = ?req.peer_ur_ls, "etcd MemberAdd: expected one http://host:port peer URL with a port above 1");
            Status::from(e)
        })?;
        let id = self.admin.next_free_id();
        let promotion = if req.is_learner {
            Promotion::ByRequest
        } else {
            Promotion::OnceCaughtUp
        };
        self.admin
            .add_learner(id, &addr, &peer_addr, promotion)
            .await
            .map_err(change_status)?;
        tracing::info!(
            id,
            addr,
            peer_addr,
            ?promotion,
            "etcd MemberAdd: added as learner; start it with --join"
        );
        let member = self
            .admin
            .members()
            .iter()
            .find(|m| m.id == id)
            .map(|m| etcd_member(m, self.schemes));
        Ok(etcd::MemberAddResponse {
            header: Some(self.ctx.header()),
            member,
            members: self.members(),
        })
    }

    async fn remove(
        &self,
        request: Request<etcd::MemberRemoveRequest>,
    ) -> Result<etcd::MemberRemoveResponse, Status> {
        let forwarded = super::forward::is_forwarded(&request);
        let caller = crate::node::auth::Caller::of(request.metadata());
        let call = |ch, r| async move { Client::new(ch).member_remove(r).await };
        let req = match self.ctx.forwarder().to_leader(request, call).await? {
            Routed::Here(req) => req,
            Routed::Forwarded(resp) => return Ok(resp),
        };
        match self.admin.remove(req.id).await {
            Ok(_) => Ok(etcd::MemberRemoveResponse {
                header: Some(self.ctx.header()),
                members: self.members(),
            }),
            // The leader removing itself handed leadership over: the new leader removes it.
            Err(e) if leadership_moved(&e) && !forwarded => {
                let ch = self
                    .ctx
                    .forwarder()
                    .leader_channel()?
                    .ok_or_else(|| Status::from(EtcdError::LeaderChanged))?;
                self.ctx
                    .forwarder()
                    .forward(ch, req, caller, |ch, r| async move {
                        Client::new(ch).member_remove(r).await
                    })
                    .await
            }
            Err(e) => Err(change_status(e)),
        }
    }

    async fn update(
        &self,
        request: Request<etcd::MemberUpdateRequest>,
    ) -> Result<etcd::MemberUpdateResponse, Status> {
        let req = request.into_inner();
        let members = self.admin.members();
        let Some(member) = members.iter().find(|m| m.id == req.id) else {
            return Err(EtcdError::MemberNotFound.into());
        };
        let wanted: Vec<Option<String>> = req.peer_ur_ls.iter().map(|u| url_addr(u)).collect();
        if wanted.iter().any(Option::is_none) || wanted.is_empty() {
            return Err(EtcdError::MemberBadUrls.into());
        }
        if wanted != [Some(member.peer_addr.clone())] {
            return Err(Status::failed_precondition(format!(
                "rskv cannot move member {} to another peer address in place; remove it and add it again (it is at {})",
                req.id, member.peer_addr
            )));
        }
        Ok(etcd::MemberUpdateResponse {
            header: Some(self.ctx.header()),
            members: self.members(),
        })
    }

    async fn promote(
        &self,
        request: Request<etcd::MemberPromoteRequest>,
    ) -> Result<etcd::MemberPromoteResponse, Status> {
        let call = |ch, r| async move { Client::new(ch).member_promote(r).await };
        let req = match self.ctx.forwarder().to_leader(request, call).await? {
            Routed::Here(req) => req,
            Routed::Forwarded(resp) => return Ok(resp),
        };
        match self.admin.promote(req.id).await {
            Ok(Some(_)) => Ok(etcd::MemberPromoteResponse {
                header: Some(self.ctx.header()),
                members: self.members(),
            }),
            Ok(None) => Err(EtcdError::MemberNotLearner.into()),
            Err(e) => Err(change_status(e)),
        }
    }
}

#[tonic::async_trait]
impl Cluster for EtcdClusterService {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn member_add(
        &self,
        request: Request<etcd::MemberAddRequest>,
    ) -> Result<Response<etcd::MemberAddResponse>, Status> {
        observe("etcd_member_add", async {
            self.ctx.auth().require_root(request.metadata())?;
            self.add(request).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn member_remove(
        &self,
        request: Request<etcd::MemberRemoveRequest>,
    ) -> Result<Response<etcd::MemberRemoveResponse>, Status> {
        observe("etcd_member_remove", async {
            self.ctx.auth().require_root(request.metadata())?;
            self.remove(request).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn member_update(
        &self,
        request: Request<etcd::MemberUpdateRequest>,
    ) -> Result<Response<etcd::MemberUpdateResponse>, Status> {
        observe("etcd_member_update", async {
            self.ctx.auth().require_root(request.metadata())?;
            self.update(request).await
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn member_list(
        &self,
        request: Request<etcd::MemberListRequest>,
    ) -> Result<Response<etcd::MemberListResponse>, Status> {
        observe("etcd_member_list", self.list(request)).await
    }

    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn member_promote(
        &self,
        request: Request<etcd::MemberPromoteRequest>,
    ) -> Result<Response<etcd::MemberPromoteResponse>, Status> {
        observe("etcd_member_promote", async {
            self.ctx.auth().require_root(request.metadata())?;
            self.promote(request).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_should_give_the_client_address_one_port_below() {
        assert_eq!(
            addrs_from_peer_urls(&["http://127.0.0.1:7412".into()]),
            Ok(("127.0.0.1:7411".into(), "127.0.0.1:7412".into()))
        );
        assert_eq!(
            addrs_from_peer_urls(&["10.0.0.4:2380".into()]),
            Ok(("10.0.0.4:2379".into(), "10.0.0.4:2380".into()))
        );
        assert_eq!(
            addrs_from_peer_urls(&["https://10.0.0.4:2380".into()]),
            Ok(("10.0.0.4:2379".into(), "10.0.0.4:2380".into()))
        );
    }

    #[test]
    fn unusable_peer_urls_should_be_refused_as_etcd_does() {
        for urls in [
            vec![],
            vec!["ftp://127.0.0.1:7412".to_string()],
            vec!["http://127.0.0.1".to_string()],
            vec!["http://127.0.0.1:1".to_string()],
            vec!["http://127.0.0.1:x".to_string()],
            vec!["http://a:2".to_string(), "http://b:2".to_string()],
        ] {
            assert_eq!(
                addrs_from_peer_urls(&urls),
                Err(EtcdError::MemberBadUrls),
                "{urls:?}"
            );
        }
    }

    #[test]
    fn members_should_map_to_etcds_fields() {
        let member = pb::Member {
            id: 4,
            addr: "127.0.0.1:7411".into(),
            peer_addr: "127.0.0.1:7412".into(),
            voter: false,
            matched_index: None,
            promoted_by_request: false,
        };
        let tls = etcd_member(&member, Schemes::of(true, true));
        assert_eq!(tls.client_ur_ls, ["https://127.0.0.1:7411"]);
        assert_eq!(tls.peer_ur_ls, ["https://127.0.0.1:7412"]);
        let m = etcd_member(&member, Schemes::of(false, false));
        assert_eq!(m.id, 4);
        assert_eq!(m.name, "node-4");
        assert_eq!(m.peer_ur_ls, ["http://127.0.0.1:7412"]);
        assert_eq!(m.client_ur_ls, ["http://127.0.0.1:7411"]);
        assert!(m.is_learner);
    }

    #[test]
    fn refusals_should_become_etcds_errors() {
        let s = change_status(Refusal::NotMember(9).into());
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::NotFound, "etcdserver: member not found")
        );
        let s = change_status(Refusal::LastVoter(1).into());
        assert_eq!(
            s.message(),
            "etcdserver: re-configuration failed due to not enough started members"
        );
        let s = change_status(
            Refusal::AddressInUse {
                id: 1,
                addr: "a:1".into(),
                peer_addr: "a:2".into(),
            }
            .into(),
        );
        assert_eq!(s.message(), "etcdserver: Peer URLs already exists");
    }
}
