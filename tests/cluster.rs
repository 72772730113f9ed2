//! A 3-node cluster of real `kv_server` processes: redirects, linearizable and stale reads,
//! leader crash, and full restart — for both state machines. (Snapshot catch-up is covered in
//! `membership.rs`.)

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::ProcessCluster;
use rskv::client::Consistency;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

async fn replicated_cluster_should_survive_crash_and_restart(engine: &str, extra: &[&str]) {
    let mut cluster = ProcessCluster::start(3, engine, extra);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);

    // A client that only knows a follower is redirected to the leader.
    let via_follower = cluster.client_for(follower);
    let index = via_follower
        .put("greeting", "hello")
        .await
        .expect("put via follower");
    assert!(index > 0);
    assert_eq!(
        via_follower
            .get("greeting")
            .await
            .expect("linearizable get"),
        Some(Bytes::from("hello"))
    );
    // Once applied, every node serves it from its own state machine.
    for node in &cluster.nodes {
        cluster
            .wait_stale_value(node.id, "greeting", Some("hello"), Duration::from_secs(10))
            .await;
    }

    // Acknowledged writes before a leader crash.
    let client = cluster.client();
    let mut acked = Vec::new();
    for i in 0..50 {
        let key = format!("key-{i:03}");
        client.put(key.clone(), format!("v{i}")).await.expect("put");
        acked.push((key, format!("v{i}")));
    }
    cluster.kill(leader);
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, leader, "a surviving node must lead");
    for i in 50..80 {
        let key = format!("key-{i:03}");
        client
            .put(key.clone(), format!("v{i}"))
            .await
            .expect("put after failover");
        acked.push((key, format!("v{i}")));
    }
    for (key, value) in &acked {
        assert_eq!(
            client.get(key.clone()).await.expect("get"),
            Some(Bytes::from(value.clone())),
            "acknowledged write {key} lost"
        );
    }

    // The crashed node comes back and catches up.
    cluster.restart(leader);
    cluster
        .wait_stale_value(leader, "key-079", Some("v79"), Duration::from_secs(20))
        .await;

    // Restart all three (crash-style): data intact.
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let scanned = client
        .scan_all("key-", "key.", Consistency::Linearizable)
        .await
        .expect("scan");
    let expected: Vec<(Bytes, Bytes)> = acked
        .iter()
        .map(|(k, v)| (Bytes::from(k.clone()), Bytes::from(v.clone())))
        .collect();
    assert_eq!(scanned, expected, "ordered scan after full restart");
    for id in 1..=3 {
        cluster
            .wait_stale_value(id, "key-079", Some("v79"), Duration::from_secs(20))
            .await;
        let stale = cluster
            .client_for(id)
            .scan_all("key-", "key.", Consistency::Stale)
            .await
            .expect("stale scan");
        assert_eq!(stale, expected, "node {id} content after restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_cluster_should_survive_crash_and_restart() {
    replicated_cluster_should_survive_crash_and_restart("rocksdb", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cluster_should_survive_crash_and_restart() {
    // The other read policy, so linearizable reads across a failover are checked under both.
    replicated_cluster_should_survive_crash_and_restart("memory", &["--read-policy", "lease"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_should_answer_not_leader_with_leader_address() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster
        .nodes
        .iter()
        .find(|n| n.id != leader)
        .expect("follower");
    let channel = rskv::raft::network::lazy_channel(&follower.addr, Duration::from_secs(1), None)
        .expect("channel");
    let mut kv = rskv::pb::kv::kv_client::KvClient::new(channel);
    let status = kv
        .put(rskv::pb::kv::PutRequest {
            key: Bytes::from("k"),
            value: Bytes::from("v"),
            return_prev: false,
        })
        .await
        .expect_err("a follower must refuse a write");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("not leader"),
        "{}",
        status.message()
    );
    let hinted = status
        .metadata()
        .get(rskv::error::LEADER_ADDR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(hinted.as_deref(), Some(cluster.node(leader).addr.as_str()));
}

/// A follower that slept through several election timeouts (SIGSTOP) must rejoin quietly: with
/// pre-vote it cannot raise its term and depose a leader that a quorum still follows. (Before
/// pre-vote was enabled, the fault suite saw resumed followers force elections.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_follower_should_not_depose_the_leader() {
    let cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    // Only the leader: a write sent to the paused node would just time out.
    let client = cluster.client_for(leader);
    let leader_addr = cluster.node(leader).addr.clone();
    let term = client.status_of(&leader_addr).await.expect("status").term;
    let follower = cluster.follower_of(leader);
    for round in 0..3 {
        cluster.node(follower).signal("STOP");
        // The majority keeps committing while the follower sleeps through ~3 election timeouts
        // (300-600 ms in the test config).
        for i in 0..15 {
            client
                .put(format!("r{round}-{i}"), "v")
                .await
                .expect("put while a follower is paused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.node(follower).signal("CONT");
        cluster
            .wait_stale_value(follower, &format!("r{round}-14"), Some("v"), LEADER_TIMEOUT)
            .await;
        let s = client.status_of(&leader_addr).await.expect("status");
        assert_eq!(
            (s.role.as_str(), s.term),
            ("leader", term),
            "round {round}: the resumed follower {follower} caused an election"
        );
    }
}
