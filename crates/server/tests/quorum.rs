//! A leader that cannot reach a quorum says so: its writes and linearizable reads end with
//! UNAVAILABLE "no quorum: ..." (retryable, nothing applied) instead of a NOT_LEADER pointing
//! nowhere, its status shows the lost quorum, and `/health` answers 503 until it is back.

mod common;

use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::ProcessCluster;
use rskv_proto::kv as pb;
use rskv_proto::status::Reason;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const REQUEST_TIMEOUT_MS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_without_a_quorum_should_say_so() {
    let request_timeout = REQUEST_TIMEOUT_MS.to_string();
    let mut cluster =
        ProcessCluster::start(3, "rocksdb", &["--request-timeout-ms", &request_timeout]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster.client().put("k", "v").await.expect("put");
    let (addr, metrics) = {
        let node = cluster.node(leader);
        (node.addr.clone(), node.metrics_addr.clone())
    };
    let status = cluster.client().status_of(&addr).await.expect("status");
    assert!(status.quorum, "a healthy leader has its quorum: {status:?}");
    let followers: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    for id in &followers {
        cluster.kill(*id);
    }

    let admin = cluster.client();
    let status = cluster
        .wait(
            "the leader to notice its lost quorum",
            Duration::from_secs(10),
            || {
                let admin = &admin;
                let addr = addr.clone();
                async move {
                    let s = admin.status_of(&addr).await.ok()?;
                    (!s.quorum).then_some(s)
                }
            },
        )
        .await;
    assert_eq!(status.role, "leader", "it still leads: {status:?}");
    assert!(status.quorum_ack_ms.is_some_and(|ms| ms > 0), "{status:?}");
    let (code, body) = common::http_get(&metrics, "/health").await.expect("health");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no quorum"), "{body}");

    let mut kv = common::raw_kv(&addr);
    let started = Instant::now();
    let refused = kv
        .put(pb::PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"w"),
            return_prev: false,
            session: None,
        })
        .await
        .expect_err("no quorum, no write");
    let took = started.elapsed();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(Reason::of(&refused), Some(Reason::NoQuorum), "{refused:?}");
    assert!(
        refused.message().starts_with("no quorum: "),
        "{}",
        refused.message()
    );
    assert!(
        refused
            .metadata()
            .contains_key(rskv_proto::status::NOT_ADMITTED_HEADER),
        "nothing was proposed, so it may be retried: {refused:?}"
    );
    assert!(
        took < Duration::from_millis(REQUEST_TIMEOUT_MS),
        "answered within the request timeout, took {took:?}"
    );
    let read = kv
        .get(pb::GetRequest {
            key: Bytes::from_static(b"k"),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .expect_err("no quorum, no linearizable read");
    assert_eq!(read.code(), tonic::Code::Unavailable, "{read:?}");
    assert_eq!(Reason::of(&read), Some(Reason::NoQuorum), "{read:?}");
    assert!(
        read.message().starts_with("no quorum: ") && !read.message().contains('{'),
        "a message for people, not a debug print: {}",
        read.message()
    );
    // The library client gives up at its deadline with the node's answer kept as the error's
    // source: code and reason for programs, not only text for people. A backoff longer than the
    // deadline makes that answer the last one (no retry cut short by the deadline after it).
    let client = rskv_client::Client::with_options(
        [addr.clone()],
        rskv_client::ClientOptions {
            deadline: Duration::from_secs(1),
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(5),
            ..rskv_client::ClientOptions::default()
        },
    )
    .expect("client");
    let failed = client.get("k").await.expect_err("no quorum, no read");
    let last = std::error::Error::source(&failed)
        .and_then(|cause| cause.downcast_ref::<rskv_client::Cause>())
        .and_then(rskv_client::Cause::last_status)
        .unwrap_or_else(|| panic!("the node's status kept as the source: {failed:?}"));
    assert_eq!(Reason::of(last), Some(Reason::NoQuorum), "{failed}");
    assert!(failed.to_string().contains("no quorum"), "{failed}");
    // A stale read is still served from the node's own state.
    let stale = kv
        .get(pb::GetRequest {
            key: Bytes::from_static(b"k"),
            consistency: pb::Consistency::Stale as i32,
        })
        .await
        .expect("stale read")
        .into_inner();
    assert_eq!(stale.value, Bytes::from_static(b"v"));

    for id in &followers {
        cluster.restart(*id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let healthy = cluster
        .wait("health to recover", Duration::from_secs(20), || {
            let metrics = metrics.clone();
            async move {
                let (code, body) = common::http_get(&metrics, "/health").await?;
                (code == 200).then_some(body)
            }
        })
        .await;
    assert!(healthy.contains("\"status\":\"ok\""), "{healthy}");
}

/// A follower that knows no leader reports unhealthy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_without_a_leader_should_be_unhealthy() {
    let mut cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let others: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|id| *id != leader)
        .collect();
    // The leader and one follower gone: the last follower cannot elect anyone.
    cluster.kill(leader);
    cluster.kill(others[0]);
    let metrics = cluster.node(others[1]).metrics_addr.clone();
    let body = cluster
        .wait(
            "the lone follower to report unhealthy",
            Duration::from_secs(20),
            || {
                let metrics = metrics.clone();
                async move {
                    let (code, body) = common::http_get(&metrics, "/health").await?;
                    (code == 503).then_some(body)
                }
            },
        )
        .await;
    assert!(body.contains("no leader"), "{body}");
}
