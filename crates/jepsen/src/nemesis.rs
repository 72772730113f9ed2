//! Nemeses: the faults the suite injects, one at a time, each healed before the next.

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use rand::seq::IndexedRandom;
use rand::Rng;
use serde::Serialize;

use super::net::link;
use super::net::Link;
use super::net::Net;
use super::nodes::Cluster;
use super::nodes::Wrapper;
use super::nodes::FAKETIME_LIB;
use super::nodes::FIU_LIBS;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisKind {
    /// Network partitions: one node, the leader, random halves, a non-transitive ring.
    Partition,
    /// SIGKILL a node (sometimes the leader), restart it at heal.
    Kill,
    /// SIGSTOP a node (sometimes the leader), SIGCONT at heal.
    Pause,
    /// Graceful restart: SIGTERM, wait for the clean exit, start again.
    Restart,
    /// Remove a node from the cluster, wipe it, and let it join again.
    Member,
    /// Restart a node under libfaketime with its clock offset and running at another rate.
    Clock,
    /// Restart a node under libfiu with failing fsync/fdatasync.
    Disk,
}

impl NemesisKind {
    /// All kinds, for `--nemesis all`.
    pub const ALL: [NemesisKind; 7] = [
        NemesisKind::Partition,
        NemesisKind::Kill,
        NemesisKind::Pause,
        NemesisKind::Restart,
        NemesisKind::Member,
        NemesisKind::Clock,
        NemesisKind::Disk,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::Partition => "partition",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Restart => "restart",
            NemesisKind::Member => "member",
            NemesisKind::Clock => "clock",
            NemesisKind::Disk => "disk",
        }
    }

    /// Why this kind cannot run here, if it cannot.
    pub fn unavailable(self, net: &Net) -> Option<String> {
        match self {
            NemesisKind::Partition if !net.can_partition() => {
                Some("the loopback network cannot partition".into())
            }
            NemesisKind::Clock if !std::path::Path::new(FAKETIME_LIB).exists() => {
                Some(format!("{FAKETIME_LIB} missing (Debian package faketime)"))
            }
            NemesisKind::Disk if FIU_LIBS.iter().any(|l| !std::path::Path::new(l).exists()) => {
                Some("libfiu preload libraries missing (Debian package fiu-utils)".into())
            }
            _ => None,
        }
    }
}

impl std::str::FromStr for NemesisKind {
    type Err = String;
    fn from_str(s: &str) -> Result<NemesisKind, String> {
        NemesisKind::ALL
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                format!("unknown nemesis '{s}' (partition, kill, pause, restart, member, clock, disk, all)")
            })
    }
}

/// One injected fault, for the summary.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// Its kind.
    pub kind: NemesisKind,
    /// What exactly was done.
    pub detail: String,
    /// Seconds into the run when it was injected.
    pub start_s: f64,
    /// Seconds into the run when it was healed.
    pub heal_s: f64,
    /// Milliseconds from the heal until a probe write succeeded.
    pub recovery_ms: Option<f64>,
}

/// What an active fault needs undone at heal.
enum Active {
    Blocked,
    Killed(u64),
    Paused(u64),
    Wrapped(u64),
    Rejoining,
    Nothing,
}

/// Partition shapes, chosen at random.
fn partition(n: u64, leader: Option<u64>, rng: &mut impl Rng) -> (BTreeSet<Link>, String) {
    let ids: Vec<u64> = (1..=n).collect();
    let cut_between = |side: &[u64]| -> BTreeSet<Link> {
        let mut links = BTreeSet::new();
        for &a in side {
            for &b in ids.iter().filter(|b| !side.contains(b)) {
                links.insert(link(a, b));
            }
        }
        links
    };
    match rng.random_range(0..4) {
        0 => {
            let one = ids[rng.random_range(0..ids.len())];
            (cut_between(&[one]), format!("isolate node {one}"))
        }
        1 => {
            let one = leader.unwrap_or(1);
            (
                cut_between(&[one]),
                format!("isolate the leader (node {one})"),
            )
        }
        2 => {
            let mut shuffled = ids.clone();
            for i in (1..shuffled.len()).rev() {
                shuffled.swap(i, rng.random_range(0..=i));
            }
            let minority: Vec<u64> = shuffled[..(ids.len() - 1) / 2].to_vec();
            (
                cut_between(&minority),
                format!("halves: {minority:?} | rest"),
            )
        }
        _ => {
            // Each node keeps only its two ring neighbours: every node sees a majority (with 5),
            // no majority sees each other completely.
            let mut links = BTreeSet::new();
            for a in 1..=n {
                for b in (a + 1)..=n {
                    let d = (b - a).min(n - (b - a));
                    if d > 1 {
                        links.insert(link(a, b));
                    }
                }
            }
            (links, "ring: each node sees only its neighbours".into())
        }
    }
}

async fn inject(
    kind: NemesisKind,
    cluster: &mut Cluster,
    net: &Net,
    rng: &mut rand::rngs::StdRng,
) -> (Active, String) {
    let n = cluster.nodes.len() as u64;
    let leader = cluster.leader().await;
    // Half of the node-targeted faults hit the leader.
    let target = match leader {
        Some(l) if rng.random_bool(0.5) => l,
        _ => rng.random_range(1..=n),
    };
    let role = if Some(target) == leader {
        " (leader)"
    } else {
        ""
    };
    match kind {
        NemesisKind::Partition => {
            let (links, detail) = partition(n, leader, rng);
            match net.set_blocked(&links).await {
                Ok(()) => (Active::Blocked, detail),
                Err(e) => (Active::Nothing, format!("partition failed: {e:#}")),
            }
        }
        NemesisKind::Kill => {
            if let Some(node) = cluster.node_mut(target) {
                node.kill().await;
            }
            (
                Active::Killed(target),
                format!("kill -9 node {target}{role}"),
            )
        }
        NemesisKind::Pause => {
            let ok = cluster.node_mut(target).is_some_and(|n| n.pause());
            (
                Active::Paused(target),
                format!(
                    "SIGSTOP node {target}{role}{}",
                    if ok { "" } else { " (not running)" }
                ),
            )
        }
        NemesisKind::Restart => {
            let mut detail = format!("SIGTERM node {target}{role}");
            if let Some(node) = cluster.node_mut(target) {
                let code = node.terminate(Duration::from_secs(15)).await;
                detail.push_str(&match code {
                    Some(c) => format!(", exited {c}"),
                    None => ", did not exit in 15 s (killed)".into(),
                });
                if let Err(e) = node.spawn() {
                    detail.push_str(&format!(", restart failed: {e:#}"));
                }
            }
            (Active::Nothing, detail)
        }
        NemesisKind::Member => {
            // A removal that errors (a timeout while leadership moves, say) may still have been
            // committed: decide from the membership the leader reports afterwards.
            let reply = cluster.members.remove_member(target).await;
            let removed = reply.is_ok() || cluster.left_voters(target).await;
            if !removed {
                let why = reply.err().map(|e| e.to_string()).unwrap_or_default();
                return (
                    Active::Nothing,
                    format!("remove node {target}{role} refused, left alone: {why}"),
                );
            }
            let mut detail = format!("removed node {target}{role}, wiped it, rejoining");
            if let Err(e) = cluster.wipe_and_rejoin(target).await {
                detail.push_str(&format!(", start failed: {e:#}"));
            }
            (Active::Rejoining, detail)
        }
        NemesisKind::Clock => {
            let offset = rng.random_range(-300i64..=300);
            let rate = *[0.5, 0.9, 1.0, 1.1, 2.0].choose(rng).unwrap_or(&1.0);
            let spec = format!("{offset:+}s x{rate}");
            restart_wrapped(cluster, target, Wrapper::Faketime(spec.clone())).await;
            (
                Active::Wrapped(target),
                format!("node {target}{role} restarted with clock {spec}"),
            )
        }
        NemesisKind::Disk => {
            let p = *[0.05, 0.5, 1.0].choose(rng).unwrap_or(&0.5);
            restart_wrapped(cluster, target, Wrapper::FailFsync(p)).await;
            (
                Active::Wrapped(target),
                format!("node {target}{role} restarted with fsync failing (p={p})"),
            )
        }
    }
}

async fn restart_wrapped(cluster: &mut Cluster, id: u64, wrapper: Wrapper) {
    if let Some(node) = cluster.node_mut(id) {
        node.kill().await;
        node.wrapper = wrapper;
        let _ = node.spawn();
    }
}

async fn heal(active: Active, cluster: &mut Cluster, net: &Net) {
    match active {
        Active::Blocked => {
            let _ = net.set_blocked(&BTreeSet::new()).await;
        }
        Active::Killed(id) => {
            if let Some(node) = cluster.node_mut(id) {
                let _ = node.spawn();
            }
        }
        Active::Paused(id) => {
            if let Some(node) = cluster.node_mut(id) {
                node.resume();
            }
        }
        Active::Wrapped(id) => restart_wrapped(cluster, id, Wrapper::None).await,
        Active::Rejoining => {
            // Bounded: an unfinished rejoin shows up in the final health wait.
            cluster.wait_healthy(Duration::from_secs(30)).await;
        }
        Active::Nothing => {}
    }
}

/// Heals everything whatever its state: links, paused, dead or wrapped processes, and a node
/// left out of the membership (it is wiped and joins again).
pub async fn heal_all(cluster: &mut Cluster, net: &Net) {
    let _ = net.set_blocked(&BTreeSet::new()).await;
    for node in &mut cluster.nodes {
        node.resume();
        if node.wrapper != Wrapper::None {
            node.kill().await;
            node.wrapper = Wrapper::None;
        }
        if !node.is_running() {
            node.kill().await;
            let _ = node.spawn();
        }
    }
    if let Some(voters) = cluster.voters().await {
        let outside: Vec<u64> = cluster
            .nodes
            .iter()
            .filter(|n| !voters.contains(&n.id) && !n.is_joining())
            .map(|n| n.id)
            .collect();
        for id in outside {
            tracing::warn!(
                node = id,
                "node is not a member after the faults; rejoining it"
            );
            let _ = cluster.wipe_and_rejoin(id).await;
        }
    }
}

/// When and which faults to inject.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The kinds to pick from (uniformly).
    pub kinds: Vec<NemesisKind>,
    /// Length of one fault, and of the calm between two.
    pub interval: Duration,
    /// No fault starts after this.
    pub until: Instant,
    /// Time zero of the run (fault times are reported relative to it).
    pub epoch: Instant,
    /// Seed for the choices.
    pub seed: u64,
}

/// Injects faults until `schedule.until`: `interval` of calm, then `interval` with a fault, and
/// so on. `probe` measures recovery after each heal (time until a write succeeds).
pub async fn run<P, F>(
    schedule: &Schedule,
    cluster: &mut Cluster,
    net: &Net,
    probe: P,
) -> Vec<Fault>
where
    P: Fn() -> F,
    F: std::future::Future<Output = Option<Duration>>,
{
    use rand::SeedableRng;
    let Schedule {
        kinds,
        interval,
        until,
        epoch,
        seed,
    } = schedule.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut faults = Vec::new();
    if kinds.is_empty() {
        tokio::time::sleep_until(until.into()).await;
        return faults;
    }
    loop {
        tokio::time::sleep(interval).await;
        if Instant::now() + interval > until {
            break;
        }
        let kind = kinds[rng.random_range(0..kinds.len())];
        let start_s = epoch.elapsed().as_secs_f64();
        let (active, detail) = inject(kind, cluster, net, &mut rng).await;
        tracing::info!(kind = kind.name(), %detail, "nemesis: fault");
        tokio::time::sleep(interval).await;
        heal(active, cluster, net).await;
        let heal_s = epoch.elapsed().as_secs_f64();
        tracing::info!(kind = kind.name(), "nemesis: healed");
        let recovery = probe().await;
        faults.push(Fault {
            kind,
            detail,
            start_s,
            heal_s,
            recovery_ms: recovery.map(|d| d.as_secs_f64() * 1000.0),
        });
        if Instant::now() >= until {
            break;
        }
    }
    faults
}
