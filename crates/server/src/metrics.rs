//! Every metric rskv exports, defined in this one module under the `rskv_` prefix, with the
//! functions that record them. Any layer records here; this module knows nothing of them. The
//! `metrics` facade records; `metrics-exporter-prometheus` renders (served by
//! [`crate::node::http`], which also refreshes the Raft gauges from openraft's metrics channel, so
//! they cost nothing on the request path).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::Matcher;
use metrics_exporter_prometheus::PrometheusBuilder;
use metrics_exporter_prometheus::PrometheusHandle;
pub use rskv_storage::metrics::EVENTS_PUBLISHED;
pub use rskv_storage::metrics::SNAPSHOTS_BUILT;
pub use rskv_storage::metrics::SNAPSHOTS_INSTALLED;
pub use rskv_storage::metrics::WATCHERS_DROPPED;

/// Requests by method and gRPC status code.
pub const REQUESTS_TOTAL: &str = "rskv_requests_total";
/// Request latency by method, seconds.
pub const REQUEST_DURATION: &str = "rskv_request_duration_seconds";
/// Client requests being served.
pub const INFLIGHT_REQUESTS: &str = "rskv_inflight_requests";
/// Client requests refused at the in-flight limit or while draining, by reason.
pub const REQUESTS_REJECTED: &str = "rskv_requests_rejected_total";
/// Open client connections.
pub const CONNECTIONS_ACTIVE: &str = "rskv_connections_active";
/// Client connections closed at accept because `max_connections` was reached.
pub const CONNECTIONS_REJECTED: &str = "rskv_connections_rejected_total";
/// Current Raft term.
pub const RAFT_TERM: &str = "rskv_raft_term";
/// Id of the current leader (0: unknown).
pub const RAFT_LEADER: &str = "rskv_raft_leader_id";
/// 1 on the leader, 0 elsewhere.
pub const RAFT_IS_LEADER: &str = "rskv_raft_is_leader";
/// Index of the last log entry.
pub const RAFT_LAST_LOG: &str = "rskv_raft_last_log_index";
/// Highest index known committed.
pub const RAFT_COMMITTED: &str = "rskv_raft_committed_index";
/// Highest index applied to the state machine.
pub const RAFT_APPLIED: &str = "rskv_raft_applied_index";
/// On the leader: entries each follower is behind the leader's last log index.
pub const RAFT_REPLICATION_LAG: &str = "rskv_raft_replication_lag";
/// Index of the last snapshot.
pub const RAFT_SNAPSHOT_INDEX: &str = "rskv_raft_snapshot_index";
/// Open watch streams.
pub const WATCHERS_ACTIVE: &str = "rskv_watchers_active";

/// Writes per proposed log entry (1 for a write proposed alone).
pub const WRITE_GROUP_SIZE: &str = "rskv_write_group_size";
/// Linearizable reads served by each leadership confirmation (the read barrier's rounds).
pub const READ_ROUND_SIZE: &str = "rskv_read_round_size";
/// Open client sessions in this node's state machine.
pub const SESSIONS_OPEN: &str = "rskv_sessions_open";
/// Session writes answered from the session table (a retry of a write already applied).
pub const SESSION_REPLAYS: &str = "rskv_session_replays_total";
/// Session writes refused by the state machine, by reason.
pub const SESSION_REFUSALS: &str = "rskv_session_refusals_total";

/// The process's resident memory in bytes: the standard Prometheus process metric, which etcd
/// exports and `etcdctl check datascale` reads.
pub const PROCESS_RESIDENT_MEMORY: &str = "process_resident_memory_bytes";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The Prometheus text of every metric, with the process's resident memory measured now.
pub fn render(handle: &PrometheusHandle) -> String {
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!(PROCESS_RESIDENT_MEMORY).set(bytes as f64);
    }
    handle.render()
}

/// `VmRSS` of `/proc/self/status`, in bytes (`None` where there is no such file).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

/// Installs the process-wide Prometheus recorder (once; later calls reuse it).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.to_string()), &buckets)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(WRITE_GROUP_SIZE.to_string()), &sizes)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(READ_ROUND_SIZE.to_string()), &sizes)
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::describe_counter;
    use metrics::describe_gauge;
    use metrics::describe_histogram;
    describe_counter!(
        REQUESTS_TOTAL,
        "Client requests by method and gRPC status code"
    );
    describe_histogram!(
        REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Client request latency"
    );
    describe_gauge!(INFLIGHT_REQUESTS, "Client requests being served");
    describe_counter!(
        REQUESTS_REJECTED,
        "Client requests refused (limit or draining)"
    );
    describe_gauge!(CONNECTIONS_ACTIVE, "Open client connections");
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Client connections refused at max_connections"
    );
    describe_gauge!(
        PROCESS_RESIDENT_MEMORY,
        metrics::Unit::Bytes,
        "Resident memory of the process, measured at each scrape"
    );
    describe_gauge!(RAFT_TERM, "Current Raft term");
    describe_gauge!(RAFT_LEADER, "Current leader id (0 unknown)");
    describe_gauge!(RAFT_IS_LEADER, "1 if this node leads");
    describe_gauge!(RAFT_LAST_LOG, "Last log index");
    describe_gauge!(RAFT_COMMITTED, "Committed index");
    describe_gauge!(RAFT_APPLIED, "Applied index");
    describe_gauge!(
        RAFT_REPLICATION_LAG,
        "Entries a follower is behind (leader only)"
    );
    describe_gauge!(RAFT_SNAPSHOT_INDEX, "Last snapshot index");
    rskv_storage::metrics::describe();
    describe_gauge!(WATCHERS_ACTIVE, "Open watch streams");
    describe_histogram!(
        WRITE_GROUP_SIZE,
        "Writes carried by each proposed log entry (grouping under load)"
    );
    describe_histogram!(
        READ_ROUND_SIZE,
        "Linearizable reads served by each leadership confirmation (one round, many reads)"
    );
    describe_gauge!(SESSIONS_OPEN, "Open client sessions");
    describe_counter!(
        SESSION_REPLAYS,
        "Retried session writes answered from the session table"
    );
    describe_counter!(
        SESSION_REFUSALS,
        "Session writes refused (expired session, acknowledged seq, full backlog)"
    );
}

/// Counts a retried session write answered from the session table.
pub fn session_replayed() {
    metrics::counter!(SESSION_REPLAYS).increment(1);
}

/// Counts a refused session write.
pub fn session_refused(reason: &'static str) {
    metrics::counter!(SESSION_REFUSALS, "reason" => reason).increment(1);
}

/// Records a proposed log entry carrying `writes` writes.
pub fn write_group(writes: usize) {
    metrics::histogram!(WRITE_GROUP_SIZE).record(writes as f64);
}

/// Records a read-barrier round that served `reads` linearizable reads.
pub fn read_round(reads: usize) {
    metrics::histogram!(READ_ROUND_SIZE).record(reads as f64);
}

/// Records one finished client request.
pub fn request_done(method: &'static str, code: tonic::Code, elapsed: Duration) {
    metrics::counter!(REQUESTS_TOTAL, "method" => method, "code" => code_name(code)).increment(1);
    metrics::histogram!(REQUEST_DURATION, "method" => method).record(elapsed.as_secs_f64());
}

/// Records a refused request.
pub fn request_rejected(reason: &'static str) {
    metrics::counter!(REQUESTS_REJECTED, "reason" => reason).increment(1);
}

/// Sets the in-flight request gauge.
pub fn inflight(n: usize) {
    metrics::gauge!(INFLIGHT_REQUESTS).set(n as f64);
}

/// Moves the open-connection gauge.
pub fn connection_opened() {
    metrics::gauge!(CONNECTIONS_ACTIVE).increment(1.0);
}

/// Moves the open-connection gauge.
pub fn connection_closed() {
    metrics::gauge!(CONNECTIONS_ACTIVE).decrement(1.0);
}

/// Counts a connection refused at the limit.
pub fn connection_rejected() {
    metrics::counter!(CONNECTIONS_REJECTED).increment(1);
}

/// Moves the watcher gauge.
pub fn watcher_opened() {
    metrics::gauge!(WATCHERS_ACTIVE).increment(1.0);
}

/// Moves the watcher gauge.
pub fn watcher_closed() {
    metrics::gauge!(WATCHERS_ACTIVE).decrement(1.0);
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}
