//! `kv_bench` runs end to end against a real node (briefly: it proves the tool works, it does not
//! judge performance).

use rskv_testkit as common;

use std::process::Command;
use std::time::Duration;

use common::expect_failure;
use common::ProcessCluster;

/// A one-node RocksDB cluster with its leader elected, and its endpoint list.
async fn one_node() -> (ProcessCluster, String) {
    let cluster = ProcessCluster::start(1, "rocksdb", &[]);
    cluster.wait_for_leader(Duration::from_secs(20)).await;
    let endpoints = cluster.endpoints().join(",");
    (cluster, endpoints)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_bench_should_report_throughput_and_latency() {
    let (cluster, endpoints) = one_node().await;
    let bench = env!("CARGO_BIN_EXE_kv_bench");
    for workload in [
        vec!["load", "--key-space", "2000"],
        vec!["put", "--total", "300", "--clients", "8"],
        vec!["put", "--total", "300", "--clients", "8", "--threads", "2"],
        vec![
            "get",
            "--total",
            "300",
            "--clients",
            "8",
            "--consistency",
            "stale",
        ],
        vec![
            "mixed",
            "--duration",
            "1",
            "--clients",
            "4",
            "--dist",
            "zipfian",
        ],
        vec!["cas", "--total", "50", "--clients", "2", "--key-space", "2"],
    ] {
        let out = Command::new(bench)
            .args(&workload)
            .args(["--endpoints", &endpoints, "--json"])
            .output()
            .expect("run kv_bench");
        assert!(out.status.success(), "{workload:?}: {out:?}");
        let line = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON line");
        assert!(v["ok"].as_u64().unwrap_or(0) > 0, "{workload:?}: {v}");
        assert!(v["throughput"].as_f64().unwrap_or(0.0) > 0.0, "{v}");
        assert!(v["p99_ms"].as_f64().unwrap_or(0.0) >= v["p50_ms"].as_f64().unwrap_or(0.0));
        assert_eq!(v["errors"], serde_json::json!({}), "{workload:?}: {v}");
    }
    // Preloaded keys are all there.
    let scanned = cluster
        .client()
        .scan_all("", "", rskv_client::Consistency::Linearizable)
        .await
        .expect("scan");
    assert!(scanned.len() >= 2000);
    // Bad flags get a message and exit status 2, before any connection is made.
    let out = Command::new(bench)
        .args(["put", "--threads", "0", "--endpoints", &endpoints])
        .output()
        .expect("run kv_bench");
    expect_failure(&out, 2, "--threads");
}

/// `--target etcd` against rskv's own etcd API (on its client port): the workloads
/// `scripts/bench.sh` runs with `ETCD_API=1` all complete without errors.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_bench_should_drive_rskvs_etcd_api() {
    let (_cluster, endpoints) = one_node().await;
    let bench = env!("CARGO_BIN_EXE_kv_bench");
    for workload in [
        vec!["put", "--total", "200", "--clients", "8", "--conns", "2"],
        vec!["get", "--total", "200", "--clients", "8"],
        vec!["get", "--total", "200", "--consistency", "stale"],
        vec!["txn-put", "--total", "200", "--clients", "8"],
    ] {
        let out = Command::new(bench)
            .args(&workload)
            .args(["--target", "etcd", "--key-space", "100"])
            .args(["--endpoints", &endpoints, "--json"])
            .output()
            .expect("run kv_bench");
        assert!(out.status.success(), "{workload:?}: {out:?}");
        let v: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim()).expect("JSON");
        assert_eq!(v["ok"].as_u64(), Some(200), "{workload:?}: {v}");
        assert_eq!(v["errors"], serde_json::json!({}), "{workload:?}: {v}");
    }
    // txn-put is an etcd workload.
    let out = Command::new(bench)
        .args(["txn-put", "--total", "1", "--endpoints", &endpoints])
        .output()
        .expect("run kv_bench");
    expect_failure(&out, 1, "txn-put is only implemented for the etcd target");
}
