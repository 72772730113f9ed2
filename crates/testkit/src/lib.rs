//! # rskv-testkit: real clusters for tests
//!
//! What rskv's integration tests and its fault suite share: free loopback ports that no other
//! test is handed ([`free_ports`]), waiting on a condition with a deadline ([`poll`],
//! [`wait_for`]), real `kv_server` processes started from the built binaries ([`bin`],
//! [`ProcessCluster`]), a client-port proxy a test can break ([`proxy`]), copying and reading data directories
//! ([`fs`]), building etcd requests ([`etcd`]), etcd's `etcdctl` run against the nodes
//! ([`etcdctl`]), throwaway certificate authorities ([`pki`]), and small helpers to read `/metrics` and `/health`. Tests never sleep and hope:
//! they wait on what they need to see.

pub mod etcd;
pub mod etcdctl;
pub mod fs;
pub mod pki;
pub mod proxy;

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use anyhow::bail;
use rskv_client::Client;
use rskv_client::ClientOptions;
use rskv_client::Consistency;

/// A binary of the workspace (`kv_server`, `kv_client`, `kv_bench`, `kv_jepsen`), next to the
/// running test's own directory in the target dir. Binaries of other packages than the test's are
/// built by `cargo build --workspace` (scripts/test.sh does), or by `cargo test --workspace`,
/// which builds every package's binaries for their own integration tests.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from a target dir");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{name} is not built at {}: run `cargo build --workspace` first",
        path.display()
    );
    path
}

/// Path of the built `kv_server` binary.
pub fn server_bin() -> PathBuf {
    bin("kv_server")
}

/// Path of the built `kv_client` binary.
pub fn client_bin() -> PathBuf {
    bin("kv_client")
}

/// Reserves `n` distinct free loopback ports for test nodes ([`free_ports`], panicking when the
/// range is exhausted).
pub fn loopback_ports(n: usize) -> Vec<u16> {
    free_ports(n).expect("free loopback ports")
}

/// Three free loopback ports for a node whose peer port is its client port + 1 (rskv's default
/// layout, which etcd's `MemberAdd` relies on): `[client, peer, metrics]`.
pub fn adjacent_ports() -> [u16; 3] {
    for _ in 0..1000 {
        let p = loopback_ports(3);
        if p[1] == p[0] + 1 {
            return [p[0], p[1], p[2]];
        }
    }
    panic!("no two adjacent free loopback ports found")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    match poll(timeout, POLL_EVERY, check).await {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// How often the waiting helpers check their condition.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// One `kv_server` process.
pub struct NodeProc {
    /// The node's id.
    pub id: u64,
    /// Its client API address.
    pub addr: String,
    /// Its `/metrics` and `/health` address.
    pub metrics_addr: String,
    /// The directory holding its data (under `data/`) and its log.
    pub data_dir: PathBuf,
    /// Its log file (stdout and stderr).
    pub log: PathBuf,
    /// The running process; `None` while it is down.
    pub child: Option<Child>,
    args: Vec<String>,
}

impl NodeProc {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let child = Command::new(server_bin())
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn kv_server");
        self.child = Some(child);
    }

    /// SIGKILL: a crash, no clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for exit; returns the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`STOP`, `CONT`, ...) to the running process.
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("node is running");
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Everything the node has logged (its stdout and stderr), for assertions and failure reports.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `kv_server` processes with data in a temporary directory.
pub struct ProcessCluster {
    /// The nodes, in id order (a removed node is forgotten with [`ProcessCluster::forget`]).
    pub nodes: Vec<NodeProc>,
    /// Holds every node's data and log; removed when the cluster is dropped.
    pub dir: tempfile::TempDir,
    config: PathBuf,
    engine: String,
    extra: Vec<String>,
    /// How the harness's clients dial the nodes (TLS clusters).
    tls: Option<rskv_client::tls::TlsDialer>,
}

impl ProcessCluster {
    /// Starts `n` nodes with the given engine (`memory` or `rocksdb`) and extra flags.
    pub fn start(n: usize, engine: &str, extra: &[&str]) -> ProcessCluster {
        Self::start_advertising(n, engine, extra, None)
    }

    /// As [`ProcessCluster::start`], every node serving its client and peer ports in mutual TLS
    /// with `identity` (issued by `ca`, see [`pki`]), requiring client certificates; the
    /// harness's clients present `identity` too.
    pub fn start_tls(
        n: usize,
        engine: &str,
        extra: &[&str],
        ca: &pki::TestCa,
        identity: &pki::Identity,
    ) -> ProcessCluster {
        let mut flags = pki::node_flags(&ca.ca_file, identity);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut cluster = Self::start(n, engine, &flags);
        cluster.tls = Some(
            rskv_client::tls::TlsDialer::from_files(
                &ca.ca_file,
                Some((identity.cert.as_path(), identity.key.as_path())),
            )
            .expect("client TLS"),
        );
        cluster
    }

    /// How the harness's clients dial the nodes (`None`: plaintext).
    pub fn tls(&self) -> Option<rskv_client::tls::TlsDialer> {
        self.tls.clone()
    }

    /// As [`ProcessCluster::start`], with a [`proxy`] in front of every node's client port: the
    /// nodes advertise their proxy (so NOT_LEADER redirects lead through it too), and clients
    /// given [`ProcessCluster::proxied_endpoints`] go through them. `cluster.client()` and the
    /// harness's own status calls still go straight to the nodes.
    pub async fn start_proxied(
        n: usize,
        engine: &str,
        extra: &[&str],
    ) -> (
        ProcessCluster,
        Vec<String>,
        std::sync::Arc<proxy::ProxyControl>,
    ) {
        let control = proxy::ProxyControl::new();
        let proxies: Vec<String> = loopback_ports(n)
            .into_iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let cluster = Self::start_advertising(n, engine, extra, Some(&proxies));
        for (node, listen) in cluster.nodes.iter().zip(&proxies) {
            proxy::start(listen, node.addr.clone(), control.clone()).await;
        }
        (cluster, proxies, control)
    }

    /// Starts the nodes; `advertised` overrides the client address each one advertises.
    fn start_advertising(
        n: usize,
        engine: &str,
        extra: &[&str],
        advertised: Option<&[String]>,
    ) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // Three ports per node: client API, Raft peer, metrics.
        let ports = loopback_ports(3 * n);
        let client_addr = |i: usize| match advertised {
            Some(addrs) => addrs[i].clone(),
            None => format!("127.0.0.1:{}", ports[3 * i]),
        };
        let members: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    "{}={}/127.0.0.1:{}",
                    i + 1,
                    client_addr(i),
                    ports[3 * i + 1]
                )
            })
            .collect();
        let config = dir.path().join("base.toml");
        std::fs::write(
            &config,
            "node_id = 1\nlisten_addr = \"127.0.0.1:1\"\n[raft]\nheartbeat_interval_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n",
        )
        .expect("write config");
        let mut cluster = ProcessCluster {
            nodes: Vec::new(),
            dir,
            config,
            engine: engine.to_string(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: None,
        };
        for i in 0..n {
            let node_ports = [ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]];
            let mut args = vec!["--initial-members".to_string(), members.join(",")];
            if advertised.is_some() {
                args.extend(["--advertise-addr".to_string(), client_addr(i)]);
            }
            cluster.spawn_node((i + 1) as u64, node_ports, args);
        }
        cluster
    }

    fn spawn_node(&mut self, id: u64, ports: [u16; 3], membership: Vec<String>) {
        let data_dir = self.dir.path().join(format!("node{id}"));
        std::fs::create_dir_all(&data_dir).expect("mkdir");
        let addr = format!("127.0.0.1:{}", ports[0]);
        let mut args: Vec<String> = vec![
            "--config".into(),
            self.config.display().to_string(),
            "--node-id".into(),
            id.to_string(),
            "--listen-addr".into(),
            addr.clone(),
            "--peer-listen-addr".into(),
            format!("127.0.0.1:{}", ports[1]),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", ports[2]),
            "--data-dir".into(),
            data_dir.join("data").display().to_string(),
            "--engine".into(),
            self.engine.clone(),
        ];
        args.extend(membership);
        args.extend(self.extra.iter().cloned());
        let mut node = NodeProc {
            id,
            metrics_addr: format!("127.0.0.1:{}", ports[2]),
            addr,
            log: data_dir.join("node.log"),
            data_dir,
            child: None,
            args,
        };
        node.spawn();
        self.nodes.push(node);
    }

    /// Starts a new, empty node `id` that joins through the current members.
    pub fn add_joining_node(&mut self, id: u64) {
        let p = loopback_ports(3);
        self.add_joining_node_on(id, [p[0], p[1], p[2]]);
    }

    /// Starts a new, empty node `id` on the given client, peer and metrics ports that joins
    /// through the current members (for a member added beforehand with known addresses).
    pub fn add_joining_node_on(&mut self, id: u64, ports: [u16; 3]) {
        let join = vec!["--join".to_string(), self.endpoints().join(",")];
        self.spawn_node(id, ports, join);
    }

    /// Kills node `id` and deletes its data directory (a replaced disk).
    pub fn wipe(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.kill();
        let data = node.data_dir.join("data");
        std::fs::remove_dir_all(&data).expect("wipe data dir");
    }

    /// Restarts node `id` as an empty node joining through the other members.
    pub fn rejoin(&mut self, id: u64) {
        let others = self.endpoints_except(id);
        let node = self.node_mut(id);
        node.kill();
        if let Some(pos) = node.args.iter().position(|a| a == "--initial-members") {
            node.args.drain(pos..pos + 2);
        }
        node.args.push("--join".into());
        node.args.push(others.join(","));
        node.spawn();
    }

    /// Drops node `id` from the harness (after it was removed from the cluster).
    pub fn forget(&mut self, id: u64) {
        self.nodes.retain(|n| n.id != id);
    }

    /// The nodes' client addresses (the real ports, not a proxy's).
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// The client addresses of every node but `id`.
    pub fn endpoints_except(&self, id: u64) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.id != id)
            .map(|n| n.addr.clone())
            .collect()
    }

    /// A library client of every node, with a deadline long enough for an election.
    pub fn client(&self) -> Client {
        Client::with_options(
            self.endpoints(),
            ClientOptions {
                deadline: Duration::from_secs(15),
                tls: self.tls.clone(),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    }

    /// A client that only knows one node (to exercise redirects).
    pub fn client_for(&self, id: u64) -> Client {
        Client::with_options(
            vec![self.node(id).addr.clone()],
            ClientOptions {
                deadline: Duration::from_secs(15),
                tls: self.tls.clone(),
                ..ClientOptions::default()
            },
        )
        .expect("client")
    }

    /// Node `id` (panics if there is none: a test bug).
    pub fn node(&self, id: u64) -> &NodeProc {
        self.nodes.iter().find(|n| n.id == id).expect("node id")
    }

    /// Node `id`, to kill, signal or restart it.
    pub fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes.iter_mut().find(|n| n.id == id).expect("node id")
    }

    /// Waits until the running nodes agree on one leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> u64 {
        let client = self.client();
        let running: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.addr.clone())
            .collect();
        self.wait("a leader all running nodes agree on", timeout, || {
            let client = &client;
            let running = running.clone();
            async move {
                let mut leader = None;
                for addr in &running {
                    let s = client.status_of(addr).await.ok()?;
                    let l = s.leader_id?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                let s = client.status_of(&self.node(l).addr).await.ok()?;
                (s.role == "leader").then_some(l)
            }
        })
        .await
    }

    /// As [`wait_for`], but the panic on timeout carries the end of every node's log, so a
    /// failure in CI says why.
    pub async fn wait<T, F, Fut>(&self, what: &str, timeout: Duration, check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        match poll(timeout, POLL_EVERY, check).await {
            Some(v) => v,
            None => panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                self.log_tails(30)
            ),
        }
    }

    /// The last `lines` lines of every node's log, each under a header naming the node.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = node.log_text();
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            out.push_str(&format!(
                "--- node {} ({}), last {} lines of {}:\n{}\n",
                node.id,
                node.addr,
                tail.len(),
                node.log.display(),
                tail.join("\n")
            ));
        }
        out
    }

    /// A 3-node cluster of `engine` that snapshots every 50 writes keeping no log behind, with
    /// one follower stopped: the writes that follow reach it only by snapshot once it restarts.
    /// Returns the cluster, the leader and the stopped follower.
    pub async fn start_with_a_follower_down(engine: &str) -> (ProcessCluster, u64, u64) {
        let mut cluster = ProcessCluster::start(
            3,
            engine,
            &["--snapshot-every", "50", "--keep-logs-after-snapshot", "0"],
        );
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        let lagging = cluster.follower_of(leader);
        cluster.kill(lagging);
        (cluster, leader, lagging)
    }

    /// Some node other than `leader`.
    pub fn follower_of(&self, leader: u64) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.id)
            .find(|id| *id != leader)
            .expect("a node other than the leader")
    }

    /// SIGKILLs node `id`: a crash.
    pub fn kill(&mut self, id: u64) {
        self.node_mut(id).kill();
    }

    /// SIGKILLs node `id` and starts it again on the same data and ports.
    pub fn restart(&mut self, id: u64) {
        let node = self.node_mut(id);
        node.kill();
        node.spawn();
    }

    /// Waits until node `id` serves `key` = `value` from its own state machine.
    pub async fn wait_stale_value(
        &self,
        id: u64,
        key: &str,
        value: Option<&str>,
        timeout: Duration,
    ) {
        let client = self.client_for(id);
        let expected = value.map(|v| bytes::Bytes::copy_from_slice(v.as_bytes()));
        self.wait(&format!("node {id} to apply {key}"), timeout, || {
            let client = &client;
            let expected = expected.clone();
            async move {
                let r = client
                    .get_with(key.to_string(), Consistency::Stale)
                    .await
                    .ok()?;
                let got = r.found.then_some(r.value);
                (got == expected).then_some(())
            }
        })
        .await
    }
}

impl NodeProc {
    /// Wraps a process the test spawned itself.
    pub fn attach(
        id: u64,
        addr: String,
        metrics_addr: String,
        data_dir: PathBuf,
        log: PathBuf,
        child: Child,
    ) -> NodeProc {
        NodeProc {
            id,
            addr,
            metrics_addr,
            data_dir,
            log,
            child: Some(child),
            args: Vec::new(),
        }
    }
}

/// A bare gRPC client of one node's `Kv` service: no redirects, no retries, no session, as an
/// independent client would be.
pub fn raw_kv(addr: &str) -> rskv_proto::kv::kv_client::KvClient<tonic::transport::Channel> {
    let channel =
        rskv_client::transport::lazy_channel(addr, Duration::from_secs(1), None).expect("channel");
    rskv_proto::kv::kv_client::KvClient::new(channel)
}

/// Fetches `http://addr/path` with a plain HTTP/1.0 request; returns (status code, body).
pub async fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    http_get_over(stream, addr, path).await
}

/// As [`http_get`], over TLS (`https://addr/path`) dialled by `tls`; `None` also when the
/// handshake fails.
pub async fn https_get(
    addr: &str,
    path: &str,
    tls: &rskv_client::tls::TlsDialer,
) -> Option<(u16, String)> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let stream = tls.handshake_for(host, stream, b"http/1.1").await.ok()?;
    http_get_over(stream, addr, path).await
}

async fn http_get_over<S>(mut stream: S, addr: &str, path: &str) -> Option<(u16, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    // A TLS peer may close without close_notify; what was read is the response.
    let _ = stream.read_to_string(&mut response).await;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())?;
    Some((status, body))
}

/// The value of the Prometheus sample `name{labels}` (labels as rendered, e.g.
/// `method="put",code="OK"`; empty for an unlabelled metric); 0 when absent.
pub fn metric_value(text: &str, name: &str, labels: &str) -> f64 {
    let wanted = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            (series == wanted).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Checks that a finished command exited with `code` and said `needle` on stderr (the CLIs'
/// contract for bad input: a message and a non-zero exit, never a panic); returns its stderr.
pub fn expect_failure(out: &std::process::Output, code: i32, needle: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(
        err.contains(needle),
        "stderr should mention `{needle}`: {err}"
    );
    err
}

/// `rskv_requests_total` of `method` answered OK, whichever order the exporter rendered the two
/// labels in.
pub fn ok_requests(text: &str, method: &str) -> f64 {
    metric_value(
        text,
        "rskv_requests_total",
        &format!(r#"method="{method}",code="OK""#),
    ) + metric_value(
        text,
        "rskv_requests_total",
        &format!(r#"code="OK",method="{method}""#),
    )
}

/// Asserts that every acknowledged key is among the stored `pairs`; returns the stored keys.
pub fn assert_acknowledged_stored(
    pairs: &[(bytes::Bytes, bytes::Bytes)],
    acked: &[String],
) -> std::collections::HashSet<bytes::Bytes> {
    let stored: std::collections::HashSet<bytes::Bytes> =
        pairs.iter().map(|(k, _)| k.clone()).collect();
    for key in acked {
        assert!(
            stored.contains(key.as_bytes()),
            "acknowledged write {key} lost"
        );
    }
    stored
}

/// Calls `check` every `every` until it returns `Some`, or gives up once `timeout` has passed:
/// the suite's one way of waiting on a condition with a deadline.
pub async fn poll<T, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(v) = check().await {
            return Some(v);
        }
        tokio::time::sleep(every).await;
    }
    None
}

/// Reserves `n` distinct free loopback ports for nodes that start later.
///
/// Nodes are separate processes that must know each other's addresses before they bind, so
/// ports are chosen here and bound by the nodes afterwards. `bind(0)` would hand out ports from
/// the kernel's ephemeral range (32768-60999 by default), and a port released there can go to the
/// next `bind(0)` of a test running alongside, or to an outgoing connection, before its node
/// binds it: that node then exits with "address in use". These ports come from below that range
/// ([`PORT_LOW`] to [`PORT_LOW`] + [`PORT_SPAN`]), one process hands out no port twice until it
/// has gone through all [`PORT_SPAN`] of them, and each process starts at an offset derived from
/// its pid, so processes side by side rarely try the same ports. A port is handed out only if it can be bound right now.
///
/// # Errors
/// When the whole range has been tried and `n` ports are still not free.
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        AtomicU64::new(u64::from(std::process::id()).wrapping_mul(7919) % u64::from(PORT_SPAN))
    });
    let mut ports = Vec::with_capacity(n);
    for _ in 0..PORT_SPAN {
        if ports.len() == n {
            break;
        }
        let offset = next.fetch_add(1, Ordering::Relaxed) % u64::from(PORT_SPAN);
        let port = PORT_LOW + u16::try_from(offset).unwrap_or(0);
        if std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).is_ok() {
            ports.push(port);
        }
    }
    if ports.len() < n {
        bail!(
            "only {} of {n} loopback ports in {PORT_LOW}-{} are free",
            ports.len(),
            PORT_LOW + PORT_SPAN - 1
        );
    }
    Ok(ports)
}

/// First port [`free_ports`] hands out: below the kernel's ephemeral range, above the ports
/// services usually listen on.
pub const PORT_LOW: u16 = 20_000;

/// How many ports [`free_ports`] cycles through.
pub const PORT_SPAN: u16 = 12_000;
