//! The suite's `kv_server` processes: start, signal, wrap (libfaketime, libfiu), wipe, rejoin.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::Child;
use tokio::process::Command;

use super::net::NodeAddrs;
use crate::poll;
use rskv_client::Client;
use rskv_client::ClientOptions;

/// libfaketime's multi-threaded preload library (Debian package `faketime`).
pub const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// libfiu's preload libraries (Debian package `fiu-utils`).
pub const FIU_LIBS: [&str; 2] = [
    "/usr/lib/fiu/fiu_run_preload.so",
    "/usr/lib/fiu/fiu_posix_preload.so",
];

/// A fault injected by starting the process with a preload library.
#[derive(Debug, Clone, PartialEq)]
pub enum Wrapper {
    /// Started normally.
    None,
    /// libfaketime with this `FAKETIME` spec (offset and rate, e.g. `+120s x1.5`).
    Faketime(String),
    /// libfiu failing fsync/fdatasync with this probability.
    FailFsync(f64),
}

/// One node process.
pub struct NodeProc {
    /// Raft node id.
    pub id: u64,
    /// Its addresses.
    pub addrs: NodeAddrs,
    /// Its directory (data under `data/`, output in `node.log`).
    pub dir: PathBuf,
    /// The running process, if any.
    pub child: Option<Child>,
    /// Stopped with SIGSTOP.
    pub paused: bool,
    /// How the next start is wrapped.
    pub wrapper: Wrapper,
    /// Bootstrap membership flag value, or `--join` addresses after a wipe.
    start_args: Vec<String>,
    base_args: Vec<String>,
    server_bin: PathBuf,
}

impl NodeProc {
    /// Path of the node's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("node.log")
    }

    /// Starts the process (with the current wrapper).
    ///
    /// # Errors
    /// When the process cannot be spawned.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        use std::io::Write;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .context("opening node log")?;
        let _ = writeln!(
            log,
            "=== suite: starting node {} ({:?})",
            self.id, self.wrapper
        );
        let mut cmd = match &self.addrs.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.server_bin);
                c
            }
            None => Command::new(&self.server_bin),
        };
        cmd.args(&self.base_args)
            .args(&self.start_args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("cloning log handle")?)
            .stderr(log)
            .kill_on_drop(true);
        match &self.wrapper {
            Wrapper::None => {}
            Wrapper::Faketime(spec) => {
                cmd.env("LD_PRELOAD", FAKETIME_LIB)
                    .env("FAKETIME", spec)
                    .env("FAKETIME_NO_CACHE", "1");
            }
            Wrapper::FailFsync(p) => {
                cmd.env("LD_PRELOAD", FIU_LIBS.join(" ")).env(
                    "FIU_ENABLE",
                    format!("enable_random name=posix/io/sync/*,probability={p}"),
                );
            }
        }
        self.child = Some(cmd.spawn().context("spawning kv_server")?);
        self.paused = false;
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref()?.id().map(|p| p as i32)
    }

    /// Sends `signal`; false when there is no live process.
    pub fn signal(&self, signal: i32) -> bool {
        match self.pid() {
            // SAFETY: kill(2) on our own child's pid.
            Some(pid) => unsafe { libc::kill(pid, signal) == 0 },
            None => false,
        }
    }

    /// Whether the process is alive (a paused one counts).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
        self.paused = false;
    }

    /// SIGSTOP.
    pub fn pause(&mut self) -> bool {
        self.paused = self.signal(libc::SIGSTOP);
        self.paused
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        if self.paused {
            self.signal(libc::SIGCONT);
            self.paused = false;
        }
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns the exit code, `None` when it
    /// had to be killed.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.resume();
        self.signal(libc::SIGTERM);
        let mut child = self.child.take()?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                None
            }
        }
    }

    /// Whether its last start was as a joining node (it asks for promotion until it is a voter).
    pub fn is_joining(&self) -> bool {
        self.start_args.first().is_some_and(|a| a == "--join")
    }
}

/// All nodes of one run.
pub struct Cluster {
    /// The nodes, index = id - 1.
    pub nodes: Vec<NodeProc>,
    /// An admin client (status) with short deadlines.
    pub admin: Client,
    /// A client for membership changes, which may wait for a leadership hand-off.
    pub members: Client,
}

/// Options for a whole cluster.
pub struct ClusterSpec {
    /// `memory` or `rocksdb`.
    pub engine: String,
    /// The `kv_server` binary.
    pub server_bin: PathBuf,
    /// Where node directories go.
    pub dir: PathBuf,
    /// Extra flags for every node.
    pub extra_args: Vec<String>,
    /// How the harness's clients dial the nodes (`None`: plaintext).
    pub tls: Option<rskv_client::tls::TlsDialer>,
}

impl Cluster {
    /// Starts one node per address set, bootstrapping them as one cluster.
    ///
    /// # Errors
    /// When a process cannot be started.
    pub fn start(spec: &ClusterSpec, addrs: &[NodeAddrs]) -> anyhow::Result<Cluster> {
        let members: Vec<String> = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={}/{}", i + 1, a.client, a.peer_advertise))
            .collect();
        let mut nodes = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            let id = i as u64 + 1;
            let dir = spec.dir.join(format!("node{id}"));
            std::fs::create_dir_all(&dir).context("creating node directory")?;
            let mut base_args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--listen-addr".into(),
                a.client.to_string(),
                "--peer-listen-addr".into(),
                a.peer_listen.to_string(),
                "--peer-advertise-addr".into(),
                a.peer_advertise.to_string(),
                "--metrics-addr".into(),
                a.metrics.to_string(),
                "--data-dir".into(),
                dir.join("data").display().to_string(),
                "--engine".into(),
                spec.engine.clone(),
            ];
            if let Some(ip) = a.peer_source_ip {
                base_args.push("--peer-source-ip".into());
                base_args.push(ip.to_string());
            }
            base_args.extend(spec.extra_args.iter().cloned());
            let mut node = NodeProc {
                id,
                addrs: a.clone(),
                dir,
                child: None,
                paused: false,
                wrapper: Wrapper::None,
                start_args: vec!["--initial-members".into(), members.join(",")],
                base_args,
                server_bin: spec.server_bin.clone(),
            };
            node.spawn()?;
            nodes.push(node);
        }
        let client = |deadline: u64, attempt: u64| {
            Client::with_options(
                addrs.iter().map(|a| a.client.to_string()),
                ClientOptions {
                    deadline: Duration::from_secs(deadline),
                    attempt_timeout: Duration::from_secs(attempt),
                    tls: spec.tls.clone(),
                    ..ClientOptions::default()
                },
            )
        };
        let admin = client(2, 1)?;
        let members = client(20, 10)?;
        Ok(Cluster {
            nodes,
            admin,
            members,
        })
    }

    /// Client addresses of all nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.addrs.client.to_string())
            .collect()
    }

    /// The node with this id.
    pub fn node_mut(&mut self, id: u64) -> Option<&mut NodeProc> {
        self.nodes.iter_mut().find(|n| n.id == id)
    }

    /// The leader that a running, unpaused node calling itself leader reports, if any.
    pub async fn leader(&self) -> Option<u64> {
        for node in &self.nodes {
            if node.child.is_none() || node.paused {
                continue;
            }
            let addr = node.addrs.client.to_string();
            let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_secs(1), self.admin.status_of(&addr)).await
            else {
                continue;
            };
            if s.role == "leader" {
                return Some(node.id);
            }
        }
        None
    }

    /// The voters in the leader's membership, if a leader answers within a few seconds.
    pub async fn voters(&self) -> Option<Vec<u64>> {
        poll(
            Duration::from_secs(1),
            Duration::from_millis(200),
            || async {
                let s = self.admin.leader_status().await.ok()?;
                Some(s.members.iter().filter(|m| m.voter).map(|m| m.id).collect())
            },
        )
        .await
    }

    /// Whether `id` stops being a voter within 10 s (a removal whose reply was an error may
    /// still commit).
    pub async fn left_voters(&self, id: u64) -> bool {
        poll(
            Duration::from_secs(10),
            Duration::from_millis(250),
            || async { self.voters().await.filter(|v| !v.contains(&id)).map(|_| ()) },
        )
        .await
        .is_some()
    }

    /// Kills node `id`, deletes its data (a replaced disk) and starts it empty, joining through
    /// the other nodes.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub async fn wipe_and_rejoin(&mut self, id: u64) -> anyhow::Result<()> {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.addrs.client.to_string())
            .collect();
        let Some(node) = self.node_mut(id) else {
            return Ok(());
        };
        node.kill().await;
        let _ = std::fs::remove_dir_all(node.dir.join("data"));
        node.start_args = vec!["--join".into(), peers.join(",")];
        node.spawn()
    }

    /// Waits until every node is running and a voter in the leader's membership, with one
    /// leader that every node follows; returns the leader.
    pub async fn wait_healthy(&self, timeout: Duration) -> Option<u64> {
        poll(timeout, Duration::from_millis(100), || {
            self.healthy_leader()
        })
        .await
    }

    async fn healthy_leader(&self) -> Option<u64> {
        let leader = self.leader().await?;
        for node in &self.nodes {
            let addr = node.addrs.client.to_string();
            let s = tokio::time::timeout(Duration::from_secs(1), self.admin.status_of(&addr))
                .await
                .ok()?
                .ok()?;
            if s.leader_id != Some(leader) {
                return None;
            }
            if node.id == leader {
                let voters: Vec<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.id).collect();
                if self.nodes.iter().any(|n| !voters.contains(&n.id)) {
                    return None;
                }
            }
        }
        Some(leader)
    }
}
