//! What the multi-version store keeps across a restart of the whole cluster, seen through etcd's
//! own `etcdctl`: revisions and history (reads at older revisions), leases with their attached
//! keys (the new leader starts their TTLs afresh, so nothing expires early), and compaction.

mod common;

use std::time::Duration;

use common::etcdctl::etcdctl;
use common::etcdctl::json_kvs;
use common::etcdctl::unbase64;
use common::ProcessCluster;
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const COMMAND: Duration = Duration::from_secs(10);

async fn json(endpoints: &[String], args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-w", "json"]);
    etcdctl(endpoints, &all, COMMAND)
        .await
        .expect_ok(&args.join(" "))
        .json()
}

/// (key, value, mod_revision) of a `get -w json` answer, key and value decoded.
fn kvs(answer: &Value) -> Vec<(String, String, i64)> {
    json_kvs(&answer["kvs"])
        .into_iter()
        .map(|kv| (kv.key, kv.value, kv.mod_revision))
        .collect()
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
    assert_eq!(
        kvs(&old),
        vec![("k".to_string(), "one".to_string(), first_rev)]
    );

    // The lease is there with its key, and its TTL started afresh (not expired by the outage).
    let ttl = json(&all, &["lease", "timetolive", &lease, "--keys"]).await;
    assert_eq!(ttl["granted-ttl"].as_i64(), Some(60), "{ttl}");
    assert!(ttl["ttl"].as_i64().unwrap_or(0) > 50, "{ttl}");
    assert_eq!(
        ttl["keys"][0].as_str().map(unbase64).as_deref(),
        Some("held"),
        "{ttl}"
    );
    etcdctl(&all, &["lease", "revoke", &lease], COMMAND)
        .await
        .expect_ok("lease revoke");
    assert!(kvs(&json(&all, &["get", "held"]).await).is_empty());
}
