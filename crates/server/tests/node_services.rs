//! Per-node services, observed from outside the process: apply events and Watch, connection
//! limits, Prometheus metrics and health, graceful shutdown with leader hand-off.

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

/// Reads `count` events from a watch stream (deadline-bounded) as (key, value, index).
async fn collect_events(
    stream: &mut tonic::Streaming<WatchResponse>,
    count: usize,
) -> Vec<(String, String, u64)> {
    read_events(stream, |seen| seen.len() >= count)
        .await
        .into_iter()
        .map(|e| (text(&e.key), text(&e.value), e.index))
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
    // Concurrent writes may share a log entry (the server groups them), hence its index.
    assert!(
        first.windows(2).all(|w| w[0].2 <= w[1].2),
        "indexes never go back"
    );
    assert!(first.iter().all(|(k, _, _)| k.starts_with("w/")));
    for (i, seq) in sequences.iter().enumerate() {
        assert_eq!(seq, first, "node {} saw a different sequence", i + 1);
    }

    // A watch from a past index replays the retained history, then continues live, no gap.
    // It starts at the first event of that index.
    let start = first[50].2;
    let from = first
        .iter()
        .position(|e| e.2 == start)
        .expect("index present");
    let mut replay = cluster
        .client_for(2)
        .watch("w/", true, start)
        .await
        .expect("watch from index");
    cluster.client().put("w/late", "1").await.expect("put");
    let replayed = collect_events(&mut replay, 100 - from + 1).await;
    assert_eq!(&replayed[..100 - from], &first[from..]);
    assert_eq!(replayed[100 - from].0, "w/late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_watch_start_should_be_refused() {
    let cluster = ProcessCluster::start(1, "rocksdb", &["--events-history", "5"]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let client = cluster.client();
    for i in 0..10 {
        client.put(format!("k{i}"), "v").await.expect("put");
    }
    let err = client
        .watch("k", true, 1)
        .await
        .expect_err("index 1 is compacted");
    match err {
        rskv_client::ClientError::Status(s) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}");
            assert!(
                s.message().contains("no longer retained"),
                "{}",
                s.message()
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // A clean stop flushes the RocksDB engine, so the restarted node resumes from its applied
    // index without replaying: history from before the restart is gone, refused, not silently
    // empty. (The memory engine replays the log after its snapshot, and republishes those events.)
    let mut cluster = cluster;
    assert!(cluster
        .node_mut(1)
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    match client.watch("k", true, 8).await {
        Err(rskv_client::ClientError::Status(s)) => {
            assert_eq!(s.code(), tonic::Code::OutOfRange, "{s:?}")
        }
        other => panic!("a watch from before the restart must be refused: {other:?}"),
    }
    // After a crash the engine (which writes no WAL) resumes from its last flush, the clean stop,
    // and openraft re-applies the entries after it: their events are published again, the same
    // events at the same indexes.
    let mut indexes = Vec::new();
    for i in 10..13 {
        indexes.push(
            client
                .put(format!("k{i}"), format!("v{i}"))
                .await
                .expect("put"),
        );
    }
    cluster.restart(1);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    for i in 10..13 {
        let value = client.get(format!("k{i}")).await.expect("get");
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    let mut replay = client
        .watch("k", true, indexes[0])
        .await
        .expect("the replayed entries' events are retained again");
    let replayed = collect_events(&mut replay, 3).await;
    let expected: Vec<_> = (10..13)
        .zip(&indexes)
        .map(|(i, index)| (format!("k{i}"), format!("v{i}"), *index))
        .collect();
    assert_eq!(replayed, expected);
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

/// Native writes answer with their store revision, and a watch from a revision is served from the
/// store's history: on a follower, from any past revision, and again after that follower
/// restarts, with every change once, in revision order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_from_a_revision_should_resume_across_a_restart_of_its_node() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let mut kv = common::raw_kv(&cluster.node(leader).addr);
    let mut revisions = Vec::new();
    for i in 0..6 {
        let put = kv
            .put(rskv_proto::kv::PutRequest {
                key: format!("r/{i}").into(),
                value: format!("v{i}").into(),
                ..Default::default()
            })
            .await
            .expect("put")
            .into_inner();
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

    // The follower restarts; the watcher resumes after the last revision it saw.
    drop(stream);
    cluster.kill(follower);
    cluster.restart(follower);
    let put = kv
        .put(rskv_proto::kv::PutRequest {
            key: "r/after".into(),
            value: "x".into(),
            ..Default::default()
        })
        .await
        .expect("put")
        .into_inner();
    // Until the restarted node listens, the call fails: retried until it answers.
    let mut resumed = common::wait_for(
        "the restarted follower to serve the watch",
        Duration::from_secs(30),
        || {
            let watch = watch_from(deleted.revision + 1);
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
