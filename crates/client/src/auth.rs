//! The client side of etcd's authentication, for rskv's own API: a user name and password
//! ([`Credentials`]) exchanged for a simple token through etcd's `Authenticate` (served on the
//! same port), and the token sent as the `token` metadata of every request, as etcd's clients
//! send it ([`TokenInterceptor`]). A token that lapsed is replaced by authenticating again.

use std::sync::Arc;
use std::sync::RwLock;

use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::auth_client::AuthClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::Status;

/// The metadata key the token travels in (etcd's).
pub const TOKEN_METADATA: &str = "token";

/// A channel whose requests carry the client's token, when it has one.
pub type Channel = InterceptedService<tonic::transport::Channel, TokenInterceptor>;

/// Who the client authenticates as.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub user: String,
    /// Its password (never logged, never printed by `Debug`).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `name:password`, as etcdctl's `--user` takes it.
    ///
    /// # Errors
    /// Without a `:`, or with an empty name.
    pub fn parse(text: &str) -> Result<Credentials, String> {
        match text.split_once(':') {
            Some((user, password)) if !user.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err("--user takes name:password".into()),
        }
    }
}

/// The token the client's requests carry; shared by every channel of a client.
#[derive(Clone, Default)]
pub struct TokenInterceptor {
    token: Arc<RwLock<Option<AsciiMetadataValue>>>,
}

impl std::fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenInterceptor")
    }
}

impl TokenInterceptor {
    /// Whether a token is held.
    pub fn has_token(&self) -> bool {
        self.token.read().is_ok_and(|t| t.is_some())
    }

    /// Drops the token (it lapsed): the next call authenticates again.
    pub fn clear(&self) {
        if let Ok(mut t) = self.token.write() {
            *t = None;
        }
    }

    /// Authenticates `credentials` over `channel` and keeps the token.
    ///
    /// # Errors
    /// The server's refusal ("authentication failed", "authentication is not enabled"), or a
    /// transport failure.
    pub async fn authenticate(
        &self,
        channel: Channel,
        credentials: &Credentials,
    ) -> Result<(), Status> {
        let reply = AuthClient::new(channel)
            .authenticate(etcd::AuthenticateRequest {
                name: credentials.user.clone(),
                password: credentials.password.clone(),
            })
            .await?
            .into_inner();
        let token = AsciiMetadataValue::try_from(reply.token)
            .map_err(|_| Status::internal("the server's token is not ASCII"))?;
        if let Ok(mut t) = self.token.write() {
            *t = Some(token);
        }
        Ok(())
    }
}

impl Interceptor for TokenInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Ok(token) = self.token.read() {
            if let Some(token) = token.as_ref() {
                request.metadata_mut().insert(TOKEN_METADATA, token.clone());
            }
        }
        Ok(request)
    }
}
