//! The `etcd-client` crate (etcd's v3 API from Rust, written by people who never saw rskv)
//! against real 3-node rskv clusters, connected to a follower as well as to the leader: KV with
//! its options and headers, transactions, compaction, watches, leases and keep-alives, and
//! etcd's errors for bad input. What passes here is what an etcd user's Rust program gets.
//!
//! etcd's Lock and Election services too: contenders queue, wait and take over as etcd's recipes
//! make them, a canceled waiter leaves no key, and errors are etcd's.
//!
//! Nothing sleeps as proof: every wait is on a condition, with a deadline.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::ProcessCluster;
use etcd_client::Client;
use etcd_client::CompactionOptions;
use etcd_client::Compare;
use etcd_client::CompareOp;
use etcd_client::ConnectOptions;
use etcd_client::DeleteOptions;
use etcd_client::EventType;
use etcd_client::GetOptions;
use etcd_client::LeaseGrantOptions;
use etcd_client::LeaseTimeToLiveOptions;
use etcd_client::LockOptions;
use etcd_client::ProclaimOptions;
use etcd_client::PutOptions;
use etcd_client::ResignOptions;
use etcd_client::ResponseHeader;
use etcd_client::SortOrder;
use etcd_client::SortTarget;
use etcd_client::Txn;
use etcd_client::TxnOp;
use etcd_client::TxnOpResponse;
use etcd_client::WatchFilterType;
use etcd_client::WatchOptions;
use etcd_client::WatchResponse;
use etcd_client::WatchStream;
use tonic::Code;

const LEADER_TIMEOUT: Duration = Duration::from_secs(20);
/// Deadline of one wait for a condition (a loaded 2-core machine runs several clusters).
const WAIT: Duration = Duration::from_secs(20);
/// Deadline of one watch message.
const MESSAGE: Duration = Duration::from_secs(10);

const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
const NO_KEY: &str = "etcdserver: key is not provided";
const NO_LEASE: &str = "etcdserver: requested lease not found";
const NO_ELECTION_LEADER: &str = "election: no leader";
const NOT_ELECTION_LEADER: &str = "election: not leader";

/// An etcd client connected to node `id` only.
async fn connect(cluster: &ProcessCluster, id: u64) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(15));
    Client::connect([cluster.node(id).addr.as_str()], Some(options))
        .await
        .unwrap_or_else(|e| panic!("connect to node {id}: {e}"))
}

/// A 3-node cluster of `engine` with a leader: the cluster, the leader's and a follower's ids, and
/// an etcd client connected to that follower only and one connected to the leader only.
async fn start(engine: &str) -> (ProcessCluster, u64, u64, Client, Client) {
    let cluster = ProcessCluster::start(3, engine, &[]);
    let leader = cluster.wait_for_leader(LEADER_TIMEOUT).await;
    let follower = cluster.follower_of(leader);
    let f = connect(&cluster, follower).await;
    let l = connect(&cluster, leader).await;
    (cluster, leader, follower, f, l)
}

/// Get options for every key with the given key as prefix.
fn prefix() -> GetOptions {
    GetOptions::new().with_prefix()
}

/// The gRPC status of a failed call; panics on success or on a client-side error.
fn status<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> tonic::Status {
    match result {
        Err(etcd_client::Error::GRpcStatus(s)) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// Asserts `result` failed with etcd's `code` and exact `message`.
fn assert_etcd_error<T: std::fmt::Debug>(
    result: Result<T, etcd_client::Error>,
    code: Code,
    message: &str,
) {
    let s = status(result);
    assert_eq!((s.code(), s.message()), (code, message), "{s:?}");
}

/// A header from member `member` of a real cluster.
fn check_header(header: Option<&ResponseHeader>, member: u64) -> i64 {
    let h = header.expect("a response header");
    assert_eq!(h.member_id(), member, "the member asked answers: {h:?}");
    assert!(h.raft_term() > 0, "{h:?}");
    assert!(h.cluster_id() != 0, "{h:?}");
    assert!(h.revision() > 0, "{h:?}");
    h.revision()
}

fn keys(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect()
}

fn values(kvs: &[etcd_client::KeyValue]) -> Vec<String> {
    kvs.iter()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
        .collect()
}

/// The next message of a watch stream, within [`MESSAGE`].
async fn next(stream: &mut WatchStream) -> WatchResponse {
    tokio::time::timeout(MESSAGE, stream.message())
        .await
        .expect("a watch message in time")
        .expect("the watch stream works")
        .expect("the watch stream is open")
}

/// One watch event, comparable across members: type, key, value, create and mod revision,
/// version, and the previous value if sent.
type Seen = (bool, String, String, i64, i64, i64, Option<String>);

fn seen(event: &etcd_client::Event) -> Seen {
    let kv = event.kv().expect("an event has its key-value");
    (
        event.event_type() == EventType::Put,
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
        kv.create_revision(),
        kv.mod_revision(),
        kv.version(),
        event
            .prev_kv()
            .map(|p| String::from_utf8_lossy(p.value()).into_owned()),
    )
}

/// Reads `stream` until watcher `id` has received events up to revision `until`; returns them.
async fn events_until(stream: &mut WatchStream, id: i64, until: i64) -> Vec<Seen> {
    let mut out: Vec<Seen> = Vec::new();
    while out.last().is_none_or(|e| e.4 < until) {
        let response = next(stream).await;
        assert!(!response.canceled(), "{response:?}");
        if response.watch_id() == id {
            out.extend(response.events().iter().map(seen));
        }
    }
    out
}

/// Waits until a serializable read of `key` through `client` (the member it is connected to,
/// as it is, without the leader) finds `value`, or finds no key for `None`.
async fn wait_serializable(
    cluster: &ProcessCluster,
    client: &Client,
    key: &str,
    value: Option<&str>,
) {
    cluster
        .wait(
            &format!("a serializable read of {key} to find {value:?}"),
            WAIT,
            || {
                let mut c = client.clone();
                async move {
                    let options = GetOptions::new().with_serializable();
                    let got = c.get(key, Some(options)).await.ok()?;
                    let found = got.kvs().first().map(|kv| kv.value().to_vec());
                    (found.as_deref() == value.map(str::as_bytes)).then_some(())
                }
            },
        )
        .await;
}

/// Waits until `count` keys start with `prefix` (contenders queued for a lock or an election).
async fn wait_for_keys(cluster: &ProcessCluster, client: &Client, prefix: &str, count: i64) {
    cluster
        .wait(&format!("{count} keys under {prefix}"), WAIT, || {
            let mut c = client.clone();
            async move {
                let options = GetOptions::new().with_prefix().with_count_only();
                let got = c.get(prefix, Some(options)).await.ok()?;
                (got.count() == count).then_some(())
            }
        })
        .await;
}

/// Opens a watch with `options` and returns the stream and the watch id from its created
/// response.
async fn watch(client: &mut Client, key: &str, options: WatchOptions) -> (WatchStream, i64) {
    let mut stream = client.watch(key, Some(options)).await.expect("watch");
    let created = next(&mut stream).await;
    assert!(created.created(), "{created:?}");
    assert!(!created.canceled(), "{created:?}");
    (stream, created.watch_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_options_headers_prev_kv_and_compaction() {
    let (cluster, leader, follower, mut f, mut l) = start("rocksdb").await;

    // Puts through the follower: each at a higher revision, every header the follower's.
    let mut revs = Vec::new();
    for (k, v) in [
        ("kv/a", "5"),
        ("kv/b", "3"),
        ("kv/c", "4"),
        ("kv/d", "1"),
        ("kv/e", "2"),
    ] {
        let put = f.put(k, v, None).await.expect("put");
        assert!(put.prev_key().is_none());
        revs.push(check_header(put.header(), follower));
    }
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");

    // A single key through the leader: its versions and revisions.
    let got = l.get("kv/c", None).await.expect("get");
    assert!(check_header(got.header(), leader) >= revs[4]);
    let kv = &got.kvs()[0];
    assert_eq!((kv.key(), kv.value()), (&b"kv/c"[..], &b"4"[..]));
    assert_eq!(
        (
            kv.create_revision(),
            kv.mod_revision(),
            kv.version(),
            kv.lease()
        ),
        (revs[2], revs[2], 1, 0)
    );
    assert_eq!(got.count(), 1);

    // A put through the leader, read linearizably through the follower at once.
    let put = l.put("kv/f", "0", None).await.expect("put");
    let rev_f = check_header(put.header(), leader);
    assert!(rev_f > revs[4]);
    let got = f.get("kv/f", None).await.expect("linearizable get");
    assert_eq!(values(got.kvs()), ["0"]);
    assert!(check_header(got.header(), follower) >= rev_f);

    // Prefix, range, limit, keys-only, count-only, sort.
    let all = ["kv/a", "kv/b", "kv/c", "kv/d", "kv/e", "kv/f"];
    let got = f.get("kv/", Some(prefix())).await.expect("prefix");
    assert_eq!(keys(got.kvs()), all);
    assert_eq!((got.count(), got.more()), (6, false));
    let got = f
        .get("kv/b", Some(GetOptions::new().with_range("kv/d")))
        .await
        .expect("range");
    assert_eq!(keys(got.kvs()), ["kv/b", "kv/c"]);
    let got = l
        .get("kv/", Some(prefix().with_limit(2)))
        .await
        .expect("limit");
    assert_eq!(keys(got.kvs()), ["kv/a", "kv/b"]);
    assert_eq!((got.count(), got.more()), (6, true));
    let got = f
        .get("kv/", Some(prefix().with_keys_only()))
        .await
        .expect("keys only");
    assert_eq!(keys(got.kvs()), all);
    assert!(got.kvs().iter().all(|kv| kv.value().is_empty()));
    let got = f
        .get("kv/", Some(prefix().with_count_only()))
        .await
        .expect("count only");
    assert!(got.kvs().is_empty());
    assert_eq!(got.count(), 6);
    let got = f
        .get(
            "kv/",
            Some(prefix().with_sort(SortTarget::Value, SortOrder::Descend)),
        )
        .await
        .expect("sort by value");
    assert_eq!(values(got.kvs()), ["5", "4", "3", "2", "1", "0"]);
    let got = l
        .get(
            "kv/",
            Some(
                prefix()
                    .with_sort(SortTarget::Create, SortOrder::Descend)
                    .with_limit(3),
            ),
        )
        .await
        .expect("sort by create revision, limited");
    assert_eq!(keys(got.kvs()), ["kv/f", "kv/e", "kv/d"]);
    assert_eq!(got.count(), 6);

    // An overwrite with prev_kv; the old value stays readable at its revision.
    let put = f
        .put("kv/a", "6", Some(PutOptions::new().with_prev_key()))
        .await
        .expect("overwrite");
    let rev_a2 = check_header(put.header(), follower);
    let prev = put.prev_key().expect("prev_kv");
    assert_eq!((prev.value(), prev.mod_revision()), (&b"5"[..], revs[0]));
    let got = l.get("kv/a", None).await.expect("get");
    let kv = &got.kvs()[0];
    assert_eq!(
        (
            kv.value(),
            kv.create_revision(),
            kv.mod_revision(),
            kv.version()
        ),
        (&b"6"[..], revs[0], rev_a2, 2)
    );
    let got = f
        .get("kv/", Some(prefix().with_revision(revs[1])))
        .await
        .expect("get at a past revision");
    assert_eq!(keys(got.kvs()), ["kv/a", "kv/b"]);
    assert_eq!(values(got.kvs()), ["5", "3"]);

    // A serializable read through the follower catches up with the overwrite.
    let mut serial = f.clone();
    wait_serializable(&cluster, &serial, "kv/a", Some("6")).await;
    let got = serial
        .get("kv/a", Some(GetOptions::new().with_serializable()))
        .await
        .expect("serializable");
    check_header(got.header(), follower);

    // Deletes with prev_kv: one key, then a range of two; deleting nothing takes no revision.
    let deleted = f
        .delete("kv/b", Some(DeleteOptions::new().with_prev_key()))
        .await
        .expect("delete");
    let rev_del = check_header(deleted.header(), follower);
    assert!(rev_del > rev_a2);
    assert_eq!(deleted.deleted(), 1);
    assert_eq!(values(deleted.prev_kvs()), ["3"]);
    let deleted = l
        .delete(
            "kv/c",
            Some(DeleteOptions::new().with_range("kv/e").with_prev_key()),
        )
        .await
        .expect("delete range");
    let rev_del2 = check_header(deleted.header(), leader);
    assert_eq!(deleted.deleted(), 2);
    assert_eq!(keys(deleted.prev_kvs()), ["kv/c", "kv/d"]);
    let nothing = f.delete("kv/none", None).await.expect("delete nothing");
    assert_eq!(nothing.deleted(), 0);
    assert_eq!(check_header(nothing.header(), follower), rev_del2);
    let got = f.get("kv/", Some(prefix())).await.expect("after deletes");
    assert_eq!(keys(got.kvs()), ["kv/a", "kv/e", "kv/f"]);

    // Compaction (through the follower) at revs[2]: older revisions are gone, that one and
    // later stay readable, future ones are refused; compacting again below it is refused.
    let compacted = f.compact(revs[2], None).await.expect("compact");
    check_header(compacted.header(), follower);
    for client in [&mut f, &mut l] {
        assert_etcd_error(
            client
                .get("kv/a", Some(GetOptions::new().with_revision(revs[0])))
                .await,
            Code::OutOfRange,
            COMPACTED,
        );
        let got = client
            .get("kv/", Some(prefix().with_revision(revs[2])))
            .await
            .expect("read at the compaction revision");
        assert_eq!(keys(got.kvs()), ["kv/a", "kv/b", "kv/c"]);
        assert_eq!(values(got.kvs()), ["5", "3", "4"]);
        assert_etcd_error(
            client
                .get(
                    "kv/a",
                    Some(GetOptions::new().with_revision(rev_del2 + 1000)),
                )
                .await,
            Code::OutOfRange,
            FUTURE,
        );
    }
    assert_etcd_error(
        l.get(
            "kv/a",
            Some(GetOptions::new().with_revision(revs[1]).with_serializable()),
        )
        .await,
        Code::OutOfRange,
        COMPACTED,
    );
    assert_etcd_error(f.compact(revs[1], None).await, Code::OutOfRange, COMPACTED);
    assert_etcd_error(
        l.compact(rev_del2 + 1000, None).await,
        Code::OutOfRange,
        FUTURE,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_compares_branches_nesting_and_bad_input() {
    let (_cluster, leader, follower, mut f, mut l) = start("rocksdb").await;

    let lease = l.lease_grant(60, None).await.expect("grant").id();
    let rx = check_header(l.put("t/x", "1", None).await.expect("put").header(), leader);
    l.put("t/l", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");

    // Every kind of comparison holding: the success branch runs, its get sees its put.
    let compares = || {
        vec![
            Compare::value("t/x", CompareOp::Equal, "1"),
            Compare::version("t/x", CompareOp::Equal, 1),
            Compare::create_revision("t/x", CompareOp::Equal, rx),
            Compare::mod_revision("t/x", CompareOp::Equal, rx),
            Compare::lease("t/l", CompareOp::Equal, lease),
            Compare::version("t/x", CompareOp::Greater, 0),
            Compare::mod_revision("t/x", CompareOp::Less, rx + 1),
            Compare::value("t/x", CompareOp::NotEqual, "2"),
            // An absent key's create revision is 0: etcd's "key does not exist".
            Compare::create_revision("t/absent", CompareOp::Equal, 0),
        ]
    };
    let txn = || {
        Txn::new()
            .when(compares())
            .and_then(vec![
                TxnOp::put("t/x", "2", Some(PutOptions::new().with_prev_key())),
                TxnOp::get("t/x", None),
            ])
            .or_else(vec![
                TxnOp::put("t/failed", "yes", None),
                TxnOp::get("t/x", None),
            ])
    };
    let done = f.txn(txn()).await.expect("txn");
    let rev_txn = check_header(done.header(), follower);
    assert!(done.succeeded());
    let responses = done.op_responses();
    assert_eq!(responses.len(), 2);
    match &responses[0] {
        TxnOpResponse::Put(put) => {
            assert_eq!(put.prev_key().map(|kv| kv.value()), Some(&b"1"[..]))
        }
        other => panic!("{other:?}"),
    }
    match &responses[1] {
        TxnOpResponse::Get(get) => {
            assert_eq!(values(get.kvs()), ["2"]);
            assert_eq!(get.kvs()[0].mod_revision(), rev_txn);
        }
        other => panic!("{other:?}"),
    }

    // The same transaction again: the value moved, so the failure branch runs.
    let done = l.txn(txn()).await.expect("txn");
    check_header(done.header(), leader);
    assert!(!done.succeeded());
    match &done.op_responses()[1] {
        TxnOpResponse::Get(get) => assert_eq!(values(get.kvs()), ["2"]),
        other => panic!("{other:?}"),
    }
    let got = f.get("t/failed", None).await.expect("get");
    assert_eq!(values(got.kvs()), ["yes"]);

    // Each comparison alone, failing: the lease, the create and mod revisions, the version.
    for compare in [
        Compare::lease("t/l", CompareOp::NotEqual, lease),
        Compare::create_revision("t/x", CompareOp::Greater, rx),
        Compare::mod_revision("t/x", CompareOp::Equal, rx),
        Compare::version("t/x", CompareOp::Less, 2),
        Compare::value("t/absent", CompareOp::Equal, ""),
    ] {
        let done = f
            .txn(Txn::new().when(vec![compare.clone()]))
            .await
            .expect("txn");
        assert!(!done.succeeded(), "{compare:?}");
    }

    // A nested transaction: its own comparison picks its branch.
    let nested = Txn::new()
        .when(vec![Compare::value("t/x", CompareOp::Equal, "2")])
        .and_then(vec![
            TxnOp::put("t/nested", "yes", None),
            TxnOp::delete("t/failed", Some(DeleteOptions::new().with_prev_key())),
        ])
        .or_else(vec![TxnOp::put("t/nested", "no", None)]);
    let done = f
        .txn(Txn::new().and_then(vec![TxnOp::txn(nested), TxnOp::get("t/nested", None)]))
        .await
        .expect("nested txn");
    assert!(done.succeeded());
    let responses = done.op_responses();
    match &responses[0] {
        TxnOpResponse::Txn(inner) => {
            assert!(inner.succeeded());
            match &inner.op_responses()[1] {
                TxnOpResponse::Delete(d) => {
                    assert_eq!(d.deleted(), 1);
                    assert_eq!(values(d.prev_kvs()), ["yes"]);
                }
                other => panic!("{other:?}"),
            }
        }
        other => panic!("{other:?}"),
    }
    match &responses[1] {
        TxnOpResponse::Get(get) => assert_eq!(values(get.kvs()), ["yes"]),
        other => panic!("{other:?}"),
    }

    // Bad input, through both members: etcd's codes and messages.
    for client in [&mut f, &mut l] {
        assert_etcd_error(
            client.put("", "v", None).await,
            Code::InvalidArgument,
            NO_KEY,
        );
        assert_etcd_error(client.get("", None).await, Code::InvalidArgument, NO_KEY);
        assert_etcd_error(client.delete("", None).await, Code::InvalidArgument, NO_KEY);
        assert_etcd_error(
            client
                .put("t/y", "v", Some(PutOptions::new().with_lease(0x7e57)))
                .await,
            Code::NotFound,
            NO_LEASE,
        );
        assert_etcd_error(
            client
                .txn(Txn::new().and_then(vec![
                    TxnOp::put("t/twice", "1", None),
                    TxnOp::put("t/twice", "2", None),
                ]))
                .await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        assert_etcd_error(
            client
                .txn(Txn::new().or_else(vec![
                    TxnOp::put("t/in", "1", None),
                    TxnOp::delete("t/", Some(DeleteOptions::new().with_prefix())),
                ]))
                .await,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
        assert_etcd_error(
            client
                .txn(Txn::new().and_then(vec![TxnOp::put(
                    "t/y",
                    "v",
                    Some(PutOptions::new().with_lease(0x7e57)),
                )]))
                .await,
            Code::NotFound,
            NO_LEASE,
        );
        assert_etcd_error(
            client
                .put("t/never", "", Some(PutOptions::new().with_ignore_value()))
                .await,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        assert_etcd_error(client.lease_revoke(0x7e57).await, Code::NotFound, NO_LEASE);
    }
    // None of the refused requests wrote anything.
    let got = l
        .get("t/", Some(prefix().with_keys_only()))
        .await
        .expect("get");
    assert_eq!(keys(got.kvs()), ["t/l", "t/nested", "t/x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_history_live_events_filters_progress_cancel_and_compaction() {
    let (cluster, leader, follower, mut f, mut l) = start("rocksdb").await;

    let r1 = check_header(l.put("w/a", "1", None).await.expect("put").header(), leader);
    let r2 = check_header(l.put("w/b", "1", None).await.expect("put").header(), leader);
    let r3 = check_header(l.put("w/a", "2", None).await.expect("put").header(), leader);
    let r4 = check_header(
        l.delete("w/b", None).await.expect("delete").header(),
        leader,
    );
    l.put("other", "x", None)
        .await
        .expect("put outside the prefix");

    // From a past revision, with prev_kv, through the follower: history, then live events.
    let (mut stream, id) = watch(
        &mut f,
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(r1)
            .with_prev_key(),
    )
    .await;
    let history = events_until(&mut stream, id, r4).await;
    let s = |v: &str| v.to_string();
    assert_eq!(
        history,
        vec![
            (true, s("w/a"), s("1"), r1, r1, 1, None),
            (true, s("w/b"), s("1"), r2, r2, 1, None),
            (true, s("w/a"), s("2"), r1, r3, 2, Some(s("1"))),
            (false, s("w/b"), s(""), 0, r4, 0, Some(s("1"))),
        ]
    );
    let r5 = check_header(
        f.put("w/c", "3", None).await.expect("put").header(),
        follower,
    );
    let live = events_until(&mut stream, id, r5).await;
    assert_eq!(live, vec![(true, s("w/c"), s("3"), r5, r5, 1, None)]);

    // A progress request: a response carrying the current revision and no events.
    stream.request_progress().await.expect("progress request");
    let progress = loop {
        let response = next(&mut stream).await;
        if response.events().is_empty() && !response.created() && !response.canceled() {
            break response;
        }
    };
    assert!(check_header(progress.header(), follower) >= r5);

    // A second watcher on the same stream, filtering puts out: a new id, only deletes.
    stream
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_filters([WatchFilterType::NoPut]),
            ),
        )
        .await
        .expect("second watch");
    let created = next(&mut stream).await;
    assert!(created.created(), "{created:?}");
    let no_put = created.watch_id();
    assert_ne!(no_put, id, "a new watch id on the stream");
    l.put("w/d", "4", None).await.expect("put");
    let r7 = check_header(
        l.delete("w/c", None).await.expect("delete").header(),
        leader,
    );
    let mut all = Vec::new();
    let mut deletes = Vec::new();
    while all.len() < 2 || deletes.is_empty() {
        let response = next(&mut stream).await;
        let events = response.events().iter().map(seen);
        if response.watch_id() == id {
            all.extend(events);
        } else if response.watch_id() == no_put {
            deletes.extend(events);
        }
    }
    assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), [true, false]);
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!((deletes[0].0, deletes[0].4), (false, r7));

    // Cancel the first watcher: a canceled response, then nothing more for it.
    stream.cancel(id).await.expect("cancel");
    loop {
        let response = next(&mut stream).await;
        if response.watch_id() == id && response.canceled() {
            break;
        }
        assert!(response.events().is_empty(), "{response:?}");
    }
    let r8 = check_header(
        l.delete("w/d", None).await.expect("delete").header(),
        leader,
    );
    let later = events_until(&mut stream, no_put, r8).await;
    assert_eq!(later.len(), 1, "{later:?}");
    // A watcher created after a cancel gets an id of its own, never the canceled one's (a
    // response of the old watcher still on its way must not be taken for the new one's).
    let (mut fresh, first) = watch(&mut f, "w/", WatchOptions::new().with_prefix()).await;
    fresh.cancel(first).await.expect("cancel");
    assert!(next(&mut fresh).await.canceled());
    fresh
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch again");
    let created = next(&mut fresh).await;
    assert!(created.created(), "{created:?}");
    assert_ne!(created.watch_id(), first, "a canceled watch id reused");

    // A NODELETE watch on another member sees the puts only.
    let other = cluster
        .nodes
        .iter()
        .map(|n| n.id)
        .find(|id| *id != leader && *id != follower)
        .expect("a third member");
    let mut third = connect(&cluster, other).await;
    let (mut puts_only, pid) = watch(
        &mut third,
        "w/",
        WatchOptions::new()
            .with_prefix()
            .with_start_revision(r1)
            .with_filters([WatchFilterType::NoDelete]),
    )
    .await;
    let mut puts = events_until(&mut puts_only, pid, r5).await;
    puts.retain(|e| e.4 <= r5);
    assert!(puts.iter().all(|e| e.0), "{puts:?}");
    assert_eq!(puts.len(), 4, "{puts:?}");

    // Every member's watch from revision 1 sees the same events.
    let last = check_header(
        l.put("w/z", "end", None).await.expect("put").header(),
        leader,
    );
    let mut per_node = Vec::new();
    for node in &cluster.nodes {
        let mut c = connect(&cluster, node.id).await;
        let (mut s, wid) = watch(
            &mut c,
            "",
            WatchOptions::new().with_all_keys().with_start_revision(1),
        )
        .await;
        per_node.push((node.id, events_until(&mut s, wid, last).await));
    }
    assert!(per_node[0].1.len() >= 10, "{per_node:?}");
    for (id, events) in &per_node[1..] {
        assert_eq!(
            events, &per_node[0].1,
            "member {id} against {}",
            per_node[0].0
        );
    }

    // Compaction: a watch from before it is canceled with the compaction revision.
    f.compact(r3, None).await.expect("compact");
    let mut stream = f
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(r1)),
        )
        .await
        .expect("watch");
    let canceled = loop {
        let response = next(&mut stream).await;
        if response.canceled() {
            break response;
        }
        assert!(response.events().is_empty(), "{response:?}");
    };
    assert_eq!(canceled.compact_revision(), r3, "{canceled:?}");
    // From the compaction revision itself: allowed, and it starts there.
    let (mut stream, id) = watch(
        &mut l,
        "w/",
        WatchOptions::new().with_prefix().with_start_revision(r3),
    )
    .await;
    let from_r3 = events_until(&mut stream, id, r4).await;
    assert_eq!(from_r3[0].4, r3, "{from_r3:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_grant_keep_alive_through_a_follower_ttl_revoke_and_expiry() {
    let (cluster, _, follower, mut f, mut l) = start("memory").await;

    // Grants: a TTL (random id), an explicit id, and that id again (refused).
    let granted = f.lease_grant(60, None).await.expect("grant");
    check_header(granted.header(), follower);
    let (a, ttl) = (granted.id(), granted.ttl());
    assert!(a > 0);
    assert_eq!(ttl, 60);
    let explicit = l
        .lease_grant(60, Some(LeaseGrantOptions::new().with_id(0x1234)))
        .await
        .expect("grant with id");
    assert_eq!(explicit.id(), 0x1234);
    for client in [&mut f, &mut l] {
        assert_etcd_error(
            client
                .lease_grant(30, Some(LeaseGrantOptions::new().with_id(0x1234)))
                .await,
            Code::FailedPrecondition,
            "etcdserver: lease already exists",
        );
    }

    f.put("l/a", "1", Some(PutOptions::new().with_lease(a)))
        .await
        .expect("put");
    l.put("l/b", "1", Some(PutOptions::new().with_lease(a)))
        .await
        .expect("put");
    f.put("l/c", "1", Some(PutOptions::new().with_lease(0x1234)))
        .await
        .expect("put");
    let got = f.get("l/a", None).await.expect("get");
    assert_eq!(got.kvs()[0].lease(), a);

    // Time to live with keys, through either member; the list has both leases.
    for client in [&mut f, &mut l] {
        let ttl = client
            .lease_time_to_live(a, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .expect("time to live");
        assert_eq!(ttl.id(), a);
        assert_eq!(ttl.granted_ttl(), 60);
        assert!(ttl.ttl() > 0 && ttl.ttl() <= 60, "{ttl:?}");
        let mut attached: Vec<&[u8]> = ttl.keys().iter().map(Vec::as_slice).collect();
        attached.sort();
        assert_eq!(attached, [&b"l/a"[..], &b"l/b"[..]]);
        let list = client.leases().await.expect("leases");
        let mut ids: Vec<i64> = list.leases().iter().map(|s| s.id()).collect();
        ids.sort();
        let mut want = vec![a, 0x1234];
        want.sort();
        assert_eq!(ids, want);
    }

    // Revoke through the follower: the attached keys go, the other lease's stay.
    f.lease_revoke(a).await.expect("revoke");
    let got = l.get("l/", Some(prefix())).await.expect("get");
    assert_eq!(keys(got.kvs()), ["l/c"]);
    let gone = f.lease_time_to_live(a, None).await.expect("time to live");
    assert_eq!(gone.ttl(), -1);
    assert_etcd_error(f.lease_revoke(a).await, Code::NotFound, NO_LEASE);

    // A short lease kept alive through the follower well past its TTL.
    let short = f.lease_grant(2, None).await.expect("grant");
    let (s, s_ttl) = (short.id(), short.ttl());
    assert!((2..=3).contains(&s_ttl), "{short:?}");
    f.put("l/kept", "1", Some(PutOptions::new().with_lease(s)))
        .await
        .expect("put");
    let (mut keeper, mut replies) = f.lease_keep_alive(s).await.expect("keep alive");
    let kept_for = Duration::from_secs(3 * s_ttl as u64);
    let started = Instant::now();
    let mut renewals = 0;
    while started.elapsed() < kept_for {
        keeper.keep_alive().await.expect("send keep-alive");
        let reply = tokio::time::timeout(MESSAGE, replies.message())
            .await
            .expect("a keep-alive reply in time")
            .expect("keep-alive stream")
            .expect("keep-alive stream open");
        assert_eq!((reply.id(), reply.ttl()), (s, s_ttl), "{reply:?}");
        renewals += 1;
        // Renew about three times per TTL, as etcd's client does.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(renewals >= 3);
    let got = l.get("l/kept", None).await.expect("get");
    assert_eq!(got.kvs().len(), 1, "kept alive past its TTL");
    let ttl = l.lease_time_to_live(s, None).await.expect("time to live");
    assert!(ttl.ttl() > 0, "{ttl:?}");

    // Stop renewing: the lease expires and its key is deleted on every member.
    drop(keeper);
    drop(replies);
    for node in &cluster.nodes {
        let c = connect(&cluster, node.id).await;
        wait_serializable(&cluster, &c, "l/kept", None).await;
    }
    let gone = l.lease_time_to_live(s, None).await.expect("time to live");
    assert_eq!(gone.ttl(), -1);
    let list = f.leases().await.expect("leases");
    assert_eq!(
        list.leases().iter().map(|s| s.id()).collect::<Vec<_>>(),
        [0x1234]
    );

    // A keep-alive of an unknown lease: the crate reports it not found (a TTL of 0).
    match f.lease_keep_alive(s).await {
        Err(etcd_client::Error::LeaseKeepAliveError(e)) => assert!(e.contains("not found")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_with_two_contenders() {
    let (cluster, _, _, mut f, mut l) = start("rocksdb").await;
    let lease_f = f.lease_grant(30, None).await.expect("grant").id();
    let lease_l = l.lease_grant(30, None).await.expect("grant").id();

    // Lock: the first holds it, the second waits (its key is there) until it is released.
    let held = f
        .lock("lk", Some(LockOptions::new().with_lease(lease_f)))
        .await
        .expect("lock");
    let mut second = l.clone();
    let waiting = tokio::spawn(async move {
        second
            .lock("lk", Some(LockOptions::new().with_lease(lease_l)))
            .await
    });
    let mut probe = f.clone();
    wait_for_keys(&cluster, &probe, "lk", 2).await;
    assert!(!waiting.is_finished(), "the second contender must wait");
    f.unlock(held.key()).await.expect("unlock");
    let second = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the second contender gets the lock")
        .expect("task")
        .expect("lock");
    assert_ne!(second.key(), held.key());
    l.unlock(second.key()).await.expect("unlock");

    // Election: the first campaigner leads, the second waits until the first resigns.
    let won = f.campaign("el", "one", lease_f).await.expect("campaign");
    let first = won.leader().expect("leader key").clone();
    let mut other = l.clone();
    let campaigning = tokio::spawn(async move { other.campaign("el", "two", lease_l).await });
    wait_for_keys(&cluster, &probe, "el", 2).await;
    let now = probe.leader("el").await.expect("leader");
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"one"[..]));
    assert!(!campaigning.is_finished());
    f.resign(Some(etcd_client::ResignOptions::new().with_leader(first)))
        .await
        .expect("resign");
    tokio::time::timeout(WAIT, campaigning)
        .await
        .expect("the second campaigner wins")
        .expect("task")
        .expect("campaign");
    let now = probe.leader("el").await.expect("leader");
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"two"[..]));
}

/// A contender's key, as etcd names it: the prefix and the lease id in hex.
fn contender_key(name: &str, lease: i64) -> String {
    format!("{name}/{lease:x}")
}

/// Waits until `prefix` holds exactly the keys `keys` (in any order).
async fn wait_for_exact_keys(
    cluster: &ProcessCluster,
    client: &Client,
    prefix: &str,
    keys: &[String],
) {
    cluster
        .wait(&format!("keys under {prefix} to be {keys:?}"), WAIT, || {
            let mut c = client.clone();
            async move {
                let got = c
                    .get(
                        prefix,
                        Some(GetOptions::new().with_prefix().with_keys_only()),
                    )
                    .await
                    .ok()?;
                let found: Vec<String> = got
                    .kvs()
                    .iter()
                    .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                    .collect();
                let mut wanted = keys.to_vec();
                wanted.sort();
                (found == wanted).then_some(())
            }
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_waiters_take_over_from_a_revoked_holder_and_cancel_cleanly() {
    let (cluster, _, _, mut f, l) = start("memory").await;
    let holder = f.lease_grant(30, None).await.expect("grant").id();
    let waiter = f.lease_grant(30, None).await.expect("grant").id();
    let quitter = f.lease_grant(30, None).await.expect("grant").id();

    // Through the follower: the holder's key is `name/<lease hex>`, answered at once.
    let held = f
        .lock("rv", Some(LockOptions::new().with_lease(holder)))
        .await
        .expect("lock");
    assert_eq!(held.key(), contender_key("rv", holder).as_bytes());
    assert!(held.header().is_some_and(|h| h.revision() > 0));

    // The holder's lease is revoked (as when it expires): the waiter gets the lock.
    let mut second = l.clone();
    let waiting = tokio::spawn(async move {
        second
            .lock("rv", Some(LockOptions::new().with_lease(waiter)))
            .await
    });
    wait_for_keys(&cluster, &f, "rv", 2).await;
    assert!(
        !waiting.is_finished(),
        "the waiter must wait for the holder"
    );
    f.lease_revoke(holder).await.expect("revoke");
    let got = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiter gets the lock once the holder's lease is revoked")
        .expect("task")
        .expect("lock");
    assert_eq!(got.key(), contender_key("rv", waiter).as_bytes());

    // A waiter whose client gives up leaves no key behind (etcd deletes it on cancel).
    let mut third = f.clone();
    let quitting = tokio::spawn(async move {
        third
            .lock("rv", Some(LockOptions::new().with_lease(quitter)))
            .await
    });
    wait_for_keys(&cluster, &f, "rv", 2).await;
    quitting.abort();
    wait_for_exact_keys(&cluster, &f, "rv", &[contender_key("rv", waiter)]).await;

    // An unknown lease is etcd's error; no lease at all gets a session lease of etcd's 60 s.
    let unknown = f
        .lock("rv", Some(LockOptions::new().with_lease(0x7777)))
        .await;
    let s = status(unknown);
    assert_eq!((s.code(), s.message()), (Code::NotFound, NO_LEASE));
    let mut free = f.clone();
    let own = free.lock("own", None).await.expect("lock without a lease");
    let kv = f.get(own.key(), None).await.expect("get");
    let lease = kv.kvs()[0].lease();
    assert_ne!(lease, 0);
    assert_eq!(own.key(), contender_key("own", lease).as_bytes());
    let ttl = f
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 60);
    f.unlock(own.key()).await.expect("unlock");
    let gone = f.get(own.key(), None).await.expect("get");
    assert!(gone.kvs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_leader_observe_proclaim_and_resign() {
    let (cluster, _, _, mut f, mut l) = start("memory").await;
    let a = l.lease_grant(30, None).await.expect("grant").id();
    let b = l.lease_grant(30, None).await.expect("grant").id();
    let c = l.lease_grant(30, None).await.expect("grant").id();

    // No candidate: etcd's error, code UNKNOWN as etcd's server answers it.
    let s = status(f.leader("ev").await);
    assert_eq!((s.code(), s.message()), (Code::Unknown, NO_ELECTION_LEADER));

    // An observer on the follower, before anyone campaigns, sees the first leader.
    let mut observer = f.observe("ev").await.expect("observe");
    let won = l.campaign("ev", "a1", a).await.expect("campaign");
    let a_key = won.leader().expect("leader key").clone();
    assert_eq!(a_key.key(), contender_key("ev", a).as_bytes());
    assert_eq!(a_key.name(), b"ev");
    assert_eq!(a_key.lease(), a);
    assert!(a_key.rev() > 0);
    let seen = observe_next(&mut observer).await;
    assert_eq!(seen, (contender_key("ev", a), "a1".to_string()));

    // Proclaim changes the leader's value; Leader and Observe see it.
    l.proclaim(
        "a2",
        Some(ProclaimOptions::new().with_leader(a_key.clone())),
    )
    .await
    .expect("proclaim");
    assert_eq!(observe_next(&mut observer).await.1, "a2");
    let now = f.leader("ev").await.expect("leader");
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"a2"[..]));

    // A second candidate waits; a third gives up while waiting and leaves no key.
    let mut second = f.clone();
    let campaigning = tokio::spawn(async move { second.campaign("ev", "b1", b).await });
    let mut third = f.clone();
    let quitting = tokio::spawn(async move { third.campaign("ev", "c1", c).await });
    wait_for_keys(&cluster, &f, "ev", 3).await;
    quitting.abort();
    wait_for_exact_keys(
        &cluster,
        &f,
        "ev",
        &[contender_key("ev", a), contender_key("ev", b)],
    )
    .await;
    assert!(!campaigning.is_finished());

    // The leader resigns: the second candidate leads, and the observer sees the change.
    l.resign(Some(ResignOptions::new().with_leader(a_key.clone())))
        .await
        .expect("resign");
    let b_won = tokio::time::timeout(WAIT, campaigning)
        .await
        .expect("the second candidate wins")
        .expect("task")
        .expect("campaign");
    assert_eq!(
        b_won.leader().map(|k| k.key().to_vec()),
        Some(contender_key("ev", b).into_bytes())
    );
    assert_eq!(
        observe_next(&mut observer).await,
        (contender_key("ev", b), "b1".to_string())
    );

    // The resigned leader can no longer proclaim; resigning again changes nothing.
    let s = status(
        l.proclaim(
            "a3",
            Some(ProclaimOptions::new().with_leader(a_key.clone())),
        )
        .await,
    );
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unknown, NOT_ELECTION_LEADER)
    );
    l.resign(Some(ResignOptions::new().with_leader(a_key)))
        .await
        .expect("a second resign is harmless");
    let now = l.leader("ev").await.expect("leader");
    assert_eq!(now.kv().map(|kv| kv.value()), Some(&b"b1"[..]));

    // A campaign with an unknown lease: etcd's error.
    let s = status(l.campaign("ev", "x", 0x7777).await);
    assert_eq!((s.code(), s.message()), (Code::NotFound, NO_LEASE));
}

/// The next leader an Observe stream reports: its key and value.
async fn observe_next(stream: &mut etcd_client::ObserveStream) -> (String, String) {
    let response = tokio::time::timeout(MESSAGE, stream.message())
        .await
        .expect("an observe message in time")
        .expect("observe stream")
        .expect("the stream goes on");
    let kv = response.kv().expect("the leader's key-value");
    (
        String::from_utf8_lossy(kv.key()).into_owned(),
        String::from_utf8_lossy(kv.value()).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_of_a_long_history_goes_in_steps_and_answers_as_one() {
    let (cluster, _leader, follower, mut f, l) = start("rocksdb").await;
    // More revisions than one compaction command covers (compactor::MAX_STEP, 10000): 32
    // writers putting one key each, 400 times.
    let mut writers = Vec::new();
    for w in 0..32 {
        let mut client = l.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..400 {
                client
                    .put(format!("long/{w:02}"), format!("{i}"), None)
                    .await
                    .expect("put");
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let current = check_header(
        f.get("long/", Some(prefix())).await.expect("get").header(),
        follower,
    );
    assert!(current > 12_800, "one revision per put: {current}");
    let target = current - 100;
    let before = f
        .get("long/", Some(prefix().with_revision(target)))
        .await
        .expect("read at the target before compacting");

    // etcd's `physical`: answered once the follower's engine no longer holds what it removes.
    let compacted = f
        .compact(target, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    assert!(check_header(compacted.header(), follower) >= current);
    // As one compaction: below the target is gone, the target reads as before, and the same
    // compaction again is refused.
    assert_etcd_error(
        f.get("long/00", Some(GetOptions::new().with_revision(target - 1)))
            .await,
        Code::OutOfRange,
        COMPACTED,
    );
    let after = f
        .get("long/", Some(prefix().with_revision(target)))
        .await
        .expect("read at the compacted revision");
    assert_eq!(after.count(), 32);
    let listed = |kvs: &[etcd_client::KeyValue]| -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
        kvs.iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                    kv.version(),
                )
            })
            .collect()
    };
    assert_eq!(listed(after.kvs()), listed(before.kvs()));
    assert_etcd_error(f.compact(target, None).await, Code::OutOfRange, COMPACTED);
    // The follower's sweep removed the superseded versions, and has nothing left to do (it may
    // be sweeping an automatic compaction still: wait for an idle moment).
    let metrics_addr = cluster.node(follower).metrics_addr.clone();
    rskv_testkit::wait_for(
        "the follower's sweep to be idle",
        Duration::from_secs(10),
        || {
            let metrics_addr = metrics_addr.clone();
            async move {
                let (_, text) = rskv_testkit::http_get(&metrics_addr, "/metrics").await?;
                let removed =
                    rskv_testkit::metric_value(&text, "rskv_history_swept_records_total", "");
                let backlog =
                    rskv_testkit::metric_value(&text, "rskv_history_sweep_backlog_revisions", "");
                (removed > 12_000.0 && backlog == 0.0).then_some(())
            }
        },
    )
    .await;
    // Every member hashes the same history at the same revision, its sweep of what the
    // compaction removes finished or not.
    let mut hashes = Vec::new();
    for node in &cluster.nodes {
        let client = connect(&cluster, node.id).await;
        let hash = rskv_testkit::wait_for(
            &format!("node {}'s HashKV at {current}", node.id),
            Duration::from_secs(10),
            || {
                let mut client = client.clone();
                async move {
                    let r = client.hash_kv(current).await.ok()?;
                    (r.compact_version() == target).then(|| r.hash())
                }
            },
        )
        .await;
        hashes.push(hash);
    }
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members' HashKV at {current}: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_user_should_be_held_to_its_roles_through_a_follower() {
    let (cluster, leader, follower, f, _l) = start("memory").await;
    // Root enables auth through the crate's Auth client.
    let mut admin = f.auth_client();
    admin.user_add("root", "rootpw", None).await.expect("root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("root role");
    admin.role_add("writer").await.expect("role");
    admin
        .role_grant_permission(
            "writer",
            etcd_client::Permission::read_write("w/").with_prefix(),
        )
        .await
        .expect("grant");
    admin.user_add("bob", "bobpw", None).await.expect("bob");
    admin
        .user_grant_role("bob", "writer")
        .await
        .expect("bob's role");
    admin.auth_enable().await.expect("enable");

    // Without a user the crate's client is refused; with one it authenticates (Authenticate,
    // then the token on every call) and is held to its role, through a follower and the leader.
    let mut anonymous = connect(&cluster, follower).await;
    assert_etcd_error(
        anonymous.put("w/1", "x", None).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    for id in [follower, leader] {
        let options = ConnectOptions::new()
            .with_user("bob", "bobpw")
            .with_timeout(Duration::from_secs(15));
        let mut bob = Client::connect([cluster.node(id).addr.as_str()], Some(options))
            .await
            .expect("bob authenticates");
        let put = bob
            .put("w/1", format!("from {id}"), None)
            .await
            .expect("put");
        check_header(put.header(), id);
        let got = bob.get("w/1", None).await.expect("get");
        assert_eq!(got.kvs()[0].value(), format!("from {id}").as_bytes());
        assert_etcd_error(
            bob.get("other", None).await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
        assert_etcd_error(
            bob.compact(1, None).await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
        // etcd's Lock and Election services run their recipes as bob: on names under his
        // prefix, and only there.
        let lease = bob.lease_grant(30, None).await.expect("lease").id();
        let held = bob
            .lock("w/lock", Some(LockOptions::new().with_lease(lease)))
            .await
            .expect("bob locks under w/");
        assert!(held.key().starts_with(b"w/lock/"), "{held:?}");
        bob.unlock(held.key()).await.expect("unlock");
        assert_etcd_error(
            bob.lock("other", Some(LockOptions::new().with_lease(lease)))
                .await,
            Code::PermissionDenied,
            "etcdserver: permission denied",
        );
        let won = bob
            .campaign("w/el", format!("from {id}"), lease)
            .await
            .expect("bob campaigns under w/");
        let leader_key = won.leader().expect("leadership").clone();
        bob.resign(Some(ResignOptions::new().with_leader(leader_key)))
            .await
            .expect("resign");
        bob.lease_revoke(lease).await.expect("revoke");
    }
    // An Observe whose read is refused midway ends as etcd's does: without an error.
    let with = |user: &str, password: &str| {
        Client::connect(
            [cluster.node(follower).addr.as_str()],
            Some(ConnectOptions::new().with_user(user, password)),
        )
    };
    let mut bob = with("bob", "bobpw").await.expect("bob connects");
    let mut root = with("root", "rootpw").await.expect("root connects");
    let lease = bob.lease_grant(30, None).await.expect("lease").id();
    let mut observer = bob.observe("w/obs").await.expect("bob observes");
    bob.campaign("w/obs", "bob leads", lease)
        .await
        .expect("bob campaigns");
    assert_eq!(observe_next(&mut observer).await.1, "bob leads");
    root.role_revoke_permission(
        "writer",
        "w/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .expect("revoke the writer's permission");
    // The leader's lease ends: the observer reads the next leader as bob, and is refused.
    root.lease_revoke(lease)
        .await
        .expect("root revokes bob's lease");
    let end = tokio::time::timeout(MESSAGE, observer.message())
        .await
        .expect("the observe stream ends in time");
    assert!(matches!(end, Ok(None)), "ends without an error: {end:?}");
    let refused = Client::connect(
        [cluster.node(follower).addr.as_str()],
        Some(ConnectOptions::new().with_user("bob", "wrong")),
    )
    .await;
    assert!(
        refused.is_err_and(|e| e.to_string().contains("authentication failed")),
        "a wrong password is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_a_follower_is_read_there_at_once() {
    // etcd's member waits for its own apply before it answers a write; a follower that forwards
    // one must too, or a serializable read right after it can miss the client's own write. Many
    // writers at once, so the follower's apply lags as under load.
    let (_cluster, _leader, _follower, f, _l) = start("memory").await;
    let writers = (0..32).map(|w| {
        let mut f = f.clone();
        tokio::spawn(async move {
            let key = format!("ryw/{w}");
            let serializable = || Some(GetOptions::new().with_serializable());
            for i in 0..20 {
                let value = format!("v{i}");
                let put = f
                    .put(key.as_str(), value.as_str(), None)
                    .await
                    .expect("put");
                let revision = put.header().expect("header").revision();
                let got = f.get(key.as_str(), serializable()).await.expect("get");
                let kv = got.kvs().first().map(|kv| (kv.value(), kv.mod_revision()));
                assert_eq!(
                    kv,
                    Some((value.as_bytes(), revision)),
                    "{key} round {i}: the follower answered before applying its forwarded write"
                );
            }
            f.delete(key.as_str(), None).await.expect("delete");
            let got = f.get(key.as_str(), serializable()).await.expect("get");
            assert!(
                got.kvs().is_empty(),
                "{key}: a forwarded delete is seen at once"
            );
        })
    });
    for writer in futures::future::join_all(writers).await {
        writer.expect("writer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nospace_alarm_is_replicated_and_stops_puts_until_disarmed() {
    use etcd_client::AlarmAction;
    use etcd_client::AlarmOptions;
    use etcd_client::AlarmType;
    let (cluster, leader, follower, mut f, mut l) = start("rocksdb").await;
    f.put("a", "1", None).await.expect("put");
    let on = |member| {
        let mut options = AlarmOptions::new();
        options.with_member(member);
        Some(options)
    };
    // Raised through a follower (forwarded to the leader, replicated): every member lists it.
    let raised = f
        .alarm(AlarmAction::Activate, AlarmType::Nospace, on(follower))
        .await
        .expect("activate");
    assert_eq!(raised.alarms().len(), 1);
    for id in [leader, follower] {
        let cluster = &cluster;
        let listed = cluster
            .wait(
                &format!("node {id} to list the alarm"),
                WAIT,
                || async move {
                    let mut c = connect(cluster, id).await;
                    let r = c
                        .alarm(AlarmAction::Get, AlarmType::None, None)
                        .await
                        .ok()?;
                    let first = r.alarms().first()?;
                    (r.alarms().len() == 1).then(|| (first.member_id(), first.alarm()))
                },
            )
            .await;
        assert_eq!(listed, (follower, AlarmType::Nospace));
    }
    // Puts, transactions that put and lease grants are refused with etcd's error; reads and
    // deletes go on.
    const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
    for client in [&mut f, &mut l] {
        assert_etcd_error(
            client.put("b", "1", None).await,
            Code::ResourceExhausted,
            NO_SPACE,
        );
        assert_etcd_error(
            client.lease_grant(30, None).await,
            Code::ResourceExhausted,
            NO_SPACE,
        );
    }
    let txn = Txn::new().and_then([TxnOp::put("c", "1", None)]);
    assert_etcd_error(f.txn(txn).await, Code::ResourceExhausted, NO_SPACE);
    let got = f.get("a", None).await.expect("get");
    assert_eq!(got.kvs()[0].value(), b"1");
    f.delete("a", None).await.expect("a delete frees space");
    // rskv's own API is held to it too.
    let native = cluster.client().put("n", "1").await;
    assert!(
        native
            .as_ref()
            .is_err_and(|e| e.to_string().contains("database space exceeded")),
        "{native:?}"
    );
    // Disarmed (through the leader), writes go through again.
    let cleared = l
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, on(follower))
        .await
        .expect("deactivate");
    assert_eq!(cleared.alarms().len(), 1);
    cluster
        .wait("the follower to take puts again", WAIT, || {
            let mut f = f.clone();
            async move { f.put("b", "2", None).await.ok() }
        })
        .await;
    let listed = l
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("list");
    assert!(listed.alarms().is_empty());
}
