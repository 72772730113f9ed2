//! Cluster lifecycle with real processes: grow and shrink under load, leader transfer, snapshot
//! catch-up for both engines, log compaction bound, node replacement, refused changes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::http_get;
use common::metric_value;
use common::ProcessCluster;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::Consistency;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts a writer that puts `prefix/NNNNNN` keys until stopped; returns the acknowledged keys.
fn writer(
    client: Client,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let key = format!("{prefix}/{i:06}");
            match client.put(key.clone(), i.to_string()).await {
                Ok(_) => acked.push(key),
                Err(ClientError::Ambiguous(_)) => {} // may or may not have landed; not counted
                Err(e) => panic!("write {key} failed: {e}"),
            }
            i += 1;
        }
        acked
    })
}

/// Waits until every listed node serves the same full content as a linearizable scan, and
/// returns that content.
async fn assert_identical(cluster: &ProcessCluster, ids: &[u64]) -> Vec<(Bytes, Bytes)> {
    let truth = cluster
        .client()
        .scan_all("", "", Consistency::Linearizable)
        .await
        .expect("scan");
    for id in ids {
        let client = cluster.client_for(*id);
        let truth = truth.clone();
        cluster
            .wait(
                &format!("node {id} to match the leader"),
                Duration::from_secs(30),
                || {
                    let client = &client;
                    let truth = &truth;
                    async move {
                        let mine = client.scan_all("", "", Consistency::Stale).await.ok()?;
                        (mine == *truth).then_some(())
                    }
                },
            )
            .await;
    }
    truth
}

async fn voters(client: &Client) -> BTreeMap<u64, bool> {
    client
        .leader_status()
        .await
        .expect("leader status")
        .members
        .iter()
        .map(|m| (m.id, m.voter))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_to_five_and_shrink_to_three_under_load() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = writer(cluster.client(), "grow", stop.clone());

    for id in [4, 5] {
        cluster.add_joining_node(id);
        let client = cluster.client();
        cluster
            .wait(
                &format!("node {id} to join as a voter"),
                Duration::from_secs(40),
                || {
                    let client = &client;
                    async move { voters(client).await.get(&id).copied().filter(|v| *v) }
                },
            )
            .await;
    }
    assert_eq!(voters(&cluster.client()).await.len(), 5);

    // Shrink: remove the current leader (it hands over first) and one follower.
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let admin = cluster.client();
    admin.remove_member(leader).await.expect("remove leader");
    let other = [1, 2, 3, 4, 5]
        .into_iter()
        .find(|id| *id != leader && *id != 5)
        .expect("a follower");
    admin.remove_member(other).await.expect("remove follower");
    let members = voters(&admin).await;
    assert_eq!(members.len(), 3, "{members:?}");
    assert!(!members.contains_key(&leader) && !members.contains_key(&other));

    stop.store(true, Ordering::Relaxed);
    let acked = load.await.expect("writer");
    assert!(acked.len() > 20, "writer made progress: {}", acked.len());
    cluster.kill(leader);
    cluster.kill(other);
    cluster.forget(leader);
    cluster.forget(other);
    let remaining: Vec<u64> = members.keys().copied().collect();
    let content = assert_identical(&cluster, &remaining).await;
    common::assert_acknowledged_stored(&content, &acked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_transfer_to_named_voter_and_refusals() {
    let cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let admin = cluster.client();
    let target = if leader == 3 { 2 } else { 3 };
    let resp = admin.transfer_leader(Some(target)).await.expect("transfer");
    assert_eq!(resp.leader_id, target);
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);

    // Unknown id: refused, nothing changes.
    match admin.transfer_leader(Some(42)).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("not a member"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    // A learner cannot lead. (It need not be running to be a member.)
    let spare = common::loopback_ports(1)[0];
    admin
        .add_learner(9, &format!("127.0.0.1:{spare}"), "")
        .await
        .expect("add learner");
    assert_eq!(voters(&admin).await.get(&9), Some(&false));
    match admin.transfer_leader(Some(9)).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("learner"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);
    // A learner far behind cannot be promoted (this one never ran).
    match admin.promote(9).await {
        Err(ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
        }
        other => panic!("unexpected {other:?}"),
    }
    admin.remove_member(9).await.expect("remove learner");
    assert!(!voters(&admin).await.contains_key(&9));

    // Other refused changes.
    match admin.remove_member(42).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("not a member"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    match admin.add_learner(9, &cluster.node(1).addr, "").await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("in use"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    match admin
        .add_learner(9, "https://127.0.0.1:1", "127.0.0.1:2")
        .await
    {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("not a scheme"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!voters(&admin).await.contains_key(&9), "nothing was added");
    match admin.promote(42).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("not a member"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_voter_cannot_be_removed() {
    let cluster = ProcessCluster::start(1, "memory", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    match cluster.client().remove_member(1).await {
        Err(ClientError::InvalidArgument(msg)) => assert!(msg.contains("last voter"), "{msg}"),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(voters(&cluster.client()).await.len(), 1);
}

async fn lagging_node_should_catch_up_by_snapshot(engine: &str) {
    let (mut cluster, leader, lagging) = ProcessCluster::start_with_a_follower_down(engine).await;
    let client = cluster.client();
    for i in 0..300 {
        client
            .put(format!("s{i:04}"), format!("{i}"))
            .await
            .expect("put");
    }
    // openraft purges the log after a snapshot is built, in the background: wait for it.
    let leader_addr = cluster.node(leader).addr.clone();
    cluster
        .wait(
            &format!("{engine}: the leader to purge its log"),
            Duration::from_secs(10),
            || async {
                let status = client.status_of(&leader_addr).await.ok()?;
                (status.purged_index > 0).then_some(())
            },
        )
        .await;
    cluster.restart(lagging);
    cluster
        .wait_stale_value(lagging, "s0299", Some("299"), Duration::from_secs(30))
        .await;
    // The counter moves just after the imported data becomes readable: poll it briefly.
    let metrics_addr = cluster.node(lagging).metrics_addr.clone();
    cluster
        .wait(
            &format!("{engine}: catch-up must have installed a snapshot"),
            Duration::from_secs(5),
            || async {
                let (_, text) = http_get(&metrics_addr, "/metrics").await?;
                (metric_value(&text, "rskv_snapshots_installed_total", "") >= 1.0).then_some(())
            },
        )
        .await;
    assert_identical(&cluster, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_should_catch_up_by_snapshot_rocksdb() {
    lagging_node_should_catch_up_by_snapshot("rocksdb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_should_catch_up_by_snapshot_memory() {
    lagging_node_should_catch_up_by_snapshot("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_node_should_rejoin_with_identical_content() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let victim = cluster.follower_of(leader);
    let client = cluster.client();
    for i in 0..100 {
        client
            .put(format!("r{i:03}"), format!("{i}"))
            .await
            .expect("put");
    }
    cluster.wipe(victim);
    client
        .remove_member(victim)
        .await
        .expect("remove the dead node");
    for i in 100..150 {
        client
            .put(format!("r{i:03}"), format!("{i}"))
            .await
            .expect("put");
    }
    cluster.rejoin(victim);
    cluster
        .wait(
            "the wiped node to rejoin as a voter",
            Duration::from_secs(40),
            || {
                let client = &client;
                async move { voters(client).await.get(&victim).copied().filter(|v| *v) }
            },
        )
        .await;
    let content = assert_identical(&cluster, &[1, 2, 3]).await;
    assert_eq!(content.len(), 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_disk_should_stay_bounded_with_compaction() {
    // 100k writes of 1 KiB (about 100 MiB through the log) with a snapshot every 5k entries:
    // the Raft log directory (WAL included) must stay bounded.
    const WRITES: usize = 100_000;
    const BOUND_BYTES: u64 = 96 * 1024 * 1024;
    let cluster = ProcessCluster::start(
        1,
        "rocksdb",
        &[
            "--snapshot-every",
            "5000",
            "--keep-logs-after-snapshot",
            "1000",
            // One entry per write, so 100k writes make 100k entries to compact.
            "--max-inflight-proposals",
            "0",
        ],
    );
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = Arc::new(cluster.client());
    let mut tasks = Vec::new();
    let per_task = WRITES / 50;
    for t in 0..50 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                client
                    .put(format!("d{t:02}/{i:05}"), "x".repeat(1024))
                    .await
                    .expect("put");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let status = client
        .status_of(&cluster.nodes[0].addr)
        .await
        .expect("status");
    assert!(status.applied as usize >= WRITES);
    assert!(
        status.purged_index > 90_000,
        "log purged behind the snapshot: {status:?}"
    );
    let log_dir = cluster.nodes[0].data_dir.join("data").join("raft_log");
    let size = dir_size(&log_dir);
    eprintln!("raft log dir after {WRITES} writes: {size} bytes; {status:?}");
    assert!(
        size < BOUND_BYTES,
        "raft log uses {size} bytes, bound {BOUND_BYTES}"
    );
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}
