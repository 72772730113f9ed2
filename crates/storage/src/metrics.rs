//! The metrics the storage layer records: snapshots and apply events. Names share the node's
//! `rskv_` prefix; the node's metrics module describes them beside its own (through
//! [`describe`]) and renders them all on `/metrics`, so this module only records.

/// Snapshots built by this node.
pub const SNAPSHOTS_BUILT: &str = "rskv_snapshots_built_total";
/// Snapshots received and installed by this node.
pub const SNAPSHOTS_INSTALLED: &str = "rskv_snapshots_installed_total";
/// Apply events published.
pub const EVENTS_PUBLISHED: &str = "rskv_events_published_total";
/// Event hooks that fell behind the buffer (the name is older than watches served from history,
/// which never fall behind: they read the store at their own pace).
pub const WATCHERS_DROPPED: &str = "rskv_watchers_dropped_total";

/// Revisions of compacted history the sweep has yet to go through (its backlog).
pub const SWEEP_BACKLOG: &str = "rskv_history_sweep_backlog_revisions";
/// History records the sweep has removed.
pub const SWEPT_RECORDS: &str = "rskv_history_swept_records_total";

/// Gives the storage metrics their help text; called once the recorder is installed.
pub fn describe() {
    use metrics::describe_counter;
    describe_counter!(SNAPSHOTS_BUILT, "Snapshots built");
    describe_counter!(SNAPSHOTS_INSTALLED, "Snapshots installed from the leader");
    describe_counter!(EVENTS_PUBLISHED, "Apply events published");
    metrics::describe_gauge!(
        SWEEP_BACKLOG,
        "Revisions between the compacted revision and how far the sweep has removed history"
    );
    describe_counter!(
        SWEPT_RECORDS,
        "History records removed by the sweep after compactions"
    );
    describe_counter!(
        WATCHERS_DROPPED,
        "Times an event hook fell behind events.watch_buffer and missed batches"
    );
}

pub(crate) fn snapshot_built() {
    metrics::counter!(SNAPSHOTS_BUILT).increment(1);
}

pub(crate) fn snapshot_installed() {
    metrics::counter!(SNAPSHOTS_INSTALLED).increment(1);
}

pub(crate) fn events_published(n: u64) {
    metrics::counter!(EVENTS_PUBLISHED).increment(n);
}

/// Counts an event hook falling behind (it misses the batches it lagged by).
pub(crate) fn watcher_dropped() {
    metrics::counter!(WATCHERS_DROPPED).increment(1);
}

/// Where the sweep of compacted history stands: `backlog` revisions to go.
pub(crate) fn sweep_backlog(backlog: i64) {
    metrics::gauge!(SWEEP_BACKLOG).set(backlog as f64);
}

/// Counts history records the sweep removed.
pub(crate) fn swept(records: usize) {
    metrics::counter!(SWEPT_RECORDS).increment(records as u64);
}
