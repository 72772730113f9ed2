//! The node's HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /health` (HTTPS with the
//! client port's certificates when it serves TLS, as etcd's), and the task that mirrors
//! openraft's metrics into the Raft gauges.

use std::future::Future;
use std::sync::Arc;

use std::pin::Pin;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::Stream;
use futures::StreamExt;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use rskv_storage::log_throttle::LogThrottle;
use tokio::net::TcpStream;
use tokio_stream::wrappers::TcpListenerStream;

use super::tls::tls_incoming;
use super::tls::Conn;
use super::tls::ServerTls;
use super::Node;
use crate::metrics::install;
use crate::metrics::RAFT_APPLIED;
use crate::metrics::RAFT_COMMITTED;
use crate::metrics::RAFT_IS_LEADER;
use crate::metrics::RAFT_LAST_LOG;
use crate::metrics::RAFT_LEADER;
use crate::metrics::RAFT_REPLICATION_LAG;
use crate::metrics::RAFT_SNAPSHOT_INDEX;
use crate::metrics::RAFT_TERM;
use crate::metrics::SESSIONS_OPEN;

/// Follows openraft's metrics and mirrors them into gauges until Raft shuts down.
pub async fn follow_raft(node: Arc<Node>) {
    let mut rx = node.raft.metrics();
    loop {
        {
            let m = rx.borrow_watched();
            metrics::gauge!(RAFT_TERM).set(m.current_term as f64);
            metrics::gauge!(RAFT_LEADER).set(m.current_leader.unwrap_or(0) as f64);
            let leading = m.state == ServerState::Leader;
            metrics::gauge!(RAFT_IS_LEADER).set(if leading { 1.0 } else { 0.0 });
            let last = m.last_log_index.unwrap_or(0);
            metrics::gauge!(RAFT_LAST_LOG).set(last as f64);
            metrics::gauge!(RAFT_COMMITTED)
                .set(m.local_committed.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!(RAFT_APPLIED).set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!(RAFT_SNAPSHOT_INDEX)
                .set(m.snapshot.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!(SESSIONS_OPEN).set(node.state_machine.open_sessions() as f64);
            if let Some(replication) = &m.replication {
                for (peer, matched) in replication {
                    if *peer == node.id {
                        continue;
                    }
                    let matched = matched.map(|l| l.index).unwrap_or(0);
                    metrics::gauge!(RAFT_REPLICATION_LAG, "peer" => peer.to_string())
                        .set(last.saturating_sub(matched) as f64);
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// How far behind the commit index a node may apply and still report healthy.
const HEALTHY_APPLY_LAG: u64 = 1_000;

/// Whether the node is healthy: it knows a leader, as the leader it has heard from a quorum
/// within the election timeout (else it cannot serve writes or linearizable reads), and it has
/// applied close to the commit index.
pub fn health(node: &Node) -> Result<String, String> {
    let m = node.raft.metrics().borrow_watched().clone();
    if m.state == ServerState::Shutdown {
        return Err("shutting down".into());
    }
    let leader = m.current_leader.ok_or("no leader known")?;
    let quorum = node.quorum();
    if quorum.leading && !quorum.ok {
        return Err(format!("no quorum: {}", quorum.describe()));
    }
    let quiet = node.leader_contact.quiet_for();
    if !quorum.leading && quiet.as_millis() as u64 > node.config.raft.election_timeout_max_ms {
        return Err(format!(
            "no leader: nothing heard from node {leader} (the last known leader) for {} ms",
            quiet.as_millis()
        ));
    }
    let committed = m.local_committed.map(|l| l.index).unwrap_or(0);
    let applied = m.last_applied.map(|l| l.index).unwrap_or(0);
    if committed.saturating_sub(applied) > HEALTHY_APPLY_LAG {
        return Err(format!("applied {applied} lags committed {committed}"));
    }
    Ok(format!(
        "{{\"status\":\"ok\",\"leader\":{leader},\"term\":{},\"committed\":{committed},\"applied\":{applied}}}",
        m.current_term
    ))
}

/// The HTTP listener: accepted connections, in TLS when the client port serves TLS.
struct HttpListener {
    local: std::net::SocketAddr,
    incoming: Pin<Box<dyn Stream<Item = std::io::Result<Conn<TcpStream>>> + Send>>,
}

impl axum::serve::Listener for HttpListener {
    type Io = Conn<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        static ACCEPT_FAILED: LogThrottle = LogThrottle::every_interval();
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => return (io, self.local),
                Some(Err(e)) => {
                    rskv_storage::warn_throttled!(ACCEPT_FAILED, 0, error = %e, "metrics endpoint: accept failed");
                    // Out of descriptors, typically: give the node a moment to close some.
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves `/metrics` and `/health` on `listener` (in TLS with `tls`) until `shutdown` completes.
///
/// # Errors
/// When the HTTP server fails.
pub async fn serve_http(
    node: Arc<Node>,
    listener: tokio::net::TcpListener,
    tls: Option<ServerTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = HttpListener {
        local: listener.local_addr()?,
        incoming: Box::pin(tls_incoming(
            TcpListenerStream::new(listener),
            tls,
            "metrics",
        )),
    };
    let handle = install();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move {
                    match handle {
                        Some(h) => (StatusCode::OK, h.render()),
                        None => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "metrics recorder unavailable".to_string(),
                        ),
                    }
                }
            }),
        )
        .route(
            "/health",
            get(|State(node): State<Arc<Node>>| async move {
                match health(&node) {
                    Ok(body) => (StatusCode::OK, body),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("{{\"status\":\"unhealthy\",\"reason\":{why:?}}}"),
                    ),
                }
            }),
        )
        .with_state(node);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
