//! What the multi-version store keeps across a restart of the whole cluster, seen through etcd's
//! own `etcdctl`: revisions and history (reads at older revisions), leases with their attached
//! keys (the new leader starts their TTLs afresh, so nothing expires early), and compaction.

mod common;

use std::time::Duration;

use common::etcdctl::etcdctl;
use common::ProcessCluster;
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const COMMAND: Duration = Duration::from_secs(10);

/// etcdctl's base64 of `s`, as its JSON prints keys and values.
fn b64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn json(endpoints: &[String], args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-w", "json"]);
    etcdctl(endpoints, &all, COMMAND)
        .await
        .expect_ok(&args.join(" "))
        .json()
}

/// (key, value, mod_revision) of a `get -w json` answer.
fn kvs(answer: &Value) -> Vec<(String, String, i64)> {
    answer["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    (
                        kv["key"].as_str().unwrap_or_default().to_string(),
                        kv["value"].as_str().unwrap_or_default().to_string(),
                        kv["mod_revision"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_leases_should_survive_a_restart_of_the_whole_cluster() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let all = cluster.endpoints();
    let first = json(&all, &["put", "k", "one"]).await;
    let first_rev = first["header"]["revision"].as_i64().expect("revision");
    json(&all, &["put", "k", "two"]).await;
    let grant = etcdctl(&all, &["lease", "grant", "60"], COMMAND)
        .await
        .expect_ok("lease grant");
    let lease = grant
        .stdout
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    json(&all, &["put", "held", "x", "--lease", &lease]).await;
    let before = json(&all, &["get", "k"]).await;

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.restart(id);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;

    // The current value, the revision counter and an older revision, as before.
    let after = common::wait_for("etcdctl get after the restart", LEADER_TIMEOUT, || {
        let all = all.clone();
        async move {
            let out = etcdctl(&all, &["get", "k", "-w", "json"], COMMAND).await;
            out.success.then(|| out.json())
        }
    })
    .await;
    assert_eq!(kvs(&after), kvs(&before));
    assert_eq!(
        after["header"]["revision"], before["header"]["revision"],
        "{after}"
    );
    let old = json(&all, &["get", "k", "--rev", &first_rev.to_string()]).await;
    assert_eq!(kvs(&old), vec![(b64("k"), b64("one"), first_rev)]);

    // The lease is there with its key, and its TTL started afresh (not expired by the outage).
    let ttl = json(&all, &["lease", "timetolive", &lease, "--keys"]).await;
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(60), "{ttl}");
    assert!(ttl["ttl"].as_i64().unwrap_or(0) > 50, "{ttl}");
    assert_eq!(ttl["keys"][0].as_str(), Some(b64("held").as_str()), "{ttl}");
    etcdctl(&all, &["lease", "revoke", &lease], COMMAND)
        .await
        .expect_ok("lease revoke");
    assert!(kvs(&json(&all, &["get", "held"]).await).is_empty());
}
