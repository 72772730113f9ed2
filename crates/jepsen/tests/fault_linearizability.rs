//! A short fault scenario through the fault suite's own runner, on loopback behind its
//! fault-injecting proxy (no root needed): 3 nodes, clients reading, writing and CAS-ing a few
//! keys while nodes are killed, paused and partitioned. Every check of the suite must pass:
//! linearizable history, no lost acknowledged write, replicas agree, watchers consistent.
//! The long runs with network namespaces are `scripts/jepsen.sh` (CI runs one as root).

use std::time::Duration;

use rskv_jepsen as jepsen;
use rskv_jepsen::nemesis::NemesisKind;
use rskv_jepsen::net::NetKind;

#[test]
fn history_under_kills_pauses_and_partitions_should_pass_every_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = jepsen::Options {
        nodes: 3,
        time: Duration::from_secs(24),
        nemeses: vec![
            NemesisKind::Kill,
            NemesisKind::Pause,
            NemesisKind::Partition,
        ],
        rate: 100.0,
        keys: 3,
        clients: 6,
        engine: "rocksdb".into(),
        net: Some(NetKind::Proxy),
        interval: Duration::from_secs(2),
        server_bin: rskv_testkit::server_bin(),
        results: dir.path().join("results"),
        seed: 7,
        check_budget: 20_000_000,
        // Lease reads here; CI's longer namespaces run (scripts/test.sh) keeps the default
        // ReadIndex, so both read policies face kills, pauses and partitions on every change.
        server_args: vec![
            "--snapshot-every".into(),
            "300".into(),
            "--read-policy".into(),
            "lease".into(),
        ],
        stale_reads: false,
        workloads: jepsen::Workloads::default(),
        tls: false,
    };
    let report = jepsen::run(&opts).expect("fault run set up");
    eprintln!("{}", report.summary());
    let ok: u64 = report.ops.values().map(|c| c.ok).sum();
    assert!(ok > 500, "the workload made progress ({ok} ok ops)");
    assert!(
        report.faults.len() >= 4,
        "faults were injected: {:?}",
        report.faults
    );
    assert!(report.watch.distinct > 100, "watchers saw the writes");
    if !report.passed() {
        // Keep the evidence: the temp dir would be deleted.
        let keep = std::env::temp_dir().join("rskv-fault-run");
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::process::Command::new("cp")
            .args(["-r"])
            .arg(&opts.results)
            .arg(&keep)
            .status();
        panic!(
            "anomalies: {:?}; results kept in {}",
            report.anomalies,
            keep.display()
        );
    }
}
