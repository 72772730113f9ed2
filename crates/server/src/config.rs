//! Node configuration: a TOML file, every key overridable by a command-line flag.
//!
//! Loading goes file (or the embedded dev-mode default) → flags → [`Config::validate`]. Unknown
//! keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::error::Result;
use crate::raft::network::PeerLiveness;
use crate::raft::NodeId;
use crate::raft::NodeInfo;
use rskv_client::transport::check_scheme;
use rskv_client::transport::endpoint_uri;
use rskv_client::transport::member_address;

/// The address dev mode listens on, and the address `kv_client` talks to by default.
pub use rskv_client::DEV_ADDR;

/// The configuration `kv_server` uses when started without `--config`: a single-node cluster on
/// [`DEV_ADDR`] whose data lives in a temporary directory unless `--data-dir` is given.
pub const DEV_CONFIG: &str = r#"
node_id = 1
listen_addr = "127.0.0.1:7379"

[storage]
engine = "memory"
"#;

/// Which state machine holds the applied data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// An ordered in-memory map; recovered after a restart from the last snapshot plus the log.
    Memory,
    /// RocksDB column families; data, applied index and membership are written atomically.
    Rocksdb,
}

/// How the leader proves it still leads before serving a linearizable read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum ReadPolicy {
    /// ReadIndex: a heartbeat round acknowledged by a quorum after the read arrived (one round
    /// serves every read waiting for it). Correct whatever the clocks do; etcd's default.
    #[default]
    ReadIndex,
    /// Leader lease: a quorum acknowledgement younger than 90% of the election timeout maximum
    /// is reused, so most reads need no round trip. Followers refuse to vote for that long after
    /// hearing from the leader, so this is safe as long as no node's clock runs more than ~10%
    /// slower or faster than another's (TiKV's default trade). Falls back to a round when the
    /// lease has lapsed.
    Lease,
}

impl Engine {
    /// The name used in config files and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Memory => "memory",
            Engine::Rocksdb => "rocksdb",
        }
    }
}

/// Full node configuration, as read from TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must be unique in the cluster and stable across restarts.
    pub node_id: NodeId,
    /// Socket address the client gRPC API binds.
    pub listen_addr: SocketAddr,
    /// Address clients dial to reach this node; defaults to `listen_addr`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Socket address the Raft transport binds; defaults to `listen_addr` with port + 1.
    #[serde(default)]
    pub peer_listen_addr: Option<SocketAddr>,
    /// Address peers dial for Raft traffic; defaults to the peer listen address.
    #[serde(default)]
    pub peer_advertise_addr: Option<String>,
    /// Source IP for outgoing Raft connections; unset lets the kernel choose. Set it on a
    /// multi-homed host, or so that a proxy can tell which node a connection comes from (the
    /// fault suite's loopback network does).
    #[serde(default)]
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// HTTP address serving `/metrics` and `/health`; defaults to `listen_addr` with port + 2.
    #[serde(default)]
    pub metrics_addr: Option<SocketAddr>,
    /// Longest a graceful shutdown may take (leader hand-off plus draining) before the node
    /// exits anyway.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Directory holding the Raft log, the state machine and snapshots. `None` in dev mode means a
    /// temporary directory removed on exit.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// State machine selection.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Cluster bootstrap.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Raft timing and compaction.
    #[serde(default)]
    pub raft: RaftConfig,
    /// Request size limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Apply events, for in-process hooks.
    #[serde(default)]
    pub events: EventsConfig,
    /// Client sessions (exactly-once writes).
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Automatic compaction of the store's history (etcd's `--auto-compaction-*`).
    #[serde(default)]
    pub compaction: CompactionConfig,
    /// TLS for the client API, the metrics endpoint and the Raft transport (etcd's flags).
    #[serde(default)]
    pub tls: TlsConfig,
    /// etcd's authentication: token lifetime and password hashing.
    #[serde(default)]
    pub auth: AuthConfig,
}

/// `[auth]`: how this member handles etcd's authentication (users, roles and whether auth is on
/// are replicated state, changed through etcd's Auth API, not configured).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Which tokens `Authenticate` hands out, etcd's `--auth-token`: `simple` (replicated
    /// through the log) or `jwt,priv-key=PATH,sign-method=ES256|RS256[,ttl=5m]` (signed; every
    /// member needs the same key).
    pub token: String,
    /// A simple token lapses after this many seconds without use (etcd `--auth-token-ttl`).
    pub token_ttl_secs: u64,
    /// bcrypt cost of the password hashes this member makes (etcd `--bcrypt-cost`): 10 takes
    /// about 60-70 ms per hash or check on the project's 2-core machine.
    pub bcrypt_cost: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: "simple".into(),
            token_ttl_secs: 300,
            bcrypt_cost: 10,
        }
    }
}

/// `[tls]`: certificates, as etcd names them. The client set serves the client API (native and
/// etcd) and `/metrics` and `/health`; the `peer_*` set the Raft transport, both ways (a node
/// dials its peers with its peer certificate). PEM files, re-read when they change or on SIGHUP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The client port's certificate chain (etcd `--cert-file`); set with `key_file` to serve TLS.
    pub cert_file: Option<PathBuf>,
    /// Its private key (etcd `--key-file`).
    pub key_file: Option<PathBuf>,
    /// CA bundle client certificates must chain to (etcd `--trusted-ca-file`); the node also
    /// uses it to trust the leader's client port when it forwards an etcd request.
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by `trusted_ca_file` (etcd `--client-cert-auth`).
    pub client_cert_auth: bool,
    /// The peer port's certificate, also presented when dialling peers (etcd
    /// `--peer-cert-file`).
    pub peer_cert_file: Option<PathBuf>,
    /// Its private key (etcd `--peer-key-file`).
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle peers' certificates must chain to (etcd `--peer-trusted-ca-file`); required
    /// with peer TLS.
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require dialling peers to present a certificate (etcd `--peer-client-cert-auth`). On by
    /// default, unlike etcd: without it anyone who reaches the peer port can append to the log.
    pub peer_client_cert_auth: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            trusted_ca_file: None,
            client_cert_auth: false,
            peer_cert_file: None,
            peer_key_file: None,
            peer_trusted_ca_file: None,
            peer_client_cert_auth: true,
        }
    }
}

impl TlsConfig {
    /// Whether the client port (and metrics) serve TLS.
    pub fn client_tls(&self) -> bool {
        self.cert_file.is_some()
    }

    /// Whether the peer port serves, and peers are dialled in, TLS.
    pub fn peer_tls(&self) -> bool {
        self.peer_cert_file.is_some()
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(Error::config(format!("`tls.{key}`: {why}")));
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("cert_file", "cert_file and key_file go together");
        }
        if self.client_cert_auth && self.trusted_ca_file.is_none() {
            return bad(
                "client_cert_auth",
                "needs trusted_ca_file, the CA client certificates must chain to",
            );
        }
        if self.trusted_ca_file.is_some() != self.client_tls() {
            return bad(
                "trusted_ca_file",
                "client TLS needs cert_file, key_file and trusted_ca_file together (members \
                 verify each other's client port with it when they forward etcd requests)",
            );
        }
        let peer = [
            &self.peer_cert_file,
            &self.peer_key_file,
            &self.peer_trusted_ca_file,
        ];
        if peer.iter().any(|f| f.is_some()) && !peer.iter().all(|f| f.is_some()) {
            return bad(
                "peer_cert_file",
                "peer TLS needs peer_cert_file, peer_key_file and peer_trusted_ca_file together",
            );
        }
        Ok(())
    }
}

/// How the leader compacts the store's history on its own (etcd's `--auto-compaction-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum CompactionMode {
    /// Never: history grows until a client compacts it (etcd's default).
    None,
    /// Keep the history of the last `retention` (a duration: `90s`, `30m`, `1h`; a bare number
    /// is hours, as etcd reads it).
    Periodic,
    /// Keep the last `retention` revisions (a number).
    Revision,
}

/// `[compaction]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    /// See [`CompactionMode`].
    #[serde(default = "default_compaction_mode")]
    pub mode: CompactionMode,
    /// A duration for `periodic`, a revision count for `revision`.
    #[serde(default = "default_compaction_retention")]
    pub retention: String,
}

/// History is bounded by default (etcd keeps all of it unless told otherwise): a node left
/// running under writes must not grow without limit, in memory with the memory engine. Set
/// `mode = "none"` for etcd's behaviour.
fn default_compaction_mode() -> CompactionMode {
    CompactionMode::Revision
}

fn default_compaction_retention() -> String {
    "100000".into()
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            mode: default_compaction_mode(),
            retention: default_compaction_retention(),
        }
    }
}

/// What [`CompactionConfig`] asks for, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compaction {
    /// No automatic compaction.
    Off,
    /// Keep this much time of history.
    Periodic(std::time::Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl CompactionConfig {
    /// The checked setting.
    ///
    /// # Errors
    /// [`Error::Config`] for a retention that is not what its mode takes.
    pub fn parse(&self) -> Result<Compaction> {
        let bad = |why: &str| {
            Err(Error::config(format!(
                "`compaction.retention` {:?}: {why}",
                self.retention
            )))
        };
        let r = self.retention.trim();
        match self.mode {
            CompactionMode::None => Ok(Compaction::Off),
            CompactionMode::Revision => match r.parse::<i64>() {
                Ok(n) if n > 0 => Ok(Compaction::Revision(n)),
                _ => bad("revision mode keeps a number of revisions, at least 1"),
            },
            CompactionMode::Periodic => {
                let (digits, unit) =
                    r.split_at(r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len()));
                let secs = match (digits.parse::<u64>(), unit) {
                    (Ok(n), "" | "h") => n * 3600,
                    (Ok(n), "m") => n * 60,
                    (Ok(n), "s") => n,
                    _ => return bad("periodic mode keeps a duration: `90s`, `30m`, `1h` or hours"),
                };
                if secs == 0 {
                    return bad("the duration must be positive");
                }
                Ok(Compaction::Periodic(std::time::Duration::from_secs(secs)))
            }
        }
    }
}

fn default_shutdown_timeout_ms() -> u64 {
    10_000
}

/// One entry of `cluster.initial_members`: the client address alone (the peer address is then
/// its port + 1), or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemberAddr {
    /// `"host:port"`: the client address.
    Client(String),
    /// `{ addr = "host:port", peer_addr = "host:port" }`.
    Full {
        /// Client API address.
        addr: String,
        /// Raft transport address.
        peer_addr: String,
    },
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `memory` or `rocksdb`.
    pub engine: Engine,
    /// A backup (`etcdctl snapshot save`, or etcd's `Snapshot` RPC of an rskv node) to load into
    /// this node's empty state machine at its first start, for a new cluster made from a backup:
    /// every member of the new cluster starts with the same file. Ignored once the node holds
    /// data. RocksDB engine only.
    #[serde(default)]
    pub restore_backup: Option<PathBuf>,
    /// Restore `restore_backup` without the SHA-256 a backup ends with (etcd's
    /// `--skip-hash-check`): for a database file copied out of a stopped etcd's data directory
    /// (`member/snap/db`), which has none. A damaged file is then refused only if it cannot be
    /// read at all.
    #[serde(default)]
    pub restore_skip_hash_check: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Rocksdb,
            restore_backup: None,
            restore_skip_hash_check: false,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The voters a brand-new cluster starts with, id → addresses. Every listed node initializes
    /// the cluster with this same set on first start (later starts ignore it). Empty means a
    /// single-node cluster of this node alone.
    #[serde(default)]
    pub initial_members: BTreeMap<String, MemberAddr>,
    /// Client addresses of existing members to ask for admission. A node started with `join` and
    /// an empty data dir does not bootstrap: it asks the cluster to add it as a learner, waits
    /// until it has caught up, and has itself promoted to voter. Ignored once the node has state.
    #[serde(default)]
    pub join: Vec<String>,
}

/// `[raft]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftConfig {
    /// Leader heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomized election timeout.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomized election timeout.
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log before it) every this many applied writes (a grouped
    /// entry counts each of its writes), so the log a restart replays stays bounded under load.
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot, so briefly lagging followers need no snapshot.
    /// Counted in entries, and under load an entry groups tens of writes: 1,000 entries are 1,000
    /// writes when idle and ~60k (about 1.5 s) at 256 clients. 5,000 kept 80+ MB of log at 256
    /// clients, whose purge compactions doubled put p99 in sustained runs.
    pub keep_logs_after_snapshot: u64,
    /// Size of the chunks a snapshot is streamed in.
    pub snapshot_chunk_bytes: u64,
    /// How linearizable reads confirm leadership: `read_index` or `lease`.
    pub read_policy: ReadPolicy,
    /// Write proposals (log entries) in flight at once; writes arriving while all are in flight
    /// are grouped into the next entry. 0 proposes every write as its own entry.
    pub max_inflight_proposals: usize,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every: 50_000,
            keep_logs_after_snapshot: 1_000,
            snapshot_chunk_bytes: 1024 * 1024,
            read_policy: ReadPolicy::ReadIndex,
            max_inflight_proposals: 2,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest key accepted, in bytes.
    pub max_key_size: usize,
    /// Largest value accepted, in bytes.
    pub max_value_size: usize,
    /// Longest a write or linearizable read may wait for Raft before answering DEADLINE_EXCEEDED.
    pub request_timeout_ms: u64,
    /// Client TCP connections accepted at once; more are closed at accept and counted.
    pub max_connections: usize,
    /// Client requests served at once; more are answered RESOURCE_EXHAUSTED at once.
    pub max_inflight_requests: usize,
    /// Largest gRPC message accepted from a client; a larger one is answered RESOURCE_EXHAUSTED
    /// naming this key.
    pub max_message_bytes: usize,
    /// Most pairs in one BatchPut and ops in one Multi (as etcd's `--max-txn-ops`); more are
    /// refused with INVALID_ARGUMENT. Bounds the work, the log entry and the apply events one
    /// request can cause, independently of the byte limit.
    pub max_ops_per_request: usize,
    /// Bytes the node's data directory may hold before it raises etcd's `NOSPACE` alarm for
    /// itself (etcd's `--quota-backend-bytes`), after which the cluster refuses what grows the
    /// store until the alarm is disarmed; 0: no quota. Checked every few seconds.
    pub quota_backend_bytes: u64,
}

/// Default of `limits.max_ops_per_request`, and the size of the Multis the client library builds
/// (so its batches fit a node with default limits).
pub use rskv_proto::DEFAULT_MAX_OPS_PER_REQUEST;

/// `[events]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Applied batches an in-process event hook may fall behind before it misses them (logged
    /// and counted). A batch is what the state machine applies at once — one write or many, a
    /// BatchPut of any size included — so a hook that has read everything never misses one large
    /// write; memory held for a lagging hook is up to this many batches. Watch streams read the
    /// store's history instead and are not bounded by it.
    pub watch_buffer: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            watch_buffer: 4_096,
        }
    }
}

/// Why `events.history` and `events.history_bytes` are gone.
const EVENT_RETENTION_REMOVED: &str = "watches no longer start from a log index out of events \
     kept in memory: they read the store's history from a revision (how much history is kept is \
     `[compaction]`); delete the key";

/// Keys earlier versions read and this one refuses, with why and what to do instead: a config
/// that still sets one fails with that, not serde's bare "unknown field", and never silently
/// means something else (the same rule as any unknown key).
const REMOVED_KEYS: &[(&str, &str, &str)] = &[
    ("events", "history", EVENT_RETENTION_REMOVED),
    ("events", "history_bytes", EVENT_RETENTION_REMOVED),
];

/// The first key of [`REMOVED_KEYS`] that `text` sets, as a config error; `None` when it sets
/// none of them, or is not TOML at all (the typed parse then says what is wrong).
fn removed_key(text: &str) -> Option<Error> {
    let table: toml::Table = toml::from_str(text).ok()?;
    REMOVED_KEYS.iter().find_map(|(section, key, why)| {
        table
            .get(*section)
            .and_then(toml::Value::as_table)
            .is_some_and(|t| t.contains_key(*key))
            .then(|| Error::config(format!("`{section}.{key}` was removed: {why}")))
    })
}

/// `[sessions]`: client sessions, which make retried writes apply exactly once. Both values are
/// the leader's when a session opens and travel with that command in the log, so every node
/// expires and evicts sessions alike even if their configs differ.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session expires after this long without a write, by time carried in the log. Its
    /// client then opens a new one; a write that was retried across the expiry is reported as
    /// outcome unknown. Longer keeps idle clients' sessions (and their last replies) in memory.
    pub ttl_ms: u64,
    /// Most open sessions; opening one more closes the least recently used.
    pub max_sessions: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 600_000,
            max_sessions: 100_000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_size: 4 * 1024,
            max_value_size: 1024 * 1024,
            request_timeout_ms: 5_000,
            max_connections: 1_024,
            max_inflight_requests: 4_096,
            max_message_bytes: 8 * 1024 * 1024,
            max_ops_per_request: DEFAULT_MAX_OPS_PER_REQUEST,
            quota_backend_bytes: 0,
        }
    }
}

/// Command-line overrides; each flag replaces the config key of the same name.
#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// TOML config file; without it the node starts in single-node dev mode.
    #[arg(long, short = 'c', env = "RSKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// node_id
    #[arg(long)]
    pub node_id: Option<NodeId>,
    /// listen_addr
    #[arg(long)]
    pub listen_addr: Option<SocketAddr>,
    /// advertise_addr
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// peer_listen_addr
    #[arg(long)]
    pub peer_listen_addr: Option<SocketAddr>,
    /// peer_advertise_addr
    #[arg(long)]
    pub peer_advertise_addr: Option<String>,
    /// peer_source_ip
    #[arg(long)]
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// metrics_addr
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// shutdown_timeout_ms
    #[arg(long)]
    pub shutdown_timeout_ms: Option<u64>,
    /// data_dir
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// storage.engine
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// compaction.mode: none, periodic or revision
    #[arg(long, value_enum)]
    pub auto_compaction_mode: Option<CompactionMode>,
    /// compaction.retention: a duration (periodic) or a revision count (revision)
    #[arg(long)]
    pub auto_compaction_retention: Option<String>,
    /// storage.restore_backup: a backup to load at the first start (RocksDB engine)
    #[arg(long)]
    pub restore_backup: Option<PathBuf>,
    /// storage.restore_skip_hash_check (`--restore-skip-hash-check` alone means true)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub restore_skip_hash_check: Option<bool>,
    /// cluster.initial_members, as `ID=ADDR[/PEER_ADDR],...`
    #[arg(long, value_parser = parse_members)]
    pub initial_members: Option<BTreeMap<String, MemberAddr>>,
    /// cluster.join: existing members to ask for admission, `ADDR,ADDR,...`
    #[arg(long, value_delimiter = ',')]
    pub join: Option<Vec<String>>,
    /// raft.heartbeat_interval_ms
    #[arg(long)]
    pub heartbeat_interval_ms: Option<u64>,
    /// raft.election_timeout_min_ms
    #[arg(long)]
    pub election_timeout_min_ms: Option<u64>,
    /// raft.election_timeout_max_ms
    #[arg(long)]
    pub election_timeout_max_ms: Option<u64>,
    /// raft.snapshot_every
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// raft.keep_logs_after_snapshot
    #[arg(long)]
    pub keep_logs_after_snapshot: Option<u64>,
    /// raft.snapshot_chunk_bytes
    #[arg(long)]
    pub snapshot_chunk_bytes: Option<u64>,
    /// raft.read_policy
    #[arg(long, value_enum)]
    pub read_policy: Option<ReadPolicy>,
    /// raft.max_inflight_proposals
    #[arg(long)]
    pub max_inflight_proposals: Option<usize>,
    /// limits.max_key_size
    #[arg(long)]
    pub max_key_size: Option<usize>,
    /// limits.max_value_size
    #[arg(long)]
    pub max_value_size: Option<usize>,
    /// limits.request_timeout_ms
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
    /// limits.max_connections
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// limits.max_inflight_requests
    #[arg(long)]
    pub max_inflight_requests: Option<usize>,
    /// limits.max_message_bytes
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// limits.max_ops_per_request
    #[arg(long)]
    pub max_ops_per_request: Option<usize>,
    /// limits.quota_backend_bytes (0: none)
    #[arg(long)]
    pub quota_backend_bytes: Option<u64>,
    /// events.watch_buffer
    #[arg(long)]
    pub watch_buffer: Option<usize>,
    /// sessions.ttl_ms
    #[arg(long)]
    pub session_ttl_ms: Option<u64>,
    /// sessions.max_sessions
    #[arg(long)]
    pub max_sessions: Option<u64>,
    /// auth.token
    #[arg(long)]
    pub auth_token: Option<String>,
    /// auth.token_ttl_secs
    #[arg(long)]
    pub auth_token_ttl: Option<u64>,
    /// auth.bcrypt_cost
    #[arg(long)]
    pub bcrypt_cost: Option<u32>,
    /// tls.cert_file
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// tls.key_file
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// tls.trusted_ca_file
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// tls.client_cert_auth (`--client-cert-auth` alone means true)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// tls.peer_cert_file
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// tls.peer_key_file
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// tls.peer_trusted_ca_file
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// tls.peer_client_cert_auth (`--peer-client-cert-auth` alone means true)
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
}

fn parse_members(s: &str) -> std::result::Result<BTreeMap<String, MemberAddr>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addrs) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=ADDR[/PEER_ADDR]"))?;
        let member = match addrs.split_once('/') {
            Some((addr, peer)) => MemberAddr::Full {
                addr: addr.trim().to_string(),
                peer_addr: peer.trim().to_string(),
            },
            None => MemberAddr::Client(addrs.trim().to_string()),
        };
        out.insert(id.trim().to_string(), member);
    }
    Ok(out)
}

/// `addr` with its port moved by `delta` (the default peer and metrics ports).
pub(crate) fn shifted_port(addr: &str, delta: u16) -> std::result::Result<String, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{addr}` has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{addr}` has an invalid port"))?;
    let shifted = port
        .checked_add(delta)
        .filter(|_| port != 0)
        .ok_or_else(|| format!("cannot derive a port from `{addr}`; set it explicitly"))?;
    Ok(format!("{host}:{shifted}"))
}

fn derived_addr(
    explicit: Option<SocketAddr>,
    base: SocketAddr,
    delta: u16,
    key: &str,
) -> Result<SocketAddr> {
    if let Some(addr) = explicit {
        return Ok(addr);
    }
    shifted_port(&base.to_string(), delta)
        .and_then(|s| s.parse().map_err(|_| format!("cannot derive from {base}")))
        .map_err(|why| Error::config(format!("`{key}`: {why}")))
}

impl Config {
    /// Parses TOML text.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key (unknown key, wrong type, missing `node_id`).
    pub fn from_toml(text: &str) -> Result<Config> {
        if let Some(removed) = removed_key(text) {
            return Err(removed);
        }
        // The parser's text is the whole story (key, line, column): it is the message.
        toml::from_str(text).map_err(|e| Error::config(e.to_string().trim_end()))
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config_by(format!("cannot read {}", path.display()), e))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config { context, source } => Error::Config {
                context: format!("{}: {context}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Builds the effective configuration: the file named by `--config` (or the dev-mode default),
    /// then every flag given, then validation.
    ///
    /// # Errors
    /// [`Error::Config`] for an unreadable or invalid file, or an invalid combination of values.
    pub fn load(overrides: &Overrides) -> Result<Config> {
        let mut config = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None => Self::from_toml(DEV_CONFIG)?,
        };
        config.apply(overrides);
        config.validate()?;
        Ok(config)
    }

    /// Whether this configuration is the embedded dev-mode default (no `--config`).
    pub fn is_dev_mode(overrides: &Overrides) -> bool {
        overrides.config.is_none()
    }

    fn apply(&mut self, o: &Overrides) {
        fn set<T: Clone>(dst: &mut T, src: &Option<T>) {
            if let Some(v) = src {
                *dst = v.clone();
            }
        }
        set(&mut self.node_id, &o.node_id);
        set(&mut self.listen_addr, &o.listen_addr);
        if o.advertise_addr.is_some() {
            self.advertise_addr = o.advertise_addr.clone();
        }
        if o.data_dir.is_some() {
            self.data_dir = o.data_dir.clone();
        }
        if o.peer_listen_addr.is_some() {
            self.peer_listen_addr = o.peer_listen_addr;
        }
        if o.peer_advertise_addr.is_some() {
            self.peer_advertise_addr = o.peer_advertise_addr.clone();
        }
        if o.peer_source_ip.is_some() {
            self.peer_source_ip = o.peer_source_ip;
        }
        if o.metrics_addr.is_some() {
            self.metrics_addr = o.metrics_addr;
        }
        set(&mut self.shutdown_timeout_ms, &o.shutdown_timeout_ms);
        set(&mut self.raft.snapshot_chunk_bytes, &o.snapshot_chunk_bytes);
        set(&mut self.raft.read_policy, &o.read_policy);
        set(
            &mut self.raft.max_inflight_proposals,
            &o.max_inflight_proposals,
        );
        set(&mut self.limits.max_connections, &o.max_connections);
        set(
            &mut self.limits.max_inflight_requests,
            &o.max_inflight_requests,
        );
        set(&mut self.limits.max_message_bytes, &o.max_message_bytes);
        set(&mut self.limits.max_ops_per_request, &o.max_ops_per_request);
        set(&mut self.limits.quota_backend_bytes, &o.quota_backend_bytes);
        set(&mut self.events.watch_buffer, &o.watch_buffer);
        set(&mut self.sessions.ttl_ms, &o.session_ttl_ms);
        set(&mut self.sessions.max_sessions, &o.max_sessions);
        set(&mut self.storage.engine, &o.engine);
        set(&mut self.compaction.mode, &o.auto_compaction_mode);
        if let Some(retention) = &o.auto_compaction_retention {
            self.compaction.retention = retention.clone();
        }
        if o.restore_backup.is_some() {
            self.storage.restore_backup = o.restore_backup.clone();
        }
        set(
            &mut self.storage.restore_skip_hash_check,
            &o.restore_skip_hash_check,
        );
        set(&mut self.cluster.initial_members, &o.initial_members);
        set(&mut self.cluster.join, &o.join);
        set(
            &mut self.raft.heartbeat_interval_ms,
            &o.heartbeat_interval_ms,
        );
        set(
            &mut self.raft.election_timeout_min_ms,
            &o.election_timeout_min_ms,
        );
        set(
            &mut self.raft.election_timeout_max_ms,
            &o.election_timeout_max_ms,
        );
        set(&mut self.raft.snapshot_every, &o.snapshot_every);
        set(
            &mut self.raft.keep_logs_after_snapshot,
            &o.keep_logs_after_snapshot,
        );
        set(&mut self.limits.max_key_size, &o.max_key_size);
        set(&mut self.limits.max_value_size, &o.max_value_size);
        set(&mut self.limits.request_timeout_ms, &o.request_timeout_ms);
        set(&mut self.auth.token, &o.auth_token);
        set(&mut self.auth.token_ttl_secs, &o.auth_token_ttl);
        set(&mut self.auth.bcrypt_cost, &o.bcrypt_cost);
        let tls = &mut self.tls;
        for (dst, src) in [
            (&mut tls.cert_file, &o.cert_file),
            (&mut tls.key_file, &o.key_file),
            (&mut tls.trusted_ca_file, &o.trusted_ca_file),
            (&mut tls.peer_cert_file, &o.peer_cert_file),
            (&mut tls.peer_key_file, &o.peer_key_file),
            (&mut tls.peer_trusted_ca_file, &o.peer_trusted_ca_file),
        ] {
            if src.is_some() {
                dst.clone_from(src);
            }
        }
        set(&mut tls.client_cert_auth, &o.client_cert_auth);
        set(&mut tls.peer_client_cert_auth, &o.peer_client_cert_auth);
    }

    /// Checks cross-field rules that TOML types cannot express.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::config(format!("`{key}`: {why}")));
        self.compaction.parse()?;
        self.tls.validate()?;
        if !(4..=31).contains(&self.auth.bcrypt_cost) {
            return bad(
                "auth.bcrypt_cost",
                "must be 4 to 31 (bcrypt's range)".into(),
            );
        }
        if let Err(why) = crate::node::jwt::TokenSpec::parse(&self.auth.token) {
            return bad("auth.token", why);
        }
        if self.auth.token_ttl_secs == 0 {
            return bad("auth.token_ttl_secs", "must be positive".into());
        }
        if self.node_id == 0 {
            return bad("node_id", "must be at least 1".into());
        }
        let members = self.initial_members()?;
        if self.cluster.join.is_empty()
            && !members.is_empty()
            && !members.contains_key(&self.node_id)
        {
            return bad(
                "cluster.initial_members",
                format!(
                    "node_id {} is not a member (members: {:?})",
                    self.node_id,
                    members.keys().collect::<Vec<_>>()
                ),
            );
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 {
            return bad("raft.heartbeat_interval_ms", "must be positive".into());
        }
        if r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            return bad(
                "raft.election_timeout_min_ms",
                "must be greater than raft.heartbeat_interval_ms".into(),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms",
                "must be greater than raft.election_timeout_min_ms".into(),
            );
        }
        if r.snapshot_every == 0 {
            return bad("raft.snapshot_every", "must be positive".into());
        }
        if r.snapshot_chunk_bytes < 1024 {
            return bad("raft.snapshot_chunk_bytes", "must be at least 1024".into());
        }
        let l = &self.limits;
        if l.max_key_size == 0 {
            return bad("limits.max_key_size", "must be positive".into());
        }
        if l.max_value_size == 0 {
            return bad("limits.max_value_size", "must be positive".into());
        }
        if l.request_timeout_ms == 0 {
            return bad("limits.request_timeout_ms", "must be positive".into());
        }
        if l.max_connections == 0 {
            return bad("limits.max_connections", "must be positive".into());
        }
        if l.max_inflight_requests == 0 {
            return bad("limits.max_inflight_requests", "must be positive".into());
        }
        if l.max_message_bytes < l.max_value_size + l.max_key_size {
            return bad(
                "limits.max_message_bytes",
                "must be at least limits.max_value_size + limits.max_key_size".into(),
            );
        }
        if l.max_ops_per_request == 0 {
            return bad("limits.max_ops_per_request", "must be positive".into());
        }
        if self.events.watch_buffer == 0 {
            return bad("events.watch_buffer", "must be positive".into());
        }
        if self.shutdown_timeout_ms == 0 {
            return bad("shutdown_timeout_ms", "must be positive".into());
        }
        if self.sessions.ttl_ms < 1_000 {
            return bad("sessions.ttl_ms", "must be at least 1000".into());
        }
        if self.sessions.max_sessions == 0 {
            return bad("sessions.max_sessions", "must be positive".into());
        }
        self.peer_listen()?;
        self.metrics_listen()?;
        // Addresses other nodes and clients dial must be ones they can dial.
        let info = self.node_info()?;
        for (key, addr) in [
            ("advertise_addr", &info.addr),
            ("peer_advertise_addr", &info.peer_addr),
        ] {
            member_address(addr)
                .map_err(|why| Error::config(format!("`{key}`: `{addr}`: {why}")))?;
        }
        for addr in &self.cluster.join {
            endpoint_uri(addr)
                .and_then(|_| check_scheme(addr, self.tls.client_tls()))
                .map_err(|why| Error::config(format!("`cluster.join`: `{addr}`: {why}")))?;
        }
        Ok(())
    }

    /// The address clients should dial.
    pub fn advertised(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.listen_addr.to_string())
    }

    /// The socket address the Raft transport binds.
    ///
    /// # Errors
    /// [`Error::Config`] when no port can be derived from `listen_addr`.
    pub fn peer_listen(&self) -> Result<SocketAddr> {
        derived_addr(
            self.peer_listen_addr,
            self.listen_addr,
            1,
            "peer_listen_addr",
        )
    }

    /// The socket address `/metrics` and `/health` are served on.
    ///
    /// # Errors
    /// [`Error::Config`] when no port can be derived from `listen_addr`.
    pub fn metrics_listen(&self) -> Result<SocketAddr> {
        derived_addr(self.metrics_addr, self.listen_addr, 2, "metrics_addr")
    }

    /// This node's membership record.
    ///
    /// # Errors
    /// As [`Config::peer_listen`].
    pub fn node_info(&self) -> Result<NodeInfo> {
        let peer = match &self.peer_advertise_addr {
            Some(p) => p.clone(),
            None => self.peer_listen()?.to_string(),
        };
        Ok(NodeInfo::new(self.advertised(), peer))
    }

    /// `cluster.initial_members` with parsed ids; empty means "just this node".
    ///
    /// # Errors
    /// [`Error::Config`] when an id is not a positive integer or an address is empty.
    pub fn initial_members(&self) -> Result<BTreeMap<NodeId, NodeInfo>> {
        let bad = |why: String| Error::config(format!("`cluster.initial_members`: {why}"));
        let mut out = BTreeMap::new();
        for (id, member) in &self.cluster.initial_members {
            let parsed: NodeId = id
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("`{id}` is not a node id (a positive integer)")))?;
            let info = match member {
                MemberAddr::Client(addr) => {
                    NodeInfo::new(addr.clone(), shifted_port(addr, 1).map_err(&bad)?)
                }
                MemberAddr::Full { addr, peer_addr } => {
                    NodeInfo::new(addr.clone(), peer_addr.clone())
                }
            };
            if info.addr.trim().is_empty() || info.peer_addr.trim().is_empty() {
                return Err(bad(format!("node {id} has an empty address")));
            }
            crate::raft::check_dialable(&info).map_err(|e| bad(format!("node {id}: {e}")))?;
            out.insert(parsed, info);
        }
        Ok(out)
    }

    /// The voters to bootstrap with: `initial_members`, or this node alone when that is empty.
    ///
    /// # Errors
    /// As [`Config::initial_members`].
    pub fn bootstrap_members(&self) -> Result<BTreeMap<NodeId, NodeInfo>> {
        let members = self.initial_members()?;
        if members.is_empty() {
            return Ok(BTreeMap::from([(self.node_id, self.node_info()?)]));
        }
        Ok(members)
    }

    /// What a linearizable read asks openraft for, from `raft.read_policy`.
    pub fn linearizer(&self) -> openraft::LinearizerOption {
        match self.raft.read_policy {
            ReadPolicy::ReadIndex => openraft::ReadPolicy::ReadIndex.into(),
            // openraft's lease is election_timeout_max from the send time of the acknowledged
            // heartbeat; followers measure theirs from receipt. Using 90% of it leaves room for
            // clocks that tick at slightly different rates. A lapsed lease triggers a heartbeat
            // round and waits for it rather than failing the read.
            ReadPolicy::Lease => openraft::LinearizerOption::new(
                Some(Duration::from_millis(
                    self.raft.election_timeout_max_ms * 9 / 10,
                )),
                true,
            ),
        }
    }

    /// How quickly the Raft transport drops a dead or stalled peer connection, from the Raft
    /// timers (see [`PeerLiveness`]).
    pub fn peer_liveness(&self) -> PeerLiveness {
        PeerLiveness::new(
            Duration::from_millis(self.raft.heartbeat_interval_ms),
            Duration::from_millis(self.raft.election_timeout_min_ms),
        )
    }

    /// The openraft configuration derived from `[raft]`.
    ///
    /// # Errors
    /// [`Error::Config`] if openraft rejects the combination.
    pub fn openraft_config(&self) -> Result<openraft::Config> {
        let r = &self.raft;
        let config = openraft::Config {
            cluster_name: "rskv".to_string(),
            heartbeat_interval: r.heartbeat_interval_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every),
            max_in_snapshot_log_to_keep: r.keep_logs_after_snapshot,
            snapshot_max_chunk_size: r.snapshot_chunk_bytes,
            install_snapshot_timeout: 10_000,
            // A node that was paused or cut off must not depose a healthy leader when it comes
            // back: with pre-vote it only raises its term once a quorum would elect it. Without
            // it, the fault suite saw every resumed follower force a 1.7–2.2 s election.
            enable_pre_vote: Some(true),
            ..Default::default()
        };
        config.validate().map_err(|e| Error::config_by("`raft`", e))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn compaction_retention_should_be_read_as_etcd_reads_it() {
        let c = |mode, retention: &str| CompactionConfig {
            mode,
            retention: retention.into(),
        };
        use std::time::Duration;
        assert_eq!(
            c(CompactionMode::Periodic, "1").parse().ok(),
            Some(Compaction::Periodic(Duration::from_secs(3600))),
            "a bare number is hours"
        );
        assert_eq!(
            c(CompactionMode::Periodic, "30m").parse().ok(),
            Some(Compaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            c(CompactionMode::Revision, "1000").parse().ok(),
            Some(Compaction::Revision(1000))
        );
        assert_eq!(
            c(CompactionMode::None, "x").parse().ok(),
            Some(Compaction::Off)
        );
        for (mode, bad) in [
            (CompactionMode::Revision, "0"),
            (CompactionMode::Revision, "1h"),
            (CompactionMode::Periodic, "5x"),
            (CompactionMode::Periodic, "0s"),
        ] {
            let err = c(mode, bad).parse().expect_err(bad).to_string();
            assert!(err.contains("compaction.retention"), "{err}");
        }
        assert_eq!(
            CompactionConfig::default().parse().ok(),
            Some(Compaction::Revision(100_000))
        );
    }

    use super::*;

    #[test]
    fn dev_config_should_parse_and_validate() {
        let c = Config::load(&Overrides::default()).expect("dev config");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.listen_addr.to_string(), DEV_ADDR);
        assert_eq!(c.storage.engine, Engine::Memory);
        assert_eq!(c.bootstrap_members().expect("members").len(), 1);
    }

    #[test]
    fn read_policy_should_parse_and_reject_unknown_names() {
        let base = "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n";
        let c = Config::from_toml(base).expect("default");
        assert_eq!(c.raft.read_policy, ReadPolicy::ReadIndex);
        let c =
            Config::from_toml(&format!("{base}[raft]\nread_policy = \"lease\"\n")).expect("lease");
        assert_eq!(c.raft.read_policy, ReadPolicy::Lease);
        let err = Config::from_toml(&format!("{base}[raft]\nread_policy = \"fast\"\n"))
            .expect_err("unknown policy");
        assert!(err.to_string().contains("read_policy"), "{err}");
    }

    #[test]
    fn max_ops_per_request_should_parse_and_refuse_zero() {
        let base = "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[limits]\n";
        let c = Config::from_toml(&format!("{base}max_ops_per_request = 128\n")).expect("parse");
        assert_eq!(c.limits.max_ops_per_request, 128);
        let err = Config::from_toml(&format!("{base}max_ops_per_request = 0\n"))
            .expect("parse")
            .validate()
            .expect_err("zero refused");
        assert!(
            err.to_string().contains("limits.max_ops_per_request"),
            "{err}"
        );
    }

    #[test]
    fn tls_files_should_come_in_complete_sets() {
        let base = "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[tls]\n";
        let full = "cert_file = \"c\"\nkey_file = \"k\"\ntrusted_ca_file = \"ca\"\n";
        let peer = "peer_cert_file = \"c\"\npeer_key_file = \"k\"\npeer_trusted_ca_file = \"ca\"\n";
        for good in [
            full,
            peer,
            &format!("{full}client_cert_auth = true\n{peer}"),
        ] {
            let c = Config::from_toml(&format!("{base}{good}")).expect("parse");
            c.validate().unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        let c = Config::from_toml(&format!("{base}{peer}")).expect("parse");
        assert!(
            c.tls.peer_client_cert_auth,
            "peers require certificates by default"
        );
        for (bad, key) in [
            ("cert_file = \"c\"\n", "tls.cert_file"),
            (
                "cert_file = \"c\"\nkey_file = \"k\"\n",
                "tls.trusted_ca_file",
            ),
            ("client_cert_auth = true\n", "tls.client_cert_auth"),
            (
                "peer_cert_file = \"c\"\npeer_key_file = \"k\"\n",
                "tls.peer_cert_file",
            ),
        ] {
            let err = Config::from_toml(&format!("{base}{bad}"))
                .expect("parse")
                .validate()
                .expect_err(bad);
            assert!(err.to_string().contains(key), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_key_should_be_named() {
        let err = Config::from_toml("node_id = 1\nlisten_addr = \"127.0.0.1:1\"\nbogus = 3\n")
            .expect_err("must fail");
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn a_removed_key_should_be_refused_saying_why() {
        for key in ["history = 10000", "history_bytes = 67108864"] {
            let text = format!("node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[events]\n{key}\n");
            let err = Config::from_toml(&text).expect_err("must fail");
            let name = key.split(' ').next().unwrap_or_default();
            assert!(
                err.to_string()
                    .contains(&format!("`events.{name}` was removed"))
                    && err.to_string().contains("revision"),
                "{err}"
            );
        }
        // The key that stays is still read.
        let c = Config::from_toml(
            "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[events]\nwatch_buffer = 8\n",
        )
        .expect("parse");
        assert_eq!(c.events.watch_buffer, 8);
    }

    #[test]
    fn missing_node_id_should_be_named() {
        let err = Config::from_toml("listen_addr = \"127.0.0.1:1\"\n").expect_err("must fail");
        assert!(err.to_string().contains("node_id"), "{err}");
    }

    #[test]
    fn wrong_type_should_name_key() {
        let err = Config::from_toml("node_id = \"one\"\nlisten_addr = \"127.0.0.1:1\"\n")
            .expect_err("must fail");
        assert!(err.to_string().contains("node_id"), "{err}");
    }

    #[test]
    fn node_outside_membership_should_be_rejected() {
        let mut c = Config::from_toml(DEV_CONFIG).expect("parse");
        c.node_id = 4;
        c.cluster.initial_members = BTreeMap::from([(
            "1".to_string(),
            MemberAddr::Client("127.0.0.1:1".to_string()),
        )]);
        let err = c.validate().expect_err("must fail");
        assert!(err.to_string().contains("initial_members"), "{err}");
    }

    #[test]
    fn overrides_should_replace_file_values() {
        let o = Overrides {
            node_id: Some(7),
            engine: Some(Engine::Rocksdb),
            initial_members: Some(
                parse_members("7=127.0.0.1:9/127.0.0.1:19,8=127.0.0.1:10").expect("parse"),
            ),
            max_value_size: Some(10),
            max_ops_per_request: Some(64),
            ..Default::default()
        };
        let c = Config::load(&o).expect("load");
        assert_eq!(c.node_id, 7);
        assert_eq!(c.storage.engine, Engine::Rocksdb);
        assert_eq!(c.limits.max_value_size, 10);
        assert_eq!(c.limits.max_ops_per_request, 64);
        let members = c.initial_members().expect("members");
        assert_eq!(members[&7].peer_addr, "127.0.0.1:19");
        assert_eq!(
            members[&8].peer_addr, "127.0.0.1:11",
            "default peer port is port + 1"
        );
    }

    #[test]
    fn derived_ports_should_follow_listen_addr() {
        let c = Config::load(&Overrides::default()).expect("dev config");
        assert_eq!(c.peer_listen().expect("peer").to_string(), "127.0.0.1:7380");
        assert_eq!(
            c.metrics_listen().expect("metrics").to_string(),
            "127.0.0.1:7381"
        );
    }

    #[test]
    fn shipped_cluster_configs_should_parse() {
        // Read at run time: a compile-time env! path can be stale when sccache reuses an
        // object built from another checkout.
        let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
        let dir = Path::new(&root).join("../../cluster");
        let mut seen = 0;
        for n in 1..=3 {
            let c = Config::from_file(&dir.join(format!("node{n}.toml"))).expect("parse");
            c.validate().expect("valid");
            assert_eq!(c.node_id, n);
            assert_eq!(c.initial_members().expect("members").len(), 3);
            seen += 1;
        }
        assert_eq!(seen, 3);
    }
}
