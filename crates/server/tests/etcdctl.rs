//! etcd's own `etcdctl` (v3 API, Debian's etcd-client) against a real rskv cluster: member list,
//! endpoint status and health, alarms, defragment, move-leader, member add and remove. Every
//! endpoint answers, followers included (they forward what only the leader can do).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::etcdctl::etcdctl;
use common::etcdctl::etcdctl_with_input;
use common::ProcessCluster;
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// etcdctl's command timeout; generous for a loaded 2-core machine.
const COMMAND: Duration = Duration::from_secs(10);

/// Members by id from `member list -w json` output: (name, peerURLs, clientURLs, isLearner).
fn members(list: &Value) -> BTreeMap<u64, (String, Vec<String>, Vec<String>, bool)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    list["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members in {list}"))
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().expect("member ID"),
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    strings(&m["peerURLs"]),
                    strings(&m["clientURLs"]),
                    m["isLearner"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

/// `etcdctl member add` of a member at `peer_url`, asked of `endpoint`: its id and the answer.
async fn member_add(endpoint: &str, peer_url: &str, flags: &[&str]) -> (u64, Value) {
    let peer_urls = format!("--peer-urls={peer_url}");
    let mut args = vec![
        "member",
        "add",
        "new-member",
        peer_urls.as_str(),
        "-w",
        "json",
    ];
    args.extend(flags);
    let added = etcdctl(&[endpoint.to_string()], &args, COMMAND)
        .await
        .expect_ok("member add")
        .json();
    let id = added["member"]["ID"]
        .as_u64()
        .unwrap_or_else(|| panic!("{added}"));
    (id, added)
}

async fn member_list(endpoints: &[String]) -> Value {
    etcdctl(endpoints, &["member", "list", "-w", "json"], COMMAND)
        .await
        .expect_ok("member list")
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_sees_members_status_health_alarms_and_defrag() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let all = cluster.endpoints();

    // member list, through every endpoint, followers included: the same three members.
    let rskv_members = cluster
        .client()
        .leader_status()
        .await
        .expect("status")
        .members;
    for id in [leader, follower] {
        let list = member_list(&[cluster.node(id).addr.clone()]).await;
        assert_eq!(list["header"]["member_id"].as_u64(), Some(id), "{list}");
        assert!(
            list["header"]["cluster_id"].as_u64().unwrap_or(0) != 0,
            "{list}"
        );
        let got = members(&list);
        assert_eq!(got.len(), 3, "{list}");
        for m in &rskv_members {
            let (name, peers, clients, learner) = &got[&m.id];
            assert_eq!(name, &format!("node-{}", m.id));
            assert_eq!(peers, &[format!("http://{}", m.peer_addr)]);
            assert_eq!(clients, &[format!("http://{}", cluster.node(m.id).addr)]);
            assert!(!learner, "{list}");
        }
    }
    let ids: Vec<u64> = rskv_members.iter().map(|m| m.id).collect();
    assert_eq!(ids, [1, 2, 3]);

    // endpoint status of all three: each reports itself, the same leader, no learner, one
    // cluster id.
    let status = etcdctl(&all, &["endpoint", "status", "-w", "json"], COMMAND)
        .await
        .expect_ok("endpoint status")
        .json();
    let rows = status.as_array().unwrap_or_else(|| panic!("{status}"));
    assert_eq!(rows.len(), 3, "{status}");
    let mut cluster_ids = Vec::new();
    let mut seen = Vec::new();
    for row in rows {
        let s = &row["Status"];
        let me = s["header"]["member_id"].as_u64().expect("member_id");
        let endpoint = row["Endpoint"].as_str().unwrap_or_default();
        assert_eq!(endpoint, cluster.node(me).addr, "{row}");
        assert_eq!(s["leader"].as_u64(), Some(leader), "{row}");
        assert_eq!(s["version"].as_str(), Some("3.5.0"), "{row}");
        assert!(!s["isLearner"].as_bool().unwrap_or(false), "{row}");
        assert!(s["raftTerm"].as_u64().unwrap_or(0) >= 1, "{row}");
        assert!(s["raftAppliedIndex"].as_u64().unwrap_or(0) >= 1, "{row}");
        assert!(s["dbSize"].as_i64().unwrap_or(0) > 0, "{row}");
        cluster_ids.push(s["header"]["cluster_id"].as_u64());
        seen.push(me);
    }
    seen.sort_unstable();
    assert_eq!(seen, [1, 2, 3]);
    cluster_ids.dedup();
    assert_eq!(cluster_ids.len(), 1, "one cluster id: {status}");

    // endpoint health of all three (a linearizable read through each, forwarded by followers).
    let health = etcdctl(&all, &["endpoint", "health", "-w", "json"], COMMAND)
        .await
        .expect_ok("endpoint health")
        .json();
    let rows = health.as_array().unwrap_or_else(|| panic!("{health}"));
    assert_eq!(rows.len(), 3, "{health}");
    for row in rows {
        assert_eq!(row["health"].as_bool(), Some(true), "{row}");
    }

    // No alarms; defragment succeeds on every member.
    let alarms = etcdctl(&all, &["alarm", "list", "-w", "json"], COMMAND)
        .await
        .expect_ok("alarm list")
        .json();
    assert!(
        alarms["alarms"].as_array().is_none_or(|a| a.is_empty()),
        "{alarms}"
    );
    let defrag = etcdctl(&all, &["defrag"], COMMAND)
        .await
        .expect_ok("defrag");
    assert_eq!(
        defrag
            .stdout
            .matches("Finished defragmenting etcd member")
            .count(),
        3,
        "{defrag:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_move_leader_hands_leadership_to_a_follower() {
    let cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let target = cluster.follower_of(leader);
    let all = cluster.endpoints();
    let moved = etcdctl(&all, &["move-leader", &format!("{target:x}")], COMMAND)
        .await
        .expect_ok("move-leader");
    assert!(moved.stdout.contains("Leadership transferred"), "{moved:?}");
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);

    // Asked of a follower directly, MoveLeader is refused as etcd refuses it.
    let follower = cluster.follower_of(target);
    let refused = etcdctl(
        &[cluster.node(follower).addr.clone()],
        &["move-leader", &format!("{leader:x}")],
        COMMAND,
    )
    .await;
    refused.expect_error("no leader endpoint given");

    // A target that is not a member: etcd's "bad leader transferee".
    let bad = etcdctl(&all, &["move-leader", "2a"], COMMAND).await;
    bad.expect_error("etcdserver: bad leader transferee");
    assert_eq!(cluster.wait_for_leader(LEADER_TIMEOUT).await, target);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_add_join_list_and_remove() {
    let mut cluster = ProcessCluster::start(3, "memory", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let ports = common::adjacent_ports();
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);

    // Added through a follower, which forwards it to the leader.
    let (id, added) = member_add(&cluster.node(follower).addr, &peer_url, &[]).await;
    assert_eq!(id, 4, "the next free id: {added}");
    assert_eq!(
        added["member"]["peerURLs"][0].as_str(),
        Some(peer_url.as_str())
    );
    assert_eq!(members(&added).len(), 4, "{added}");

    // The same peer URL again: etcd's refusal.
    let again = etcdctl(
        &cluster.endpoints(),
        &["member", "add", "again", &format!("--peer-urls={peer_url}")],
        COMMAND,
    )
    .await;
    again.expect_error("etcdserver: Peer URLs already exists");

    // The node starts with that id, its client port just below the peer port, and --join: it
    // catches up and is promoted.
    cluster.add_joining_node_on(id, ports);
    let endpoints = cluster.endpoints();
    cluster
        .wait(
            "node 4 to be a voting member in etcdctl's member list",
            Duration::from_secs(40),
            || {
                let endpoints = endpoints.clone();
                async move {
                    let out = etcdctl(&endpoints, &["member", "list", "-w", "json"], COMMAND).await;
                    if !out.success {
                        return None;
                    }
                    // Node 4 is among the endpoints: before it has heard from the cluster it
                    // answers "no leader", and etcdctl may have asked it.
                    let list = out.json();
                    list["members"].as_array()?;
                    let got = members(&list);
                    (got.len() == 4 && got.get(&id).is_some_and(|m| !m.3)).then_some(())
                }
            },
        )
        .await;
    let list = member_list(&[cluster.node(id).addr.clone()]).await;
    assert_eq!(
        list["header"]["member_id"].as_u64(),
        Some(id),
        "node 4 answers: {list}"
    );

    // Remove it again (hex id, as etcdctl takes it), and an unknown id is etcd's "not found".
    etcdctl(
        &endpoints,
        &["member", "remove", &format!("{id:x}")],
        COMMAND,
    )
    .await
    .expect_ok("member remove");
    let list = member_list(&cluster.endpoints()[..3]).await;
    assert_eq!(members(&list).len(), 3, "{list}");
    assert!(!members(&list).contains_key(&id), "{list}");
    let unknown = etcdctl(
        &cluster.endpoints()[..3],
        &["member", "remove", "2a"],
        COMMAND,
    )
    .await;
    unknown.expect_error("etcdserver: member not found");
    cluster.kill(id);
}

/// etcd's learner workflow (kubeadm's, etcd-operator's): `member add --learner`, start the node,
/// `member promote` once it is in sync. The node stays a learner until then, however far it has
/// caught up, where a member added as a voter promotes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_member_add_learner_stays_a_learner_until_promoted() {
    // RocksDB: the restarted learner finds itself a learner in the membership it recovered;
    // memory: it recovers no membership (the state comes back from the leader) and asks anyway.
    for engine in ["rocksdb", "memory"] {
        learner_stays_until_promoted(engine).await;
    }
}

async fn learner_stays_until_promoted(engine: &str) {
    let mut cluster = ProcessCluster::start(3, engine, &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let ports = common::adjacent_ports();
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let (id, added) = member_add(&cluster.node(follower).addr, &peer_url, &["--learner"]).await;
    assert_eq!(
        added["member"]["isLearner"].as_bool(),
        Some(true),
        "{added}"
    );

    // The node joins, finds itself a learner to be promoted by request, and says it stays one;
    // restarted (with Raft state, still a learner), it asks again and is told the same.
    cluster.add_joining_node_on(id, ports);
    let log = cluster.node(id).log.clone();
    let stays_said = |times: usize| {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).ok()?;
            (text.matches("staying a learner until promoted").count() >= times).then_some(())
        }
    };
    let learner_wait = Duration::from_secs(40);
    cluster
        .wait("node 4 to say it stays a learner", learner_wait, || {
            stays_said(1)
        })
        .await;
    cluster.restart(id);
    cluster
        .wait("node 4, restarted, to say so again", learner_wait, || {
            stays_said(2)
        })
        .await;
    let all = cluster.endpoints()[..3].to_vec();
    let list = member_list(&all).await;
    assert_eq!(
        members(&list).get(&id).map(|m| m.3),
        Some(true),
        "still a learner: {list}"
    );
    // rskv's own API says why it does not promote itself.
    let status = cluster.client().leader_status().await.expect("status");
    let mark = |status: &rskv_proto::kv::StatusResponse| {
        let member = status.members.iter().find(|m| m.id == id);
        member.map(|m| (m.voter, m.promoted_by_request))
    };
    assert_eq!(mark(&status), Some((false, true)), "{status:?}");

    // etcdctl promotes it once it is in sync (etcd's refusal until then).
    let promote = ["member", "promote", &format!("{id:x}")];
    let promoted = cluster
        .wait("member promote to succeed", Duration::from_secs(40), || {
            let all = all.clone();
            async move {
                let out = etcdctl(&all, &promote, COMMAND).await;
                if !out.success {
                    assert!(
                        out.stderr.contains("which is in sync with leader"),
                        "only the not-yet-in-sync refusal may come first: {out:?}"
                    );
                    return None;
                }
                Some(out)
            }
        })
        .await;
    assert!(promoted.stdout.contains("promoted"), "{promoted:?}");
    let list = member_list(&all).await;
    assert_eq!(
        members(&list).get(&id).map(|m| m.3),
        Some(false),
        "a voter now: {list}"
    );
    let status = cluster.client().leader_status().await.expect("status");
    assert_eq!(mark(&status), Some((true, false)), "{status:?}");
    etcdctl(&all, &promote, COMMAND)
        .await
        .expect_error("etcdserver: can only promote a learner member");
    cluster.kill(id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_over_its_quota_raises_nospace_and_the_cluster_stops_growing() {
    // etcd's --quota-backend-bytes: a quota every data directory exceeds from the start.
    let cluster = ProcessCluster::start(3, "rocksdb", &["--quota-backend-bytes", "1"]);
    cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let all = cluster.endpoints();
    // Every member measures its own data directory and raises the alarm for itself, the
    // followers through the leader.
    let expected: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("memberID:{} alarm:NOSPACE", n.id))
        .collect();
    cluster
        .wait(
            "every member to raise NOSPACE",
            Duration::from_secs(30),
            || {
                let all = &all;
                let expected = &expected;
                async move {
                    let out = etcdctl(all, &["alarm", "list"], COMMAND).await;
                    (out.success && expected.iter().all(|e| out.stdout.contains(e.as_str())))
                        .then_some(())
                }
            },
        )
        .await;
    // Every member refuses to grow the store, and still reads and deletes.
    for node in &cluster.nodes {
        let one = vec![node.addr.clone()];
        etcdctl(&one, &["put", "k", "v"], COMMAND)
            .await
            .expect_error("etcdserver: mvcc: database space exceeded");
        let out = etcdctl(&one, &["alarm", "list"], COMMAND)
            .await
            .expect_ok("alarm list");
        assert_eq!(out.stdout.lines().count(), expected.len(), "{}", out.stdout);
        for alarm in &expected {
            assert!(out.stdout.contains(alarm.as_str()), "{}", out.stdout);
        }
    }
    etcdctl(&all, &["del", "k"], COMMAND)
        .await
        .expect_ok("a delete under NOSPACE");
    etcdctl(&all, &["get", "k"], COMMAND)
        .await
        .expect_ok("a read under NOSPACE");
    // etcd costs a transaction by its puts: one of deletes and reads passes, one with a put
    // in either branch does not.
    let cleanup = "\ndel k\nget k\n\n\n";
    let out = etcdctl_with_input(&all, &["txn"], Some(cleanup), COMMAND)
        .await
        .expect_ok("a transaction of a delete and a read under NOSPACE");
    assert!(out.stdout.starts_with("SUCCESS"), "{}", out.stdout);
    let growing = "\ndel k\n\nput k v\n\n";
    etcdctl_with_input(&all, &["txn"], Some(growing), COMMAND)
        .await
        .expect_error("etcdserver: mvcc: database space exceeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_answers_etcds_http_endpoints_beside_grpc() {
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let addr = cluster.node(cluster.follower_of(leader)).addr.clone();
    let get = |path: &'static str| {
        let addr = addr.clone();
        async move {
            common::http_get(&addr, path)
                .await
                .unwrap_or_else(|| panic!("no HTTP answer for {path}"))
        }
    };
    assert_eq!(
        get("/health").await,
        (200, r#"{"health":"true","reason":""}"#.to_string())
    );
    assert_eq!(
        get("/version").await,
        (
            200,
            r#"{"etcdserver":"3.5.0","etcdcluster":"3.5.0"}"#.to_string()
        )
    );
    let (status, text) = get("/metrics").await;
    assert_eq!(status, 200);
    assert!(common::metric_value(&text, "process_resident_memory_bytes", "") > 0.0);
    assert_eq!(get("/nothing").await.0, 404);
    // etcdctl's data scale check puts 10,000 keys over gRPC and reads the member's memory from
    // /metrics on the same port.
    let one = vec![addr.clone()];
    let out = etcdctl(
        &one,
        &["check", "datascale", "--load=s"],
        Duration::from_secs(120),
    )
    .await;
    assert!(
        out.success && out.stdout.contains("PASS"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_wide_commands_dial_members_by_url() {
    // `--cluster` dials every member's client URL from MemberList (`http://host:port`), which
    // etcd's Go client sends whole as HTTP/2 :authority.
    let cluster = ProcessCluster::start(3, "rocksdb", &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let one = vec![cluster.node(leader).addr.clone()];
    let out = etcdctl(
        &one,
        &["endpoint", "status", "--cluster", "-w", "json"],
        COMMAND,
    )
    .await
    .expect_ok("endpoint status --cluster");
    let statuses = out.json();
    let mut endpoints: Vec<String> = statuses
        .as_array()
        .map(|all| {
            all.iter()
                .map(|s| s["Endpoint"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    endpoints.sort();
    let mut expected: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| format!("http://{}", n.addr))
        .collect();
    expected.sort();
    assert_eq!(endpoints, expected, "{}", out.stdout);
    let out = etcdctl(&one, &["endpoint", "hashkv", "--cluster"], COMMAND)
        .await
        .expect_ok("endpoint hashkv --cluster");
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    let out = etcdctl(&one, &["defrag", "--cluster"], COMMAND)
        .await
        .expect_ok("defrag --cluster");
    assert_eq!(
        out.stdout.matches("Finished defragmenting").count(),
        3,
        "{}",
        out.stdout
    );
    // An endpoint given as a URL takes the same path.
    let url = vec![format!("http://{}", cluster.node(leader).addr)];
    etcdctl(&url, &["endpoint", "status"], COMMAND)
        .await
        .expect_ok("endpoint status of an http:// endpoint");
}
