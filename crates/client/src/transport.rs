//! How the client (and the server's Raft transport, which builds on this) reaches a node: the
//! address rules ([`endpoint_uri`], [`check_scheme`]), lazily connected tonic channels with
//! HTTP/2 keep-alive ([`lazy_channel`], [`channel`]), and our own connector: TCP whose writes
//! are gathered per HTTP/2 flush, in TLS when the channel has a [`TlsDialer`], and whose
//! failures are a type ([`ConnectError`]) a caller can find in an error's source chain: a request
//! whose connection was never made never left this process.

use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tonic::transport::Channel;
use tonic::transport::Endpoint;
use tonic::transport::Uri;

use crate::gathered::Gathered;
use crate::tls::MaybeTls;
use crate::tls::Prefixed;
use crate::tls::TlsDialer;

/// The URI a node address (`host:port`, or a full `http://` or `https://` URI) is dialled at.
///
/// The URI keeps the `http` scheme whatever the address said: whether a connection speaks TLS is
/// decided by the channel's [`TlsDialer`], not by hyper (see [`check_scheme`] for the agreement
/// of the two).
///
/// # Errors
/// A message naming the problem: a scheme other than `http` or `https`, or not a valid URI
/// authority.
pub fn endpoint_uri(addr: &str) -> Result<Uri, String> {
    let uri = match addr.split_once("://") {
        None => format!("http://{addr}"),
        Some(("http" | "https", rest)) => format!("http://{rest}"),
        Some((scheme, _)) => return Err(format!("unknown scheme {scheme}://; use host:port")),
    };
    let uri: Uri = uri.parse().map_err(|e| format!("not host:port ({e})"))?;
    match (uri.host(), uri.port_u16()) {
        (Some(host), Some(_)) if !host.is_empty() => Ok(uri),
        _ => Err("expected host:port".into()),
    }
}

/// Checks an address that goes into a membership record (a node's client or peer address): a
/// bare `host:port` (an `http://` prefix is tolerated). Whether a member speaks TLS is the
/// cluster's `[tls]` setting, which every member dials with, so an `https://` prefix is refused
/// rather than recorded for some members and not others.
///
/// # Errors
/// A message naming the problem.
pub fn member_address(addr: &str) -> Result<Uri, String> {
    if addr.starts_with("https://") {
        return Err(
            "a member address is host:port: TLS is the nodes' [tls] setting, not a scheme".into(),
        );
    }
    endpoint_uri(addr)
}

/// Refuses an address whose scheme contradicts the TLS settings: `https://` without TLS settings
/// (it would be spoken as plaintext to a port that expects TLS), `http://` with them. A bare
/// `host:port` follows the settings.
///
/// # Errors
/// A message saying which setting is missing.
pub fn check_scheme(addr: &str, tls: bool) -> Result<(), String> {
    match (addr.split_once("://").map(|(scheme, _)| scheme), tls) {
        (Some("https"), false) => {
            Err("https:// needs TLS settings: a CA bundle to trust (kv_client --cacert)".into())
        }
        (Some("http"), true) => {
            Err("http:// is plaintext, but TLS is configured: use https:// or host:port".into())
        }
        _ => Ok(()),
    }
}

/// Builds a lazily-connecting client channel to `addr` (see [`endpoint_uri`]).
///
/// Its connections are made by [`connect`]: their writes are [`Gathered`], and on a runtime with
/// one worker (the load generator's) they also yield before writing, so a request's HEADERS and
/// body leave together. A connection that has read nothing for 10 s is PINGed, and dropped if the
/// PING is not answered within 20 s (the server's Raft transport uses [`channel`] with much
/// shorter times).
///
/// # Errors
/// When [`endpoint_uri`] refuses `addr`.
pub fn lazy_channel(
    addr: &str,
    connect_timeout: Duration,
    tls: Option<TlsDialer>,
) -> Result<Channel, String> {
    channel(
        addr,
        connect_timeout,
        (Duration::from_secs(10), Duration::from_secs(20)),
        Dial {
            source_ip: None,
            tls,
        },
    )
}

/// How a channel's connections are made beyond the address: from which source IP, and whether
/// in TLS.
#[derive(Debug, Clone, Default)]
pub struct Dial {
    /// Source IP of the connections; unset lets the kernel choose.
    pub source_ip: Option<IpAddr>,
    /// TLS over the connections; unset: plaintext.
    pub tls: Option<TlsDialer>,
}

/// A lazily-connecting channel whose connections are PINGed once nothing was read from them for
/// `ping.0` (idle or not) and dropped when a PING is not answered within `ping.1`.
///
/// # Errors
/// When [`endpoint_uri`] or [`check_scheme`] refuses `addr`.
pub fn channel(
    addr: &str,
    connect_timeout: Duration,
    ping: (Duration, Duration),
    dial: Dial,
) -> Result<Channel, String> {
    check_scheme(addr, dial.tls.is_some())?;
    Ok(Endpoint::from(endpoint_uri(addr)?)
        .connect_timeout(connect_timeout)
        .http2_keep_alive_interval(ping.0)
        .keep_alive_timeout(ping.1)
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            connect(uri, dial.clone())
        })))
}

/// Why a channel's TCP connection could not be made: the request that needed it never left this
/// process. The client finds this type in a failed request's source chain and may then retry
/// even a write.
#[derive(Debug, thiserror::Error)]
#[error("tcp connect error to {addr}: {source}")]
pub struct ConnectError {
    /// The `host:port` dialled.
    addr: String,
    /// What the connect (or the name lookup) failed with.
    #[source]
    source: io::Error,
}

/// A channel's connection: plaintext, or TLS over the same gathered TCP stream.
pub type Stream =
    MaybeTls<Gathered<TcpStream>, Prefixed<tokio_rustls::client::TlsStream<Gathered<TcpStream>>>>;

/// Opens a channel's connection: TCP to each address `uri`'s host resolves to in turn, from
/// `dial.source_ip` when set, with Nagle's algorithm off (small requests must not wait for
/// ACKs), then the TLS handshake when `dial.tls` is set. A failed handshake is a
/// [`ConnectError`] too: no request was sent.
async fn connect(uri: Uri, dial: Dial) -> Result<TokioIo<Stream>, ConnectError> {
    let source_ip = dial.source_ip;
    let failed = |source: io::Error| ConnectError {
        addr: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
        source,
    };
    let host = uri
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| failed(io::Error::new(io::ErrorKind::InvalidInput, "no host")))?;
    let port = uri.port_u16().unwrap_or(80);
    let mut last_error = None;
    for addr in tokio::net::lookup_host((host, port))
        .await
        .map_err(failed)?
    {
        let attempt = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(ip) = source_ip {
                socket.bind(SocketAddr::new(ip, 0))?;
            }
            let stream = socket.connect(addr).await?;
            stream.set_nodelay(true)?;
            Ok::<_, io::Error>(stream)
        };
        match attempt.await {
            Ok(stream) => {
                // Yielding before a write is cheap only where no idle worker gets woken.
                let one_worker = tokio::runtime::Handle::try_current()
                    .is_ok_and(|rt| rt.metrics().num_workers() == 1);
                let stream = if one_worker {
                    Gathered::yielding(stream)
                } else {
                    Gathered::new(stream)
                };
                let stream = match &dial.tls {
                    None => Stream::Plain(stream),
                    Some(tls) => Stream::Tls(Box::new(
                        tls.handshake_accepted(host, stream).await.map_err(failed)?,
                    )),
                };
                return Ok(TokioIo::new(stream));
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(failed(last_error.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        )
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_should_be_plain_host_port_or_http_uris() {
        for ok in [
            "127.0.0.1:7379",
            "http://127.0.0.1:7379",
            "https://127.0.0.1:7379",
            "localhost:1",
            "[::1]:7379",
        ] {
            let uri = endpoint_uri(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(uri.scheme_str(), Some("http"), "{ok}");
        }
        for (bad, why) in [
            ("grpc://127.0.0.1:7379", "unknown scheme grpc://"),
            ("127.0.0.1", "host:port"),
            ("http://", "host:port"),
            ("not an address:7379", "not host:port"),
        ] {
            let refused = endpoint_uri(bad).expect_err(bad);
            assert!(refused.contains(why), "{bad}: {refused}");
        }
    }

    #[test]
    fn a_client_should_refuse_a_tls_endpoint_without_tls_settings_when_built() {
        let refused = crate::Client::new(["127.0.0.1:7379", "https://127.0.0.1:7380"])
            .map(|_| ())
            .expect_err("https is refused");
        let text = refused.to_string();
        assert!(
            text.contains("https://127.0.0.1:7380") && text.contains("--cacert"),
            "{text}"
        );
        assert!(check_scheme("http://127.0.0.1:1", true).is_err());
        assert!(check_scheme("https://127.0.0.1:1", true).is_ok());
        assert!(check_scheme("127.0.0.1:1", true).is_ok());
        assert!(check_scheme("127.0.0.1:1", false).is_ok());
    }
}
