//! Socket writes gathered per HTTP/2 flush, so that a small RPC leaves in one write each way.
//!
//! Each write on loopback runs the peer's whole receive path in the writer's system call and may
//! wake the peer; two writes where one would do cost both sides CPU. Two h2 behaviours split
//! small RPCs:
//! - **Responses (server).** h2's encoder holds at most one large DATA frame, chained to its
//!   buffer rather than copied, and flushes before it takes the next frame. A unary gRPC response
//!   is HEADERS, DATA and trailers; with 256 bytes or more of payload the DATA is chained, so the
//!   trailers went in a second write. [`Gathered`] says it has no vectored writes, which raises
//!   h2's copy threshold to 1 KiB: smaller frames are copied and the whole response is one write.
//!   Larger frames reach [`Gathered`] as a frame head and a payload, and its buffer joins them
//!   into one write at the flush h2 does after each.
//! - **Requests (client).** h2 opens a client stream only when the connection task runs, and
//!   hyper's body task waits for that before it sends the DATA, so the HEADERS were flushed
//!   alone. [`Gathered::yielding`] lets the other ready tasks (the body's) run once before it
//!   writes, and the request leaves whole.
//!
//! Measured (perf stat, 256-byte values, one client):
//! - Server: 1.94 writes per get response before, 0.99 after. 4 KiB and 20 KB values take as many
//!   writes as before (2 and 3). Interleaved A/B, eight rounds: stale gets 11.9k -> 12.5k/s by the
//!   median, ahead in 7 of 8, server CPU per get lower in all 8.
//! - Client, on top of that: 2 writes per get request before, 1 after, and the generator's CPU
//!   per get 58 -> 45 us. Interleaved, eight rounds: 11.3k -> 12.5k gets/s by the median, ahead
//!   in 7 of 8.
//! - Yielding costs a pass of the scheduler, which a multi-threaded runtime pays for dearly: the
//!   task's self-wake wakes an idle worker, and tokio's deferred wake polls the I/O driver once
//!   more. Yielding server connections took 20-60% more server CPU per get. So only connections
//!   made on a single-worker runtime yield (see [`crate::transport::lazy_channel`]): the load
//!   generator's, and clients like it.

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::BufWriter;
use tokio::io::ReadBuf;

/// Bytes gathered before a write is forced: one HTTP/2 frame of the default maximum size
/// (16 KiB) with its head and the small frames queued around it.
const BUFFER_BYTES: usize = 32 * 1024;

/// A byte stream for an HTTP/2 connection whose writes reach the socket when h2 flushes.
pub struct Gathered<S> {
    inner: BufWriter<S>,
    /// Whether a flush lets the other ready tasks run once before it writes.
    yield_first: bool,
    /// A flush found bytes to write and let the scheduler run once before writing them.
    yielded: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Gathered<S> {
    /// Wraps `stream`; its buffer is taken at once, so a connection costs [`BUFFER_BYTES`] more.
    pub fn new(stream: S) -> Gathered<S> {
        Gathered {
            inner: BufWriter::with_capacity(BUFFER_BYTES, stream),
            yield_first: false,
            yielded: false,
        }
    }

    /// Like [`Gathered::new`], and a flush first lets the other ready tasks run once, so that a
    /// request's body joins its HEADERS. Only for single-worker runtimes (see the module doc).
    pub fn yielding(stream: S) -> Gathered<S> {
        Gathered {
            yield_first: true,
            ..Gathered::new(stream)
        }
    }

    /// The socket, for its addresses.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Gathered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Gathered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.yield_first && !self.inner.buffer().is_empty() && !self.yielded {
            // Back once the tasks woken meanwhile have run; then the bytes go, whatever came.
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.yielded = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        // h2 copies frames under 1 KiB instead of chaining them (see the module doc).
        false
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    use bytes::Bytes;
    use tokio::io::DuplexStream;

    use super::*;

    /// One end of an in-memory pipe that counts the writes reaching it.
    struct CountingWrites {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for CountingWrites {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingWrites {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let written = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
                self.writes.fetch_add(1, Ordering::SeqCst);
            }
            written
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            // A socket's writev: every slice in one write.
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            self.poll_write(cx, &joined)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// Serves one request on `server_io` with a gRPC-shaped response (HEADERS, one DATA of
    /// `body_bytes`, trailers) and returns how many writes the response took.
    async fn writes_for_one_response<S>(
        server_io: S,
        writes: Arc<AtomicUsize>,
        client_io: DuplexStream,
        body_bytes: usize,
    ) -> usize
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.expect("handshake");
            let (_request, mut respond) = conn.accept().await.expect("a request").expect("ok");
            let before = writes.load(Ordering::SeqCst);
            let mut send = respond
                .send_response(http::Response::new(()), false)
                .expect("headers");
            send.send_data(Bytes::from(vec![7u8; body_bytes]), false)
                .expect("data");
            send.send_trailers(http::HeaderMap::new())
                .expect("trailers");
            // Drive the connection (it writes the response) until the client hangs up.
            while conn.accept().await.is_some() {}
            writes.load(Ordering::SeqCst) - before
        });
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        let driver = tokio::spawn(connection);
        let mut client = client.ready().await.expect("ready");
        let (response, _) = client
            .send_request(http::Request::new(()), true)
            .expect("request");
        let mut body = response.await.expect("response").into_body();
        let mut received = 0;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.expect("data");
            received += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        assert!(body.trailers().await.expect("trailers").is_some());
        assert_eq!(received, body_bytes);
        drop(client);
        drop(body);
        driver.abort();
        server.await.expect("server task")
    }

    /// Sends two requests of `body_bytes` from `client_io` and returns how many writes the
    /// second took (the first settles the handshake's frames). The body goes as hyper sends it:
    /// from a task of its own, once it has send capacity, which h2 assigns only after the
    /// connection has opened the stream (so after it has taken the HEADERS).
    async fn writes_for_one_request<C>(
        client_io: C,
        writes: Arc<AtomicUsize>,
        server_io: DuplexStream,
        body_bytes: usize,
    ) -> usize
    where
        C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (received_tx, mut received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(server_io).await.expect("handshake");
            while let Some(Ok((request, mut respond))) = conn.accept().await {
                let received_tx = received_tx.clone();
                tokio::spawn(async move {
                    let mut body = request.into_body();
                    let mut bytes = 0;
                    while let Some(chunk) = body.data().await {
                        let chunk = chunk.expect("data");
                        bytes += chunk.len();
                        let _ = body.flow_control().release_capacity(chunk.len());
                    }
                    let _ = received_tx.send(bytes);
                    let _ = respond.send_response(http::Response::new(()), true);
                });
            }
        });
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        let mut client = client;
        let mut before = 0;
        for _ in 0..2 {
            client = client.ready().await.expect("ready");
            before = writes.load(Ordering::SeqCst);
            let (response, mut stream) = client
                .send_request(http::Request::new(()), false)
                .expect("request");
            tokio::spawn(async move {
                stream.reserve_capacity(body_bytes);
                while stream.capacity() < body_bytes {
                    match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        other => panic!("no send capacity: {other:?}"),
                    }
                }
                stream
                    .send_data(Bytes::from(vec![1u8; body_bytes]), true)
                    .expect("data");
            });
            assert_eq!(received.recv().await, Some(body_bytes));
            response.await.expect("response");
        }
        writes.load(Ordering::SeqCst) - before
    }

    /// An in-memory connection: the end whose writes are counted, the count, the other end.
    fn pipe() -> (CountingWrites, Arc<AtomicUsize>, DuplexStream) {
        let (counted, other) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = CountingWrites {
            inner: counted,
            writes: writes.clone(),
        };
        (counted, writes, other)
    }

    #[tokio::test]
    async fn a_unary_response_with_a_256_byte_value_should_leave_in_one_write() {
        // The bare socket, for contrast: h2 flushes between the chained DATA and the trailers.
        let (server_io, writes, client_io) = pipe();
        assert_eq!(
            writes_for_one_response(server_io, writes, client_io, 300).await,
            2
        );

        let (server_io, writes, client_io) = pipe();
        assert_eq!(
            writes_for_one_response(Gathered::new(server_io), writes, client_io, 300).await,
            1
        );
    }

    #[tokio::test]
    async fn a_response_larger_than_h2_copies_should_take_no_more_writes_than_on_a_bare_socket() {
        for body_bytes in [4096, 20_000] {
            let (server_io, writes, client_io) = pipe();
            let bare = writes_for_one_response(server_io, writes, client_io, body_bytes).await;
            let (server_io, writes, client_io) = pipe();
            let gathered =
                writes_for_one_response(Gathered::new(server_io), writes, client_io, body_bytes)
                    .await;
            assert!(
                gathered <= bare,
                "{body_bytes} bytes: {gathered} writes gathered, {bare} bare"
            );
        }
    }

    #[tokio::test]
    async fn a_request_should_leave_with_its_body_in_one_write() {
        // The bare socket, for contrast: the HEADERS go before the body has capacity.
        let (client_io, writes, server_io) = pipe();
        assert_eq!(
            writes_for_one_request(client_io, writes, server_io, 300).await,
            2
        );

        let (client_io, writes, server_io) = pipe();
        assert_eq!(
            writes_for_one_request(Gathered::yielding(client_io), writes, server_io, 300).await,
            1
        );
    }
}
