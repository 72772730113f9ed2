//! The integration tests' harness: the shared test kit, plus the fault suite's network for the
//! tests that cut links between nodes.

#![allow(dead_code, unused_imports)]

pub use rskv_testkit::*;

use std::time::Duration;

/// Runs `test` on the fault suite's network for `n` nodes (`rskv_jepsen::net`), with a
/// temporary directory for the nodes. The network is network namespaces whose links are cut by
/// nftables drop rules when this process may build them (root, `ip` and `nft`), so a cut TCP
/// connection backs off its retransmissions as on a real network; otherwise loopback behind the
/// suite's proxy, which holds a cut link's bytes instead. It prints which one it built. The
/// runtime is built after the network, on this thread, so that for namespaces its threads live
/// in the driver's namespace.
pub fn on_fault_net(n: usize, test: impl AsyncFnOnce(&rskv_jepsen::net::Net, &std::path::Path)) {
    use rskv_jepsen::net::NetKind;
    let kind = if rskv_jepsen::net::namespaces_available() {
        NetKind::Namespaces
    } else {
        NetKind::Proxy
    };
    let net = rskv_jepsen::net::Net::build(kind, n, &loopback_ports(4 * n)).expect("build network");
    eprintln!("network: {kind:?}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    runtime.block_on(test(&net, dir.path()));
}

/// Starts one `kv_server` per node of `net` (RocksDB engine, data and logs under `dir`, `extra`
/// flags for every node) and waits until they follow one leader.
pub async fn start_fault_cluster(
    net: &rskv_jepsen::net::Net,
    dir: &std::path::Path,
    extra: &[&str],
) -> rskv_jepsen::nodes::Cluster {
    net.start_proxies().await.expect("start proxies");
    let spec = rskv_jepsen::nodes::ClusterSpec {
        engine: "rocksdb".into(),
        server_bin: server_bin(),
        dir: dir.to_path_buf(),
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        tls: None,
    };
    let cluster = rskv_jepsen::nodes::Cluster::start(&spec, &net.nodes).expect("start cluster");
    if cluster
        .wait_healthy(Duration::from_secs(60))
        .await
        .is_none()
    {
        panic!(
            "no healthy leader within 60 s\n{}",
            fault_log_tails(&cluster, 30)
        );
    }
    cluster
}

/// The last `lines` lines of every fault-suite node's log, each under a header naming the node.
pub fn fault_log_tails(cluster: &rskv_jepsen::nodes::Cluster, lines: usize) -> String {
    let mut out = String::new();
    for node in &cluster.nodes {
        let text = std::fs::read_to_string(node.log_path()).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        let tail = &all[all.len().saturating_sub(lines)..];
        out.push_str(&format!(
            "--- node {} ({}), last {} lines:\n{}\n",
            node.id,
            node.addrs.client,
            tail.len(),
            tail.join("\n")
        ));
    }
    out
}
