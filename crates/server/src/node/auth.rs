//! Who a request comes from and whether it may do what it asks: etcd's authentication and
//! authorization over the replicated auth store ([`rskv_storage::state_machine::auth`]), for
//! every request of both APIs.
//!
//! A client authenticates with etcd's `Authenticate` (user name and password) and sends the
//! simple token it got as the `token` metadata of every later request, as etcd's clients do.
//! With auth disabled nothing is checked. With it enabled, a request without a token is refused
//! "user name is empty", one with a token no member issued (or that lapsed) "invalid auth
//! token", and one whose user's roles do not grant what it needs "permission denied" — etcd's
//! codes and messages. Administration (members, compaction, defragmentation, snapshots, users
//! and roles) needs the `root` role.
//!
//! A request without a token comes as the user its client certificate names (the subject's common
//! name), when the client port requires certificates (`tls.client_cert_auth`), as etcd's
//! `client-cert-auth`: [`CertUsers`], a layer of the client server, reads the name once per
//! connection and hands it to the checks as the [`USER_METADATA`] of each request, removing any a
//! client sent itself.
//!
//! The member that receives a request checks it against its own copy of the store; a request it
//! forwards to the leader (over the peer port, which only members reach) carries the token and
//! the certificate's user along ([`Caller`]), and the leader checks it again.

use std::sync::Arc;

use super::jwt::JwtKeys;
use crate::raft::Command;
use rskv_client::tls::common_name;
use rskv_client::tls::ConnInfo;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_storage::state_machine::auth::AuthError;
use rskv_storage::state_machine::auth::AuthStore;
use rskv_storage::state_machine::auth::Perm;
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::BinaryMetadataValue;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpConnectInfo;
use tonic::Status;

/// The metadata key etcd's clients send their token in.
pub const TOKEN_METADATA: &str = "token";

/// The metadata key of the user a request without a token comes as: the common name of the
/// client's certificate, set by [`CertUsers`] on the client port (which removes any a client
/// sent) and carried by a forwarded request to the leader's peer port. Binary: a name may be
/// any UTF-8.
pub const USER_METADATA: &str = "rskv-user-bin";

/// etcd's status for an auth refusal.
pub fn auth_status(e: AuthError) -> Status {
    use tonic::Code;
    let code = match e {
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::AuthFailed
        | AuthError::UnknownChange => Code::InvalidArgument,
        AuthError::PermissionDenied => Code::PermissionDenied,
        AuthError::InvalidAuthToken => Code::Unauthenticated,
        AuthError::RootUserNotExist
        | AuthError::RootRoleNotExist
        | AuthError::UserAlreadyExist
        | AuthError::UserNotFound
        | AuthError::RoleAlreadyExist
        | AuthError::RoleNotFound
        | AuthError::RoleNotGranted
        | AuthError::PermissionNotGranted
        | AuthError::AuthNotEnabled
        | AuthError::InvalidAuthMgmt => Code::FailedPrecondition,
    };
    Status::new(code, format!("etcdserver: {e}"))
}

/// rskv's own error for an auth refusal (the native API's statuses carry a reason).
pub fn denied(status: Status) -> crate::error::Error {
    crate::error::Error::Denied {
        code: status.code(),
        message: status.message().to_string(),
    }
}

/// Who a request comes as, to send along with it when it is forwarded: its token and the user
/// its client certificate names.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    token: Option<AsciiMetadataValue>,
    user: Option<BinaryMetadataValue>,
}

impl Caller {
    /// The caller of a request with `metadata`.
    pub fn of(metadata: &MetadataMap) -> Caller {
        Caller {
            token: metadata.get(TOKEN_METADATA).cloned(),
            user: metadata.get_bin(USER_METADATA).cloned(),
        }
    }

    /// Puts the caller into `metadata` (of the forwarded request).
    pub fn attach(self, metadata: &mut MetadataMap) {
        if let Some(token) = self.token {
            metadata.insert(TOKEN_METADATA, token);
        }
        if let Some(user) = self.user {
            metadata.insert_bin(USER_METADATA, user);
        }
    }
}

/// Who a checked write comes as, for the log: with auth enabled, the user and the auth revision
/// its check saw, so that apply checks it again if users or roles changed in between
/// ([`Command::Authorized`]); nothing with auth disabled.
#[derive(Debug, Clone, Default)]
pub struct Grant(Option<(String, u64)>);

impl Grant {
    /// Names this grant's user in `metadata`, for a request the member makes itself on behalf
    /// of the client it checked (etcd's Lock and Election recipes): the user is taken as it
    /// is, on this member and on the leader it may be forwarded to, as a certificate's is.
    pub fn attach(&self, metadata: &mut MetadataMap) {
        if let Some((user, _)) = &self.0 {
            metadata.insert_bin(
                USER_METADATA,
                BinaryMetadataValue::from_bytes(user.as_bytes()),
            );
        }
    }

    /// `command` as the write of this grant's user.
    pub fn wrap(self, command: Command) -> Command {
        match self.0 {
            None => command,
            Some((user, revision)) => Command::Authorized {
                user,
                revision,
                command: Box::new(command),
            },
        }
    }
}

/// Checks requests against this member's auth store.
#[derive(Clone, Debug)]
pub struct Authorizer {
    store: Arc<AuthStore>,
    /// Signed tokens (`auth.token = "jwt,..."`); `None`: simple tokens.
    jwt: Option<Arc<JwtKeys>>,
}

impl Authorizer {
    /// Checks against `store`, reading signed tokens with `jwt` when set.
    pub fn new(store: Arc<AuthStore>, jwt: Option<Arc<JwtKeys>>) -> Authorizer {
        Authorizer { store, jwt }
    }

    /// The store (for the Auth service's reads).
    pub fn store(&self) -> &AuthStore {
        &self.store
    }

    /// The signing keys when tokens are signed.
    pub fn jwt(&self) -> Option<&JwtKeys> {
        self.jwt.as_deref()
    }

    /// The user a token names: a signed token of this cluster's key, naming a user that
    /// exists, or a simple token some member issued.
    fn token_user(&self, token: &str) -> Option<String> {
        if let Some(jwt) = &self.jwt {
            if token.contains('.') {
                return jwt.verify(token).filter(|user| self.store.has_user(user));
            }
        }
        self.store.token_user(token)
    }

    /// The user a request comes as: `None` when auth is disabled; else its token's user, or
    /// without a token its certificate's ([`USER_METADATA`]), or `Some("")` (no user).
    ///
    /// # Errors
    /// "invalid auth token" for a token no member issued, or that lapsed.
    pub fn user(&self, metadata: &MetadataMap) -> Result<Option<String>, Status> {
        if !self.store.enabled() {
            return Ok(None);
        }
        if let Some(token) = metadata.get(TOKEN_METADATA) {
            return token
                .to_str()
                .ok()
                .and_then(|t| self.token_user(t))
                .map(Some)
                .ok_or_else(|| auth_status(AuthError::InvalidAuthToken));
        }
        let certified = metadata
            .get_bin(USER_METADATA)
            .and_then(|user| user.to_bytes().ok())
            .and_then(|user| String::from_utf8(user.to_vec()).ok());
        Ok(Some(certified.unwrap_or_default()))
    }

    /// Whether the request's user may do `perm` on `key`..`range_end` (etcd's conventions);
    /// answers the [`Grant`] a write proposed on the strength of it carries into the log.
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        key: &[u8],
        range_end: &[u8],
        perm: Perm,
    ) -> Result<Grant, Status> {
        let Some(user) = self.user(metadata)? else {
            return Ok(Grant::default());
        };
        let revision = self
            .store
            .check(&user, key, range_end, perm)
            .map_err(auth_status)?;
        Ok(Grant(Some((user, revision))))
    }

    /// Whether the request's user may run `txn`: read every key compared and ranged, write every
    /// key put or deleted, in both branches (nested transactions included), as etcd checks;
    /// answers the [`Grant`] the transaction carries into the log.
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check_txn(
        &self,
        metadata: &MetadataMap,
        txn: &etcd::TxnRequest,
    ) -> Result<Grant, Status> {
        let Some(user) = self.user(metadata)? else {
            return Ok(Grant::default());
        };
        let revision = self.store.check_txn(&user, txn).map_err(auth_status)?;
        Ok(Grant(Some((user, revision))))
    }

    /// Whether the request's user has the `root` role (always, with auth disabled).
    ///
    /// # Errors
    /// "user name is empty" without a token, "permission denied" for another user.
    pub fn require_root(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.user(metadata)? {
            None => Ok(()),
            Some(user) if user.is_empty() => Err(auth_status(AuthError::UserEmpty)),
            Some(user) if self.store.is_root(&user) => Ok(()),
            Some(_) => Err(auth_status(AuthError::PermissionDenied)),
        }
    }

    /// Whether the request comes from an authenticated user (any, with auth disabled): what
    /// etcd asks of lease requests that name no key.
    ///
    /// # Errors
    /// "user name is empty" without a token, "invalid auth token".
    pub fn require_user(&self, metadata: &MetadataMap) -> Result<(), Status> {
        match self.user(metadata)? {
            Some(user) if user.is_empty() => Err(auth_status(AuthError::UserEmpty)),
            _ => Ok(()),
        }
    }
}

/// A layer of the client server: removes any [`USER_METADATA`] a client sent, and, when the port
/// requires client certificates (`tls.client_cert_auth`) and auth is enabled, sets it on a
/// request without a token to the common name of the connection's certificate (read once per
/// connection), as etcd's `client-cert-auth` does.
#[derive(Clone)]
pub struct CertUsers {
    auth: Authorizer,
    /// `tls.client_cert_auth`.
    from_certificates: bool,
}

impl CertUsers {
    /// Names users from certificates when `from_certificates`, checking `auth` is enabled.
    pub fn new(auth: Authorizer, from_certificates: bool) -> CertUsers {
        CertUsers {
            auth,
            from_certificates,
        }
    }
}

impl<S> tower::Layer<S> for CertUsers {
    type Service = CertUsersService<S>;

    fn layer(&self, inner: S) -> CertUsersService<S> {
        CertUsersService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`CertUsers`] wraps.
#[derive(Clone)]
pub struct CertUsersService<S> {
    inner: S,
    layer: CertUsers,
}

impl<S, B> tower::Service<http::Request<B>> for CertUsersService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        request.headers_mut().remove(USER_METADATA);
        if self.layer.from_certificates
            && !request.headers().contains_key(TOKEN_METADATA)
            && self.layer.auth.store.enabled()
        {
            let name = request
                .extensions()
                .get::<ConnInfo<TcpConnectInfo>>()
                .and_then(|info| info.client_certificate.as_ref())
                .and_then(|cert| cert.name(common_name))
                .map(|name| BinaryMetadataValue::from_bytes(name.as_bytes()));
            if let Some(name) = name {
                let mut metadata = MetadataMap::from_headers(std::mem::take(request.headers_mut()));
                metadata.insert_bin(USER_METADATA, name);
                *request.headers_mut() = metadata.into_headers();
            }
        }
        self.inner.call(request)
    }
}
