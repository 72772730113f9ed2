//! Admission of a new member over the peer port (`rskv.raft.v2.Admission`), what
//! `kv_server --join` asks for: add me as a learner, then promote me once I have caught up (unless
//! an operator added me as a learner to be promoted by request, as etcd's `member add --learner`
//! does: then the answer says so and the node stays a learner).
//!
//! It is served beside Raft, where only members and nodes holding a peer certificate of the
//! cluster's peer CA can connect (peer mutual TLS): that certificate is the joining node's
//! credential, as the peer CA already decides who may take part in Raft. So a node joins with
//! etcd's auth enabled too, without a root password, and a node without such a certificate
//! cannot ask at all. Any member answers; a follower forwards to the leader over the same port
//! ([`super::etcd::forward`]), and the changes themselves are [`MembershipAdmin`]'s, the
//! checks every membership API shares.

use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::etcd::forward::Answered;
use super::etcd::forward::Routed;
use super::etcd::EtcdContext;
use super::handle;
use super::membership::MembershipAdmin;
use super::membership::Promotion;
use crate::raft::NodeId;
use rskv_proto::raft as pb;
use rskv_proto::raft::admission_client::AdmissionClient;

impl Answered for pb::AdmitResponse {
    fn answered_by(&mut self, _id: NodeId) {}
}

/// The admission service of one member.
pub struct AdmissionService {
    /// For the way to the leader.
    ctx: EtcdContext,
    admin: MembershipAdmin,
}

impl AdmissionService {
    /// The service of the member `ctx` describes, changing the membership through `admin`.
    pub fn new(ctx: EtcdContext, admin: MembershipAdmin) -> AdmissionService {
        AdmissionService { ctx, admin }
    }
}

#[tonic::async_trait]
impl pb::admission_server::Admission for AdmissionService {
    #[tracing::instrument(skip_all, fields(node_id = self.ctx.member_id()))]
    async fn admit(
        &self,
        request: Request<pb::AdmitRequest>,
    ) -> Result<Response<pb::AdmitResponse>, Status> {
        let routed = self
            .ctx
            .forwarder()
            .to_leader(request, |ch, r| async move {
                AdmissionClient::new(ch).admit(r).await
            })
            .await?;
        let req = match routed {
            Routed::Here(req) => req,
            Routed::Forwarded(response) => return Ok(Response::new(response)),
        };
        handle("admit", None, async {
            if req.promote && self.admin.promoted_only_by_request(req.id) {
                return Ok(pb::AdmitResponse {
                    index: 0,
                    learner_until_promoted: true,
                });
            }
            let index = if req.promote {
                self.admin.promote(req.id).await?
            } else {
                let joining = Promotion::OnceCaughtUp;
                self.admin
                    .add_learner(req.id, &req.addr, &req.peer_addr, joining)
                    .await?
            };
            Ok(pb::AdmitResponse {
                index: index.unwrap_or(0),
                learner_until_promoted: false,
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use rskv_proto::raft as pb;

    /// Nodes of different builds must read each other's admissions: the field numbers are
    /// pinned by these bytes.
    #[test]
    fn the_admission_messages_should_keep_their_encoding() {
        let request = pb::AdmitRequest {
            id: 4,
            addr: "h:1".into(),
            peer_addr: "h:2".into(),
            promote: true,
        };
        let hex = |bytes: Vec<u8>| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(request.encode_to_vec()), "08041203683a311a03683a322001");
        assert_eq!(
            hex(pb::AdmitResponse {
                index: 300,
                learner_until_promoted: false
            }
            .encode_to_vec()),
            "08ac02"
        );
        let stays = pb::AdmitResponse {
            index: 0,
            learner_until_promoted: true,
        };
        assert_eq!(hex(stays.encode_to_vec()), "1001");
        let decoded = pb::AdmitRequest::decode(request.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(decoded, request);
    }
}
