//! Lease reads across a follower's restart (issue 21, part 4).
//!
//! With `read_policy = "lease"` a leader serves a linearizable read without asking anyone while a
//! quorum acknowledged it less than 90% of `election_timeout_max` ago; that is safe only while
//! every node of that quorum refuses to help elect another leader for `election_timeout_max`
//! after hearing from it. A node keeps that promise in memory only (openraft 0.10.0-alpha.37
//! starts a restarted node with an expired lease), so a follower that restarts quickly could vote
//! for, or become, a new leader while the old one still serves reads on its lease.
//!
//! The scenario, on the fault suite's network (clients reach every node all along):
//! 1. Leader L, followers A and B; `k = v1`. A's link to L is cut, and stays cut until A no
//!    longer honours L's lease (`election_timeout_max` since it last heard from L, which A's
//!    `/health` reports). L keeps its quorum (and its read lease) through B.
//! 2. B's link to L is cut and B is killed and restarted at once: L's lease, from B's last
//!    acknowledgement, still runs for up to 90% of `election_timeout_max`.
//! 3. A and B elect a leader (whenever they do), `k = v2` is written through it, and then `k` is
//!    read linearizably at L. Answering `v1` there is a stale read: it must not happen.
//!
//! A long `election_timeout_max` (8 s) against a short `election_timeout_min` makes the race
//! easy to lose: a node that forgot its promise helps elect within a restart plus one election
//! timeout (mostly well under a second), far inside the old leader's 7.2 s lease.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use common::fault_log_tails;
use rskv_client::Client;
use rskv_client::ClientOptions;
use rskv_client::Consistency;
use rskv_jepsen::net::link;
use rskv_jepsen::nodes::Cluster;

/// `raft.election_timeout_max_ms` of the nodes: openraft's lease, and 90% of it the read lease.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(8000);

const KEY: &str = "lease/k";

fn client(endpoints: Vec<String>, deadline: Duration) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            deadline,
            attempt_timeout: deadline,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// The first of `ids` that calls itself leader, polled until `timeout`.
async fn leader_among(cluster: &Cluster, ids: &[u64], timeout: Duration) -> Option<u64> {
    rskv_jepsen::poll(timeout, Duration::from_millis(25), || async {
        for &id in ids {
            let node = cluster.nodes.iter().find(|n| n.id == id)?;
            let addr = node.addrs.client.to_string();
            if let Ok(Ok(s)) =
                tokio::time::timeout(Duration::from_millis(500), cluster.admin.status_of(&addr))
                    .await
            {
                if s.role == "leader" {
                    return Some(id);
                }
            }
        }
        None
    })
    .await
}

#[test]
fn a_restarted_follower_should_not_let_the_old_leader_serve_a_stale_lease_read() {
    common::on_fault_net(3, async |net, dir| {
        let max = ELECTION_TIMEOUT_MAX.as_millis().to_string();
        let flags = [
            "--read-policy",
            "lease",
            "--heartbeat-interval-ms",
            "50",
            "--election-timeout-min-ms",
            "200",
            "--election-timeout-max-ms",
            &max,
        ];
        let mut cluster = common::start_fault_cluster(net, dir, &flags).await;
        let old = cluster
            .wait_healthy(Duration::from_secs(30))
            .await
            .expect("a leader");
        let others: Vec<u64> = cluster
            .nodes
            .iter()
            .map(|n| n.id)
            .filter(|&id| id != old)
            .collect();
        let (a, b) = (others[0], others[1]);
        let addr = |id: u64| cluster.nodes[id as usize - 1].addrs.client.to_string();
        let everyone = client(cluster.endpoints(), Duration::from_secs(10));
        everyone.put(KEY, "v1").await.expect("write v1");
        let at_old_leader = client(vec![addr(old)], Duration::from_secs(3));
        let new_side = client(vec![addr(a), addr(b)], Duration::from_secs(10));

        // 1. A stops hearing from L and, after election_timeout_max, stops honouring its lease:
        //    its /health says so once it has heard nothing from a leader for that long.
        net.set_blocked(&BTreeSet::from([link(old, a)]))
            .await
            .expect("cut L-A");
        let a_metrics = cluster.nodes[a as usize - 1].addrs.metrics.to_string();
        let lapsed = rskv_jepsen::poll(
            ELECTION_TIMEOUT_MAX * 2,
            Duration::from_millis(100),
            || async {
                let (code, body) = common::http_get(&a_metrics, "/health").await?;
                (code == 503 && body.contains("no leader")).then_some(())
            },
        )
        .await;
        assert!(
            lapsed.is_some(),
            "A still reports a leader {:?} after the cut\n{}",
            ELECTION_TIMEOUT_MAX * 2,
            fault_log_tails(&cluster, 40)
        );
        let before = at_old_leader
            .get_with(KEY, Consistency::Linearizable)
            .await
            .expect("L still serves reads through B");
        assert_eq!(&before.value[..], b"v1");

        // 2. B is cut off from L, killed and restarted; L's lease from B still runs.
        net.set_blocked(&BTreeSet::from([link(old, a), link(old, b)]))
            .await
            .expect("cut L-B");
        let cut = Instant::now();
        let node_b = cluster.node_mut(b).expect("node B");
        node_b.kill().await;
        node_b.spawn().expect("restart B");

        // 3. A and B elect a leader, v2 is written through it, then L is asked.
        let new = leader_among(&cluster, &[a, b], Duration::from_secs(30))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "A and B elected no leader\n{}",
                    fault_log_tails(&cluster, 40)
                )
            });
        let elected = cut.elapsed();
        new_side
            .put(KEY, "v2")
            .await
            .expect("write v2 through the new leader");
        let acknowledged = cut.elapsed();
        let read = at_old_leader.get_with(KEY, Consistency::Linearizable).await;
        let answered = cut.elapsed();
        eprintln!(
            "network {:?}; after cutting L={old} off and restarting B={b}: {new} elected at {elected:.2?}, v2 acknowledged at {acknowledged:.2?}, L answered at {answered:.2?}: {:?}",
            net.kind,
            read.as_ref().map(|r| String::from_utf8_lossy(&r.value).into_owned()),
        );
        net.set_blocked(&BTreeSet::new()).await.expect("heal");
        if let Ok(r) = &read {
            assert_ne!(
                &r.value[..],
                b"v1",
                "stale lease read: L={old} answered v1 after v2 was acknowledged by {new} ({elected:.2?} after the restart of {b})\n{}",
                fault_log_tails(&cluster, 40)
            );
        }
    });
}
