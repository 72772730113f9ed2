//! Per-node services, observed from outside the process: Watch (live, from a revision, across
//! restarts; served from the store's history), connection limits, Prometheus metrics and health,
//! graceful shutdown with leader hand-off.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use common::http_get;
use common::metric_value;
use common::ok_requests;
use common::ProcessCluster;
use rskv_client::Client;
use rskv_client::ClientOptions;
use rskv_client::Consistency;
use rskv_proto::kv::WatchEvent;
use rskv_proto::kv::WatchResponse;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);

/// Reads events from a watch stream (deadline-bounded) until `done` holds of what was read.
async fn read_events(
    stream: &mut tonic::Streaming<WatchResponse>,
    done: impl Fn(&[WatchEvent]) -> bool,
) -> Vec<WatchEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(remaining, stream.message())
            .await
            .unwrap_or_else(|_| panic!("timed out after {} events: {out:?}", out.len()))
            .expect("watch stream failed")
            .expect("watch stream ended early");
        out.extend(msg.events);
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads `count` events from a watch stream (deadline-bounded) as (key, value, revision).
async fn collect_events(
    stream: &mut tonic::Streaming<WatchResponse>,
    count: usize,
) -> Vec<(String, String, i64)> {
    read_events(stream, |seen| seen.len() >= count)
        .await
        .into_iter()
        .map(|e| (text(&e.key), text(&e.value), e.revision))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_on_every_node_should_see_the_same_ordered_writes() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut streams = Vec::new();
    for node in &cluster.nodes {
        let client = cluster.client_for(node.id);
        streams.push(client.watch("w/", true, 0).await.expect("watch"));
    }
    // Something outside the prefix must not show up.
    cluster.client().put("other", "x").await.expect("put");

    // Four concurrent writers, 25 writes each.
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = cluster.client();
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                client
                    .put(format!("w/{w}/{i}"), format!("{w}-{i}"))
                    .await
                    .expect("put");
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let mut sequences = Vec::new();
    for stream in &mut streams {
        sequences.push(collect_events(stream, 100).await);
    }
    let first = &sequences[0];
    assert_eq!(first.len(), 100);
    // Every put is a revision of its own.
    assert!(
        first.windows(2).all(|w| w[0].2 < w[1].2),
        "revisions go up: {first:?}"
    );
    assert!(first.iter().all(|(k, _, _)| k.starts_with("w/")));
    for (i, seq) in sequences.iter().enumerate() {
        assert_eq!(seq, first, "node {} saw a different sequence", i + 1);
    }

    // A watch from a past revision replays the history from there, then continues live, no gap.
    let start = first[50].2;
    let mut replay = cluster
        .client_for(2)
        .watch("w/", true, start)
        .await
        .expect("watch from a revision");
    cluster.client().put("w/late", "1").await.expect("put");
    let replayed = collect_events(&mut replay, 51).await;
    assert_eq!(&replayed[..50], &first[50..]);
    assert_eq!(replayed[50].0, "w/late");
}

/// Puts `{prefix}{i:02}` = `v{i}`; returns (key, value, revision) as a watch reports it.
async fn numbered_put(client: &Client, prefix: &str, i: usize) -> (String, String, i64) {
    let (key, value) = (format!("{prefix}{i:02}"), format!("v{i}"));
    let put = client
        .put_with(key.clone(), value.clone(), false)
        .await
        .expect("put");
    (key, value, put.revision)
}

/// The store's history outlives the process: after a clean stop (which ends an open watch saying
/// where to resume), and after a crash (the RocksDB engine writes no WAL, so openraft re-applies
/// the entries after its last flush), a watch from an early revision gets every change once, in
/// order; re-applied entries add nothing to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_should_see_history_from_before_restarts_once() {
    let mut cluster = ProcessCluster::start(1, "rocksdb", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    let put = |i: usize| numbered_put(&client, "k", i);
    let mut written = Vec::new();
    // A live watch open across the clean stop: it sees the writes, and then the stop ends it
    // (promptly: it does not hold up the drain) naming the revision to resume from.
    let mut live = client.watch("k", true, 0).await.expect("live watch");
    for i in 0..10 {
        written.push(put(i).await);
    }
    assert_eq!(collect_events(&mut live, 10).await, written);
    let started = Instant::now();
    assert!(cluster
        .node_mut(1)
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "an open watch held up the stop: {:?}",
        started.elapsed()
    );
    let ended = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .expect("the stream ended in time")
        .expect_err("the stream ends with a status");
    let resume = format!("start_revision {}", written[9].2 + 1);
    assert!(
        ended.code() == tonic::Code::Unavailable && ended.message().contains(&resume),
        "{ended:?}"
    );
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    for i in 10..13 {
        written.push(put(i).await);
    }
    // A crash: the entries after the clean stop's flush are applied again at start.
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let mut stream = client
        .watch("k", true, written[0].2)
        .await
        .expect("watch from the first revision");
    let seen = collect_events(&mut stream, written.len()).await;
    assert_eq!(seen, written);
    // Nothing more of it: the next event is the next write.
    let next = put(13).await;
    assert_eq!(collect_events(&mut stream, 1).await, vec![next]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifth_connection_should_be_refused_while_four_keep_working() {
    let cluster = ProcessCluster::start(1, "rocksdb", &["--max-connections", "4"]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.nodes[0].addr.clone();
    let metrics = cluster.nodes[0].metrics_addr.clone();
    // Four clients, each with its own connection, all working.
    let mut admitted = Vec::new();
    for i in 0..4 {
        let client = Client::new(vec![addr.clone()]).expect("client");
        client
            .put(format!("c{i}"), "v")
            .await
            .expect("admitted client works");
        admitted.push(client);
    }
    // A fifth connection is closed at accept: the attempt fails fast.
    let fifth = Client::with_options(
        vec![addr.clone()],
        ClientOptions {
            deadline: Duration::from_secs(2),
            attempt_timeout: Duration::from_millis(500),
            ..ClientOptions::default()
        },
    )
    .expect("client");
    let started = Instant::now();
    let refused = fifth.put("fifth", "v").await;
    assert!(
        refused.is_err(),
        "fifth connection must be refused: {refused:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The admitted four keep working.
    for (i, client) in admitted.iter().enumerate() {
        client
            .put(format!("c{i}"), "again")
            .await
            .expect("still served");
    }
    // More refused connections (a client reconnecting again and again) add no log lines within
    // the throttle's interval: they are counted instead.
    for _ in 0..20 {
        let _ = tokio::net::TcpStream::connect(&addr).await;
    }
    let (_, text) = cluster
        .wait("every refusal counted", Duration::from_secs(10), || async {
            let (code, text) = http_get(&metrics, "/metrics").await?;
            (metric_value(&text, "rskv_connections_rejected_total", "") >= 21.0)
                .then_some((code, text))
        })
        .await;
    let logged = cluster.nodes[0]
        .log_text()
        .lines()
        .filter(|l| l.contains("connection refused"))
        .count();
    let allowed = 1 + started.elapsed().as_secs() as usize / 10;
    assert!(
        (1..=allowed).contains(&logged),
        "{logged} refusal lines for {} refusals in {:?}\n{text}",
        metric_value(&text, "rskv_connections_rejected_total", ""),
        started.elapsed()
    );
    // Closing a connection frees its slot.
    drop(admitted.pop());
    let next = Client::new(vec![addr]).expect("client");
    cluster
        .wait("a freed slot", Duration::from_secs(10), || async {
            next.put("after", "v").await.ok()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_should_count_requests_and_health_should_report() {
    let cluster = ProcessCluster::start(1, "memory", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let node = &cluster.nodes[0];
    let client = cluster.client();
    let scrape = || async {
        let (status, text) = http_get(&node.metrics_addr, "/metrics")
            .await
            .expect("scrape");
        assert_eq!(status, 200);
        text
    };
    let count = |text: &str| ok_requests(text, "put");
    let before = count(&scrape().await);
    for i in 0..17 {
        client.put(format!("m{i}"), "v").await.expect("put");
    }
    let _ = client.put("", "v").await; // one INVALID_ARGUMENT
    let text = scrape().await;
    assert_eq!(count(&text) - before, 17.0, "{text}");
    assert!(
        text.contains("rskv_request_duration_seconds_bucket"),
        "histogram present"
    );
    assert!(text.contains("INVALID_ARGUMENT"), "error codes counted");
    // Raft gauges follow openraft's metrics channel, which may trail the reply to
    // the last put by a moment: wait for them rather than read them once.
    cluster
        .wait(
            "raft gauges to show the 18 applied entries",
            Duration::from_secs(5),
            || async {
                let text = scrape().await;
                (metric_value(&text, "rskv_raft_is_leader", "") == 1.0
                    && metric_value(&text, "rskv_raft_applied_index", "") >= 18.0)
                    .then_some(())
            },
        )
        .await;
    let (status, body) = http_get(&node.metrics_addr, "/health")
        .await
        .expect("health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_leader_should_hand_over_and_lose_nothing() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &["--shutdown-timeout-ms", "8000"]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let client = cluster.client();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("g/{w}/{i:05}");
                match client.put(key.clone(), i.to_string()).await {
                    Ok(_) => acked.push(key),
                    Err(e) => panic!("writer {w} failed during hand-off: {e}"),
                }
                i += 1;
            }
            acked
        }));
    }
    // Let the writers get going, then stop the leader gracefully.
    let probe = cluster.client();
    cluster
        .wait(
            "writes before shutdown",
            Duration::from_secs(10),
            || async {
                let n = probe
                    .scan("g/", "g0", 0, Consistency::Linearizable)
                    .await
                    .ok()?
                    .pairs
                    .len();
                (n >= 30).then_some(())
            },
        )
        .await;
    let started = Instant::now();
    let status = cluster
        .node_mut(leader)
        .terminate(Duration::from_secs(12))
        .expect("old leader exits on SIGTERM");
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(9), "shutdown took {took:?}");
    let log = cluster.node(leader).log_text();
    assert!(
        log.contains("leadership handed over"),
        "no hand-off in log:\n{log}"
    );
    // Writes continue on the new leader.
    let new_leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.expect("writer"));
    }
    let client = cluster.client();
    let stored = client
        .scan_all("g/", "g0", Consistency::Linearizable)
        .await
        .expect("scan");
    common::assert_acknowledged_stored(&stored, &acked);
    assert!(acked.len() >= 30);
    eprintln!(
        "hand-off: {} acknowledged writes, shutdown took {took:?}",
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_should_lose_no_acknowledged_write() {
    let mut cluster = ProcessCluster::start(3, "memory", &["--shutdown-timeout-ms", "8000"]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = cluster.client();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            // A request the node received just as it closed the connection (a TCP reset, which
            // also discards the GOAWAY that would have said it was not processed) has an unknown
            // outcome: the client must say so, and it must stay rare.
            let mut ambiguous = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("r/{i:06}");
                match client.put(key.clone(), "v").await {
                    Ok(_) => acked.push(key),
                    Err(rskv_client::ClientError::Ambiguous(e)) => ambiguous.push((key, e)),
                    Err(e) => panic!("write during rolling restart: {e:?}"),
                }
                i += 1;
            }
            (acked, ambiguous)
        })
    };
    for id in 1..=3 {
        let status = cluster
            .node_mut(id)
            .terminate(Duration::from_secs(12))
            .expect("exits");
        assert!(status.success(), "node {id}: {status:?}");
        cluster.restart(id);
        cluster.wait_for_leader(LEADER_TIMEOUT).await;
        // The restarted node catches up before the next one goes.
        let probe = cluster.client();
        let target = probe
            .put("probe", id.to_string())
            .await
            .expect("probe write");
        cluster
            .wait(
                "restarted node to catch up",
                Duration::from_secs(20),
                || async {
                    let s = probe.status_of(&cluster.node(id).addr).await.ok()?;
                    (s.applied >= target).then_some(())
                },
            )
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, ambiguous) = writer.await.expect("writer");
    assert!(
        acked.len() > 20,
        "the writer ran throughout: {} writes",
        acked.len()
    );
    assert!(
        ambiguous.len() <= 3,
        "at most one per restart: {ambiguous:?}"
    );
    eprintln!(
        "rolling restart: {} acknowledged writes, ambiguous: {ambiguous:?}",
        acked.len()
    );
    let pairs = cluster
        .client()
        .scan_all("r/", "r0", Consistency::Linearizable)
        .await
        .expect("scan");
    let stored = common::assert_acknowledged_stored(&pairs, &acked);
    let maybe = acked.len() + ambiguous.len();
    assert!(
        stored.len() <= maybe,
        "only written keys: {} stored, {maybe} written",
        stored.len()
    );
}

/// Reads events from a raw watch stream until revision `until` has been seen, as (key, value,
/// revision).
async fn events_through(
    stream: &mut tonic::Streaming<WatchResponse>,
    until: i64,
) -> Vec<(String, String, i64)> {
    read_events(stream, |seen| {
        seen.last().is_some_and(|e| e.revision >= until)
    })
    .await
    .into_iter()
    .map(|e| (text(&e.key), text(&e.value), e.revision))
    .collect()
}

/// A plain put through the raw gRPC client (no session), answered with its revision.
async fn raw_put(
    kv: &mut rskv_proto::kv::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
    value: &str,
) -> rskv_proto::kv::PutResponse {
    kv.put(rskv_proto::kv::PutRequest {
        key: bytes::Bytes::copy_from_slice(key.as_bytes()),
        value: bytes::Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    })
    .await
    .expect("put")
    .into_inner()
}

/// Native writes answer with their store revision, and a watch is served from the store's
/// history: on a follower, from any past revision, or live (start 0: what is written after it
/// started, nothing before), and again after that follower restarts from the revision after the
/// last one seen, with every change once, in revision order. A watch from a log index (the
/// retired `start_index`) is refused saying what to use instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_should_resume_across_a_restart_of_its_node() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let mut kv = common::raw_kv(&cluster.node(leader).addr);
    let mut revisions = Vec::new();
    for i in 0..6 {
        let put = raw_put(&mut kv, &format!("r/{i}"), &format!("v{i}")).await;
        revisions.push(put.revision);
    }
    assert!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "one revision per write: {revisions:?}"
    );
    let deleted = kv
        .delete(rskv_proto::kv::DeleteRequest {
            key: "r/0".into(),
            ..Default::default()
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(deleted.revision, revisions[5] + 1);

    let follower_addr = cluster.node(follower).addr.clone();
    let watch_from = |start_revision| {
        let addr = follower_addr.clone();
        async move {
            common::raw_kv(&addr)
                .watch(rskv_proto::kv::WatchRequest {
                    key: "r/".into(),
                    prefix: true,
                    start_revision,
                    ..Default::default()
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let mut stream = watch_from(revisions[2]).await.expect("watch");
    let seen = events_through(&mut stream, deleted.revision).await;
    let expected: Vec<(String, String, i64)> = (2..6)
        .map(|i| (format!("r/{i}"), format!("v{i}"), revisions[i]))
        .chain([("r/0".to_string(), String::new(), deleted.revision)])
        .collect();
    assert_eq!(seen, expected);
    drop(stream);

    // The retired start_index: refused, naming what to use, whatever else the request says.
    for start_revision in [0, revisions[2]] {
        let refused = common::raw_kv(&follower_addr)
            .watch(rskv_proto::kv::WatchRequest {
                key: "r/".into(),
                prefix: true,
                start_index: 3,
                start_revision,
            })
            .await
            .expect_err("a watch from a log index is refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("start_index 3 is no longer served")
                && refused.message().contains("start_revision"),
            "{refused:?}"
        );
    }

    // A live watch (start 0) on the follower, once it has applied everything above: it gets
    // the next write and nothing before it.
    let probe = cluster.client();
    cluster
        .wait(
            "the follower to apply the delete",
            Duration::from_secs(10),
            || async {
                let s = probe.status_of(&follower_addr).await.ok()?;
                (s.applied >= deleted.index).then_some(())
            },
        )
        .await;
    let mut live = watch_from(0).await.expect("live watch");
    let put = raw_put(&mut kv, "r/live", "l").await;
    let seen = events_through(&mut live, put.revision).await;
    assert_eq!(
        seen,
        vec![("r/live".to_string(), "l".to_string(), put.revision)]
    );
    let last_seen = put.revision;

    // The follower restarts; the watcher resumes after the last revision it saw.
    drop(live);
    cluster.kill(follower);
    cluster.restart(follower);
    let put = raw_put(&mut kv, "r/after", "x").await;
    // Until the restarted node listens, the call fails: retried until it answers.
    let mut resumed = common::wait_for(
        "the restarted follower to serve the watch",
        Duration::from_secs(30),
        || {
            let watch = watch_from(last_seen + 1);
            async move { watch.await.ok() }
        },
    )
    .await;
    let seen = events_through(&mut resumed, put.revision).await;
    assert_eq!(
        seen,
        vec![("r/after".to_string(), "x".to_string(), put.revision)]
    );
}
