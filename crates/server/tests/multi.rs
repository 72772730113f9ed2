//! Request coalescing: the Multi RPC (several independent requests in one message) and the
//! grouping of concurrent writes into shared log entries, observed from outside real nodes.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::http_get;
use common::metric_value;
use common::ok_requests;
use common::ProcessCluster;
use rskv_client::Client;
use rskv_client::ClientOptions;
use rskv_proto::kv as pb;
use rskv_proto::kv::kv_client::KvClient;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Put(pb::PutRequest {
            key: Bytes::from(key.to_string()),
            value: Bytes::from(value.to_string()),
            return_prev: false,
            session: None,
        })),
    }
}

fn get(key: &str, consistency: pb::Consistency) -> pb::Op {
    pb::Op {
        op: Some(pb::op::Op::Get(pb::GetRequest {
            key: Bytes::from(key.to_string()),
            consistency: consistency as i32,
        })),
    }
}

/// A client with one RPC in flight per node, so concurrent requests queue and travel in Multis.
fn one_rpc_at_a_time(cluster: &ProcessCluster) -> Client {
    Client::with_options(
        cluster.endpoints(),
        ClientOptions {
            deadline: Duration::from_secs(15),
            batch_inflight: 1,
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

async fn multi(addr: &str, ops: Vec<pb::Op>) -> Vec<pb::op_result::Result> {
    let mut kv = KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let resp = kv
        .multi(pb::MultiRequest { ops })
        .await
        .expect("multi")
        .into_inner();
    resp.results
        .into_iter()
        .map(|r| r.result.expect("every op answered"))
        .collect()
}

/// Reads keys `k000`.. back with `n` concurrent gets (so they travel in Multis) and checks each
/// holds the value `v{i}` the tests put there.
async fn read_back_concurrently(client: &Client, n: usize) {
    let gets = (0..n).map(|i| client.get(format!("k{i:03}")));
    for (i, value) in futures::future::join_all(gets)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            value.expect("get").as_deref(),
            Some(format!("v{i}").as_bytes()),
            "k{i:03}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_should_answer_each_op_as_if_sent_alone() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let leader_addr = cluster.node(leader).addr.clone();
    use pb::op_result::Result as R;

    // Independent ops: two valid puts and an invalid one fail or succeed on their own.
    let results = multi(
        &leader_addr,
        vec![put("a", "1"), put("", "x"), put("b", "2")],
    )
    .await;
    assert_eq!(results.len(), 3);
    let (R::Put(a), R::Error(bad), R::Put(b)) = (&results[0], &results[1], &results[2]) else {
        panic!("unexpected results {results:?}");
    };
    assert!(a.index > 0 && b.index > 0, "{results:?}");
    assert_eq!(bad.code, tonic::Code::InvalidArgument as i32, "{bad:?}");
    assert!(bad.message.contains("key must not be empty"), "{bad:?}");

    let cas = pb::Op {
        op: Some(pb::op::Op::CompareAndSwap(pb::CompareAndSwapRequest {
            key: Bytes::from_static(b"a"),
            expected: Some(Bytes::from_static(b"1")),
            new_value: Bytes::from_static(b"3"),
            session: None,
        })),
    };
    let delete = pb::Op {
        op: Some(pb::op::Op::Delete(pb::DeleteRequest {
            key: Bytes::from_static(b"never-written"),
            session: None,
        })),
    };
    let results = multi(
        &leader_addr,
        vec![get("b", pb::Consistency::Linearizable), cas, delete],
    )
    .await;
    match &results[..] {
        [R::Get(g), R::CompareAndSwap(c), R::Delete(d)] => {
            assert!(g.found && g.value == "2", "{g:?}");
            assert!(
                c.success && c.current.as_deref() == Some(&b"3"[..]),
                "{c:?}"
            );
            assert!(!d.existed, "{d:?}");
        }
        other => panic!("unexpected results {other:?}"),
    }

    // A follower refuses the write naming the leader, and serves the stale read locally.
    let follower = cluster.follower_of(leader);
    let follower_addr = cluster.node(follower).addr.clone();
    let ops = || vec![put("c", "4"), get("a", pb::Consistency::Stale)];
    let results = cluster
        .wait(
            "the follower to apply a=3",
            Duration::from_secs(10),
            || async {
                let results = multi(&follower_addr, ops()).await;
                matches!(&results[1], R::Get(g) if g.value == "3").then_some(results)
            },
        )
        .await;
    let R::Error(e) = &results[0] else {
        panic!("a follower accepted a write: {results:?}");
    };
    assert_eq!(e.code, tonic::Code::FailedPrecondition as i32, "{e:?}");
    assert_eq!(e.leader_id, Some(leader), "{e:?}");
    assert_eq!(e.leader_addr, leader_addr, "{e:?}");

    // The library client follows that per-op redirect like a unary one.
    let client = cluster.client_for(follower);
    client.put("c", "5").await.expect("put via follower");
    assert_eq!(
        client.get("c").await.expect("get").as_deref(),
        Some(&b"5"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_should_share_rpcs_and_log_entries() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let metrics_addr = cluster.node(leader).metrics_addr.clone();
    let client = one_rpc_at_a_time(&cluster);
    client.put("warm", "up").await.expect("first put");
    let scrape = || async { http_get(&metrics_addr, "/metrics").await.expect("scrape").1 };
    let before = scrape().await;

    const N: usize = 300;
    let puts = (0..N).map(|i| client.put(format!("k{i:03}"), format!("v{i}")));
    let indexes: Vec<u64> = futures::future::join_all(puts)
        .await
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("every put acknowledged");
    read_back_concurrently(&client, N).await;

    let after = scrape().await;
    let delta = |name: &str, labels: &str| {
        metric_value(&after, name, labels) - metric_value(&before, name, labels)
    };
    let multis = ok_requests(&after, "multi") - ok_requests(&before, "multi");
    let puts = ok_requests(&after, "put") - ok_requests(&before, "put");
    let entries = delta("rskv_write_group_size_count", "");
    let grouped = delta("rskv_write_group_size_sum", "");
    // Every put is counted as a put, whichever RPC carried it…
    assert_eq!(puts, N as f64, "{after}");
    // …but they travelled in fewer RPCs and fewer log entries than there were writes.
    assert!(multis >= 1.0 && multis < N as f64, "{multis} multis");
    assert_eq!(grouped, N as f64, "every write went through the proposer");
    assert!(entries < N as f64, "{entries} entries for {N} writes");
    // Writes that shared an entry share its index.
    let mut distinct = indexes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len() as f64, entries, "one index per entry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_should_follow_writes_not_log_entries() {
    // 600 concurrent writes share far fewer than 200 entries; a snapshot is still due every 200
    // writes.
    let cluster = ProcessCluster::start(1, "rocksdb", &["--snapshot-every", "200"]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.nodes[0].addr.clone();
    let client = one_rpc_at_a_time(&cluster);
    let puts = (0..600).map(|i| client.put(format!("s{i:03}"), "v"));
    for r in futures::future::join_all(puts).await {
        r.expect("put");
    }
    let status = cluster
        .wait("a snapshot", Duration::from_secs(10), || async {
            let s = client.status_of(&addr).await.expect("status");
            (s.snapshot_index > 0).then_some(s)
        })
        .await;
    assert!(
        status.last_log_index < 200,
        "the writes made {} entries: too many to show that snapshots count writes",
        status.last_log_index
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_several_connections_should_use_them_all_and_still_coalesce() {
    let cluster = ProcessCluster::start(1, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let metrics_addr = cluster.node(leader).metrics_addr.clone();
    let scrape = || async { http_get(&metrics_addr, "/metrics").await.expect("scrape").1 };
    let active = |text: &str| metric_value(text, "rskv_connections_active", "");
    // The harness's own client has gone; wait until the node has seen it close.
    cluster
        .wait("no client connection open", LEADER_TIMEOUT, || async {
            (active(&scrape().await) == 0.0).then_some(())
        })
        .await;

    const CONNECTIONS: usize = 3;
    let client = Client::with_options(
        cluster.endpoints(),
        ClientOptions {
            deadline: Duration::from_secs(15),
            batch_inflight: 1,
            connections: CONNECTIONS,
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let before = scrape().await;
    const N: usize = 300;
    // In waves, so that there are many batches (each wave's first request goes alone).
    for wave in (0..N).collect::<Vec<_>>().chunks(30) {
        let puts = wave
            .iter()
            .map(|i| client.put(format!("k{i:03}"), format!("v{i}")));
        futures::future::join_all(puts)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .expect("every put acknowledged");
    }
    read_back_concurrently(&client, N).await;

    let after = scrape().await;
    assert_eq!(active(&after), CONNECTIONS as f64, "{after}");
    let multis = ok_requests(&after, "multi") - ok_requests(&before, "multi");
    // One batcher spans the connections: with one RPC in flight, requests still shared Multis.
    assert!(multis >= 1.0 && multis < N as f64, "{multis} multis");
}
