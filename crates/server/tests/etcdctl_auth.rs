//! etcd's authentication through etcd's own `etcdctl` (Debian's etcd-client 3.4) against a real
//! 3-node rskv cluster: `user`, `role` and `auth` commands, `--user` on every request, most of
//! them sent to a follower (which forwards writes and linearizable reads to the leader with the
//! token, and the leader checks it again). A user with read on `a/` only cannot read `b/`, cannot
//! write `a/` and cannot watch `b/`; permissions, passwords and the enabled flag survive a
//! restart of every node.

mod common;

use std::time::Duration;

use common::etcdctl::etcdctl;
use common::etcdctl::EtcdctlOutput;
use common::etcdctl::EtcdctlProcess;
use common::ProcessCluster;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
const COMMAND: Duration = Duration::from_secs(10);
/// How long catching up or an election may take on a loaded machine.
const SETTLE: Duration = Duration::from_secs(30);

const ROOT: &str = "root:rootpw";
const ALICE: &str = "alice:alicepw";

/// etcdctl as `user` (`None`: no `--user`).
async fn run(endpoint: &[String], user: Option<&str>, args: &[&str]) -> EtcdctlOutput {
    let mut all: Vec<String> = Vec::new();
    if let Some(user) = user {
        all.push(format!("--user={user}"));
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    etcdctl(endpoint, &all, COMMAND).await
}

async fn ok(endpoint: &[String], user: Option<&str>, args: &[&str]) -> String {
    run(endpoint, user, args)
        .await
        .expect_ok(&args.join(" "))
        .stdout
}

/// Auth enabled with root, and alice granted `perm` (read, write, readwrite) on `a/`.
async fn enable_with_alice(endpoint: &[String], perm: &str) {
    ok(endpoint, None, &["user", "add", "root:rootpw"]).await;
    ok(endpoint, None, &["auth", "enable"]).await;
    ok(endpoint, Some(ROOT), &["user", "add", "alice:alicepw"]).await;
    ok(endpoint, Some(ROOT), &["role", "add", "reader"]).await;
    let grant = [
        "role",
        "grant-permission",
        "reader",
        perm,
        "a/",
        "--prefix=true",
    ];
    ok(endpoint, Some(ROOT), &grant).await;
    ok(
        endpoint,
        Some(ROOT),
        &["user", "grant-role", "alice", "reader"],
    )
    .await;
}

async fn fails(endpoint: &[String], user: Option<&str>, args: &[&str], message: &str) {
    run(endpoint, user, args).await.expect_error(message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_roles_and_permissions_should_be_enforced_as_etcd_does() {
    let mut cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let f = vec![cluster.node(follower).addr.clone()];
    let all = cluster.endpoints();

    ok(&f, None, &["put", "a/x", "1"]).await;
    ok(&f, None, &["put", "b/x", "2"]).await;

    // Auth enable needs root with the root role; etcdctl adds the role when told it is missing.
    fails(&f, None, &["auth", "enable"], "root user does not exist").await;
    ok(&f, None, &["user", "add", "root:rootpw"]).await;
    let enabled = ok(&f, None, &["auth", "enable"]).await;
    assert!(enabled.contains("Authentication Enabled"), "{enabled}");

    // Without a user, or with a wrong password, nothing goes.
    fails(&f, None, &["get", "a/x"], "etcdserver: user name is empty").await;
    fails(
        &f,
        None,
        &["user", "add", "alice:alicepw"],
        "user name is empty",
    )
    .await;
    fails(
        &f,
        Some("root:wrong"),
        &["get", "a/x"],
        "etcdserver: authentication failed, invalid user ID or password",
    )
    .await;

    // Root administers: a user with read on a/ only.
    ok(&f, Some(ROOT), &["user", "add", "alice:alicepw"]).await;
    fails(
        &f,
        Some(ROOT),
        &["user", "add", "alice:again"],
        "user name already exists",
    )
    .await;
    ok(&f, Some(ROOT), &["role", "add", "reader"]).await;
    ok(
        &f,
        Some(ROOT),
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "a/",
            "--prefix=true",
        ],
    )
    .await;
    ok(&f, Some(ROOT), &["user", "grant-role", "alice", "reader"]).await;
    fails(
        &f,
        Some(ROOT),
        &["user", "grant-role", "alice", "nosuchrole"],
        "role name not found",
    )
    .await;
    let role = ok(&f, Some(ROOT), &["role", "get", "reader"]).await;
    assert!(role.contains("[a/, a0) (prefix a/)"), "{role}");
    let users = ok(&f, Some(ROOT), &["user", "list"]).await;
    assert_eq!(
        users.lines().collect::<Vec<_>>(),
        ["alice", "root"],
        "{users}"
    );
    let alice = ok(&f, Some(ROOT), &["user", "get", "alice"]).await;
    assert!(alice.contains("reader"), "{alice}");
    let roles = ok(&f, Some(ROOT), &["role", "list"]).await;
    assert!(
        roles.contains("reader") && roles.contains("root"),
        "{roles}"
    );

    // Alice reads a/ (linearizable, forwarded to the leader with her token) and nothing else.
    let got = ok(&f, Some(ALICE), &["get", "a/x", "--print-value-only"]).await;
    assert_eq!(got.trim(), "1");
    let got = ok(
        &f,
        Some(ALICE),
        &[
            "get",
            "a/",
            "--prefix",
            "--consistency=s",
            "--print-value-only",
        ],
    )
    .await;
    assert_eq!(got.trim(), "1");
    fails(
        &f,
        Some(ALICE),
        &["get", "b/x"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["get", "a/", "--prefix=false", "--from-key"],
        "permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["put", "a/x", "3"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["del", "a/x"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["compaction", "1"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["member", "remove", "1"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &f,
        Some(ALICE),
        &["user", "list"],
        "etcdserver: permission denied",
    )
    .await;
    // A watch of b/ is created canceled, saying why; one of a/ sees root's write.
    let watch_b = run(&f, Some(ALICE), &["watch", "--prefix", "b/"]).await;
    assert!(
        !watch_b.success && watch_b.stderr.contains("permission denied"),
        "{watch_b:?}"
    );
    let mut watch_a = EtcdctlProcess::spawn(
        &f,
        &["--user=alice:alicepw", "watch", "--prefix", "a/"],
        COMMAND * 3,
    );
    // etcdctl prints nothing when its watch is created: put until the watcher shows a put.
    let deadline = std::time::Instant::now() + COMMAND * 2;
    loop {
        ok(&f, Some(ROOT), &["put", "a/y", "by-root"]).await;
        let seen = |lines: &[String]| lines.iter().any(|l| l == "by-root");
        if watch_a.within(Duration::from_secs(1), seen).await {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice's watch of a/ saw nothing: {}",
            watch_a.stderr()
        );
    }
    drop(watch_a);

    // rskv's own API is held to the same users and roles (kv_client --user, through a follower:
    // its client follows the leader redirect with the same token).
    let node = cluster.node(follower).addr.clone();
    let kv = |args: &[&str]| {
        std::process::Command::new(common::client_bin())
            .args(["--endpoints", node.as_str(), "--timeout", "5"])
            .args(args)
            .output()
            .expect("run kv_client")
    };
    let refused = |out: std::process::Output, why: &str| {
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success() && err.contains(why),
            "should fail with {why}: {out:?}"
        );
    };
    refused(kv(&["get", "--key", "a/x"]), "user name is empty");
    let out = kv(&["--user", ALICE, "get", "--key", "a/x"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    refused(
        kv(&["--user", ALICE, "set", "--key", "a/x", "--value", "9"]),
        "permission denied",
    );
    refused(
        kv(&["--user", ALICE, "get", "--key", "b/x"]),
        "permission denied",
    );
    refused(
        kv(&["--user", ALICE, "scan", "--start", "a", "--end", "c"]),
        "permission denied",
    );
    refused(
        kv(&["--user", "alice:bad", "get", "--key", "a/x"]),
        "authentication failed",
    );
    let out = kv(&["--user", ROOT, "set", "--key", "b/y", "--value", "r"]);
    assert!(out.status.success(), "{out:?}");

    // A changed password ends the old one; a revoked permission takes the read away.
    common::etcdctl::etcdctl_with_input(
        &f,
        &[
            "--user=root:rootpw",
            "user",
            "passwd",
            "alice",
            "--interactive=false",
        ],
        Some("newpw\n"),
        COMMAND,
    )
    .await
    .expect_ok("user passwd");
    let got = ok(
        &f,
        Some("alice:newpw"),
        &["get", "a/x", "--print-value-only"],
    )
    .await;
    assert_eq!(got.trim(), "1");
    fails(&f, Some(ALICE), &["get", "a/x"], "authentication failed").await;
    ok(
        &f,
        Some(ROOT),
        &["role", "revoke-permission", "reader", "a/", "a0"],
    )
    .await;

    // Everything above survives a restart of every node (the auth store is replicated state).
    for n in [1, 2, 3] {
        cluster.restart(n);
    }
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    fails(&all, None, &["get", "a/x"], "user name is empty").await;
    let role = ok(&all, Some(ROOT), &["role", "get", "reader"]).await;
    assert!(
        !role.contains("a/"),
        "the revoked permission stays revoked: {role}"
    );
    ok(&all, Some(ROOT), &["auth", "disable"]).await;
    let got = ok(&all, None, &["get", "b/x", "--print-value-only"]).await;
    assert_eq!(got.trim(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_should_be_checked_by_every_member_with_the_shared_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("jwt.pem");
    std::fs::write(
        &key,
        rcgen::KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write key");
    let spec = format!("jwt,priv-key={},sign-method=ES256,ttl=5m", key.display());
    let cluster = ProcessCluster::start(3, "memory", &["--auth-token", &spec]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let f = vec![cluster.node(follower).addr.clone()];
    enable_with_alice(&f, "readwrite").await;
    // The follower signs alice's token and forwards her put to the leader, which checks the
    // signature with its copy of the key.
    ok(&f, Some(ALICE), &["put", "a/1", "signed"]).await;
    let got = ok(&f, Some(ALICE), &["get", "a/1", "--print-value-only"]).await;
    assert_eq!(got.trim(), "signed");
    fails(&f, Some(ALICE), &["get", "b/1"], "permission denied").await;

    // A token that is not this key's is refused as etcd refuses an unknown one.
    let mut kv = rskv_proto::etcd::etcdserverpb::kv_client::KvClient::new(
        rskv_client::transport::lazy_channel(&cluster.node(leader).addr, COMMAND, None)
            .expect("channel"),
    );
    let forged = format!(
        "{}.{}.{}",
        "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9",
        "eyJ1c2VybmFtZSI6InJvb3QiLCJyZXZpc2lvbiI6MSwiZXhwIjo0MTAyNDQ0ODAwfQ",
        "c2lnbmF0dXJl"
    );
    let mut request = tonic::Request::new(rskv_proto::etcd::etcdserverpb::RangeRequest {
        key: "a/1".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("token", forged.parse().expect("ascii"));
    let refused = kv.range(request).await.expect_err("a forged token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(refused.message(), "etcdserver: invalid auth token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_and_roles_should_reach_a_lagging_member_through_a_snapshot() {
    let (mut cluster, leader, lagging) =
        ProcessCluster::start_with_a_follower_down("rocksdb").await;
    let l = vec![cluster.node(leader).addr.clone()];
    enable_with_alice(&l, "read").await;
    // Enough writes (as root, through rskv's own client) that the leader snapshots and purges
    // the log the stopped member missed: it can only catch up by installing a snapshot.
    let root = rskv_client::Client::with_options(
        vec![cluster.node(leader).addr.clone()],
        rskv_client::ClientOptions {
            credentials: Some(rskv_client::auth::Credentials::parse(ROOT).expect("root")),
            deadline: Duration::from_secs(15),
            ..rskv_client::ClientOptions::default()
        },
    )
    .expect("client");
    // Its first calls all at once: one Authenticate serves them (each costs the server a
    // bcrypt check), and none is sent without the token.
    let first = futures::future::join_all(
        (300..364).map(|i| root.put(format!("a/{i:04}"), format!("{i}"))),
    )
    .await;
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    for i in 0..300 {
        root.put(format!("a/{i:04}"), format!("{i}"))
            .await
            .expect("put as root");
    }
    let leader_addr = cluster.node(leader).addr.clone();
    common::wait_for("the leader to purge its log", SETTLE, || {
        let (root, addr) = (&root, &leader_addr);
        async move {
            let status = root.status_of(addr).await.ok()?;
            (status.purged_index > 0).then_some(())
        }
    })
    .await;
    cluster.restart(lagging);
    // On the restarted member alone (serializable reads): alice's role came with the snapshot.
    let lag = vec![cluster.node(lagging).addr.clone()];
    common::wait_for(
        "alice to read a/0299 on the caught-up member",
        SETTLE,
        || {
            let lag = lag.clone();
            async move {
                let out = run(
                    &lag,
                    Some(ALICE),
                    &["get", "a/0299", "--consistency=s", "--print-value-only"],
                )
                .await;
                (out.success && out.stdout.trim() == "299").then_some(())
            }
        },
    )
    .await;
    fails(
        &lag,
        Some(ALICE),
        &["put", "a/x", "1"],
        "etcdserver: permission denied",
    )
    .await;
    fails(
        &lag,
        None,
        &["get", "a/0001", "--consistency=s"],
        "user name is empty",
    )
    .await;
    let metrics = cluster.node(lagging).metrics_addr.clone();
    let (_, text) = common::http_get(&metrics, "/metrics")
        .await
        .expect("metrics");
    assert!(
        common::metric_value(&text, "rskv_snapshots_installed_total", "") >= 1.0,
        "the member caught up by a snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_should_join_a_cluster_with_auth_enabled() {
    // Admission goes over the peer port, where membership of the peer CA (here: plaintext
    // peers, as the other tests) is the credential: no root password needed, as etcd's member
    // add needs one. The new member then enforces the replicated users and roles.
    let mut cluster = ProcessCluster::start(3, "memory", &[]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let all = cluster.endpoints();
    enable_with_alice(&all, "read").await;
    ok(&all, Some(ROOT), &["put", "a/x", "1"]).await;
    ok(&all, Some(ROOT), &["put", "b/x", "2"]).await;

    cluster.add_joining_node(4);
    let client = cluster.client();
    cluster
        .wait("node 4 to join as a voter", SETTLE, || {
            let client = &client;
            async move {
                let status = client.leader_status().await.ok()?;
                status
                    .members
                    .iter()
                    .any(|m| m.id == 4 && m.voter)
                    .then_some(())
            }
        })
        .await;
    let n4 = vec![cluster.node(4).addr.clone()];
    let serializable = ["get", "a/x", "--print-value-only", "--consistency=s"];
    let got = cluster
        .wait("node 4 to hold a/x", SETTLE, || {
            let n4 = &n4;
            async move {
                let out = run(n4, Some(ALICE), &serializable).await;
                (out.success && !out.stdout.trim().is_empty()).then_some(out.stdout)
            }
        })
        .await;
    assert_eq!(got.trim(), "1");
    fails(
        &n4,
        Some(ALICE),
        &["get", "b/x", "--consistency=s"],
        "permission denied",
    )
    .await;
    fails(
        &n4,
        None,
        &["get", "a/x", "--consistency=s"],
        "user name is empty",
    )
    .await;
    // A client's own membership change still needs root.
    fails(
        &n4,
        Some(ALICE),
        &["member", "remove", "4"],
        "permission denied",
    )
    .await;
}
