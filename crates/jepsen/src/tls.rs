//! TLS for a fault run (`kv_jepsen run --tls`): a throwaway CA and one node certificate naming
//! every address of the run's network ([`rskv_testkit::pki`]), the `kv_server` flags for mutual
//! TLS on the client and peer ports, and how the suite's clients, rskv's and etcd's, dial.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::Context;
use rskv_client::tls::TlsDialer;
use rskv_testkit::pki::TestCa;
use rskv_testkit::pki::Validity;

use crate::net::NodeAddrs;

/// What a TLS run gives the nodes and the clients.
#[derive(Clone)]
pub struct RunTls {
    /// Flags for every node.
    pub server_args: Vec<String>,
    /// rskv's client.
    pub dialer: TlsDialer,
    /// The etcd workload's client.
    pub etcd: etcd_client::TlsOptions,
}

/// Makes the certificates in `dir` for the nodes at `nodes`.
///
/// # Errors
/// When a certificate cannot be made or read back.
pub fn setup(dir: &Path, nodes: &[NodeAddrs]) -> anyhow::Result<RunTls> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = TestCa::new(dir, "jepsen")?;
    let mut names: BTreeSet<String> = ["127.0.0.1", "::1", "localhost"]
        .into_iter()
        .map(String::from)
        .collect();
    for n in nodes {
        for addr in [n.client, n.peer_listen, n.peer_advertise, n.metrics] {
            names.insert(addr.ip().to_string());
        }
    }
    let names: Vec<String> = names.into_iter().collect();
    let node = ca.issue_for("node", &names, Validity::Current)?;
    let dialer = TlsDialer::from_files(&ca.ca_file, Some((&node.cert, &node.key)))
        .map_err(anyhow::Error::msg)?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let etcd = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&ca.ca_file)?))
        .identity(etcd_client::Identity::from_pem(
            read(&node.cert)?,
            read(&node.key)?,
        ));
    Ok(RunTls {
        server_args: rskv_testkit::pki::node_flags(&ca.ca_file, &node),
        dialer,
        etcd,
    })
}
