//! The node's HTTP endpoint: `GET /metrics` (Prometheus text) and `GET /health` (HTTPS with the
//! client port's certificates when it serves TLS, as etcd's); what the client port serves over
//! HTTP beside gRPC, as etcd's does ([`client_port_routes`]: `/metrics`, `/health` and `/version`
//! in etcd's shapes); and the task that mirrors openraft's metrics into the Raft gauges.

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
    let app = Router::new()
        .route("/metrics", get(metrics_text))
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

/// `GET /metrics`: every metric in Prometheus text.
async fn metrics_text() -> (StatusCode, String) {
    match install() {
        Some(handle) => (StatusCode::OK, crate::metrics::render(&handle)),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder unavailable".to_string(),
        ),
    }
}

/// etcd's `/health` answer: `{"health":"true"}`, or `"false"` with the reason (an alarm raised,
/// no leader, no quorum, apply far behind) and status 503, as etcd's client port answers it.
fn etcd_health(node: &Node) -> (StatusCode, String) {
    use rskv_proto::etcd::etcdserverpb::AlarmType;
    let alarms: Vec<String> = node
        .state_machine
        .alarms()
        .list()
        .into_iter()
        .map(|(_, alarm)| {
            let name = AlarmType::try_from(alarm).map_or("UNKNOWN", |a| a.as_str_name());
            format!("ALARM {name}")
        })
        .collect();
    let reason = if alarms.is_empty() {
        health(node).err()
    } else {
        Some(alarms.join(" "))
    };
    match reason {
        None => (
            StatusCode::OK,
            r#"{"health":"true","reason":""}"#.to_string(),
        ),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(r#"{{"health":"false","reason":{why:?}}}"#),
        ),
    }
}

/// What etcd serves over HTTP on its client port beside gRPC, served on rskv's client port too
/// (HTTP/1.1 or HTTP/2, plain or TLS as the port is): `/metrics` (as on the metrics port),
/// `/health` in etcd's shape ([`etcd_health`]) and `/version`. Tools written for etcd scrape,
/// probe and identify a member there (Prometheus, health checks, `etcdctl check datascale`).
pub fn client_port_routes(node: Arc<Node>) -> Router {
    let version = format!(
        r#"{{"etcdserver":"{v}","etcdcluster":"{v}"}}"#,
        v = super::etcd::ETCD_VERSION
    );
    Router::new()
        .route("/metrics", get(metrics_text))
        .route(
            "/health",
            get(|State(node): State<Arc<Node>>| async move { etcd_health(&node) }),
        )
        .route("/version", get(move || async move { version }))
        .with_state(node)
}

/// The client port's answer to a path nothing serves: gRPC's UNIMPLEMENTED to a gRPC call (an
/// unknown service), a plain 404 to anything else, as etcd's HTTP mux answers.
pub async fn client_port_fallback(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("unknown service {}", request.uri().path()))
            .into_http::<axum::body::Body>();
    }
    (StatusCode::NOT_FOUND, "404 page not found\n").into_response()
}
