//! etcd's `Auth` service: enabling auth, users, roles, permissions and `Authenticate`, over the
//! replicated auth store ([`rskv_storage::state_machine::auth`]).
//!
//! Every change is proposed through the log (a follower forwards it to the leader, token
//! included) and answered once applied. Passwords are hashed (bcrypt, `auth.bcrypt_cost`) on the
//! member that proposes, and checked there by `Authenticate`, which then replicates a new simple
//! token so every member accepts it. Reads (`UserGet`, `RoleList`, ...) answer from this
//! member's copy. With auth enabled, everything but `Authenticate` and `AuthStatus` needs the
//! `root` role (see [`crate::node::auth`]).

use std::sync::Arc;

use rand::Rng;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::auth_client::AuthClient;
use rskv_proto::etcd::etcdserverpb::auth_server::Auth;
use rskv_proto::storage as pb;
use rskv_proto::storage::auth_change::Op;
use rskv_storage::state_machine::auth::AuthError;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use super::errors::status_of;
use super::forward::Routed;
use super::observe;
use super::propose;
use super::EtcdContext;
use crate::node::auth::auth_status;
use crate::node::proposer::Proposer;
use crate::node::read_barrier::ReadBarrier;
use crate::raft::Command;

/// etcd's Auth service of one member.
pub struct EtcdAuth {
    ctx: EtcdContext,
    proposer: Arc<Proposer>,
    /// The leader's reads of users, roles and the flag wait on it, as etcd serves them through
    /// Raft: an answer reflects every change committed before the request.
    reads: Arc<ReadBarrier>,
    bcrypt_cost: u32,
}

fn change(op: Op, user: &str, role: &str) -> pb::AuthChange {
    let mut change = pb::AuthChange {
        user: user.to_string(),
        role: role.to_string(),
        ..pb::AuthChange::default()
    };
    change.set_op(op);
    change
}

/// Forwards `$request` to the leader with the Auth client's `$method`, or binds the message
/// here when this member leads.
macro_rules! at_leader {
    ($self:ident, $request:ident, $method:ident) => {
        match $self
            .ctx
            .forwarder()
            .to_leader($request, |ch, r| async move {
                AuthClient::new(ch).$method(r).await
            })
            .await?
        {
            Routed::Here(message) => message,
            Routed::Forwarded(response) => return Ok(response),
        }
    };
}

impl EtcdAuth {
    /// The service of the member `ctx` describes, proposing through `proposer`, reading after
    /// `reads`, hashing new passwords at `bcrypt_cost`.
    pub fn new(
        ctx: EtcdContext,
        proposer: Arc<Proposer>,
        reads: Arc<ReadBarrier>,
        bcrypt_cost: u32,
    ) -> EtcdAuth {
        EtcdAuth {
            ctx,
            proposer,
            reads,
            bcrypt_cost,
        }
    }

    /// Waits until the leader's copy of the auth store holds every change committed before
    /// now (the read barrier), for a read of it.
    async fn fresh(&self) -> Result<(), Status> {
        self.reads.wait().await.map_err(status_of)
    }

    /// Replicates `change`; the header of the revision after it.
    async fn apply(&self, change: pb::AuthChange) -> Result<Option<etcd::ResponseHeader>, Status> {
        let (_, revision) =
            propose(&self.proposer, Command::Auth(change), "an auth change").await?;
        Ok(Some(self.ctx.header_at(revision)))
    }

    /// A bcrypt hash of `password`, or `hashed` when the client hashed it already (etcd 3.5's
    /// clients may), checked to be one.
    async fn hash(&self, password: String, hashed: String) -> Result<String, Status> {
        if !hashed.is_empty() {
            return match hashed.parse::<bcrypt::HashParts>() {
                Ok(_) => Ok(hashed),
                Err(_) => Err(Status::invalid_argument(
                    "etcdserver: hashedPassword is not a bcrypt hash",
                )),
            };
        }
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
            .map_err(|e| Status::internal(format!("password hashing failed: {e}")))
    }

    fn root(&self, request: &Request<impl Sized>) -> Result<(), Status> {
        self.ctx.auth().require_root(request.metadata())
    }
}

#[tonic::async_trait]
impl Auth for EtcdAuth {
    async fn auth_enable(
        &self,
        request: Request<etcd::AuthEnableRequest>,
    ) -> Result<Response<etcd::AuthEnableResponse>, Status> {
        observe("etcd.auth.enable", async {
            self.root(&request)?;
            let _ = at_leader!(self, request, auth_enable);
            let header = self.apply(change(Op::Enable, "", "")).await?;
            Ok(etcd::AuthEnableResponse { header })
        })
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<etcd::AuthDisableRequest>,
    ) -> Result<Response<etcd::AuthDisableResponse>, Status> {
        observe("etcd.auth.disable", async {
            self.root(&request)?;
            let _ = at_leader!(self, request, auth_disable);
            let header = self.apply(change(Op::Disable, "", "")).await?;
            Ok(etcd::AuthDisableResponse { header })
        })
        .await
    }

    async fn auth_status(
        &self,
        request: Request<etcd::AuthStatusRequest>,
    ) -> Result<Response<etcd::AuthStatusResponse>, Status> {
        observe("etcd.auth.status", async {
            at_leader!(self, request, auth_status);
            self.fresh().await?;
            let store = self.ctx.auth().store();
            Ok(etcd::AuthStatusResponse {
                header: Some(self.ctx.header()),
                enabled: store.enabled(),
                auth_revision: store.revision(),
            })
        })
        .await
    }

    async fn authenticate(
        &self,
        request: Request<etcd::AuthenticateRequest>,
    ) -> Result<Response<etcd::AuthenticateResponse>, Status> {
        observe("etcd.auth.authenticate", async {
            if !self.ctx.auth().store().enabled() {
                return Err(auth_status(AuthError::AuthNotEnabled));
            }
            let req = at_leader!(self, request, authenticate);
            let failed = || auth_status(AuthError::AuthFailed);
            let user = self.ctx.auth().store().user(&req.name).ok_or_else(failed)?;
            if user.no_password || user.password_hash.is_empty() {
                return Err(failed());
            }
            let hash = user.password_hash;
            let password = req.password;
            let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
                .await
                .map_err(|e| Status::internal(format!("password check failed: {e}")))?
                .unwrap_or(false);
            if !matches {
                return Err(failed());
            }
            if let Some(jwt) = self.ctx.auth().jwt() {
                // Signed: any member checks it with the key; nothing to replicate.
                let revision = self.ctx.auth().store().revision();
                let token = jwt.sign(&req.name, revision).map_err(Status::internal)?;
                return Ok(etcd::AuthenticateResponse {
                    header: Some(self.ctx.header()),
                    token,
                });
            }
            let token: String = {
                let mut rng = rand::rng();
                (0..24)
                    .map(|_| char::from(rng.random_range(b'a'..=b'z')))
                    .collect()
            };
            let mut issue = change(Op::IssueToken, &req.name, "");
            issue.token = token.clone();
            let header = self.apply(issue).await?;
            Ok(etcd::AuthenticateResponse { header, token })
        })
        .await
    }

    async fn user_add(
        &self,
        request: Request<etcd::AuthUserAddRequest>,
    ) -> Result<Response<etcd::AuthUserAddResponse>, Status> {
        observe("etcd.auth.user_add", async {
            self.root(&request)?;
            if request.get_ref().name.is_empty() {
                return Err(auth_status(AuthError::UserEmpty));
            }
            let req = at_leader!(self, request, user_add);
            let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
            let mut add = change(Op::UserAdd, &req.name, "");
            if no_password {
                add.no_password = true;
            } else {
                add.password_hash = self.hash(req.password, req.hashed_password).await?;
            }
            let header = self.apply(add).await?;
            Ok(etcd::AuthUserAddResponse { header })
        })
        .await
    }

    async fn user_get(
        &self,
        request: Request<etcd::AuthUserGetRequest>,
    ) -> Result<Response<etcd::AuthUserGetResponse>, Status> {
        observe("etcd.auth.user_get", async {
            self.root(&request)?;
            let request = at_leader!(self, request, user_get);
            self.fresh().await?;
            let user = self
                .ctx
                .auth()
                .store()
                .user(&request.name)
                .ok_or_else(|| auth_status(AuthError::UserNotFound))?;
            Ok(etcd::AuthUserGetResponse {
                header: Some(self.ctx.header()),
                roles: user.roles,
            })
        })
        .await
    }

    async fn user_list(
        &self,
        request: Request<etcd::AuthUserListRequest>,
    ) -> Result<Response<etcd::AuthUserListResponse>, Status> {
        observe("etcd.auth.user_list", async {
            self.root(&request)?;
            at_leader!(self, request, user_list);
            self.fresh().await?;
            Ok(etcd::AuthUserListResponse {
                header: Some(self.ctx.header()),
                users: self.ctx.auth().store().user_names(),
            })
        })
        .await
    }

    async fn user_delete(
        &self,
        request: Request<etcd::AuthUserDeleteRequest>,
    ) -> Result<Response<etcd::AuthUserDeleteResponse>, Status> {
        observe("etcd.auth.user_delete", async {
            self.root(&request)?;
            let req = at_leader!(self, request, user_delete);
            let header = self.apply(change(Op::UserDelete, &req.name, "")).await?;
            Ok(etcd::AuthUserDeleteResponse { header })
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<etcd::AuthUserChangePasswordRequest>,
    ) -> Result<Response<etcd::AuthUserChangePasswordResponse>, Status> {
        observe("etcd.auth.user_change_password", async {
            self.root(&request)?;
            let req = at_leader!(self, request, user_change_password);
            if self.ctx.auth().store().user(&req.name).is_none() {
                return Err(auth_status(AuthError::UserNotFound));
            }
            let mut set = change(Op::UserChangePassword, &req.name, "");
            set.password_hash = self.hash(req.password, req.hashed_password).await?;
            let header = self.apply(set).await?;
            Ok(etcd::AuthUserChangePasswordResponse { header })
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<etcd::AuthUserGrantRoleRequest>,
    ) -> Result<Response<etcd::AuthUserGrantRoleResponse>, Status> {
        observe("etcd.auth.user_grant_role", async {
            self.root(&request)?;
            let req = at_leader!(self, request, user_grant_role);
            let header = self
                .apply(change(Op::UserGrantRole, &req.user, &req.role))
                .await?;
            Ok(etcd::AuthUserGrantRoleResponse { header })
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<etcd::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<etcd::AuthUserRevokeRoleResponse>, Status> {
        observe("etcd.auth.user_revoke_role", async {
            self.root(&request)?;
            let req = at_leader!(self, request, user_revoke_role);
            let header = self
                .apply(change(Op::UserRevokeRole, &req.name, &req.role))
                .await?;
            Ok(etcd::AuthUserRevokeRoleResponse { header })
        })
        .await
    }

    async fn role_add(
        &self,
        request: Request<etcd::AuthRoleAddRequest>,
    ) -> Result<Response<etcd::AuthRoleAddResponse>, Status> {
        observe("etcd.auth.role_add", async {
            self.root(&request)?;
            if request.get_ref().name.is_empty() {
                return Err(auth_status(AuthError::RoleEmpty));
            }
            let req = at_leader!(self, request, role_add);
            let header = self.apply(change(Op::RoleAdd, "", &req.name)).await?;
            Ok(etcd::AuthRoleAddResponse { header })
        })
        .await
    }

    async fn role_get(
        &self,
        request: Request<etcd::AuthRoleGetRequest>,
    ) -> Result<Response<etcd::AuthRoleGetResponse>, Status> {
        observe("etcd.auth.role_get", async {
            self.root(&request)?;
            let request = at_leader!(self, request, role_get);
            self.fresh().await?;
            let name = &request.role;
            let perm = match self.ctx.auth().store().role(name) {
                Some(role) => role
                    .permissions
                    .into_iter()
                    .map(rskv_storage::state_machine::auth::to_etcd_permission)
                    .collect(),
                // The root role exists without RoleAdd (etcd's too), and grants everything.
                None if name == rskv_storage::state_machine::auth::ROOT => Vec::new(),
                None => return Err(auth_status(AuthError::RoleNotFound)),
            };
            Ok(etcd::AuthRoleGetResponse {
                header: Some(self.ctx.header()),
                perm,
            })
        })
        .await
    }

    async fn role_list(
        &self,
        request: Request<etcd::AuthRoleListRequest>,
    ) -> Result<Response<etcd::AuthRoleListResponse>, Status> {
        observe("etcd.auth.role_list", async {
            self.root(&request)?;
            at_leader!(self, request, role_list);
            self.fresh().await?;
            Ok(etcd::AuthRoleListResponse {
                header: Some(self.ctx.header()),
                roles: self.ctx.auth().store().role_names(),
            })
        })
        .await
    }

    async fn role_delete(
        &self,
        request: Request<etcd::AuthRoleDeleteRequest>,
    ) -> Result<Response<etcd::AuthRoleDeleteResponse>, Status> {
        observe("etcd.auth.role_delete", async {
            self.root(&request)?;
            let req = at_leader!(self, request, role_delete);
            let header = self.apply(change(Op::RoleDelete, "", &req.role)).await?;
            Ok(etcd::AuthRoleDeleteResponse { header })
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<etcd::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<etcd::AuthRoleGrantPermissionResponse>, Status> {
        observe("etcd.auth.role_grant_permission", async {
            self.root(&request)?;
            let Some(perm) = request.get_ref().perm.clone() else {
                return Err(Status::invalid_argument("etcdserver: permission not given"));
            };
            let req = at_leader!(self, request, role_grant_permission);
            let mut grant = change(Op::RoleGrantPermission, "", &req.name);
            grant.permission = Some(rskv_storage::state_machine::auth::from_etcd_permission(
                perm,
            ));
            let header = self.apply(grant).await?;
            Ok(etcd::AuthRoleGrantPermissionResponse { header })
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<etcd::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<etcd::AuthRoleRevokePermissionResponse>, Status> {
        observe("etcd.auth.role_revoke_permission", async {
            self.root(&request)?;
            let req = at_leader!(self, request, role_revoke_permission);
            let mut revoke = change(Op::RoleRevokePermission, "", &req.role);
            revoke.permission = Some(pb::AuthPermission {
                kind: 0,
                key: req.key,
                range_end: req.range_end,
            });
            let header = self.apply(revoke).await?;
            Ok(etcd::AuthRoleRevokePermissionResponse { header })
        })
        .await
    }
}
