//! A TCP proxy in front of nodes' client ports that a test can break: cut every open connection
//! (requests in flight lose their connection, whether or not they reached the node), or swallow
//! the next response a node starts sending (the request was served; its reply never arrives).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// What the tests do to every proxied connection at once.
pub struct ProxyControl {
    /// Bumped to cut every open connection.
    cuts: watch::Sender<u64>,
    /// Set: the next response any node starts (its HEADERS frame) is dropped, with its
    /// connection.
    swallow_next: AtomicBool,
    /// Responses swallowed so far.
    swallowed: AtomicU64,
    /// Connections cut so far (by `cut_all` or a swallow).
    cut: AtomicU64,
}

impl ProxyControl {
    /// Controls for a set of proxies (pass it to each [`start`]).
    pub fn new() -> Arc<ProxyControl> {
        Arc::new(ProxyControl {
            cuts: watch::channel(0).0,
            swallow_next: AtomicBool::new(false),
            swallowed: AtomicU64::new(0),
            cut: AtomicU64::new(0),
        })
    }

    /// Drops every open connection, mid-request or not.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Drops the next response a node starts to send, and its connection.
    pub fn swallow_next_response(&self) {
        self.swallow_next.store(true, Ordering::SeqCst);
    }

    /// How many responses were swallowed.
    pub fn swallowed(&self) -> u64 {
        self.swallowed.load(Ordering::SeqCst)
    }

    /// How many connections were cut (by [`ProxyControl::cut_all`] or a swallow).
    pub fn connections_cut(&self) -> u64 {
        self.cut.load(Ordering::SeqCst)
    }
}

/// Starts a proxy on `listen` forwarding to `target`, under `control`.
pub async fn start(listen: &str, target: String, control: Arc<ProxyControl>) {
    let listener = TcpListener::bind(listen).await.expect("bind proxy");
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let control = control.clone();
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let mut cuts = control.cuts.subscribe();
                cuts.borrow_and_update();
                let (from_client, to_client) = inbound.into_split();
                let (from_node, to_node) = outbound.into_split();
                tokio::select! {
                    _ = copy(from_client, to_node) => {}
                    swallowed = responses(from_node, to_client, &control) => {
                        if swallowed {
                            control.cut.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    _ = cuts.changed() => {
                        control.cut.fetch_add(1, Ordering::SeqCst);
                    }
                }
                // Returning drops both connections.
            });
        }
    });
}

async fn copy(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Forwards a node's HTTP/2 frames to the client, one whole frame at a time, until the
/// connection ends (`false`) or a response's HEADERS frame is swallowed (`true`).
async fn responses(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    control: &ProxyControl,
) -> bool {
    loop {
        let mut header = [0u8; 9];
        if from.read_exact(&mut header).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut frame = header.to_vec();
        frame.resize(9 + len, 0);
        if from.read_exact(&mut frame[9..]).await.is_err() {
            return false;
        }
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let is_response = header[3] == 1 && stream != 0;
        if is_response && control.swallow_next.swap(false, Ordering::SeqCst) {
            control.swallowed.fetch_add(1, Ordering::SeqCst);
            return true;
        }
        if to.write_all(&frame).await.is_err() {
            return false;
        }
    }
}
