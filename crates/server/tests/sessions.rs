//! Client sessions: a write whose outcome is unknown is retried and applied exactly once.
//!
//! The nodes are real `kv_server` processes; the client reaches them through proxies the test
//! breaks (see `common::proxy`): a reply swallowed after the node served the request, every
//! connection cut mid-request, and the leader killed under load.

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::ProcessCluster;
use rskv_client::Client;
use rskv_client::ClientError;
use rskv_client::ClientOptions;
use rskv_client::Consistency;
use rskv_proto::kv as pb;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// A sessions client over `endpoints` with a deadline long enough to ride out an election.
fn session_client(endpoints: Vec<String>) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            deadline: Duration::from_secs(20),
            attempt_timeout: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// The events on `key` a watch from revision `start` delivers, up to and including revision
/// `until`.
async fn events_until(
    cluster: &ProcessCluster,
    key: &str,
    start: i64,
    until: i64,
) -> Vec<pb::WatchEvent> {
    let client = cluster.client();
    let mut stream = client
        .watch(key.to_string(), false, start)
        .await
        .expect("watch");
    let mut events = Vec::new();
    while events
        .last()
        .is_none_or(|e: &pb::WatchEvent| e.revision < until)
    {
        let batch = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("watch events in time")
            .expect("watch stream")
            .expect("a batch");
        events.extend(batch.events);
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_reply_was_lost_should_be_applied_once() {
    let (cluster, endpoints, proxies) = ProcessCluster::start_proxied(3, "rocksdb", &[]).await;
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = session_client(endpoints);
    // Opens the session (and the connections) before anything is swallowed.
    let start = client
        .put_with("warmup", "1", false)
        .await
        .expect("warm-up put")
        .revision;
    assert!(client.session_id().is_some(), "a write opens a session");

    // The node serves the compare-and-swap; its reply is lost with the connection.
    proxies.swallow_next_response();
    let cas = client
        .compare_and_swap("counter", None, "1")
        .await
        .expect("the retry is answered");
    assert_eq!(proxies.swallowed(), 1, "the first reply was swallowed");
    let mut replays = 0.0;
    for node in &cluster.nodes {
        let (_, text) = common::http_get(&node.metrics_addr, "/metrics")
            .await
            .expect("metrics");
        replays += common::metric_value(&text, "rskv_session_replays_total", "");
    }
    assert_eq!(
        replays, 1.0,
        "the retry was answered from the session table"
    );
    assert!(
        cas.success,
        "the retry is answered with the first application's reply, not a failed swap: {cas:?}"
    );
    // Applied once: the counter is 1, and a second increment from 0 is refused.
    let again = cluster
        .client()
        .compare_and_swap("counter", None, "1")
        .await
        .expect("cas");
    assert!(!again.success, "the key already holds 1: {again:?}");
    let bump = client
        .compare_and_swap("counter", Some(Bytes::from_static(b"1")), "2")
        .await
        .expect("cas");
    assert!(bump.success);
    // One change for the swallowed-and-retried write, at the revision its reply named: the
    // history holds every change of the key from before it up to the bump, and no second one.
    let events = events_until(&cluster, "counter", start, bump.revision).await;
    let seen: Vec<(i64, Bytes)> = events
        .iter()
        .map(|e| (e.revision, e.value.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (cas.revision, Bytes::from_static(b"1")),
            (bump.revision, Bytes::from_static(b"2"))
        ]
    );
}

/// The same (session, seq) sent twice over raw gRPC: the second is answered from the session
/// table; a seq below what the client acknowledged is refused; an unknown session is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_sequence_should_be_answered_not_applied() {
    let cluster = ProcessCluster::start(1, "memory", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut kv = common::raw_kv(&cluster.nodes[0].addr);
    let session = kv
        .open_session(pb::OpenSessionRequest {})
        .await
        .expect("open")
        .into_inner();
    assert!(session.id > 0 && session.ttl_ms > 0, "{session:?}");
    let put = |seq: u64, first_unacked: u64, value: &'static str| pb::PutRequest {
        key: Bytes::from_static(b"k"),
        value: Bytes::from_static(value.as_bytes()),
        return_prev: true,
        session: Some(pb::SessionRef {
            id: session.id,
            seq,
            first_unacked,
        }),
    };
    let first = kv.put(put(1, 1, "a")).await.expect("put").into_inner();
    let second = kv.put(put(2, 1, "b")).await.expect("put").into_inner();
    // Seq 1 again (with a different value, which must not matter): the stored reply.
    let replay = kv.put(put(1, 1, "c")).await.expect("replay").into_inner();
    assert_eq!(replay, first, "the first application's reply");
    let value = cluster
        .client()
        .get_with("k", Consistency::Linearizable)
        .await
        .expect("get");
    assert_eq!(
        value.value,
        Bytes::from_static(b"b"),
        "the replay changed nothing"
    );
    // The client acknowledges seq 1 (first_unacked 3 on seq 3): a stray copy is refused.
    kv.put(put(3, 3, "d")).await.expect("put");
    let stray = kv.put(put(1, 1, "e")).await.expect_err("acknowledged");
    assert_eq!(stray.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        rskv_proto::status::Reason::of(&stray),
        Some(rskv_proto::status::Reason::SequenceAcknowledged),
        "{stray:?}"
    );
    // A session nobody opened.
    let mut unknown = put(1, 1, "f");
    if let Some(s) = unknown.session.as_mut() {
        s.id = session.id + 1000;
    }
    let refused = kv.put(unknown).await.expect_err("unknown session");
    assert_eq!(
        rskv_proto::status::Reason::of(&refused),
        Some(rskv_proto::status::Reason::SessionExpired),
        "{refused:?}"
    );
    // Closed: its writes are refused the same way.
    kv.close_session(pb::CloseSessionRequest { id: session.id })
        .await
        .expect("close");
    let closed = kv.put(put(4, 4, "g")).await.expect_err("closed session");
    assert_eq!(
        rskv_proto::status::Reason::of(&closed),
        Some(rskv_proto::status::Reason::SessionExpired)
    );
    assert!(second.index > first.index);
}

/// Increments done by a group of workers, and how each ended.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    unknown: AtomicU64,
    failed: AtomicU64,
}

/// Increments `counter` by compare-and-swap from the value read, until `stop`.
async fn increment(
    client: Arc<Client>,
    tally: Arc<Tally>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(current) = client.get("counter").await else {
            continue;
        };
        let value: u64 = current
            .as_ref()
            .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
            .unwrap_or(0);
        match client
            .compare_and_swap("counter", current, (value + 1).to_string())
            .await
        {
            Ok(o) if o.success => {
                tally.acked.fetch_add(1, Ordering::SeqCst);
            }
            Ok(_) => {}
            Err(ClientError::Ambiguous(e) | ClientError::SessionExpired(e)) => {
                eprintln!("unknown outcome: {e}");
                tally.unknown.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                eprintln!("failed: {e}");
                tally.failed.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_under_leader_kills_and_cut_connections_should_hold_exactly_the_acknowledged_increments(
) {
    let (mut cluster, endpoints, proxies) =
        ProcessCluster::start_proxied(3, "rocksdb", &["--request-timeout-ms", "3000"]).await;
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = Arc::new(session_client(endpoints));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|_| tokio::spawn(increment(client.clone(), tally.clone(), stop.clone())))
        .collect();
    let progress = |more: u64| {
        let tally = tally.clone();
        let target = tally.acked.load(Ordering::SeqCst) + more;
        async move {
            common::wait_for("increments to go on", Duration::from_secs(30), || {
                let tally = tally.clone();
                async move { (tally.acked.load(Ordering::SeqCst) >= target).then_some(()) }
            })
            .await
        }
    };
    progress(20).await;
    for round in 0..3 {
        // Every connection dropped while increments are in flight.
        proxies.cut_all();
        progress(20).await;
        proxies.cut_all();
        // The leader dies with increments in flight; a new one is elected; it comes back.
        let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
        cluster.kill(leader);
        progress(20).await;
        cluster.restart(leader);
        cluster.wait_for_leader(LEADER_TIMEOUT).await;
        progress(20).await;
        eprintln!(
            "round {round}: {} acknowledged so far",
            tally.acked.load(Ordering::SeqCst)
        );
    }
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.expect("worker");
    }
    let value: u64 = cluster
        .client()
        .get("counter")
        .await
        .expect("final read")
        .and_then(|v| String::from_utf8_lossy(&v).parse().ok())
        .expect("a number");
    let acked = tally.acked.load(Ordering::SeqCst);
    eprintln!(
        "counter {value}: {acked} acknowledged, {} unknown, {} failed, {} connections cut",
        tally.unknown.load(Ordering::SeqCst),
        tally.failed.load(Ordering::SeqCst),
        proxies.connections_cut()
    );
    assert!(
        proxies.connections_cut() > 0,
        "connections were cut under load"
    );
    assert_eq!(
        tally.unknown.load(Ordering::SeqCst),
        0,
        "every increment's outcome was settled within the deadline"
    );
    assert_eq!(
        value, acked,
        "each acknowledged increment applied exactly once"
    );
}

/// The session table is replicated state: a node that caught up by snapshot, and every node
/// after a crash, answers an old write's retry from it exactly as the node that applied it did.
async fn the_session_table_should_travel_in_snapshots_and_survive_restarts(engine: &str) {
    let (mut cluster, leader, lagging) = ProcessCluster::start_with_a_follower_down(engine).await;
    let mut kv = common::raw_kv(&cluster.node(leader).addr);
    let session = kv
        .open_session(pb::OpenSessionRequest {})
        .await
        .expect("open")
        .into_inner();
    let put = |seq: u64, value: String| pb::PutRequest {
        key: Bytes::from(format!("sess/{seq}")),
        value: Bytes::from(value),
        return_prev: false,
        session: Some(pb::SessionRef {
            id: session.id,
            seq,
            first_unacked: 1,
        }),
    };
    // Three writes whose replies the client never acknowledges, while `lagging` is down.
    let mut replies = Vec::new();
    for seq in 1..=3 {
        let reply = kv
            .put(put(seq, format!("v{seq}")))
            .await
            .expect("put")
            .into_inner();
        replies.push((seq, reply));
    }
    // Enough other writes for snapshots, and a purge past all of them.
    let client = cluster.client();
    for i in 0..150 {
        client.put(format!("fill/{i}"), "x").await.expect("put");
    }
    let leader_addr = cluster.node(leader).addr.clone();
    let last = replies.last().map_or(0, |(_, r)| r.index);
    cluster
        .wait(
            "the leader to purge its log",
            Duration::from_secs(10),
            || {
                let client = &client;
                let leader_addr = leader_addr.clone();
                async move {
                    let status = client.status_of(&leader_addr).await.ok()?;
                    (status.purged_index > last).then_some(())
                }
            },
        )
        .await;
    cluster.restart(lagging);
    let committed = client.leader_status().await.expect("status").committed;
    let lagging_addr = cluster.node(lagging).addr.clone();
    cluster
        .wait(
            "the restarted node to catch up",
            Duration::from_secs(30),
            || {
                let client = &client;
                let lagging_addr = lagging_addr.clone();
                async move {
                    let status = client.status_of(&lagging_addr).await.ok()?;
                    (status.applied >= committed).then_some(())
                }
            },
        )
        .await;
    let (_, text) = common::http_get(&cluster.node(lagging).metrics_addr, "/metrics")
        .await
        .expect("metrics");
    assert!(
        common::metric_value(&text, "rskv_snapshots_installed_total", "") >= 1.0,
        "{engine}: the node caught up by snapshot"
    );
    let counts = futures::future::join_all(
        cluster
            .nodes
            .iter()
            .map(|n| async { client.status_of(&n.addr).await.expect("status").sessions }),
    )
    .await;
    assert!(
        counts[0] >= 1 && counts.iter().all(|c| *c == counts[0]),
        "{engine}: every node holds the same sessions: {counts:?}"
    );

    // The node that installed the snapshot leads, and answers the retries from its table.
    client
        .transfer_leader(Some(lagging))
        .await
        .expect("transfer");
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, lagging);
    let mut kv = common::raw_kv(&lagging_addr);
    for (seq, reply) in &replies {
        let again = kv
            .put(put(*seq, "changed".into()))
            .await
            .expect("replay")
            .into_inner();
        assert_eq!(
            &again, reply,
            "{engine}: seq {seq} replayed after a snapshot"
        );
    }
    // Every node crashes and comes back: the table is recovered with the data.
    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [1, 2, 3] {
        cluster.restart(id);
    }
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut kv = common::raw_kv(&cluster.node(leader).addr);
    let (seq, reply) = &replies[1];
    let again = kv
        .put(put(*seq, "changed".into()))
        .await
        .expect("replay after restart")
        .into_inner();
    assert_eq!(&again, reply, "{engine}: seq {seq} replayed after a crash");
    let value = cluster
        .client()
        .get(format!("sess/{seq}"))
        .await
        .expect("get");
    assert_eq!(value, Some(Bytes::from(format!("v{seq}"))), "{engine}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_table_should_travel_in_snapshots_and_survive_restarts_rocksdb() {
    the_session_table_should_travel_in_snapshots_and_survive_restarts("rocksdb").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_table_should_travel_in_snapshots_and_survive_restarts_memory() {
    the_session_table_should_travel_in_snapshots_and_survive_restarts("memory").await;
}
