//! TLS material and the client side of TLS: PEM files read into rustls types ([`read_certs`],
//! [`read_key`], [`read_roots`], [`certified_key`]), a configuration that can be swapped while
//! connections use it ([`Current`]), the dialer a channel wraps its TCP connections with
//! ([`TlsDialer`]), and a connection that is TLS or not ([`MaybeTls`]).
//!
//! rustls with the ring provider, chosen explicitly (never the process-wide default), so nothing
//! depends on which other crate installed a provider first. The server's acceptor
//! (`rskv-server`'s `node::tls`) builds on the same readers; its Raft transport dials peers with a
//! [`TlsDialer`] whose configuration it swaps when certificates are rotated.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::RwLock;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::UnixTime;
use rustls::sign::CertifiedKey;
use rustls::ClientConfig;
use rustls::RootCertStore;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tonic::transport::server::Connected;

/// The crypto provider every rskv TLS configuration is built with: ring, which builds with the
/// C compiler RocksDB already needs (aws-lc-rs, rustls' default, wants its own larger C build).
/// rustls deprecates it for lacking post-quantum key exchange; classical ECDHE is what etcd and
/// TiKV negotiate too.
pub fn provider() -> Arc<CryptoProvider> {
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The certificates in a PEM file, in order (a leaf first, then its intermediates).
///
/// # Errors
/// A message naming the file: unreadable, not PEM, or holding no certificate.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
///
/// # Errors
/// A message naming the file: unreadable or holding no private key.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// The trust anchors of a CA bundle.
///
/// # Errors
/// A message naming the file when it holds no usable CA certificate.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A certificate chain and its private key, checked to belong together and, when `roots` is
/// given, to be within their validity period.
///
/// `roots` is the CA bundle of the same listener; a certificate issued by another CA is accepted
/// (a server may be trusted by clients through a CA it does not itself trust), an expired one or
/// one not yet valid is not: a node must not start, or rotate, onto a certificate every peer will
/// refuse.
///
/// # Errors
/// A message naming the files: unreadable, key and certificate mismatched, expired.
pub fn certified_key(
    cert_file: &Path,
    key_file: &Path,
    roots: Option<&RootCertStore>,
) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert_file)?;
    let key = read_key(key_file)?;
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate: {e}",
            cert_file.display(),
            key_file.display()
        )
    })?;
    if let Some(roots) = roots {
        check_validity(&certified.cert, roots)
            .map_err(|why| format!("{}: {why}", cert_file.display()))?;
    }
    Ok(Arc::new(certified))
}

/// Refuses a chain whose leaf is expired or not yet valid. Other verification failures (another
/// issuer, a usage restriction) are left to the peers, who judge with their own trust anchors.
fn check_validity(chain: &[CertificateDer<'static>], roots: &RootCertStore) -> Result<(), String> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err("empty certificate chain".into());
    };
    let leaf =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("bad certificate: {e}"))?;
    let algorithms = provider().signature_verification_algorithms;
    match leaf.verify_for_usage(
        algorithms.all,
        &roots.roots,
        intermediates,
        UnixTime::now(),
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Err(e @ (webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. })) => {
            Err(format!("certificate not valid now: {e:?}"))
        }
        _ => Ok(()),
    }
}

/// A configuration in use by new connections and replaceable at any time; connections already
/// made keep the configuration they were made with (as etcd's certificate reload does).
#[derive(Debug)]
pub struct Current<T>(Arc<RwLock<Arc<T>>>);

impl<T> Clone for Current<T> {
    fn clone(&self) -> Self {
        Current(self.0.clone())
    }
}

impl<T> Current<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Current<T> {
        Current(Arc::new(RwLock::new(Arc::new(value))))
    }

    /// What new connections use now.
    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Makes new connections use `value`.
    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut current) => *current = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

/// A client TLS configuration: who we trust (a CA bundle; there is no system trust store) and,
/// for mutual TLS, who we are.
///
/// # Errors
/// A message naming the file that could not be used.
pub fn client_config(
    trusted_ca_file: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientConfig, String> {
    let roots = read_roots(trusted_ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots.clone());
    let mut config = match identity {
        Some((cert, key)) => {
            let certified = certified_key(cert, key, Some(&roots))?;
            builder
                .with_client_auth_cert(certified.cert.clone(), read_key(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Wraps a channel's TCP connections in TLS: the server's certificate must chain to the
/// configured CA and name the host dialled (a DNS name or an IP address in its SANs).
#[derive(Debug, Clone)]
pub struct TlsDialer {
    config: Current<ClientConfig>,
}

impl TlsDialer {
    /// Dials with `config`.
    pub fn new(config: ClientConfig) -> TlsDialer {
        TlsDialer {
            config: Current::new(config),
        }
    }

    /// Reads the CA bundle and, for mutual TLS, a certificate and key (PEM files, as etcdctl's
    /// `--cacert`, `--cert` and `--key`).
    ///
    /// # Errors
    /// A message naming the file that could not be used.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<TlsDialer, String> {
        Ok(TlsDialer::new(client_config(ca, identity)?))
    }

    /// Makes connections from now on use `config` (a rotated certificate or CA bundle).
    pub fn replace(&self, config: ClientConfig) {
        self.config.set(config);
    }

    /// Runs the TLS handshake over `stream` for `host`.
    ///
    /// # Errors
    /// An invalid host name, or the handshake failing (an untrusted or expired certificate, a
    /// plaintext server).
    pub async fn handshake<IO>(
        &self,
        host: &str,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        self.connect(host, stream, self.config.get()).await
    }

    /// The handshake for a gRPC channel: as [`TlsDialer::handshake`], and when this client
    /// presents a certificate under TLS 1.3, a wait (at most [`ACCEPTANCE_WAIT`]) for the
    /// server's verdict on it. TLS 1.3 servers judge a client's certificate after the client's
    /// side of the handshake is done, so a refusal would otherwise surface as a request's
    /// "connection closed". The server answers an accepted client with session tickets (rustls
    /// and Go send them at once) and a refused one with an alert: the connection fails then with
    /// the alert (`CertificateRequired`, `UnknownCA`, `CertificateExpired`). Application data
    /// arriving meanwhile is handed on unread.
    ///
    /// # Errors
    /// As [`TlsDialer::handshake`], and the server's refusal of this client's certificate.
    pub async fn handshake_accepted<IO>(
        &self,
        host: &str,
        stream: IO,
    ) -> std::io::Result<Prefixed<tokio_rustls::client::TlsStream<IO>>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let config = self.config.get();
        let presents = config.client_auth_cert_resolver.has_certs();
        let mut tls = self.connect(host, stream, config).await?;
        let tls13 = tls.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
        if !presents || !tls13 {
            return Ok(Prefixed::new(tls, Vec::new()));
        }
        let mut first = vec![0u8; 4096];
        let verdict = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut first);
            match Pin::new(&mut tls).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(buf.filled().len())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                // Tickets are handshake messages: read and kept by rustls, no application data.
                Poll::Pending if tls.get_ref().1.tls13_tickets_received() > 0 => {
                    Poll::Ready(Ok(usize::MAX))
                }
                Poll::Pending => Poll::Pending,
            }
        });
        match tokio::time::timeout(ACCEPTANCE_WAIT, verdict).await {
            Ok(Ok(usize::MAX)) | Err(_) => Ok(Prefixed::new(tls, Vec::new())),
            Ok(Ok(0)) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection after the TLS handshake (client certificate refused?)",
            )),
            Ok(Ok(n)) => {
                first.truncate(n);
                Ok(Prefixed::new(tls, first))
            }
            Ok(Err(e)) => Err(io::Error::new(
                e.kind(),
                format!("the server refused this client's certificate: {e}"),
            )),
        }
    }

    /// As [`TlsDialer::handshake`], offering application protocol `alpn` instead of HTTP/2
    /// (`b"http/1.1"` for a node's `/metrics` and `/health`).
    ///
    /// # Errors
    /// As [`TlsDialer::handshake`].
    pub async fn handshake_for<IO>(
        &self,
        host: &str,
        stream: IO,
        alpn: &[u8],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let mut config = (*self.config.get()).clone();
        config.alpn_protocols = vec![alpn.to_vec()];
        self.connect(host, stream, Arc::new(config)).await
    }

    async fn connect<IO>(
        &self,
        host: &str,
        stream: IO,
        config: Arc<ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{host}: not a TLS server name: {e}"),
            )
        })?;
        let connector = tokio_rustls::TlsConnector::from(config);
        connector
            .connect(name, stream)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))
    }
}

/// Longest [`TlsDialer::handshake_accepted`] waits for the server's first bytes.
pub const ACCEPTANCE_WAIT: Duration = Duration::from_secs(2);

/// A stream whose first bytes were read already: they are read again first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` to be read before it.
    pub fn new(inner: S, prefix: Vec<u8>) -> Prefixed<S> {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }

    /// The stream beneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection in TLS or not, either side: a channel's (`transport::Stream`) or one a node
/// accepted (`rskv-server`'s `node::tls`, which is why the server's connection info is
/// implemented here).
pub enum MaybeTls<P, T> {
    /// Plaintext.
    Plain(P),
    /// After a completed handshake (boxed: a TLS session is much larger than a socket).
    Tls(Box<T>),
}

impl<P, T> std::fmt::Debug for MaybeTls<P, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MaybeTls::Plain(_) => "MaybeTls::Plain",
            MaybeTls::Tls(_) => "MaybeTls::Tls",
        })
    }
}

/// What a server knows of a connection it accepted, handed to every request on it (tonic puts
/// it in the request's extensions): the transport's own information and, over TLS, the
/// certificate the client presented, which the handshake verified. etcd's `client-cert-auth`
/// takes the user name from that certificate.
#[derive(Clone, Debug)]
pub struct ConnInfo<I> {
    /// The transport's information (addresses).
    pub transport: I,
    /// The client's verified certificate, if it presented one.
    pub client_certificate: Option<Arc<ClientCertificate>>,
}

/// A client's verified end-entity certificate, with the name a server read from it, read once
/// per connection rather than once per request.
#[derive(Debug)]
pub struct ClientCertificate {
    der: CertificateDer<'static>,
    name: std::sync::OnceLock<Option<String>>,
}

impl ClientCertificate {
    /// The certificate, DER-encoded.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The name `read` finds in the certificate, read at the first call only.
    pub fn name(&self, read: impl FnOnce(&[u8]) -> Option<String>) -> Option<&str> {
        self.name.get_or_init(|| read(&self.der)).as_deref()
    }
}

/// The common name (CN) in the subject of certificate `der`, as etcd reads a client's user name
/// from it (Go's `Subject.CommonName`: the last CN when there are several). `None` for a
/// certificate that does not parse, or without a CN in UTF8String, PrintableString or
/// IA5String.
pub fn common_name(der: &[u8]) -> Option<String> {
    let der = CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    // Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY } (webpki strips the outer
    // SEQUENCE).
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let mut name = None;
    let mut rdns = cert.subject();
    while !rdns.is_empty() {
        let (SET, set, rest) = der_next(rdns)? else {
            return None;
        };
        rdns = rest;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (SEQUENCE, attribute, rest) = der_next(attributes)? else {
                return None;
            };
            attributes = rest;
            let (OID, oid, value) = der_next(attribute)? else {
                return None;
            };
            if oid != COMMON_NAME {
                continue;
            }
            name = match der_next(value)? {
                // UTF8String; PrintableString and IA5String are ASCII.
                (0x0c | 0x13 | 0x16, text, _) => Some(String::from_utf8(text.to_vec()).ok()?),
                _ => None,
            };
        }
    }
    name
}

/// One DER element at the start of `der`: its tag, its contents and what follows it.
fn der_next(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let len = bytes.iter().fold(0usize, |n, b| (n << 8) | usize::from(*b));
        (len, rest)
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

impl<IO: Connected> Connected for MaybeTls<IO, tokio_rustls::server::TlsStream<IO>> {
    type ConnectInfo = ConnInfo<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            MaybeTls::Plain(io) => ConnInfo {
                transport: io.connect_info(),
                client_certificate: None,
            },
            MaybeTls::Tls(tls) => {
                let (io, session) = tls.get_ref();
                ConnInfo {
                    transport: io.connect_info(),
                    client_certificate: session.peer_certificates().and_then(<[_]>::first).map(
                        |der| {
                            Arc::new(ClientCertificate {
                                der: der.clone().into_owned(),
                                name: std::sync::OnceLock::new(),
                            })
                        },
                    ),
                }
            }
        }
    }
}

macro_rules! each_side {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTls::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            MaybeTls::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl<P, T> AsyncRead for MaybeTls<P, T>
where
    P: AsyncRead + Unpin,
    T: AsyncRead + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each_side!(self, s => s.poll_read(cx, buf))
    }
}

impl<P, T> AsyncWrite for MaybeTls<P, T>
where
    P: AsyncWrite + Unpin,
    T: AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each_side!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each_side!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(s) => s.is_write_vectored(),
            MaybeTls::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_side!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each_side!(self, s => s.poll_shutdown(cx))
    }
}

/// The TLS and auth flags of rskv's command-line tools, named as etcdctl's except `--cert-key`
/// (etcdctl's `--key`, which names the data key in `kv_client`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// Trust servers whose certificates chain to this CA bundle (PEM); turns TLS on.
    #[arg(long, global = true, env = "RSKV_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// This client's certificate (PEM), for servers that require one.
    #[arg(long, global = true, env = "RSKV_CERT", requires = "cert_key")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key of `--cert` (PEM).
    #[arg(long, global = true, env = "RSKV_CERT_KEY", requires = "cert")]
    pub cert_key: Option<std::path::PathBuf>,
    /// Authenticate as this user (`name:password`, as etcdctl's `--user`) where the cluster has
    /// etcd's auth enabled.
    #[arg(long, global = true, env = "RSKV_USER")]
    pub user: Option<String>,
}

impl SecurityArgs {
    /// The TLS dialer and the credentials these flags ask for.
    ///
    /// # Errors
    /// As [`SecurityArgs::dialer`], or a `--user` that is not `name:password`.
    pub fn connection(
        &self,
    ) -> Result<(Option<TlsDialer>, Option<crate::auth::Credentials>), String> {
        let credentials = self
            .user
            .as_deref()
            .map(crate::auth::Credentials::parse)
            .transpose()?;
        Ok((self.dialer()?, credentials))
    }

    /// The dialer these flags ask for; `None`: plaintext.
    ///
    /// # Errors
    /// A file that cannot be used, or `--cert` without `--cacert`.
    pub fn dialer(&self) -> Result<Option<TlsDialer>, String> {
        let identity = self.cert.as_deref().zip(self.cert_key.as_deref());
        match &self.cacert {
            Some(ca) => TlsDialer::from_files(ca, identity).map(Some),
            None if identity.is_some() => {
                Err("--cert needs --cacert, the CA that signs the servers' certificates".into())
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::common_name;

    fn certificate(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            params.distinguished_name.push(kind.clone(), *value);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("certificate")
            .der()
            .to_vec()
    }

    #[test]
    fn the_common_name_is_read_from_the_subject() {
        use rcgen::DnType;
        let cert = certificate(&[
            (DnType::OrganizationName, "rskv"),
            (DnType::CommonName, "alice"),
            (DnType::CountryName, "NZ"),
        ]);
        assert_eq!(common_name(&cert).as_deref(), Some("alice"));
        let cert = certificate(&[(DnType::CommonName, "Zoë")]);
        assert_eq!(common_name(&cert).as_deref(), Some("Zoë"));
        let cert = certificate(&[(DnType::OrganizationName, "rskv")]);
        assert_eq!(common_name(&cert), None, "no common name");
    }

    #[test]
    fn what_is_not_a_certificate_names_nobody() {
        let cert = certificate(&[(rcgen::DnType::CommonName, "alice")]);
        for cut in [0, 1, 10, cert.len() / 2, cert.len() - 1] {
            assert_eq!(common_name(&cert[..cut]), None, "cut at {cut}");
        }
        assert_eq!(common_name(b"not a certificate"), None);
    }
}
