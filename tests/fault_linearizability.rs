//! A short loopback fault scenario: concurrent clients read, write and compare-and-swap a few keys
//! while the leader is killed (SIGKILL) and restarted; the recorded history must be linearizable
//! (checked with `rskv::checker`). The full Jepsen-style suite is separate work.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use bytes::Bytes;
use common::ProcessCluster;
use rskv::checker;
use rskv::checker::Op;
use rskv::checker::OpKind;
use rskv::checker::Outcome;
use rskv::client::ClientError;
use rskv::client::ClientOptions;
use rskv::client::Consistency;
use rskv::Client;

fn text(b: Option<Bytes>) -> Option<String> {
    b.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Maps a client error to the history outcome: definitely not applied, or unknown.
fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::InvalidArgument(_) | ClientError::Config(_) => Outcome::Fail,
        // Writes are only retried when they certainly did nothing, so "gave up" after such
        // retries is a definite failure for them; reads are dropped either way.
        ClientError::Unavailable(_) => Outcome::Fail,
        ClientError::Ambiguous(_) | ClientError::Status(_) => Outcome::Info,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_under_leader_kills_should_be_linearizable() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let epoch = Instant::now();
    let history: Arc<Mutex<Vec<Op>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for process in 0..6u64 {
        let client = Client::with_options(
            cluster.endpoints(),
            ClientOptions {
                deadline: Duration::from_secs(3),
                attempt_timeout: Duration::from_secs(1),
                ..ClientOptions::default()
            },
        )
        .expect("client");
        let history = history.clone();
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("lin{}", n % 3);
                let now = || epoch.elapsed().as_nanos() as u64;
                let invoke = now();
                let (kind, outcome) = match (process + n) % 3 {
                    0 => match client
                        .get_with(key.clone(), Consistency::Linearizable)
                        .await
                    {
                        Ok(r) => (
                            OpKind::Read {
                                value: r
                                    .found
                                    .then(|| String::from_utf8_lossy(&r.value).into_owned()),
                            },
                            Outcome::Ok,
                        ),
                        Err(e) => (OpKind::Read { value: None }, outcome_of(&e)),
                    },
                    1 => {
                        let value = format!("w{process}-{n}");
                        let outcome = match client.put(key.clone(), value.clone()).await {
                            Ok(_) => Outcome::Ok,
                            Err(e) => outcome_of(&e),
                        };
                        (OpKind::Write { value }, outcome)
                    }
                    _ => {
                        // CAS from whatever this process last saw (absent at first).
                        let from = match client
                            .get_with(key.clone(), Consistency::Linearizable)
                            .await
                        {
                            Ok(r) => r
                                .found
                                .then(|| String::from_utf8_lossy(&r.value).into_owned()),
                            Err(_) => None,
                        };
                        let to = format!("c{process}-{n}");
                        let invoke_cas = now();
                        let result = client
                            .compare_and_swap(
                                key.clone(),
                                from.clone().map(Bytes::from),
                                to.clone(),
                            )
                            .await;
                        let (kind, outcome) = match result {
                            Ok(o) => (
                                OpKind::Cas {
                                    from,
                                    to,
                                    success: o.success,
                                    current: text(o.current),
                                },
                                Outcome::Ok,
                            ),
                            Err(e) => (
                                OpKind::Cas {
                                    from,
                                    to,
                                    success: false,
                                    current: None,
                                },
                                outcome_of(&e),
                            ),
                        };
                        let op = Op {
                            process,
                            key: key.clone(),
                            kind,
                            outcome,
                            invoke: invoke_cas,
                            complete: now(),
                        };
                        history.lock().expect("history").push(op);
                        n += 1;
                        continue;
                    }
                };
                let op = Op {
                    process,
                    key,
                    kind,
                    outcome,
                    invoke,
                    complete: now(),
                };
                history.lock().expect("history").push(op);
                n += 1;
            }
        }));
    }
    // Two leader crashes, each followed by a restart.
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(20)).await;
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.restart(leader);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let history = history.lock().expect("history").clone();
    let ok = history.iter().filter(|o| o.outcome == Outcome::Ok).count();
    eprintln!("history: {} ops, {ok} ok", history.len());
    assert!(ok > 100, "the workload made progress ({ok} ok ops)");
    let verdict = checker::check(&history, 5_000_000);
    if verdict != checker::Verdict::Linearizable {
        let path = std::env::temp_dir().join("rskv-fault-history.jsonl");
        let _ = std::fs::write(&path, checker::to_jsonl(&history));
        panic!("verdict {verdict:?}; history saved to {}", path.display());
    }
}
