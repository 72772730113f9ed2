//! Repeated leader isolations on the fault suite's network (issue 21, part 3): isolate the leader,
//! heal, isolate the new leader, heal, and so on. A majority is connected all along, so the
//! cluster should never be long without a leader.
//!
//! Each round cuts the leader's links to both other nodes (clients still reach every node), holds
//! the cut for [`HOLD`], heals it, and isolates the new leader [`CALM`] later. With network
//! namespaces the cut links drop packets, so the TCP connections across them back off their
//! retransmissions (to seconds, after a few seconds of drops) as on a real network; a transport
//! that kept using such a connection after the heal left the next majority without a leader for
//! many seconds. Without root the proxy network is used, which holds a cut link's bytes instead:
//! no back-off, so there this test cannot tell such a transport from a good one.
//!
//! **The leaderless window.** Every node's Status is polled every [`POLL`]. A sample has a
//! *working leader* when, among the nodes that are connected to each other and form a majority
//! (all three when healed, the two others while one is isolated), one says it is the leader and
//! enough of the others say they follow it, in its term, to make a majority with it: a leader that
//! can commit. A leaderless window runs from the first sample without a working leader to the
//! next sample with one. Each isolation opens one (the majority's leader has just been cut off,
//! and the others must first let its lease lapse: `election_timeout_max`, then one election
//! timeout, then a pre-vote and a vote round); a heal should open none. The test asserts that the
//! longest window is under [`BOUND`], the only timing assertion here.
//!
//! Measured in namespaces on a 2-core machine: while the transport kept a peer connection until
//! a 10 s keep-alive plus 20 s timeout gave up on it, the windows grew from 1.0 s to 2.0–2.6 s
//! after the second round and deposed leaders stepped down up to 3.1 s after a heal; since it
//! drops a peer connection that misses a PING for an election timeout, 0.9–1.2 s and ≤ 0.1 s.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::fault_log_tails;
use rskv_jepsen::net::link;
use rskv_jepsen::net::Link;
use rskv_jepsen::nodes::Cluster;
use rskv_proto::kv::StatusResponse;
use tokio::sync::watch;

/// Leader isolations in one run.
const ROUNDS: usize = 6;
/// How long each isolation lasts: long enough for the retransmission back-off on cut TCP
/// connections to grow to seconds (the next retransmission after 5 s of drops is ~1–3 s away).
const HOLD: Duration = Duration::from_secs(5);
/// From a heal to the next isolation: shorter than that back-off, so the next majority needs
/// connections that a transport keeping them would still find stalled (and, round after round,
/// backing off further). With 3 s holds and 1 s calms the old transport kept every window under
/// 1.3 s.
const CALM: Duration = Duration::from_millis(500);
/// How often every node's Status is sampled.
const POLL: Duration = Duration::from_millis(25);
/// The longest leaderless window allowed (issue 21).
const BOUND: Duration = Duration::from_secs(2);
/// How long the driver waits for a leader before it gives up on the run.
const GIVE_UP: Duration = Duration::from_secs(30);
/// Raft timers of the nodes: the test harness's (`tests/common`), shorter than the defaults so a
/// majority needs well under [`BOUND`] to get past the cut-off leader's lease and elect.
const RAFT_TIMERS: [&str; 6] = [
    "--heartbeat-interval-ms",
    "50",
    "--election-timeout-min-ms",
    "300",
    "--election-timeout-max-ms",
    "600",
];

/// What the monitor saw at one instant.
struct Sample {
    at: Instant,
    /// The node cut off from the others, if any.
    isolated: Option<u64>,
    /// (role, leader id, term) per node, index = id - 1; `None` when its Status did not answer.
    statuses: Vec<Option<(String, Option<u64>, u64)>>,
    leader: Option<u64>,
}

/// The leader a connected majority follows (see the module documentation), if there is one.
fn working_leader(
    statuses: &[Option<(String, Option<u64>, u64)>],
    isolated: Option<u64>,
) -> Option<u64> {
    let majority = statuses.len() / 2 + 1;
    let connected = |id: u64| Some(id) != isolated;
    statuses.iter().enumerate().find_map(|(i, status)| {
        let id = i as u64 + 1;
        let (role, _, term) = status.as_ref()?;
        if role != "leader" || !connected(id) {
            return None;
        }
        let followers = statuses
            .iter()
            .enumerate()
            .filter(|(j, s)| {
                let other = *j as u64 + 1;
                other != id
                    && connected(other)
                    && s.as_ref().is_some_and(|(role, leader, t)| {
                        role == "follower" && *leader == Some(id) && t == term
                    })
            })
            .count();
        (1 + followers >= majority).then_some(id)
    })
}

/// Samples every node's Status until `stop` is set; publishes the working leader on `leader`.
async fn monitor(
    cluster: &Cluster,
    isolated: watch::Receiver<Option<u64>>,
    leader: watch::Sender<Option<u64>>,
    stop: watch::Receiver<bool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.addrs.client.to_string())
        .collect();
    while !*stop.borrow() {
        let at = Instant::now();
        let cut = *isolated.borrow();
        let statuses = futures::future::join_all(addrs.iter().map(|addr| async move {
            let status =
                tokio::time::timeout(Duration::from_millis(500), cluster.admin.status_of(addr));
            let s: StatusResponse = status.await.ok()?.ok()?;
            Some((s.role, s.leader_id, s.term))
        }))
        .await;
        let working = working_leader(&statuses, cut);
        leader.send_replace(working);
        if let Ok(mut samples) = samples.lock() {
            samples.push(Sample {
                at,
                isolated: cut,
                statuses,
                leader: working,
            });
        }
        tokio::time::sleep_until((at + POLL).into()).await;
    }
}

/// Leaderless windows in `samples`: (start, length, still open at the end).
fn leaderless_windows(samples: &[Sample]) -> Vec<(Instant, Duration, bool)> {
    let mut windows = Vec::new();
    let mut since = None;
    for sample in samples {
        match (sample.leader, since) {
            (None, None) => since = Some(sample.at),
            (Some(_), Some(start)) => {
                windows.push((start, sample.at - start, false));
                since = None;
            }
            _ => {}
        }
    }
    if let (Some(start), Some(last)) = (since, samples.last()) {
        windows.push((start, last.at - start, true));
    }
    windows
}

/// Waits until the working leader satisfies `wanted`; `None` after [`GIVE_UP`].
async fn leader_where(
    leader: &mut watch::Receiver<Option<u64>>,
    wanted: impl Fn(u64) -> bool,
) -> Option<u64> {
    let found = tokio::time::timeout(GIVE_UP, leader.wait_for(|l| l.is_some_and(&wanted))).await;
    found.ok()?.ok()?.as_ref().copied()
}

#[test]
fn a_majority_should_elect_within_2s_through_repeated_leader_isolations() {
    common::on_fault_net(3, async |net, dir| {
        let cluster = common::start_fault_cluster(net, dir, &RAFT_TIMERS).await;
        let ids: Vec<u64> = cluster.nodes.iter().map(|n| n.id).collect();
        let (isolate, isolated) = watch::channel(None);
        let (leader_tx, mut leader) = watch::channel(None);
        let (stop_tx, stop) = watch::channel(false);
        let samples = Arc::new(Mutex::new(Vec::new()));
        let monitoring = monitor(&cluster, isolated, leader_tx, stop, samples.clone());
        let driving = async {
            let mut events = Vec::new();
            let mut gave_up = None;
            for round in 0..ROUNDS {
                let Some(old) = leader_where(&mut leader, |_| true).await else {
                    gave_up = Some(format!("round {round}: no leader to isolate"));
                    break;
                };
                let cut: BTreeSet<Link> = ids
                    .iter()
                    .filter(|&&id| id != old)
                    .map(|&id| link(old, id))
                    .collect();
                isolate.send_replace(Some(old));
                let cut_at = Instant::now();
                net.set_blocked(&cut).await.expect("cut the leader off");
                let Some(new) = leader_where(&mut leader, |id| id != old).await else {
                    gave_up = Some(format!(
                        "round {round}: nodes other than {old} elected no leader within {GIVE_UP:?}"
                    ));
                    break;
                };
                tokio::time::sleep_until((cut_at + HOLD).into()).await;
                net.set_blocked(&BTreeSet::new()).await.expect("heal");
                isolate.send_replace(None);
                events.push((round, old, new, cut_at, Instant::now()));
                tokio::time::sleep(CALM).await;
            }
            stop_tx.send_replace(true);
            (events, gave_up)
        };
        let ((), (events, gave_up)) = tokio::join!(monitoring, driving);
        net.set_blocked(&BTreeSet::new()).await.expect("heal");

        let samples = std::mem::take(&mut *samples.lock().expect("samples"));
        let first = samples.first().map(|s| s.at).expect("samples were taken");
        let windows = leaderless_windows(&samples);
        for (round, old, new, cut_at, healed_at) in &events {
            // How long the deposed leader went on calling itself leader after the heal.
            let stepped_down = samples
                .iter()
                .find(|s| {
                    s.at >= *healed_at
                        && s.statuses[*old as usize - 1]
                            .as_ref()
                            .is_some_and(|(role, _, _)| role != "leader")
                })
                .map(|s| s.at - *healed_at);
            eprintln!(
                "round {round}: isolated {old} at {:.2}s, {new} leads, healed at {:.2}s, {old} stepped down {stepped_down:.2?} after the heal",
                (*cut_at - first).as_secs_f64(),
                (*healed_at - first).as_secs_f64(),
            );
        }
        for (start, length, open) in &windows {
            let isolated = samples
                .iter()
                .find(|s| s.at >= *start)
                .and_then(|s| s.isolated);
            eprintln!(
                "leaderless window at {:.2}s (isolated: {isolated:?}): {length:.2?}{}",
                (*start - first).as_secs_f64(),
                if *open {
                    " (still open at the end)"
                } else {
                    ""
                },
            );
        }
        let longest = windows.iter().map(|w| w.1).max().unwrap_or_default();
        eprintln!(
            "longest leaderless window: {longest:.2?} over {} rounds",
            events.len()
        );
        if let Some(why) = gave_up {
            panic!("{why}\n{}", fault_log_tails(&cluster, 40));
        }
        assert!(
            longest < BOUND,
            "a connected majority was without a leader for {longest:.2?} (bound {BOUND:?})\n{}",
            fault_log_tails(&cluster, 40)
        );
    });
}
