//! Node configuration: a TOML file, every key overridable by a command-line flag.
//!
//! Loading goes file (or the embedded dev-mode default) → flags → [`Config::validate`]. Unknown
//! keys are errors (`deny_unknown_fields`), so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;

use clap::Args;
use serde::Deserialize;
use serde::Serialize;

use crate::error::Error;
use crate::error::Result;
use crate::raft::NodeId;

/// The address dev mode listens on, and the address `kv_client` talks to by default.
pub const DEV_ADDR: &str = "127.0.0.1:50051";

/// The configuration `kv_server` uses when started without `--config`: a single-node cluster on
/// [`DEV_ADDR`] whose data lives in a temporary directory unless `--data-dir` is given.
pub const DEV_CONFIG: &str = r#"
node_id = 1
listen_addr = "127.0.0.1:50051"

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
    /// Socket address the gRPC server binds (client API and Raft RPCs share it).
    pub listen_addr: SocketAddr,
    /// Address other nodes and clients dial to reach this node; defaults to `listen_addr`.
    #[serde(default)]
    pub advertise_addr: Option<String>,
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
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `memory` or `rocksdb`.
    pub engine: Engine,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Rocksdb,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The voters a brand-new cluster starts with, id → advertised address. Every listed node
    /// initializes the cluster with this same set on first start (later starts ignore it). Empty
    /// means a single-node cluster of this node alone.
    #[serde(default)]
    pub initial_members: BTreeMap<String, String>,
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
    /// Build a snapshot (and purge the log before it) every this many applied entries.
    pub snapshot_every: u64,
    /// Log entries kept behind the last snapshot, so briefly lagging followers need no snapshot.
    pub keep_logs_after_snapshot: u64,
    /// Size of the chunks a snapshot is streamed in.
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1000,
            snapshot_every: 50_000,
            keep_logs_after_snapshot: 5_000,
            snapshot_chunk_bytes: 1024 * 1024,
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_key_size: 4 * 1024,
            max_value_size: 1024 * 1024,
            request_timeout_ms: 5_000,
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
    /// data_dir
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// storage.engine
    #[arg(long, value_enum)]
    pub engine: Option<Engine>,
    /// cluster.initial_members, as `ID=ADDR,ID=ADDR,...`
    #[arg(long, value_parser = parse_members)]
    pub initial_members: Option<BTreeMap<String, String>>,
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
    /// limits.max_key_size
    #[arg(long)]
    pub max_key_size: Option<usize>,
    /// limits.max_value_size
    #[arg(long)]
    pub max_value_size: Option<usize>,
    /// limits.request_timeout_ms
    #[arg(long)]
    pub request_timeout_ms: Option<u64>,
}

fn parse_members(s: &str) -> std::result::Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=ADDR"))?;
        out.insert(id.trim().to_string(), addr.trim().to_string());
    }
    Ok(out)
}

impl Config {
    /// Parses TOML text.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending key (unknown key, wrong type, missing `node_id`).
    pub fn from_toml(text: &str) -> Result<Config> {
        toml::from_str(text).map_err(|e| Error::Config(e.to_string().trim_end().to_string()))
    }

    /// Reads and parses a TOML file.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or parsed.
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
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
        set(&mut self.storage.engine, &o.engine);
        set(&mut self.cluster.initial_members, &o.initial_members);
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
    }

    /// Checks cross-field rules that TOML types cannot express.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: String| Err(Error::Config(format!("`{key}`: {why}")));
        if self.node_id == 0 {
            return bad("node_id", "must be at least 1".into());
        }
        let members = self.initial_members()?;
        if !members.is_empty() && !members.contains_key(&self.node_id) {
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
        Ok(())
    }

    /// The address peers and clients should dial.
    pub fn advertised(&self) -> String {
        self.advertise_addr
            .clone()
            .unwrap_or_else(|| self.listen_addr.to_string())
    }

    /// `cluster.initial_members` with parsed ids; empty means "just this node".
    ///
    /// # Errors
    /// [`Error::Config`] when an id is not a positive integer or an address is empty.
    pub fn initial_members(&self) -> Result<BTreeMap<NodeId, String>> {
        let mut out = BTreeMap::new();
        for (id, addr) in &self.cluster.initial_members {
            let parsed: NodeId = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                Error::Config(format!(
                    "`cluster.initial_members`: `{id}` is not a node id (a positive integer)"
                ))
            })?;
            if addr.trim().is_empty() {
                return Err(Error::Config(format!(
                    "`cluster.initial_members`: node {id} has an empty address"
                )));
            }
            out.insert(parsed, addr.clone());
        }
        Ok(out)
    }

    /// The voters to bootstrap with: `initial_members`, or this node alone when that is empty.
    ///
    /// # Errors
    /// As [`Config::initial_members`].
    pub fn bootstrap_members(&self) -> Result<BTreeMap<NodeId, String>> {
        let members = self.initial_members()?;
        if members.is_empty() {
            return Ok(BTreeMap::from([(self.node_id, self.advertised())]));
        }
        Ok(members)
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
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| Error::Config(format!("`raft`: {e}")))
    }
}

#[cfg(test)]
mod tests {
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
    fn unknown_key_should_be_named() {
        let err = Config::from_toml("node_id = 1\nlisten_addr = \"127.0.0.1:1\"\nbogus = 3\n")
            .expect_err("must fail");
        assert!(err.to_string().contains("bogus"), "{err}");
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
        c.cluster.initial_members = BTreeMap::from([("1".to_string(), "127.0.0.1:1".to_string())]);
        let err = c.validate().expect_err("must fail");
        assert!(err.to_string().contains("initial_members"), "{err}");
    }

    #[test]
    fn overrides_should_replace_file_values() {
        let o = Overrides {
            node_id: Some(7),
            engine: Some(Engine::Rocksdb),
            initial_members: Some(parse_members("7=127.0.0.1:9,8=127.0.0.1:10").expect("parse")),
            max_value_size: Some(10),
            ..Default::default()
        };
        let c = Config::load(&o).expect("load");
        assert_eq!(c.node_id, 7);
        assert_eq!(c.storage.engine, Engine::Rocksdb);
        assert_eq!(c.limits.max_value_size, 10);
        assert_eq!(c.initial_members().expect("members").len(), 2);
    }

    #[test]
    fn shipped_cluster_configs_should_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster");
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
