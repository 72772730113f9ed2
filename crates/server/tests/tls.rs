//! TLS on a real 3-node cluster whose client and peer ports require certificates from a CA the
//! test makes ([`common::pki`]): the library client, `kv_client`, etcd's `etcdctl` and `/health`
//! over TLS; plaintext, foreign-CA, missing and expired certificates refused with a message; a
//! peer certificate from another CA neither joins nor moves Raft traffic; and certificates
//! rotated in place while writes run, with an invalid replacement refused and nothing
//! acknowledged lost.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::etcdctl::etcdctl;
use common::pki::Identity;
use common::pki::TestCa;
use common::pki::Validity;
use common::ProcessCluster;
use rskv_client::tls::TlsDialer;
use rskv_client::Client;
use rskv_client::ClientOptions;
use rskv_client::Consistency;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_secs(30);

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `kv_client ARGS` with a 5 s budget.
fn kv_client(args: &[String]) -> std::process::Output {
    Command::new(common::client_bin())
        .args(["--timeout", "5"])
        .args(args)
        .output()
        .expect("run kv_client")
}

/// `kv_client`'s `--cacert CA [--cert C --cert-key K]`.
fn tls_flags(ca: &Path, identity: Option<&Identity>) -> Vec<String> {
    let mut flags = vec!["--cacert".to_string(), path(ca)];
    if let Some(id) = identity {
        flags.extend([
            "--cert".into(),
            path(&id.cert),
            "--cert-key".into(),
            path(&id.key),
        ]);
    }
    flags
}

/// etcdctl's `--cacert CA --cert C --key K`.
fn etcdctl_tls_flags(ca: &Path, identity: &Identity) -> Vec<String> {
    vec![
        "--cacert".to_string(),
        path(ca),
        "--cert".into(),
        path(&identity.cert),
        "--key".into(),
        path(&identity.key),
    ]
}

/// A client of `endpoints` dialling with `tls`, giving up quickly.
fn quick_client(endpoints: Vec<String>, tls: TlsDialer) -> Client {
    Client::with_options(
        endpoints,
        ClientOptions {
            deadline: Duration::from_secs(3),
            tls: Some(tls),
            ..ClientOptions::default()
        },
    )
    .expect("client")
}

/// The certificate a node's client port presents to a new connection now.
async fn presented_certificate(addr: &str, tls: &TlsDialer) -> Vec<u8> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let stream = tls.handshake("127.0.0.1", tcp).await.expect("handshake");
    let certs = stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a certificate");
    certs[0].as_ref().to_vec()
}

/// A cluster CA with a node certificate, and a foreign CA with a certificate of its own.
struct Pki {
    dir: tempfile::TempDir,
    ca: TestCa,
    node: Identity,
    other: TestCa,
    stranger: Identity,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = TestCa::new(dir.path(), "cluster").expect("CA");
    let node = ca
        .issue("node", Validity::Current)
        .expect("node certificate");
    let other_dir = dir.path().join("other");
    std::fs::create_dir_all(&other_dir).expect("mkdir");
    let other = TestCa::new(&other_dir, "other").expect("foreign CA");
    let stranger = other
        .issue("stranger", Validity::Current)
        .expect("stranger");
    Pki {
        dir,
        ca,
        node,
        other,
        stranger,
    }
}

/// A certificate set ([`pki`]) and an `n`-node cluster in mutual TLS with its node certificate.
fn tls_cluster(n: usize, engine: &str) -> (Pki, ProcessCluster) {
    let pki = pki();
    let cluster = ProcessCluster::start_tls(n, engine, &[], &pki.ca, &pki.node);
    (pki, cluster)
}

fn leaf_der(cert_file: &Path) -> Vec<u8> {
    rskv_client::tls::read_certs(cert_file).expect("certificate")[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_should_serve_every_client_over_mutual_tls() {
    let (pki, cluster) = tls_cluster(3, "rocksdb");
    let Pki { ca, node, .. } = &pki;
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);

    // The library client through a follower: redirected to the leader, over TLS both times;
    // the value reaches every node's state machine over the TLS peer transport.
    let client = cluster.client_for(follower);
    client.put("lib", "one").await.expect("put over TLS");
    for n in &cluster.nodes {
        cluster
            .wait_stale_value(n.id, "lib", Some("one"), SETTLE)
            .await;
    }

    // kv_client with etcdctl's flags, https:// endpoints accepted.
    let mut args = tls_flags(&ca.ca_file, Some(node));
    args.extend([
        "--endpoints".into(),
        format!("https://{}", cluster.node(follower).addr),
    ]);
    let mut set = args.clone();
    set.extend(["set", "--key", "cli", "--value", "two"].map(String::from));
    let out = kv_client(&set);
    assert!(out.status.success(), "kv_client set: {out:?}");
    let mut get = args.clone();
    get.extend(["get", "--key", "cli"].map(String::from));
    let out = kv_client(&get);
    assert!(out.status.success(), "kv_client get: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("two"),
        "{out:?}"
    );

    // etcdctl through a follower, which forwards the put and the linearizable get to the
    // leader's client port over TLS.
    let endpoint = vec![cluster.node(follower).addr.clone()];
    etcdctl_as(&endpoint, &ca.ca_file, node, &["put", "etcd", "three"])
        .await
        .expect_ok("etcdctl put over TLS");
    let get = ["get", "etcd", "--print-value-only"];
    let out = etcdctl_as(&endpoint, &ca.ca_file, node, &get)
        .await
        .expect_ok("etcdctl get over TLS");
    assert_eq!(out.stdout.trim(), "three", "{out:?}");
    // Given as a URL, an endpoint is dialled directly, the URL sent whole as HTTP/2 :authority.
    let url = vec![format!("https://{}", cluster.node(follower).addr)];
    etcdctl_as(&url, &ca.ca_file, node, &["endpoint", "status"])
        .await
        .expect_ok("etcdctl endpoint status of an https:// endpoint");
    // Members' URLs say https, so `--cluster` dials every member in TLS.
    let out = etcdctl_as(
        &endpoint,
        &ca.ca_file,
        node,
        &["endpoint", "status", "--cluster"],
    )
    .await
    .expect_ok("etcdctl endpoint status --cluster over TLS");
    assert_eq!(out.stdout.matches("https://").count(), 3, "{out:?}");

    // /health in HTTPS with a client certificate; plaintext HTTP is told to use TLS.
    let tls = cluster.tls().expect("cluster TLS");
    let metrics = cluster.node(leader).metrics_addr.clone();
    let (status, body) = common::https_get(&metrics, "/health", &tls)
        .await
        .expect("health over https");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (status, body) = common::http_get(&metrics, "/health")
        .await
        .expect("an answer in plaintext");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("this port serves TLS"), "{body}");
    // The client port answers HTTP/1.1 over the same TLS as gRPC, as etcd's does.
    let client = cluster.node(leader).addr.clone();
    let (status, body) = common::https_get(&client, "/health", &tls)
        .await
        .expect("etcd's health over https on the client port");
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_without_a_trusted_certificate_should_be_refused_with_a_reason() {
    let Pki {
        dir: _dir,
        ca,
        node,
        other,
        stranger,
    } = pki();
    let expired = ca.issue("expired", Validity::Expired).expect("expired");
    let cluster = ProcessCluster::start_tls(1, "memory", &[], &ca, &node);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.node(1).addr.clone();

    let attempt = |flags: Vec<String>| {
        let mut args = flags;
        args.extend(["--endpoints".into(), addr.clone()]);
        args.extend(["get", "--key", "k"].map(String::from));
        kv_client(&args)
    };
    // Plaintext to a TLS port.
    let out = attempt(Vec::new());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("TLS"),
        "a plaintext client should be told about TLS: {err}"
    );
    // https:// without a CA: refused before dialling.
    let out = kv_client(&[
        "--endpoints".into(),
        format!("https://{addr}"),
        "get".into(),
        "--key".into(),
        "k".into(),
    ]);
    common::expect_failure(&out, 2, "--cacert");
    // Trusting the wrong CA: the node's certificate is not trusted.
    let out = attempt(tls_flags(&other.ca_file, Some(&stranger)));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("UnknownIssuer"),
        "{out:?}"
    );
    // No client certificate where one is required, one from another CA; an expired one is
    // refused by kv_client itself.
    for (what, identity, reason) in [
        ("no certificate", None, "CertificateRequired"),
        ("a foreign CA's certificate", Some(&stranger), "UnknownCA"),
        ("an expired certificate", Some(&expired), "not valid now"),
    ] {
        let out = attempt(tls_flags(&ca.ca_file, identity));
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{what}: {out:?}");
        assert!(
            err.contains(reason),
            "{what}: stderr should say {reason}: {err}"
        );
    }
    // A client that presents the expired certificate anyway is refused by the node.
    let config = rustls::ClientConfig::builder_with_provider(rskv_client::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(rskv_client::tls::read_roots(&ca.ca_file).expect("roots"))
        .with_client_auth_cert(
            rskv_client::tls::read_certs(&expired.cert).expect("cert"),
            rskv_client::tls::read_key(&expired.key).expect("key"),
        )
        .expect("client config");
    let client = quick_client(vec![addr.clone()], TlsDialer::new(config));
    let refused = client
        .put("k", "v")
        .await
        .expect_err("an expired certificate");
    assert!(
        format!("{refused:?}").contains("CertificateExpired"),
        "{refused:?}"
    );
    // The node said why, and still serves a client with a good certificate.
    let log = cluster.node(1).log_text();
    assert!(log.contains("TLS handshake refused"), "{log}");
    let good = quick_client(vec![addr.clone()], cluster.tls().expect("TLS"));
    good.put("k", "v")
        .await
        .expect("a trusted client still served");
}

#[test]
fn a_node_should_refuse_to_start_on_an_expired_or_mismatched_certificate() {
    // `_dir` keeps the files until the test ends.
    let Pki {
        dir: _dir,
        ca,
        node,
        ..
    } = pki();
    let expired = ca.issue("expired", Validity::Expired).expect("expired");
    let ports = common::loopback_ports(3);
    let run = |identity: &Identity, key: &Path| {
        Command::new(common::server_bin())
            .args([
                "--listen-addr",
                &format!("127.0.0.1:{}", ports[0]),
                "--peer-listen-addr",
                &format!("127.0.0.1:{}", ports[1]),
                "--metrics-addr",
                &format!("127.0.0.1:{}", ports[2]),
                "--cert-file",
                &path(&identity.cert),
                "--key-file",
                &path(key),
                "--trusted-ca-file",
                &path(&ca.ca_file),
            ])
            .output()
            .expect("run kv_server")
    };
    let out = run(&expired, &expired.key);
    common::expect_failure(&out, 1, "not valid now");
    let out = run(&node, &expired.key);
    common::expect_failure(&out, 1, "do not make a usable certificate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_foreign_certificate_should_neither_join_nor_send_raft_traffic() {
    let Pki {
        dir,
        ca,
        node,
        other,
        stranger,
    } = pki();
    let cluster = ProcessCluster::start_tls(3, "memory", &[], &ca, &node);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    cluster
        .client()
        .put("before", "x")
        .await
        .expect("put before the join");

    // Raft RPCs from a stranger's certificate, or from none, are refused at the handshake.
    let status = cluster.client().leader_status().await.expect("status");
    let leader_peer = status
        .members
        .iter()
        .find(|m| m.id == leader)
        .map(|m| m.peer_addr.clone())
        .expect("the leader among the members");
    for (what, identity) in [("a stranger", Some(&stranger)), ("no certificate", None)] {
        let dialer = TlsDialer::from_files(
            &ca.ca_file,
            identity.map(|i| (i.cert.as_path(), i.key.as_path())),
        )
        .expect("dialer");
        let tcp = tokio::net::TcpStream::connect(&leader_peer)
            .await
            .expect("connect");
        let refused = match dialer.handshake("127.0.0.1", tcp).await {
            // TLS 1.3: the server's verdict on the client certificate arrives with the first read.
            Ok(mut stream) => {
                use tokio::io::AsyncReadExt;
                use tokio::io::AsyncWriteExt;
                let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
                let mut buf = [0u8; 64];
                stream.read(&mut buf).await.is_err()
            }
            Err(_) => true,
        };
        assert!(refused, "{what} reached the Raft port");
    }

    // A node whose peer certificate comes from another CA: its client certificate is good, so it
    // finds the members through the client API, but it asks for admission over the peer port,
    // which refuses its certificate: it never becomes a member, never receives the data, and the
    // cluster keeps serving.
    let ports = common::loopback_ports(3);
    let node4_dir = dir.path().join("node4");
    std::fs::create_dir_all(&node4_dir).expect("mkdir");
    let log = std::fs::File::create(node4_dir.join("node.log")).expect("log");
    let child = Command::new(common::server_bin())
        .args([
            "--node-id",
            "4",
            "--listen-addr",
            &format!("127.0.0.1:{}", ports[0]),
            "--peer-listen-addr",
            &format!("127.0.0.1:{}", ports[1]),
            "--metrics-addr",
            &format!("127.0.0.1:{}", ports[2]),
            "--data-dir",
            &path(&node4_dir.join("data")),
            "--join",
            &cluster.endpoints().join(","),
            "--cert-file",
            &path(&node.cert),
            "--key-file",
            &path(&node.key),
            "--trusted-ca-file",
            &path(&ca.ca_file),
            "--peer-cert-file",
            &path(&stranger.cert),
            "--peer-key-file",
            &path(&stranger.key),
            "--peer-trusted-ca-file",
            &path(&other.ca_file),
        ])
        .env("RUST_LOG", "info,openraft=warn")
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn node 4");
    let node4 = common::NodeProc::attach(
        4,
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[2]),
        node4_dir.clone(),
        node4_dir.join("node.log"),
        child,
    );
    common::wait_for("node 4's admission to be refused", SETTLE, || {
        let text = node4.log_text();
        async move {
            text.contains("join: adding as learner failed")
                .then_some(())
        }
    })
    .await;
    let client = cluster.client();
    client
        .put("after", "y")
        .await
        .expect("the cluster still serves");
    let status = client.leader_status().await.expect("status");
    assert!(
        !status.members.iter().any(|m| m.id == 4),
        "node 4 became a member: {status:?}"
    );
    let stale = quick_client(vec![node4.addr.clone()], cluster.tls().expect("TLS"));
    let got = stale.get_with("before", Consistency::Stale).await;
    assert!(
        !got.as_ref().is_ok_and(|r| r.found),
        "node 4 received data over a refused peer link: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_should_rotate_under_load_without_losing_a_write() {
    let (pki, cluster) = tls_cluster(3, "rocksdb");
    let Pki { ca, node, .. } = &pki;
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let tls = cluster.tls().expect("TLS");
    let first = leaf_der(&node.cert);
    for n in &cluster.nodes {
        assert_eq!(presented_certificate(&n.addr, &tls).await, first);
    }

    // Writes keep going, each acknowledged one recorded.
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let client = cluster.client();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let key = format!("rot-{i:06}");
                if client.put(key.clone(), "v").await.is_ok() {
                    acked.push(key);
                }
                i += 1;
            }
            acked
        })
    };

    // A new certificate and key replace the files: every node serves it to new connections.
    let rotated = ca.issue("node", Validity::Current).expect("rotated");
    let second = leaf_der(&rotated.cert);
    assert_ne!(first, second);
    for n in &cluster.nodes {
        common::wait_for(
            &format!("node {} to serve the new certificate", n.id),
            SETTLE,
            || {
                let tls = tls.clone();
                let addr = n.addr.clone();
                let second = second.clone();
                async move { (presented_certificate(&addr, &tls).await == second).then_some(()) }
            },
        )
        .await;
    }

    // An invalid replacement is refused and the rotated certificate stays in use.
    std::fs::write(&node.cert, "not a certificate\n").expect("break the certificate");
    for n in &cluster.nodes {
        common::wait_for(
            &format!("node {} to refuse the bad file", n.id),
            SETTLE,
            || {
                let text = n.log_text();
                async move { text.contains("new TLS certificates refused").then_some(()) }
            },
        )
        .await;
        assert_eq!(presented_certificate(&n.addr, &tls).await, second);
    }
    // SIGHUP reloads at once (and is refused again, saying it was signalled).
    cluster.node(1).signal("HUP");
    common::wait_for("node 1 to reload on SIGHUP", SETTLE, || {
        let text = cluster.node(1).log_text();
        async move {
            text.lines()
                .any(|l| l.contains("new TLS certificates refused") && l.contains("signalled=true"))
                .then_some(())
        }
    })
    .await;
    // Put a good certificate back, so peers that reconnect still can.
    ca.issue("node", Validity::Current).expect("third");

    stop.cancel();
    let acked = writer.await.expect("writer");
    assert!(
        acked.len() >= 10,
        "too few writes during the rotation: {}",
        acked.len()
    );
    let client = cluster.client();
    for key in &acked {
        let got = client
            .get_with(key.clone(), Consistency::Linearizable)
            .await
            .expect("read back");
        assert!(got.found, "acknowledged write {key} lost");
    }
}

/// etcdctl over mutual TLS as the certificate `identity`, with `args`.
async fn etcdctl_as(
    endpoint: &[String],
    ca: &Path,
    identity: &Identity,
    args: &[&str],
) -> common::etcdctl::EtcdctlOutput {
    let mut all = etcdctl_tls_flags(ca, identity);
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    etcdctl(endpoint, &all, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_should_name_its_user_through_any_member() {
    // etcd's client-cert-auth: with auth enabled, a request without a token comes as the user
    // its certificate's common name names, on the member it reaches and, forwarded, on the
    // leader; a token still wins; a client cannot claim a user by metadata.
    let (pki, cluster) = tls_cluster(3, "memory");
    let Pki { ca, node, .. } = &pki;
    let issue = |name: &str| ca.issue(name, Validity::Current).expect("certificate");
    let (root, alice, mallory) = (issue("root"), issue("alice"), issue("mallory"));
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let f = vec![cluster.node(follower).addr.clone()];
    let ca_file = &ca.ca_file;
    let ok = |identity: &'static str, out: common::etcdctl::EtcdctlOutput| {
        out.expect_ok(identity);
    };

    ok(
        "put",
        etcdctl_as(&f, ca_file, node, &["put", "a/x", "1"]).await,
    );
    ok(
        "put",
        etcdctl_as(&f, ca_file, node, &["put", "b/x", "2"]).await,
    );
    ok(
        "user add",
        etcdctl_as(&f, ca_file, node, &["user", "add", "root:rootpw"]).await,
    );
    ok(
        "auth enable",
        etcdctl_as(&f, ca_file, node, &["auth", "enable"]).await,
    );
    // From here the node certificate (CN "node", no such user) is refused...
    etcdctl_as(&f, ca_file, node, &["put", "a/x", "n"])
        .await
        .expect_error("etcdserver: permission denied");
    // ...and root's certificate is root, through the follower (forwarded to the leader).
    for args in [
        &["user", "add", "alice:alicepw"][..],
        &["role", "add", "reader"],
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a/",
            "--prefix=true",
        ],
        &["user", "grant-role", "alice", "reader"],
        &["put", "b/x", "3"],
    ] {
        ok("as root", etcdctl_as(&f, ca_file, &root, args).await);
    }

    // alice by certificate alone: reads a/ (linearizable: forwarded), nothing else.
    let out = etcdctl_as(&f, ca_file, &alice, &["get", "a/x", "--print-value-only"])
        .await
        .expect_ok("alice reads a/");
    assert_eq!(out.stdout.trim(), "1", "{out:?}");
    for args in [&["put", "a/x", "4"][..], &["get", "b/x"], &["del", "a/x"]] {
        etcdctl_as(&f, ca_file, &alice, args)
            .await
            .expect_error("etcdserver: permission denied");
    }
    // A certificate naming no user is refused like an unknown user.
    etcdctl_as(&f, ca_file, &mallory, &["get", "a/x"])
        .await
        .expect_error("etcdserver: permission denied");
    // A token wins over the certificate: alice's connection, root's password.
    ok(
        "token over certificate",
        etcdctl_as(
            &f,
            ca_file,
            &alice,
            &["--user=root:rootpw", "put", "b/x", "5"],
        )
        .await,
    );
    // rskv's own API too: kv_client with alice's certificate reads a/ and may not write it.
    let mut args = tls_flags(ca_file, Some(&alice));
    args.extend(["--endpoints".into(), cluster.node(leader).addr.clone()]);
    let mut get = args.clone();
    get.extend(["get", "--key", "a/x"].map(String::from));
    let out = kv_client(&get);
    assert!(out.status.success(), "alice's kv_client get: {out:?}");
    let mut set = args.clone();
    set.extend(["set", "--key", "a/x", "--value", "6"].map(String::from));
    let out = kv_client(&set);
    assert!(!out.status.success(), "alice's kv_client set: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("permission denied"),
        "{out:?}"
    );

    // A client naming a user in the metadata members use among themselves is not believed.
    use rskv_proto::etcd::etcdserverpb::kv_client::KvClient;
    use rskv_proto::etcd::etcdserverpb::PutRequest;
    let tls = TlsDialer::new(
        rskv_client::tls::client_config(
            &ca.ca_file,
            Some((alice.cert.as_path(), alice.key.as_path())),
        )
        .expect("alice's TLS"),
    );
    for id in [follower, leader] {
        let channel = rskv_client::transport::lazy_channel(
            &cluster.node(id).addr,
            Duration::from_secs(3),
            Some(tls.clone()),
        )
        .expect("channel");
        let mut put = tonic::Request::new(PutRequest {
            key: "b/x".into(),
            value: "spoofed".into(),
            ..PutRequest::default()
        });
        put.metadata_mut().insert_bin(
            "rskv-user-bin",
            tonic::metadata::BinaryMetadataValue::from_bytes(b"root"),
        );
        let refused = KvClient::new(channel)
            .put(put)
            .await
            .expect_err("a claimed user is not believed");
        assert_eq!(
            (refused.code(), refused.message()),
            (
                tonic::Code::PermissionDenied,
                "etcdserver: permission denied"
            ),
            "node {id}"
        );
    }
    let out = etcdctl_as(&f, ca_file, &root, &["get", "b/x", "--print-value-only"])
        .await
        .expect_ok("root reads b/");
    assert_eq!(out.stdout.trim(), "5", "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_peer_port_is_open_while_its_client_port_is_not_should_say_so() {
    let pki = pki();
    let path = |p: &Path| p.display().to_string();
    let flags = [
        "--cert-file".to_string(),
        path(&pki.node.cert),
        "--key-file".into(),
        path(&pki.node.key),
        "--trusted-ca-file".into(),
        path(&pki.ca.ca_file),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = ProcessCluster::start(1, "memory", &flags);
    common::wait_for("the warning about the open peer port", SETTLE, || {
        let text = cluster.node(1).log_text();
        async move {
            text.contains("the client port serves TLS but the peer port takes connections")
                .then_some(())
        }
    })
    .await;
}
