//! The network the fault suite's nodes talk over, and how it is cut.
//!
//! Three kinds, same interface (addresses per node, and "these links are down"):
//! - [`NetKind::Namespaces`] (root): each node in its own network namespace, all joined by a
//!   bridge that lives in a namespace of its own, plus one namespace for the driver. Links are cut
//!   with nftables rules inside the node namespaces (packets dropped, so peers see timeouts, as
//!   on a real network). Nothing is configured in the host's namespace.
//! - [`NetKind::Proxy`] (no root): loopback, with a TCP proxy of ours in front of every node's
//!   Raft port. Each node connects out from its own loopback IP (`peer_source_ip`), so the proxy
//!   knows which link a connection belongs to; a cut link stops forwarding bytes (held, not
//!   reset) until it heals.
//! - [`NetKind::Loopback`]: plain loopback, no partitions (process faults only).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use anyhow::bail;
use anyhow::Context;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::watch;

/// A link between two nodes, smaller id first.
pub type Link = (u64, u64);

/// Orders a link's ends.
pub fn link(a: u64, b: u64) -> Link {
    (a.min(b), a.max(b))
}

/// Which network to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetKind {
    /// Network namespaces and a bridge (needs root, `ip` and `nft`).
    Namespaces,
    /// Loopback with a fault-injecting TCP proxy per node.
    Proxy,
    /// Loopback, no partitions.
    Loopback,
}

impl std::str::FromStr for NetKind {
    type Err = String;
    fn from_str(s: &str) -> Result<NetKind, String> {
        match s {
            "netns" | "namespaces" => Ok(NetKind::Namespaces),
            "proxy" => Ok(NetKind::Proxy),
            "loopback" => Ok(NetKind::Loopback),
            other => Err(format!(
                "unknown network '{other}' (netns, proxy, loopback)"
            )),
        }
    }
}

/// Where one node listens and how it is started.
#[derive(Debug, Clone)]
pub struct NodeAddrs {
    /// Client API address (the driver dials it).
    pub client: SocketAddr,
    /// Raft transport bind address.
    pub peer_listen: SocketAddr,
    /// Raft address the other nodes dial (the proxy, when there is one).
    pub peer_advertise: SocketAddr,
    /// Source IP for outgoing Raft connections.
    pub peer_source_ip: Option<IpAddr>,
    /// Metrics HTTP address.
    pub metrics: SocketAddr,
    /// Namespace to run the process in.
    pub netns: Option<String>,
}

/// A built network; torn down on drop.
pub struct Net {
    /// Which kind it is.
    pub kind: NetKind,
    /// Per node id (index = id - 1).
    pub nodes: Vec<NodeAddrs>,
    /// Namespaces we created (deleted on drop).
    namespaces: Vec<String>,
    /// The cut links, watched by the proxies.
    blocked: watch::Sender<BTreeSet<Link>>,
}

const PORT_CLIENT: u16 = 7000;

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new("ip").args(args))
}

/// Whether this process may build namespaces (root, with `ip` and `nft` found).
pub fn namespaces_available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let has = |tool: &str| {
        Command::new(tool)
            .arg("-V")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    root && has("ip") && has("nft")
}

/// Deletes namespaces left by earlier runs whose driver process is gone.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("rskvj") else {
            continue;
        };
        let pid: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

impl Net {
    /// Builds the network for `n` nodes. `ports` supplies free loopback ports (three per node for
    /// loopback, four with the proxy). For namespaces, the calling thread moves into the driver's
    /// namespace: build the async runtime afterwards, on this thread, so its threads follow.
    ///
    /// # Errors
    /// When a command fails (missing tools, no permission).
    pub fn build(kind: NetKind, n: usize, ports: &[u16]) -> anyhow::Result<Net> {
        let (blocked, _) = watch::channel(BTreeSet::new());
        let mut net = Net {
            kind,
            nodes: Vec::new(),
            namespaces: Vec::new(),
            blocked,
        };
        let lo =
            |last: u8, port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), port);
        match kind {
            NetKind::Loopback | NetKind::Proxy => {
                let need = if kind == NetKind::Proxy { 4 } else { 3 } * n;
                if ports.len() < need {
                    bail!("need {need} free ports, got {}", ports.len());
                }
                for i in 0..n {
                    let per = need / n;
                    let p = &ports[i * per..(i + 1) * per];
                    let (peer_listen, peer_advertise, source) = if kind == NetKind::Proxy {
                        // Node i's own loopback IP: it listens and connects from there.
                        let own = 11 + i as u8;
                        (lo(own, p[1]), lo(own, p[3]), Some(lo(own, 0).ip()))
                    } else {
                        (lo(1, p[1]), lo(1, p[1]), None)
                    };
                    net.nodes.push(NodeAddrs {
                        client: lo(1, p[0]),
                        peer_listen,
                        peer_advertise,
                        peer_source_ip: source,
                        metrics: lo(1, p[2]),
                        netns: None,
                    });
                }
            }
            NetKind::Namespaces => {
                remove_stale_namespaces();
                let prefix = format!("rskvj{}", std::process::id());
                let bridge_ns = format!("{prefix}-br");
                ip(&["netns", "add", &bridge_ns])?;
                net.namespaces.push(bridge_ns.clone());
                ip(&["-n", &bridge_ns, "link", "add", "br0", "type", "bridge"])?;
                ip(&["-n", &bridge_ns, "link", "set", "br0", "up"])?;
                // Hosts 1..=n are the nodes, 200 the driver; the subnet exists only in here.
                let addr = |host: u8| Ipv4Addr::new(10, 213, 0, host);
                let mut hosts: Vec<(String, u8)> = (1..=n)
                    .map(|i| (format!("{prefix}-n{i}"), i as u8))
                    .collect();
                hosts.push((format!("{prefix}-drv"), 200));
                for (ns, host) in &hosts {
                    ip(&["netns", "add", ns])?;
                    net.namespaces.push(ns.clone());
                    let veth = format!("v{host}");
                    ip(&[
                        "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &veth,
                        "netns", &bridge_ns,
                    ])?;
                    ip(&[
                        "-n", &bridge_ns, "link", "set", &veth, "master", "br0", "up",
                    ])?;
                    let cidr = format!("{}/24", addr(*host));
                    ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
                    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
                    ip(&["-n", ns, "link", "set", "lo", "up"])?;
                }
                for (ns, host) in hosts.iter().take(n) {
                    let a = IpAddr::V4(addr(*host));
                    let rules = "table inet rskv_nemesis {\n chain input { type filter hook input priority 0; policy accept; }\n}\n";
                    let mut cmd = Command::new("ip");
                    cmd.args(["netns", "exec", ns, "nft", "-f", "-"]);
                    run_with_stdin(&mut cmd, rules)?;
                    net.nodes.push(NodeAddrs {
                        client: SocketAddr::new(a, PORT_CLIENT),
                        peer_listen: SocketAddr::new(a, PORT_CLIENT + 1),
                        peer_advertise: SocketAddr::new(a, PORT_CLIENT + 1),
                        peer_source_ip: None,
                        metrics: SocketAddr::new(a, PORT_CLIENT + 2),
                        netns: Some(ns.clone()),
                    });
                }
                enter_namespace(&format!("{prefix}-drv"))?;
            }
        }
        Ok(net)
    }

    /// Starts the proxies (proxy network only); call inside the async runtime.
    ///
    /// # Errors
    /// When a proxy cannot bind its address.
    pub async fn start_proxies(&self) -> anyhow::Result<()> {
        if self.kind != NetKind::Proxy {
            return Ok(());
        }
        let sources: Arc<Vec<IpAddr>> =
            Arc::new(self.nodes.iter().filter_map(|n| n.peer_source_ip).collect());
        for (i, node) in self.nodes.iter().enumerate() {
            let listener = TcpListener::bind(node.peer_advertise)
                .await
                .with_context(|| format!("proxy bind {}", node.peer_advertise))?;
            let target = node.peer_listen;
            let me = i as u64 + 1;
            let blocked = self.blocked.subscribe();
            let sources = sources.clone();
            tokio::spawn(async move {
                while let Ok((conn, from)) = listener.accept().await {
                    let peer = sources
                        .iter()
                        .position(|ip| *ip == from.ip())
                        .map(|p| p as u64 + 1);
                    let blocked = blocked.clone();
                    tokio::spawn(proxy_connection(
                        conn,
                        target,
                        peer.map(|p| link(p, me)),
                        blocked,
                    ));
                }
            });
        }
        Ok(())
    }

    /// Makes exactly `links` cut (all others healed).
    ///
    /// # Errors
    /// When an nftables command fails.
    pub async fn set_blocked(&self, links: &BTreeSet<Link>) -> anyhow::Result<()> {
        match self.kind {
            NetKind::Loopback => {
                if !links.is_empty() {
                    bail!("the loopback network cannot partition");
                }
            }
            NetKind::Proxy => {}
            NetKind::Namespaces => {
                for (i, node) in self.nodes.iter().enumerate() {
                    let me = i as u64 + 1;
                    let peers: Vec<String> = links
                        .iter()
                        .filter_map(|&(a, b)| {
                            let other = if a == me {
                                b
                            } else if b == me {
                                a
                            } else {
                                return None;
                            };
                            self.nodes
                                .get(other as usize - 1)
                                .map(|n| n.client.ip().to_string())
                        })
                        .collect();
                    let mut script = String::from("flush chain inet rskv_nemesis input\n");
                    if !peers.is_empty() {
                        script.push_str(&format!(
                            "add rule inet rskv_nemesis input ip saddr {{ {} }} drop\n",
                            peers.join(", ")
                        ));
                    }
                    let ns = node.netns.clone().unwrap_or_default();
                    tokio::task::spawn_blocking(move || {
                        let mut cmd = Command::new("ip");
                        cmd.args(["netns", "exec", &ns, "nft", "-f", "-"]);
                        run_with_stdin(&mut cmd, &script)
                    })
                    .await??;
                }
            }
        }
        self.blocked.send_replace(links.clone());
        Ok(())
    }

    /// Whether this network can cut links.
    pub fn can_partition(&self) -> bool {
        self.kind != NetKind::Loopback
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Moves the calling thread into network namespace `name` (threads it creates later follow).
fn enter_namespace(name: &str) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("opening namespace {name}"))?;
    // SAFETY: the descriptor is a namespace file kept open for the duration of the call.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Forwards one connection, holding bytes while its link is cut.
async fn proxy_connection(
    inbound: TcpStream,
    target: SocketAddr,
    link: Option<Link>,
    mut blocked: watch::Receiver<BTreeSet<Link>>,
) {
    let is_cut = |b: &BTreeSet<Link>| link.is_some_and(|l| b.contains(&l));
    // A connection attempt over a cut link waits (like SYNs being dropped).
    while is_cut(&blocked.borrow_and_update()) {
        if blocked.changed().await.is_err() {
            return;
        }
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    let up = pump(ri, wo, link, blocked.clone());
    let down = pump(ro, wi, link, blocked);
    // When either direction ends, drop both.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Option<Link>,
    mut blocked: watch::Receiver<BTreeSet<Link>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let cut = link.is_some_and(|l| blocked.borrow_and_update().contains(&l));
        if cut {
            if blocked.changed().await.is_err() {
                return;
            }
            continue;
        }
        tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            },
            changed = blocked.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
