//! Limits seen from outside a node: a write of more keys than the watch buffer reaches a
//! caught-up watcher whole, BatchPut and Multi refuse more than `limits.max_ops_per_request`
//! items, a request over `limits.max_message_bytes` is RESOURCE_EXHAUSTED naming that key, and an
//! unreachable peer is logged once per interval rather than once per heartbeat. (Refused client
//! connections: `node_services.rs`.)

mod common;

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::ProcessCluster;
use rskv_client::ClientError;
use rskv_proto::kv as pb;
use rskv_proto::kv::kv_client::KvClient;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// `--watch-buffer`: far fewer batches than the keys one BatchPut below writes.
const WATCH_BUFFER: &str = "8";
/// `--max-ops-per-request`.
const MAX_OPS: usize = 1000;
/// `--max-message-bytes` (at least max_value_size + max_key_size, which the flags below lower).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// One node with small limits, and its client address.
async fn small_limits_node() -> (ProcessCluster, String) {
    let max_ops = MAX_OPS.to_string();
    let max_message = MAX_MESSAGE_BYTES.to_string();
    let cluster = ProcessCluster::start(
        1,
        "memory",
        &[
            "--watch-buffer",
            WATCH_BUFFER,
            "--max-ops-per-request",
            &max_ops,
            "--max-value-size",
            "4096",
            "--max-key-size",
            "256",
            "--max-message-bytes",
            &max_message,
        ],
    );
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.nodes[0].addr.clone();
    (cluster, addr)
}

fn pairs(n: usize, prefix: &str, value_bytes: usize) -> Vec<(Bytes, Bytes)> {
    (0..n)
        .map(|i| {
            (
                Bytes::from(format!("{prefix}{i:05}")),
                Bytes::from(vec![b'v'; value_bytes]),
            )
        })
        .collect()
}

async fn kv(addr: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_put_larger_than_the_watch_buffer_should_reach_a_caught_up_watcher_whole() {
    let (cluster, _) = small_limits_node().await;
    let client = cluster.client();
    let mut stream = client.watch("w/", true, 0).await.expect("watch");
    client
        .batch_put(pairs(MAX_OPS, "w/", 8))
        .await
        .expect("batch put");
    client.put("w/after", "1").await.expect("put after");

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.last().map(|(k, _): &(Bytes, i64)| &k[..]) != Some(b"w/after") {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} events arrived", seen.len()))
            .unwrap_or_else(|status| panic!("watcher ended after {} events: {status}", seen.len()))
            .expect("watch stream ended early");
        seen.extend(message.events.into_iter().map(|e| (e.key, e.revision)));
    }
    let batch: Vec<Bytes> = seen[..MAX_OPS].iter().map(|(k, _)| k.clone()).collect();
    let expected: Vec<Bytes> = pairs(MAX_OPS, "w/", 0)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(batch, expected, "every pair of the batch, once, in order");
    // One request, one revision: the batch's, then the next write's.
    let revision = seen[0].1;
    assert!(
        seen[..MAX_OPS].iter().all(|(_, r)| *r == revision),
        "{seen:?}"
    );
    assert_eq!(seen[MAX_OPS].1, revision + 1);
    assert_eq!(seen.len(), MAX_OPS + 1, "then the next write, nothing else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_put_and_multi_over_the_op_limit_should_be_invalid_argument_naming_it() {
    let (cluster, addr) = small_limits_node().await;
    let client = cluster.client();
    match client.batch_put(pairs(MAX_OPS + 1, "b/", 1)).await {
        Err(ClientError::InvalidArgument(why)) => assert!(
            why.contains(&format!("{} pairs", MAX_OPS + 1))
                && why.contains(&format!("limit is {MAX_OPS}"))
                && why.contains("limits.max_ops_per_request"),
            "{why}"
        ),
        other => panic!("a batch over the limit must be refused: {other:?}"),
    }
    assert_eq!(
        client.get("b/00000").await.expect("get"),
        None,
        "nothing written"
    );

    let put = |i: usize| pb::Op {
        op: Some(pb::op::Op::Put(pb::PutRequest {
            key: Bytes::from(format!("m/{i}")),
            value: Bytes::from_static(b"v"),
            return_prev: false,
            session: None,
        })),
    };
    let status = kv(&addr)
        .await
        .multi(pb::MultiRequest {
            ops: (0..=MAX_OPS).map(put).collect(),
        })
        .await
        .expect_err("a multi over the limit must be refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("limits.max_ops_per_request"),
        "{status:?}"
    );
    assert_eq!(
        client.get("m/0").await.expect("get"),
        None,
        "nothing written"
    );

    // At the limit both are accepted.
    client
        .batch_put(pairs(MAX_OPS, "b/", 1))
        .await
        .expect("a batch at the limit");
    let answered = kv(&addr)
        .await
        .multi(pb::MultiRequest {
            ops: (0..MAX_OPS).map(put).collect(),
        })
        .await
        .expect("a multi at the limit")
        .into_inner();
    assert_eq!(answered.results.len(), MAX_OPS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_over_the_message_limit_should_be_resource_exhausted_naming_it() {
    let (cluster, addr) = small_limits_node().await;
    // 100 values of 1 KiB: a valid batch, but about 100 KiB in one message.
    let req = pb::BatchPutRequest {
        pairs: pairs(100, "big/", 1024)
            .into_iter()
            .map(|(key, value)| pb::KeyValue { key, value })
            .collect(),
        session: None,
    };
    let status = kv(&addr)
        .await
        .batch_put(req)
        .await
        .expect_err("over the message limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("limits.max_message_bytes")
            && status.message().contains(&MAX_MESSAGE_BYTES.to_string()),
        "{status:?}"
    );
    // The library client hands it back at once rather than retrying until its deadline.
    let client = cluster.client();
    let started = Instant::now();
    match client.batch_put(pairs(100, "big/", 1024)).await {
        Err(ClientError::Status(s)) => assert_eq!(s.code(), tonic::Code::ResourceExhausted),
        other => panic!("expected RESOURCE_EXHAUSTED: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5), "not retried");
    // The node is unharmed.
    client
        .put("small", "ok")
        .await
        .expect("a request within limits");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_peer_should_be_logged_once_per_interval_not_per_heartbeat() {
    let mut cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let down = cluster.follower_of(leader);
    cluster.kill(down);
    let started = Instant::now();
    let heartbeat_to_down = format!("target={down}) failed to send a heartbeat");
    let lines = |cluster: &ProcessCluster| {
        cluster
            .node(leader)
            .log_text()
            .lines()
            .filter(|l| l.contains(&heartbeat_to_down))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    cluster
        .wait(
            "the leader to log the peer unreachable",
            LEADER_TIMEOUT,
            || async { (!lines(&cluster).is_empty()).then_some(()) },
        )
        .await;
    // Keep the cluster working for a while: the leader heartbeats the dead peer every 50 ms
    // meanwhile, about 40 times in 2 s.
    let client = cluster.client();
    let mut writes = 0;
    while started.elapsed() < Duration::from_secs(2) || writes < 10 {
        client.put("k", writes.to_string()).await.expect("put");
        writes += 1;
    }
    let logged = lines(&cluster);
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    // Each distinct warning at most once per interval. The failure's text changes once as the
    // peer goes away (the broken connection's "transport error", then "connection refused" at
    // every reconnect), and each text is a warning of its own.
    let mut by_text: std::collections::BTreeMap<&str, usize> = Default::default();
    for line in &logged {
        let text = line
            .split_once("failed to send a heartbeat")
            .map_or(line.as_str(), |(_, rest)| rest);
        let text = text.split(" suppressed=").next().unwrap_or(text);
        *by_text.entry(text).or_default() += 1;
    }
    assert!(
        by_text.values().all(|n| *n <= allowed) && by_text.len() <= 3,
        "{} heartbeat failures logged in {:?}:\n{}",
        logged.len(),
        started.elapsed(),
        logged.join("\n")
    );
    assert!(logged[0].contains("suppressed=0"), "{}", logged[0]);
}
