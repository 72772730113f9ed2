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
//! The member that receives a request checks it against its own copy of the store; a request it
//! forwards to the leader carries the token along, and the leader checks it again.

use std::sync::Arc;

use super::jwt::JwtKeys;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::request_op::Request as Op;
use rskv_storage::state_machine::auth::AuthError;
use rskv_storage::state_machine::auth::AuthStore;
use rskv_storage::state_machine::auth::Perm;
use tonic::metadata::AsciiMetadataValue;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// The metadata key etcd's clients send their token in.
pub const TOKEN_METADATA: &str = "token";

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

/// The token a request carries, to forward along with it.
pub fn token_of(metadata: &MetadataMap) -> Option<AsciiMetadataValue> {
    metadata.get(TOKEN_METADATA).cloned()
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
                return jwt
                    .verify(token)
                    .filter(|user| self.store.user(user).is_some());
            }
        }
        self.store.token_user(token)
    }

    /// The user a request comes as: `None` when auth is disabled, `Some("")` without a token.
    ///
    /// # Errors
    /// "invalid auth token" for a token no member issued, or that lapsed.
    pub fn user(&self, metadata: &MetadataMap) -> Result<Option<String>, Status> {
        if !self.store.enabled() {
            return Ok(None);
        }
        let Some(token) = metadata.get(TOKEN_METADATA) else {
            return Ok(Some(String::new()));
        };
        token
            .to_str()
            .ok()
            .and_then(|t| self.token_user(t))
            .map(Some)
            .ok_or_else(|| auth_status(AuthError::InvalidAuthToken))
    }

    /// Whether the request's user may do `perm` on `key`..`range_end` (etcd's conventions).
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check(
        &self,
        metadata: &MetadataMap,
        key: &[u8],
        range_end: &[u8],
        perm: Perm,
    ) -> Result<(), Status> {
        match self.user(metadata)? {
            None => Ok(()),
            Some(user) => self
                .store
                .check(&user, key, range_end, perm)
                .map_err(auth_status),
        }
    }

    /// Whether the request's user may run `txn`: read every key compared and ranged, write every
    /// key put or deleted, in both branches (nested transactions included), as etcd checks.
    ///
    /// # Errors
    /// etcd's auth status.
    pub fn check_txn(&self, metadata: &MetadataMap, txn: &etcd::TxnRequest) -> Result<(), Status> {
        let Some(user) = self.user(metadata)? else {
            return Ok(());
        };
        self.txn_permitted(&user, txn).map_err(auth_status)
    }

    fn txn_permitted(&self, user: &str, txn: &etcd::TxnRequest) -> Result<(), AuthError> {
        for compare in &txn.compare {
            self.store
                .check(user, &compare.key, &compare.range_end, Perm::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => {
                    self.store.check(user, &r.key, &r.range_end, Perm::Read)?
                }
                Some(Op::RequestPut(p)) => self.store.check(user, &p.key, b"", Perm::Write)?,
                Some(Op::RequestDeleteRange(d)) => {
                    self.store.check(user, &d.key, &d.range_end, Perm::Write)?
                }
                Some(Op::RequestTxn(t)) => self.txn_permitted(user, t)?,
                None => {}
            }
        }
        Ok(())
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
