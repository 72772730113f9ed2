//! # rskv-jepsen: the Jepsen-style fault suite behind `kv_jepsen` and `scripts/jepsen.sh`
//!
//! It drives real `kv_server` processes through the client library only (it knows nothing of the
//! server's code), as an outside client would.
//!
//! A run starts a cluster of real `kv_server` processes on a network the suite builds itself
//! ([`net`]), drives a register workload through the library client recording every operation
//! ([`workload`]) and a counter incremented by compare-and-swap, watches every node ([`watch`]),
//! injects faults ([`nemesis`]), heals, reads every key at the end, and checks: the history is
//! linearizable ([`crate::checker`]), every acknowledged write survives or was overwritten, the
//! counter holds exactly the acknowledged increments (plus at most the unknown ones), all nodes
//! hold the same data, and every watcher saw one common event sequence without gaps. The summary
//! counts the writes whose outcome stayed unknown. Everything lands in one results folder.
//!
//! With `--workload etcd` (or `all`) the [`etcd`] workload drives etcd's v3 API through the
//! `etcd-client` crate instead (or as well): registers updated by Txn, watches from revision 1
//! on every node, and a lease-held lock, each checked on what etcd promises.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod checker;
pub mod etcd;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod tls;
pub mod watch;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::bail;
use anyhow::Context;
use serde::Serialize;
use tokio::sync::watch as signal;

use crate::checker::Op;
use crate::checker::OpKind;
use crate::checker::Outcome;
use nemesis::Fault;
use nemesis::NemesisKind;
use net::Net;
use net::NetKind;
use nodes::Cluster;
use nodes::ClusterSpec;
use rskv_client::Consistency;

/// A failing key's sub-history up to this many operations is printed in the summary.
const SHOW_OPS: usize = 40;

/// Saves a non-linearizable key's sub-history as `anomaly-<key>.jsonl` in `dir` and describes
/// it: a short sub-history is included whole, a long one (a fault run's key can have hundreds of
/// thousands of operations) only named, so the report stays readable.
pub fn save_anomaly(dir: &Path, key: &str, ops: &[checker::Op]) -> String {
    let text = checker::to_jsonl(ops);
    let path = dir.join(format!("anomaly-{}.jsonl", key.replace('/', "_")));
    let saved = match std::fs::write(&path, &text) {
        Ok(()) => format!("saved to {}", path.display()),
        Err(e) => format!("not saved to {}: {e}", path.display()),
    };
    let mut message = format!("key {key} is not linearizable ({} ops, {saved})", ops.len());
    if ops.len() <= SHOW_OPS {
        for line in text.lines() {
            message.push_str("\n      ");
            message.push_str(line);
        }
    }
    message
}

/// Keys of the register workload live under this prefix (watched on every node).
pub const KEY_PREFIX: &str = "jk/";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cluster size.
    pub nodes: usize,
    /// How long the workload and the faults run.
    pub time: Duration,
    /// The faults to mix.
    pub nemeses: Vec<NemesisKind>,
    /// Total client operations per second.
    pub rate: f64,
    /// Number of keys (independent registers).
    pub keys: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// State machine engine: `rocksdb` or `memory`.
    pub engine: String,
    /// The network; `None` picks namespaces when root, else the proxy.
    pub net: Option<NetKind>,
    /// Length of one fault, and of the calm between two.
    pub interval: Duration,
    /// The `kv_server` binary.
    pub server_bin: PathBuf,
    /// The results folder (created).
    pub results: PathBuf,
    /// Seed for every random choice.
    pub seed: u64,
    /// Checker search budget per key.
    pub check_budget: u64,
    /// Extra flags for every node.
    pub server_args: Vec<String>,
    /// Workload reads served locally by any node (stale; serializable Ranges in the etcd
    /// workload): not linearizable by design, so a run with faults should fail; shows that the
    /// checks can fail.
    pub stale_reads: bool,
    /// Which workloads run.
    pub workloads: Workloads,
    /// Mutual TLS on every node's client and peer ports, every client with a certificate.
    pub tls: bool,
}

/// The workloads of a run (any together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workloads {
    /// The register workload, the counter and the watchers, through rskv's own client.
    pub register: bool,
    /// The etcd workload ([`etcd`]): registers by Txn, watches from revision 1 and a lease-held
    /// lock, through the `etcd-client` crate.
    pub etcd: bool,
}

impl Default for Workloads {
    fn default() -> Workloads {
        Workloads {
            register: true,
            etcd: false,
        }
    }
}

impl std::fmt::Display for Workloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.register, self.etcd) {
            (true, true) => write!(f, "register,etcd"),
            (false, true) => write!(f, "etcd"),
            _ => write!(f, "register"),
        }
    }
}

impl std::str::FromStr for Workloads {
    type Err = String;
    /// `register`, `etcd`, or both (`register,etcd` or `all`).
    fn from_str(s: &str) -> Result<Workloads, String> {
        let mut w = Workloads {
            register: false,
            etcd: false,
        };
        for name in s.split(',').map(str::trim) {
            match name {
                "register" => w.register = true,
                "etcd" => w.etcd = true,
                "all" => {
                    w.register = true;
                    w.etcd = true;
                }
                other => return Err(format!("unknown workload '{other}' (register, etcd, all)")),
            }
        }
        if !(w.register || w.etcd) {
            return Err("no workload given".into());
        }
        Ok(w)
    }
}

/// Counts of one operation kind.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Completed.
    pub ok: u64,
    /// Definitely not applied.
    pub fail: u64,
    /// Unknown outcome.
    pub info: u64,
}

/// Writes whose outcome stayed unknown, by why.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct UnknownWrites {
    /// The client's deadline passed after an attempt whose outcome is unknown.
    pub ambiguous: u64,
    /// The client session expired between an unknown attempt and its retry.
    pub session_expired: u64,
}

/// What the counter workload found.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CounterReport {
    /// Increments acknowledged.
    pub acked: u64,
    /// Increments whose outcome stayed unknown.
    pub unknown: u64,
    /// Increments that certainly did nothing.
    pub failed: u64,
    /// The counter's value read at the end (`None`: the read failed).
    pub final_value: Option<u64>,
}

/// Everything a run found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Network used.
    pub net: String,
    /// Engine used.
    pub engine: String,
    /// Nodes.
    pub nodes: usize,
    /// Seconds of workload.
    pub seconds: f64,
    /// Operation counts per kind (`read`, `write`, `cas`).
    pub ops: BTreeMap<String, Counts>,
    /// Faults injected, in order.
    pub faults: Vec<Fault>,
    /// Requested nemeses that could not run here, with why.
    pub skipped: Vec<String>,
    /// Recovery after the final heal, milliseconds.
    pub final_recovery_ms: Option<f64>,
    /// The checker's verdict, as text.
    pub verdict: String,
    /// Watch workload findings.
    pub watch: watch::WatchReport,
    /// Writes (register and counter) left with an unknown outcome.
    pub unknown_writes: UnknownWrites,
    /// The counter workload.
    pub counter: CounterReport,
    /// The etcd workload, when it ran.
    pub etcd: Option<etcd::EtcdReport>,
    /// Every anomaly found; a run passes when this is empty.
    pub anomalies: Vec<String>,
    /// Where the history, logs and summary are.
    pub results: PathBuf,
}

impl Report {
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// The register workload's lines: linearizability, counter, unknown writes, watch.
    fn register_summary(&self, s: &mut String) {
        let _ = writeln!(s, "\nlinearizability: {}", self.verdict);
        let c = &self.counter;
        let _ = writeln!(
            s,
            "counter: {} acknowledged increments, {} unknown, {} failed; final value {}",
            c.acked,
            c.unknown,
            c.failed,
            c.final_value
                .map_or_else(|| "not read".to_string(), |v| v.to_string())
        );
        let u = &self.unknown_writes;
        let _ = writeln!(
            s,
            "unknown-outcome writes: {} ({} past the deadline, {} across an expired session)",
            u.ambiguous + u.session_expired,
            u.ambiguous,
            u.session_expired
        );
        let _ = writeln!(
            s,
            "watch: {} segments, {} events received, {} distinct",
            self.watch.segments, self.watch.events, self.watch.distinct
        );
    }

    /// The summary table printed at the end of a run.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "rskv fault run: {} nodes, {} engine, {} network, {:.0} s",
            self.nodes, self.engine, self.net, self.seconds
        );
        let _ = writeln!(s, "\n{:<8} {:>8} {:>8} {:>8}", "op", "ok", "fail", "info");
        for (kind, c) in &self.ops {
            let _ = writeln!(s, "{kind:<8} {:>8} {:>8} {:>8}", c.ok, c.fail, c.info);
        }
        let _ = writeln!(s, "\nfaults ({}):", self.faults.len());
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for f in &self.faults {
            *by_kind.entry(f.kind.name()).or_default() += 1;
            let rec = f
                .recovery_ms
                .map(|r| format!("{r:.0} ms"))
                .unwrap_or_else(|| "none in 60 s".into());
            let _ = writeln!(
                s,
                "  {:>6.1}-{:<6.1} {:<9} {:<55} recovered in {rec}",
                f.start_s,
                f.heal_s,
                f.kind.name(),
                f.detail
            );
        }
        let mut recoveries: Vec<f64> = self.faults.iter().filter_map(|f| f.recovery_ms).collect();
        recoveries.sort_by(f64::total_cmp);
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(s, "  per kind: {}", counts.join(", "));
        if !recoveries.is_empty() {
            let _ = writeln!(
                s,
                "  recovery after heal: median {:.0} ms, max {:.0} ms",
                recoveries[recoveries.len() / 2],
                recoveries[recoveries.len() - 1]
            );
        }
        for skipped in &self.skipped {
            let _ = writeln!(s, "  skipped: {skipped}");
        }
        let _ = writeln!(
            s,
            "  final heal: recovered in {}",
            self.final_recovery_ms
                .map(|r| format!("{r:.0} ms"))
                .unwrap_or_else(|| "no write succeeded in 60 s".into())
        );
        // Without the register workload (an etcd-only run) its lines would only say "nothing".
        let register = !(self.ops.is_empty() && self.etcd.is_some());
        if register {
            self.register_summary(&mut s);
        }
        if let Some(e) = &self.etcd {
            s.push_str(&e.summary());
        }
        if self.anomalies.is_empty() {
            let _ = writeln!(s, "anomalies: none");
        } else {
            let _ = writeln!(s, "anomalies ({}):", self.anomalies.len());
            for a in self.anomalies.iter().take(20) {
                let _ = writeln!(s, "  - {a}");
            }
        }
        let _ = writeln!(s, "results: {}", self.results.display());
        let _ = writeln!(
            s,
            "VERDICT: {}",
            if self.passed() { "PASS" } else { "FAIL" }
        );
        s
    }
}

pub use rskv_testkit::free_ports;
pub use rskv_testkit::poll;
pub use rskv_testkit::PORT_LOW;
pub use rskv_testkit::PORT_SPAN;

/// Runs the suite. Call from a thread without an async runtime: for namespaces the thread
/// enters the driver's namespace and the runtime is built afterwards.
///
/// # Errors
/// When the run cannot be set up (tools, permissions, binaries); anomalies are in the report.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    std::fs::create_dir_all(&opts.results)
        .with_context(|| format!("creating {}", opts.results.display()))?;
    if !opts.server_bin.exists() {
        bail!(
            "kv_server binary not found at {}",
            opts.server_bin.display()
        );
    }
    let kind = opts.net.unwrap_or(if net::namespaces_available() {
        NetKind::Namespaces
    } else {
        NetKind::Proxy
    });
    let ports = free_ports(4 * opts.nodes)?;
    let net = Net::build(kind, opts.nodes, &ports)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let report = runtime.block_on(drive(opts, &net));
    drop(runtime);
    drop(net);
    let report = report?;
    if report.passed() {
        // Keep the logs, drop the data of a clean run.
        for i in 1..=opts.nodes {
            let _ = std::fs::remove_dir_all(opts.results.join(format!("nodes/node{i}/data")));
        }
    }
    std::fs::write(opts.results.join("summary.txt"), report.summary())?;
    std::fs::write(
        opts.results.join("summary.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(report)
}

/// Retries `read` until it completes (or `timeout`), returning the completed operation.
async fn final_read(
    client: &rskv_client::Client,
    process: u64,
    key: &str,
    epoch: Instant,
) -> Option<Op> {
    poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let op = workload::read(client, process, key, Consistency::Linearizable, epoch).await;
            (op.outcome == Outcome::Ok).then_some(op)
        },
    )
    .await
}

async fn drive(opts: &Options, net: &Net) -> anyhow::Result<Report> {
    net.start_proxies().await?;
    let mut skipped = Vec::new();
    let mut kinds = Vec::new();
    for k in &opts.nemeses {
        match k.unavailable(net) {
            Some(why) => skipped.push(format!("{}: {why}", k.name())),
            None => kinds.push(*k),
        }
    }
    let tls = match opts.tls {
        true => Some(tls::setup(&opts.results.join("tls"), &net.nodes)?),
        false => None,
    };
    let dialer = tls.as_ref().map(|t| t.dialer.clone());
    let mut extra_args = opts.server_args.clone();
    if let Some(tls) = &tls {
        extra_args.extend(tls.server_args.iter().cloned());
    }
    let spec = ClusterSpec {
        engine: opts.engine.clone(),
        server_bin: opts.server_bin.clone(),
        dir: opts.results.join("nodes"),
        extra_args,
        tls: dialer.clone(),
    };
    let mut cluster = Cluster::start(&spec, &net.nodes)?;
    if cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .is_none()
    {
        bail!(
            "the cluster did not elect a leader in 60 s; node logs are in {}",
            spec.dir.display()
        );
    }
    let endpoints = cluster.endpoints();
    let epoch = Instant::now();
    let history: workload::History = Arc::new(Mutex::new(Vec::new()));

    // Watchers, one per node.
    let (watch_stop, watch_rx) = signal::channel(false);
    let segments: watch::Segments = Arc::new(Mutex::new(Vec::new()));
    let mut progress = Vec::new();
    let mut watchers = Vec::new();
    for node in cluster.nodes.iter().filter(|_| opts.workloads.register) {
        let p = Arc::new(AtomicI64::new(0));
        progress.push(p.clone());
        watchers.push(tokio::spawn(watch::run_watcher(
            node.id,
            node.addrs.client.to_string(),
            dialer.clone(),
            KEY_PREFIX.to_string(),
            segments.clone(),
            p,
            watch_rx.clone(),
        )));
    }

    // Clients.
    let register_keys = if opts.workloads.register {
        opts.keys.max(1)
    } else {
        0
    };
    let keys: Arc<Vec<String>> = Arc::new(
        (0..register_keys)
            .map(|k| format!("{KEY_PREFIX}{k}"))
            .collect(),
    );
    let clients = if opts.workloads.register {
        opts.clients.max(1) as u64
    } else {
        0
    };
    let (client_stop, client_rx) = signal::channel(false);
    let unknowns = Arc::new(workload::Unknowns::default());
    let workload = workload::Workload {
        keys: keys.clone(),
        clients,
        rate: opts.rate / clients.max(1) as f64,
        reads: if opts.stale_reads {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        },
        epoch,
        history: history.clone(),
        unknowns: unknowns.clone(),
    };
    let mut workers = Vec::new();
    // Even-numbered clients share one Client, as threads of one application would: their
    // concurrent requests travel together in Multi RPCs. The others have a connection each.
    let shared = Arc::new(workload::suite_client(endpoints.clone(), dialer.clone())?);
    for i in 0..clients {
        let client = if i % 2 == 0 {
            shared.clone()
        } else {
            Arc::new(workload::suite_client(endpoints.clone(), dialer.clone())?)
        };
        workers.push(tokio::spawn(workload::run_client(
            i,
            client,
            workload.clone(),
            opts.seed.wrapping_add(i),
            client_rx.clone(),
        )));
    }
    // Two counter clients on top: one shares the register clients' Client (and session), one
    // has its own, so increments race each other and the registers' writes.
    let tally = Arc::new(workload::CounterTally::default());
    let counter_rate = (opts.rate / 20.0).clamp(1.0, 20.0);
    let counters = if opts.workloads.register {
        vec![
            shared.clone(),
            Arc::new(workload::suite_client(endpoints.clone(), dialer.clone())?),
        ]
    } else {
        Vec::new()
    };
    for client in counters {
        workers.push(tokio::spawn(workload::run_counter(
            client,
            counter_rate,
            tally.clone(),
            unknowns.clone(),
            client_rx.clone(),
        )));
    }

    // The etcd workload, through etcd's own client.
    let mut etcd_run = opts.workloads.etcd.then(|| {
        let nodes: Vec<(u64, String)> = cluster
            .nodes
            .iter()
            .map(|n| (n.id, n.addrs.client.to_string()))
            .collect();
        let spec = etcd::EtcdSpec {
            keys: opts.keys,
            clients: opts.clients,
            rate: opts.rate,
            seed: opts.seed,
            serializable: opts.stale_reads,
            tls: tls.as_ref().map(|t| t.etcd.clone()),
        };
        etcd::EtcdRun::start(&nodes, &spec, epoch)
    });

    // Faults.
    let probe_client = workload::suite_client(endpoints.clone(), dialer.clone())?;
    let probe_n = AtomicU64::new(0);
    let probe = || async {
        let start = Instant::now();
        poll(
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async {
                let n = probe_n.fetch_add(1, Ordering::Relaxed);
                let ok = probe_client.put("probe", format!("p{n}")).await.is_ok();
                ok.then(|| start.elapsed())
            },
        )
        .await
    };
    let schedule = nemesis::Schedule {
        kinds,
        interval: opts.interval,
        until: epoch + opts.time,
        epoch,
        seed: opts.seed,
    };
    let faults = nemesis::run(&schedule, &mut cluster, net, probe).await;
    nemesis::heal_all(&mut cluster, net).await;
    let final_recovery = probe().await;
    let _ = client_stop.send(true);
    for w in workers {
        let _ = w.await;
    }
    if let Some(run) = etcd_run.as_mut() {
        run.stop_clients().await;
    }
    let seconds = epoch.elapsed().as_secs_f64();
    let mut anomalies = Vec::new();

    // After healing: one leader, every node a voter again.
    if cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .is_none()
    {
        anomalies.push("the cluster did not become healthy within 60 s of the final heal".into());
    }
    // Final linearizable reads of every key, part of the history.
    let reader = workload::suite_client(endpoints.clone(), dialer.clone())?;
    let mut finals: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (k, key) in keys.iter().enumerate() {
        match final_read(&reader, u64::MAX - k as u64, key, epoch).await {
            Some(op) => {
                if let OpKind::Read { value } = &op.kind {
                    finals.insert(key.clone(), value.clone());
                }
                if let Ok(mut h) = history.lock() {
                    h.push(op);
                }
            }
            None => anomalies.push(format!("final read of {key} did not succeed in 30 s")),
        }
    }
    // The counter holds every acknowledged increment, and at most the unknown ones besides.
    let counter_value = poll(
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { reader.get(workload::COUNTER_KEY).await.ok() },
    )
    .await;
    let counter = CounterReport {
        acked: tally.acked.load(Ordering::Relaxed),
        unknown: tally.unknown.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        final_value: counter_value.map(|v| {
            v.and_then(|v| String::from_utf8_lossy(&v).parse().ok())
                .unwrap_or(0)
        }),
    };
    match counter.final_value {
        _ if !opts.workloads.register => {}
        None => anomalies.push("final read of the counter did not succeed in 30 s".into()),
        Some(v) if v < counter.acked || v > counter.acked + counter.unknown => {
            anomalies.push(format!(
                "counter is {v} after {} acknowledged and {} unknown increments",
                counter.acked, counter.unknown
            ))
        }
        Some(_) => {}
    }
    // Every node's own copy agrees once it has applied what the leader committed.
    let committed = reader
        .leader_status()
        .await
        .map(|s| s.committed)
        .unwrap_or(0);
    for node in &cluster.nodes {
        let addr = node.addrs.client.to_string();
        let caught_up = poll(
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let s = cluster.admin.status_of(&addr).await.ok()?;
                (s.applied >= committed).then_some(())
            },
        )
        .await;
        if caught_up.is_none() {
            anomalies.push(format!(
                "node {} did not apply index {committed} within 30 s",
                node.id
            ));
            continue;
        }
        let local = workload::suite_client(vec![addr], dialer.clone())?;
        for (key, want) in &finals {
            match local.get_with(key.clone(), Consistency::Stale).await {
                Ok(r) => {
                    let got = r
                        .found
                        .then(|| String::from_utf8_lossy(&r.value).into_owned());
                    if got != *want {
                        anomalies.push(format!(
                            "node {} holds {key}={got:?}, the final read returned {want:?}",
                            node.id
                        ));
                    }
                }
                Err(e) => anomalies.push(format!("stale read of {key} on node {}: {e}", node.id)),
            }
        }
    }
    // The etcd workload's final reads and checks, while every node still runs.
    let etcd_report = match etcd_run {
        Some(run) => {
            let r = run.finish(&opts.results, opts.check_budget).await?;
            anomalies.extend(r.anomalies.iter().map(|a| format!("etcd: {a}")));
            Some(r)
        }
        None => None,
    };
    // Watchers catch up with the newest event any of them saw, then stop.
    let target = progress
        .iter()
        .map(|p| p.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    // Bounded: a watcher that never catches up shows as a gap in the watch check.
    let _ = poll(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            progress
                .iter()
                .all(|p| p.load(Ordering::Relaxed) >= target)
                .then_some(())
        },
    )
    .await;
    let _ = watch_stop.send(true);
    for w in watchers {
        let _ = w.await;
    }
    for node in &mut cluster.nodes {
        node.terminate(Duration::from_secs(15)).await;
    }

    let history = history.lock().map(|h| h.clone()).unwrap_or_default();
    std::fs::write(
        opts.results.join("history.jsonl"),
        checker::to_jsonl(&history),
    )?;
    let segments = segments.lock().map(|s| s.clone()).unwrap_or_default();
    let mut seg_text = String::new();
    for seg in &segments {
        seg_text.push_str(&serde_json::to_string(seg)?);
        seg_text.push('\n');
    }
    std::fs::write(opts.results.join("watch.jsonl"), seg_text)?;
    std::fs::write(
        opts.results.join("faults.json"),
        serde_json::to_string_pretty(&faults)?,
    )?;

    let verdict = checker::check(&history, opts.check_budget);
    match &verdict {
        checker::Verdict::Linearizable => {}
        checker::Verdict::Unknown { .. } => anomalies.push(format!("checker: {verdict}")),
        checker::Verdict::NotLinearizable { key, ops } => {
            anomalies.push(save_anomaly(&opts.results, key, ops));
        }
    }
    let verdict = verdict.to_string();
    anomalies.extend(lost_writes(&history, &finals));
    let watch = watch::check(&segments, &history);
    anomalies.extend(watch.anomalies.iter().cloned());

    let mut ops: BTreeMap<String, Counts> = BTreeMap::new();
    for op in &history {
        let kind = match op.kind {
            OpKind::Read { .. } => "read",
            OpKind::Write { .. } => "write",
            OpKind::Cas { .. } => "cas",
        };
        let c = ops.entry(kind.to_string()).or_default();
        match op.outcome {
            Outcome::Ok => c.ok += 1,
            Outcome::Fail => c.fail += 1,
            Outcome::Info => c.info += 1,
        }
    }
    Ok(Report {
        net: format!("{:?}", net.kind).to_lowercase(),
        engine: opts.engine.clone(),
        nodes: opts.nodes,
        seconds,
        ops,
        faults,
        skipped,
        final_recovery_ms: final_recovery.map(|d| d.as_secs_f64() * 1000.0),
        verdict,
        watch,
        unknown_writes: UnknownWrites {
            ambiguous: unknowns.ambiguous.load(Ordering::Relaxed),
            session_expired: unknowns.session_expired.load(Ordering::Relaxed),
        },
        counter,
        etcd: etcd_report,
        anomalies,
        results: opts.results.clone(),
    })
}

/// Every acknowledged write (or successful CAS) is the key's final value, or some other write
/// that may have come after it exists in the history.
pub fn lost_writes(history: &[Op], finals: &BTreeMap<String, Option<String>>) -> Vec<String> {
    let effect = |op: &Op| -> Option<String> {
        match &op.kind {
            OpKind::Write { value } if op.outcome != Outcome::Fail => Some(value.clone()),
            OpKind::Cas { to, success, .. }
                if op.outcome == Outcome::Info || (op.outcome == Outcome::Ok && *success) =>
            {
                Some(to.clone())
            }
            _ => None,
        }
    };
    // Per key, the two latest-ending effects (unknown outcomes end at infinity): enough to ask
    // "does an effect other than this one end after this write began?" in O(1).
    let mut latest: BTreeMap<&str, [(u64, Option<String>); 2]> = BTreeMap::new();
    for o in history {
        let Some(v) = effect(o) else { continue };
        let end = if o.outcome == Outcome::Info {
            u64::MAX
        } else {
            o.complete
        };
        let top = latest.entry(&o.key).or_insert([(0, None), (0, None)]);
        if end >= top[0].0 {
            top[1] = std::mem::replace(&mut top[0], (end, Some(v)));
        } else if end >= top[1].0 {
            top[1] = (end, Some(v));
        }
    }
    let mut out = Vec::new();
    for w in history.iter().filter(|o| o.outcome == Outcome::Ok) {
        let Some(value) = effect(w) else { continue };
        let Some(fin) = finals.get(&w.key) else {
            continue;
        };
        if fin.as_deref() == Some(value.as_str()) {
            continue;
        }
        let overwritten = latest.get(w.key.as_str()).is_some_and(|top| {
            top.iter()
                .any(|(end, v)| v.as_deref().is_some_and(|v| v != value) && *end > w.invoke)
        });
        if !overwritten {
            out.push(format!(
                "acknowledged write {}={value} is lost: final value {fin:?} and nothing overwrote it",
                w.key
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::build::op_on;
    use crate::checker::build::w;

    fn op(key: &str, kind: OpKind, outcome: Outcome, invoke: u64, complete: u64) -> Op {
        op_on(key, 0, kind, outcome, invoke, complete)
    }

    #[test]
    fn lost_acknowledged_write_should_be_reported_and_overwritten_ones_not() {
        let history = vec![
            op("k", w("1"), Outcome::Ok, 0, 10),
            op("k", w("2"), Outcome::Ok, 20, 30),
            // Overwrote "2" maybe: unknown outcome, so "2" is not reported lost.
            op("j", w("a"), Outcome::Ok, 0, 10),
            op("j", w("b"), Outcome::Info, 20, 0),
            op("m", w("x"), Outcome::Ok, 0, 10),
        ];
        let finals: BTreeMap<String, Option<String>> = [
            ("k".to_string(), Some("1".to_string())),
            ("j".to_string(), None),
            ("m".to_string(), None),
        ]
        .into_iter()
        .collect();
        let lost = lost_writes(&history, &finals);
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].contains("k=2"), "{lost:?}");
        assert!(lost[1].contains("m=x"), "{lost:?}");
    }
}
