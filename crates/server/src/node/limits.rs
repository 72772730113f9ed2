//! Per-node limits: client connections ([`limited_incoming`]), in-flight client requests
//! ([`RequestLimiter`]) and the size of a client's request ([`name_message_limit`]).
//!
//! A connection holds a semaphore permit for exactly as long as it is open (the permit lives
//! inside the connection object tonic serves), so closed connections free their slot at once.
//! Past `max_connections` a new connection is closed right after accept, logged and counted;
//! admitted clients are unaffected. Past `max_inflight_requests` a request is answered
//! RESOURCE_EXHAUSTED immediately instead of queueing. Raft traffic arrives on the separate peer
//! port and is subject to neither limit, so client load cannot starve replication or elections.
//! Refused connections and failed accepts are logged at most once per interval, with a count
//! ([`crate::log_throttle`]): a client reconnecting to a full node would otherwise log a line per
//! attempt.

use std::io;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use futures::Stream;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::codegen::http;
use tonic::transport::server::Connected;
use tonic::transport::server::TcpConnectInfo;

use crate::error::Error;
use crate::metrics;
use rskv_client::gathered::Gathered;
use rskv_storage::log_throttle::LogThrottle;

/// A client connection admitted under the connection limit; its writes are [`Gathered`], so a
/// small response leaves in one write.
pub struct LimitedConnection {
    stream: Gathered<TcpStream>,
    /// Held for the connection's lifetime: dropping the connection frees the slot.
    _permit: OwnedSemaphorePermit,
}

impl Drop for LimitedConnection {
    fn drop(&mut self) {
        metrics::connection_closed();
    }
}

impl Connected for LimitedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
    }
}

impl super::tls::Accepted for LimitedConnection {
    fn remote(&self) -> Option<std::net::SocketAddr> {
        self.stream.get_ref().remote()
    }

    async fn first_byte(&self) -> Option<u8> {
        self.stream.get_ref().first_byte().await
    }
}

impl AsyncRead for LimitedConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for LimitedConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts connections from `listener`, admitting at most `max` at once; the rest are closed at
/// accept. Accept errors (e.g. out of file descriptors) are logged and retried, never fatal.
pub fn limited_incoming(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = io::Result<LimitedConnection>> {
    static REFUSED: LogThrottle = LogThrottle::every_interval();
    static ACCEPT_FAILED: LogThrottle = LogThrottle::every_interval();
    let slots = Arc::new(Semaphore::new(max));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let _ = stream.set_nodelay(true);
                        metrics::connection_opened();
                        let conn = LimitedConnection {
                            stream: Gathered::new(stream),
                            _permit: permit,
                        };
                        return Some((Ok(conn), (listener, slots)));
                    }
                    Err(_) => {
                        metrics::connection_rejected();
                        rskv_storage::warn_throttled!(
                            REFUSED,
                            0,
                            %peer,
                            max,
                            "connection refused: limits.max_connections reached"
                        );
                        drop(stream);
                    }
                },
                Err(e) => {
                    rskv_storage::warn_throttled!(ACCEPT_FAILED, 0, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    })
}

/// The start of tonic's message for a request over `max_decoding_message_size` (tonic 0.14,
/// `codec/decode.rs`), which it answers itself, before any handler runs.
const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// Rewrites tonic's answer to a request over the message limit — OUT_OF_RANGE "decoded message
/// length too large", which clients here read as "compacted" — into RESOURCE_EXHAUSTED naming
/// `limits.max_message_bytes` (through [`Error::TooLarge`]). Meant for a `map_response` layer
/// on the client server: tonic answers such a request with a trailers-only response whose
/// headers carry the status, and leaves every other response alone.
pub fn name_message_limit<B>(mut response: http::Response<B>, limit: usize) -> http::Response<B> {
    let Some(status) = response.extensions().get::<tonic::Status>() else {
        return response;
    };
    if status.code() != tonic::Code::OutOfRange {
        return response;
    }
    let Some(found) = status.message().strip_prefix(TONIC_TOO_LARGE) else {
        return response;
    };
    let size = found
        .split_once(' ')
        .map_or("more", |(bytes, _)| bytes)
        .to_string();
    let named = tonic::Status::from(Error::TooLarge(format!(
        "request message is {size} bytes, over the limit of {limit} bytes \
         (limits.max_message_bytes)"
    )));
    let headers = response.headers_mut();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        headers.remove(name);
    }
    if named.add_header(headers).is_err() {
        // Our own ASCII message always makes a valid header; keep at least the code.
        headers.insert(
            "grpc-status",
            http::HeaderValue::from(tonic::Code::ResourceExhausted as i32),
        );
    }
    response.extensions_mut().insert(named);
    response
}

/// Bounds concurrent client requests and refuses new ones while the node drains for shutdown.
pub struct RequestLimiter {
    slots: Arc<Semaphore>,
    max: usize,
    draining: AtomicBool,
}

/// Proof that a request was admitted; frees its slot when dropped.
pub struct RequestPermit {
    _permit: OwnedSemaphorePermit,
    limiter: Arc<Semaphore>,
    max: usize,
    count: usize,
}

impl Drop for RequestPermit {
    fn drop(&mut self) {
        // Our own slots are still counted as taken here, hence the - count.
        metrics::inflight(
            self.max
                .saturating_sub(self.limiter.available_permits())
                .saturating_sub(self.count),
        );
    }
}

impl RequestLimiter {
    /// A limiter admitting `max` concurrent requests.
    pub fn new(max: usize) -> RequestLimiter {
        RequestLimiter {
            slots: Arc::new(Semaphore::new(max)),
            max,
            draining: AtomicBool::new(false),
        }
    }

    /// Admits a request or says why not.
    ///
    /// # Errors
    /// [`Error::Unavailable`] while draining (the client should go to another node),
    /// [`Error::ResourceExhausted`] at the limit.
    pub fn admit(&self) -> Result<RequestPermit, Error> {
        self.admit_many(1)
    }

    /// Admits `count` requests carried by one RPC (a Multi), all or none.
    ///
    /// # Errors
    /// As [`RequestLimiter::admit`].
    pub fn admit_many(&self, count: usize) -> Result<RequestPermit, Error> {
        if self.draining.load(Ordering::Acquire) {
            metrics::request_rejected("draining");
            return Err(Error::NotAdmitted(
                "node is shutting down; retry on another node".into(),
            ));
        }
        // A Multi larger than the whole limit takes all of it rather than waiting forever.
        let count = count.clamp(1, self.max.max(1));
        let permits = u32::try_from(count).unwrap_or(u32::MAX);
        match self.slots.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                metrics::inflight(self.max.saturating_sub(self.slots.available_permits()));
                Ok(RequestPermit {
                    _permit: permit,
                    limiter: self.slots.clone(),
                    max: self.max,
                    count,
                })
            }
            Err(_) => {
                metrics::request_rejected("max_inflight_requests");
                Err(Error::ResourceExhausted(format!(
                    "{} requests in flight (max_inflight_requests); retry later",
                    self.max
                )))
            }
        }
    }

    /// Refuses every new request from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Requests currently admitted.
    pub fn in_flight(&self) -> usize {
        self.max.saturating_sub(self.slots.available_permits())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_over_size_request_should_be_resource_exhausted_naming_the_limit() {
        let tonic_answer = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9000 bytes, the limit is: 100 bytes",
        )
        .into_http::<()>();
        let response = name_message_limit(tonic_answer, 100);
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("9000 bytes")
                && status.message().contains("limit of 100 bytes")
                && status.message().contains("limits.max_message_bytes"),
            "{status:?}"
        );
        assert!(
            !response
                .headers()
                .contains_key(rskv_proto::status::NOT_ADMITTED_HEADER),
            "retrying elsewhere would not help"
        );
        // Our own OUT_OF_RANGE (a compacted watch start) and successes pass untouched.
        let compacted =
            tonic::Status::out_of_range("revision 5 is compacted (history starts at 9)");
        let response = name_message_limit(compacted.into_http::<()>(), 100);
        let status = tonic::Status::from_header_map(response.headers()).expect("a status");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        let ok = name_message_limit(http::Response::new(()), 100);
        assert!(tonic::Status::from_header_map(ok.headers()).is_none());
    }

    #[test]
    fn limiter_should_refuse_past_max_and_while_draining() {
        let limiter = RequestLimiter::new(2);
        let a = limiter.admit().expect("first");
        let _b = limiter.admit().expect("second");
        assert!(matches!(limiter.admit(), Err(Error::ResourceExhausted(_))));
        drop(a);
        assert_eq!(limiter.in_flight(), 1);
        let _c = limiter.admit().expect("slot freed");
        limiter.start_draining();
        assert!(matches!(limiter.admit(), Err(Error::NotAdmitted(_))));
    }

    #[test]
    fn multi_should_take_one_slot_per_op_and_never_more_than_the_limit() {
        let limiter = RequestLimiter::new(4);
        let three = limiter.admit_many(3).expect("three of four");
        assert_eq!(limiter.in_flight(), 3);
        assert!(matches!(
            limiter.admit_many(2),
            Err(Error::ResourceExhausted(_))
        ));
        drop(three);
        assert_eq!(limiter.in_flight(), 0);
        // Larger than the whole limit: admitted when the node is idle, taking every slot.
        let all = limiter
            .admit_many(100)
            .expect("an oversized multi on an idle node");
        assert_eq!(limiter.in_flight(), 4);
        assert!(matches!(limiter.admit(), Err(Error::ResourceExhausted(_))));
        drop(all);
        assert_eq!(limiter.in_flight(), 0);
    }
}
