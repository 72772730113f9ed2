//! TLS on the node's three listeners and on its own outgoing connections, from `[tls]`
//! ([`crate::config::TlsConfig`]): what [`super::Node::serve`] wraps accepted connections with
//! ([`tls_incoming`]), what the Raft transport and etcd forwarding dial with
//! ([`NodeTls::peer_dialer`], [`NodeTls::client_dialer`]), and the reloading of certificates
//! while the node runs ([`NodeTls::watch`]).
//!
//! Every configuration lives in a [`Current`]: a handshake takes the configuration current when
//! it starts, so a rotated certificate serves new connections at once and established ones keep
//! theirs (etcd behaves alike). A reload builds every configuration anew first and swaps only if
//! all of them are valid; an invalid file is refused with a log line and the old material stays.

use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;
use std::time::SystemTime;

use futures::stream::FuturesUnordered;
use futures::Stream;
use futures::StreamExt;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;
use crate::error::Error;
use crate::error::Result;
use rskv_client::tls::certified_key;
use rskv_client::tls::client_config;
use rskv_client::tls::provider;
use rskv_client::tls::read_key;
use rskv_client::tls::read_roots;
use rskv_client::tls::Current;
use rskv_client::tls::MaybeTls;
use rskv_client::tls::TlsDialer;
use rskv_storage::log_throttle::LogThrottle;

/// Longest a client may take over its TLS handshake before the connection is dropped; handshakes
/// run concurrently, so a slow one delays nobody else.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are checked for changes (SIGHUP checks at once).
const RELOAD_POLL: Duration = Duration::from_secs(2);

/// The TLS configuration a listener accepts with, replaceable while it serves.
#[derive(Clone, Debug)]
pub struct ServerTls(Current<ServerConfig>);

/// Everything TLS of one node, built from `[tls]`.
#[derive(Clone, Debug, Default)]
pub struct NodeTls {
    /// The client API's acceptor (ALPN h2).
    client: Option<ServerTls>,
    /// `/metrics` and `/health` (ALPN http/1.1), with the client port's certificates.
    metrics: Option<ServerTls>,
    /// The Raft transport's acceptor.
    peer: Option<ServerTls>,
    /// Dials peers with the peer certificate.
    peer_dialer: Option<TlsDialer>,
    /// Dials other members' client ports (`--join`'s member lookup) with the client certificate.
    client_dialer: Option<TlsDialer>,
}

/// One build of every configuration from the files.
struct Material {
    client: Option<(ServerConfig, ServerConfig, rustls::ClientConfig)>,
    peer: Option<(ServerConfig, rustls::ClientConfig)>,
}

/// A server configuration for `cert`/`key`, verifying client certificates against `ca` when
/// given (required when `require_client_cert`, else checked only if one is presented).
fn server_config(
    cert: &Path,
    key: &Path,
    ca: Option<&Path>,
    require_client_cert: bool,
    alpn: &[&[u8]],
) -> std::result::Result<ServerConfig, String> {
    let roots = ca.map(read_roots).transpose()?;
    let certified = certified_key(cert, key, roots.as_deref())?;
    let verifier = match roots {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(roots) => {
            let builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let builder = if require_client_cert {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| format!("{}: {e}", ca.unwrap_or(cert).display()))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certified.cert.clone(), read_key(key)?)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn build(config: &TlsConfig) -> std::result::Result<Material, String> {
    let client = match (&config.cert_file, &config.key_file) {
        (Some(cert), Some(key)) => {
            let ca = config.trusted_ca_file.as_deref();
            let require = config.client_cert_auth;
            // The client port serves gRPC and, as etcd's, HTTP/1.1 (client_port_routes).
            let grpc = server_config(cert, key, ca, require, &[b"h2", b"http/1.1"])?;
            let http = server_config(cert, key, ca, require, &[b"http/1.1"])?;
            let ca = ca.ok_or("tls.trusted_ca_file is needed with tls.cert_file")?;
            let dial = client_config(ca, Some((cert.as_path(), key.as_path())))?;
            Some((grpc, http, dial))
        }
        _ => None,
    };
    let peer = match (
        &config.peer_cert_file,
        &config.peer_key_file,
        &config.peer_trusted_ca_file,
    ) {
        (Some(cert), Some(key), Some(ca)) => {
            let accept =
                server_config(cert, key, Some(ca), config.peer_client_cert_auth, &[b"h2"])?;
            let dial = client_config(ca, Some((cert.as_path(), key.as_path())))?;
            Some((accept, dial))
        }
        _ => None,
    };
    Ok(Material { client, peer })
}

impl NodeTls {
    /// Reads every certificate `config` names.
    ///
    /// # Errors
    /// [`Error::Config`] naming the file that cannot be used (unreadable, not PEM, key and
    /// certificate mismatched, expired).
    pub fn load(config: &TlsConfig) -> Result<NodeTls> {
        let material = build(config).map_err(|why| Error::config(format!("`tls`: {why}")))?;
        let (client, metrics, client_dialer) = match material.client {
            Some((grpc, http, dial)) => (
                Some(ServerTls(Current::new(grpc))),
                Some(ServerTls(Current::new(http))),
                Some(TlsDialer::new(dial)),
            ),
            None => (None, None, None),
        };
        let (peer, peer_dialer) = match material.peer {
            Some((accept, dial)) => (
                Some(ServerTls(Current::new(accept))),
                Some(TlsDialer::new(dial)),
            ),
            None => (None, None),
        };
        Ok(NodeTls {
            client,
            metrics,
            peer,
            peer_dialer,
            client_dialer,
        })
    }

    /// The client API's acceptor; `None`: plaintext.
    pub fn client(&self) -> Option<ServerTls> {
        self.client.clone()
    }

    /// The metrics endpoint's acceptor; `None`: plaintext.
    pub fn metrics(&self) -> Option<ServerTls> {
        self.metrics.clone()
    }

    /// The Raft transport's acceptor; `None`: plaintext.
    pub fn peer(&self) -> Option<ServerTls> {
        self.peer.clone()
    }

    /// How this node dials its peers' Raft ports.
    pub fn peer_dialer(&self) -> Option<TlsDialer> {
        self.peer_dialer.clone()
    }

    /// How this node dials other members' client ports.
    pub fn client_dialer(&self) -> Option<TlsDialer> {
        self.client_dialer.clone()
    }

    /// Re-reads the files and swaps in the new material, all or nothing.
    ///
    /// # Errors
    /// Why the new material was refused (the old stays in use).
    pub fn reload(&self, config: &TlsConfig) -> std::result::Result<(), String> {
        let material = build(config)?;
        if let (Some((grpc, http, dial)), Some(c), Some(m), Some(d)) = (
            material.client,
            &self.client,
            &self.metrics,
            &self.client_dialer,
        ) {
            c.0.set(grpc);
            m.0.set(http);
            d.replace(dial);
        }
        if let (Some((accept, dial)), Some(p), Some(d)) =
            (material.peer, &self.peer, &self.peer_dialer)
        {
            p.0.set(accept);
            d.replace(dial);
        }
        Ok(())
    }

    /// Reloads the certificates whenever one of their files changes (checked every
    /// [`RELOAD_POLL`]) or the process gets SIGHUP, until `stop`.
    pub async fn watch(self, config: TlsConfig, stop: CancellationToken) {
        let files: Vec<PathBuf> = [
            &config.cert_file,
            &config.key_file,
            &config.trusted_ca_file,
            &config.peer_cert_file,
            &config.peer_key_file,
            &config.peer_trusted_ca_file,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        if files.is_empty() {
            return;
        }
        let stamp = || {
            files
                .iter()
                .map(|f| {
                    std::fs::metadata(f)
                        .ok()
                        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
                })
                .collect::<Vec<_>>()
        };
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler: certificates reload on file changes only");
                None
            }
        };
        let mut seen = stamp();
        let mut refused = None;
        loop {
            let signalled = tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(RELOAD_POLL) => false,
                Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            let now = stamp();
            if !signalled && now == seen {
                continue;
            }
            match self.reload(&config) {
                Ok(()) => {
                    tracing::info!(signalled, "TLS certificates reloaded");
                    refused = None;
                }
                // Files are often replaced one by one: say it once per state of the files.
                Err(why) if refused.as_ref() != Some(&now) || signalled => {
                    tracing::error!(%why, signalled, "new TLS certificates refused; the previous ones stay in use");
                    refused = Some(now.clone());
                }
                Err(_) => {}
            }
            seen = now;
        }
    }
}

/// An accepted connection, in TLS or not.
pub type Conn<IO> = MaybeTls<IO, tokio_rustls::server::TlsStream<IO>>;

/// What the acceptor needs of an accepted connection besides reading and writing: where it
/// comes from (for the log line of a refused handshake) and a look at its first byte (to tell a
/// TLS client from a plaintext one).
pub trait Accepted {
    /// The peer's address, if known.
    fn remote(&self) -> Option<std::net::SocketAddr>;

    /// The first byte the client sent, left unread; `None` once the connection is closed.
    fn first_byte(&self) -> impl std::future::Future<Output = Option<u8>> + Send;
}

impl Accepted for tokio::net::TcpStream {
    fn remote(&self) -> Option<std::net::SocketAddr> {
        self.peer_addr().ok()
    }

    async fn first_byte(&self) -> Option<u8> {
        let mut byte = [0u8; 1];
        match self.peek(&mut byte).await {
            Ok(1) => Some(byte[0]),
            _ => None,
        }
    }
}

/// How long a refused handshake's connection stays open for its client to read the alert.
const LINGER: Duration = Duration::from_secs(1);

/// Keeps a refused connection open, discarding what the client sends, until the client closes
/// it or [`LINGER`] passes. Under TLS 1.3 a client learns that its certificate was refused only
/// after it considers the handshake done and has begun writing: closed at once, the connection
/// would be reset under its write, and the client would report a broken pipe instead of the
/// alert (`CertificateRequired`, `UnknownCA`, `CertificateExpired`) that says why.
async fn linger<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO) {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        // The alert rustls wrote may still sit in a gathering buffer (limits::LimitedConnection).
        let _ = io.flush().await;
        while let Ok(n) = io.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// What a plaintext client of a TLS port is told.
const PLAINTEXT_REFUSED: &str =
    "this port serves TLS: connect with TLS (kv_client --cacert CA, etcdctl --cacert CA, https://)";

/// The first byte of a TLS ClientHello record (content type "handshake").
const TLS_HANDSHAKE: u8 = 0x16;

/// Answers a plaintext client of a TLS port in its own protocol, so it can show why it failed:
/// each gRPC call gets FAILED_PRECONDITION with [`PLAINTEXT_REFUSED`] (an HTTP/2 client starts
/// with `PRI`), anything else an HTTP/1.1 400 (curl, a browser). Bounded by `HANDSHAKE_TIMEOUT`.
async fn refuse_plaintext<IO>(io: IO, first: u8)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let answer = async move {
        if first == b'P' {
            let Ok(mut conn) = h2::server::handshake(io).await else {
                return;
            };
            while let Some(Ok((_request, mut respond))) = conn.accept().await {
                let response = http::Response::builder()
                    .status(200)
                    .header("content-type", "application/grpc")
                    .header(
                        "grpc-status",
                        (tonic::Code::FailedPrecondition as i32).to_string(),
                    )
                    .header("grpc-message", PLAINTEXT_REFUSED)
                    .body(());
                if let Ok(response) = response {
                    let _ = respond.send_response(response, true);
                }
            }
        } else {
            let mut io = io;
            let body = format!("rskv: {PLAINTEXT_REFUSED}\n");
            let response = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = io.write_all(response.as_bytes()).await;
            let _ = io.shutdown().await;
        }
    };
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, answer).await;
}

type Handshake<IO> = Pin<
    Box<
        dyn std::future::Future<
                Output = (
                    Option<std::net::SocketAddr>,
                    io::Result<tokio_rustls::server::TlsStream<IO>>,
                ),
            > + Send,
    >,
>;

/// `incoming` as it is (`tls` unset), or each connection after its TLS handshake. Handshakes run
/// concurrently and give up after [`HANDSHAKE_TIMEOUT`]; a failed one (an untrusted or expired
/// certificate, none when one is required) closes that connection with a rate-limited warning
/// naming the address, and never ends the stream. A plaintext client is told, in its own
/// protocol, that the port serves TLS (see [`refuse_plaintext`]).
pub fn tls_incoming<S, IO>(
    incoming: S,
    tls: Option<ServerTls>,
    what: &'static str,
) -> impl Stream<Item = io::Result<Conn<IO>>> + Send
where
    S: Stream<Item = io::Result<IO>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + Accepted + 'static,
{
    static REFUSED: LogThrottle = LogThrottle::every_interval();
    let Some(tls) = tls else {
        return incoming.map(|io| io.map(MaybeTls::Plain)).left_stream();
    };
    let handshakes: FuturesUnordered<Handshake<IO>> = FuturesUnordered::new();
    let state = (Box::pin(incoming), handshakes, tls);
    futures::stream::unfold(state, move |(mut incoming, mut handshakes, tls)| async move {
        loop {
            tokio::select! {
                Some((remote, done)) = handshakes.next(), if !handshakes.is_empty() => match done {
                    Ok(stream) => {
                        return Some((Ok(MaybeTls::Tls(Box::new(stream))), (incoming, handshakes, tls)));
                    }
                    Err(e) => {
                        rskv_storage::warn_throttled!(REFUSED, 0, listener = what, remote = ?remote, error = %e, "TLS handshake refused");
                    }
                },
                next = incoming.next() => match next {
                    None => return None,
                    Some(Err(e)) => return Some((Err(e), (incoming, handshakes, tls))),
                    Some(Ok(io)) => {
                        let remote = io.remote();
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.0.get());
                        handshakes.push(Box::pin(async move {
                            let handshake = async {
                                match io.first_byte().await {
                                    Some(TLS_HANDSHAKE) => match acceptor.accept(io).into_fallible().await {
                                        Ok(stream) => Ok(stream),
                                        Err((e, io)) => {
                                            linger(io).await;
                                            Err(e)
                                        }
                                    },
                                    Some(first) => {
                                        refuse_plaintext(io, first).await;
                                        Err(io::Error::new(io::ErrorKind::InvalidData, "a plaintext client (told to use TLS)"))
                                    }
                                    None => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before the handshake")),
                                }
                            };
                            let done = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                                Ok(done) => done,
                                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "handshake timed out")),
                            };
                            (remote, done)
                        }));
                    }
                },
            }
        }
    })
    .right_stream()
}
