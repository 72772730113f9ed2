//! Data directories written by rskv's formats, checked in (`tests/fixtures/format-vN/`), opened
//! by today's code.
//!
//! `format-v2/` ([`FIXTURE`]) is what a node of this version leaves on disk: a Raft log (log
//! store format 1) with a purged prefix, a vote and a commit marker, holding every kind of
//! command; a RocksDB state machine (format 2, the multi-version store) with every keyspace in
//! use (several revisions of keys, deletions, a compaction, a lease with a key attached, client
//! sessions) and its applied state; and a snapshot file (format 4). The tests copy it to a
//! temporary directory (RocksDB never writes to the fixture) and check every record reads back
//! exactly as [`fixture_log`] and the expectations below say.
//!
//! `format-v1/` ([`V1`]) is what the previous version left: its Raft log is still log store
//! format 1 and must still read back exactly; its state machine (format 1) and snapshot
//! (`RSKVSNP3`) have no migration and must be refused, saying why, with every file untouched.
//!
//! **When a format changes**, these tests fail until the change ships either a migration (the
//! new code reads the fixture: keep its test, and add a fixture of the new version) or a
//! deliberate refusal (turn its test into one that asserts the refusal message). Never
//! regenerate a fixture to make a test pass: it stands for data already on disks.
//!
//! Regenerating is for a new version only: bump the versions in
//! `crates/storage/src/format/version.rs` (and `SNAPSHOT_VERSION` in `snapshot.rs`), point
//! [`FIXTURE`] at a new `format-vN` directory (keeping the old one's tests, as `format-v1`'s are
//! kept here), and run
//! `cargo test -p rskv-storage --test format_fixture -- --ignored write_fixture`.
//! The generator refuses to overwrite an existing fixture.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;
use openraft::type_config::TypeConfigExt;
use openraft::RaftLogReader;
use openraft::RaftSnapshotBuilder;
use prost::Message;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::compare::CompareResult;
use rskv_proto::etcd::etcdserverpb::compare::CompareTarget;
use rskv_proto::etcd::etcdserverpb::compare::TargetUnion;
use rskv_proto::etcd::etcdserverpb::request_op::Request;
use rskv_proto::etcd::mvccpb;
use rskv_storage::events::EventBus;
use rskv_storage::format::version;
use rskv_storage::format::version::VersionError;
use rskv_storage::memory::MemoryEngine;
use rskv_storage::mvcc;
use rskv_storage::mvcc::Change;
use rskv_storage::mvcc::KeyVersion;
use rskv_storage::mvcc::MvccMeta;
use rskv_storage::mvcc::Rev;
use rskv_storage::rocks::RocksEngine;
use rskv_storage::snapshot::SNAPSHOT_VERSION;
use rskv_storage::state_machine::sessions::Admission;
use rskv_storage::state_machine::sessions::SessionTable;
use rskv_storage::state_machine::Keyspace;
use rskv_storage::types::Command;
use rskv_storage::types::Entry;
use rskv_storage::types::LogId;
use rskv_storage::types::Membership;
use rskv_storage::types::MvccError;
use rskv_storage::types::NodeInfo;
use rskv_storage::types::SessionRefusal;
use rskv_storage::types::SessionStamp;
use rskv_storage::types::StoredMembership;
use rskv_storage::types::TypeConfig;
use rskv_storage::types::Vote;
use rskv_storage::AppliedState;
use rskv_storage::KvEngine;
use rskv_storage::LogStore;
use rskv_storage::SnapshotFile;
use rskv_storage::SnapshotTrigger;
use rskv_storage::StateMachine;
use rskv_testkit::etcd::compare;
use rskv_testkit::fs::contents;
use rskv_testkit::fs::copy_dir;

/// The fixture of the formats this rskv writes, laid out as a node's data directory.
const FIXTURE: &str = "tests/fixtures/format-v2";
/// The versions it was written with.
const LOG_STORE_VERSION: u32 = 1;
const STATE_MACHINE_VERSION: u32 = 2;
const SNAPSHOT_FILE_VERSION: u8 = 4;

/// The previous fixture: log store 1 (still read), state machine 1 and snapshot 3 (refused).
const V1: &str = "tests/fixtures/format-v1";

/// The session clock of the fixtures' logs: 2025-12-06, Unix milliseconds.
const NOW_MS: u64 = 1_765_000_000_000;

/// The fixture's leases: the first is revoked, the second keeps key `g` attached.
const LEASE_REVOKED: i64 = 0x1a2b;
const LEASE_KEPT: i64 = 0x3c4d;

fn fixture_dir(fixture: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(fixture)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, node, index)
}

fn node(id: u64) -> (u64, NodeInfo) {
    (
        id,
        NodeInfo::new(
            format!("127.0.0.1:74{id:02}"),
            format!("127.0.0.1:75{id:02}"),
        ),
    )
}

/// Voter sets and the nodes 1..=nodes (those in no set are learners).
fn membership(configs: &[&[u64]], nodes: u64) -> Membership {
    let configs = configs
        .iter()
        .map(|c| c.iter().copied().collect::<BTreeSet<u64>>())
        .collect();
    Membership::new(configs, (1..=nodes).map(node).collect::<BTreeMap<_, _>>())
        .expect("valid membership")
}

fn stamp(id: u64, seq: u64, first_unacked: u64, now_ms: u64) -> SessionStamp {
    SessionStamp {
        id,
        seq,
        first_unacked,
        now_ms,
    }
}

/// `commands` as entries of `first`'s leader, from `first`'s index on.
fn normal_entries(first: LogId, commands: Vec<Command>) -> Vec<Entry> {
    let (term, node) = (first.leader_id.term, first.leader_id.node_id);
    commands
        .into_iter()
        .zip(first.index..)
        .map(|(c, index)| Entry::new_normal(log_id(term, node, index), c))
        .collect()
}

/// The log `format-v1` was written from: an initial membership, a leader's blank entry, a joint
/// membership change with a learner, a new term, and every kind of command of that version (with
/// and without sessions). Index 0 is purged in the fixture's log store.
fn v1_log() -> Vec<Entry> {
    let put = |key: &str, value: &str| Command::Put {
        key: b(key),
        value: b(value),
        return_prev: false,
        session: None,
    };
    let commands = vec![
        put("a", "1"),
        Command::OpenSession {
            now_ms: NOW_MS,
            ttl_ms: 60_000,
            max_sessions: 100,
        },
        Command::Put {
            key: b("x"),
            value: b("10"),
            return_prev: true,
            session: Some(stamp(1, 1, 1, NOW_MS + 1_000)),
        },
        Command::BatchPut {
            pairs: vec![(b("b"), b("2")), (b("c"), b("3"))],
            session: None,
        },
        Command::CompareAndSwap {
            key: b("c"),
            expected: Some(b("3")),
            new_value: b("33"),
            session: Some(stamp(1, 2, 2, NOW_MS + 2_000)),
        },
        Command::Delete {
            key: b("b"),
            session: None,
        },
        Command::Group {
            commands: vec![
                put("d", "4"),
                Command::Delete {
                    key: b("a"),
                    session: None,
                },
                Command::CompareAndSwap {
                    key: b("e"),
                    expected: None,
                    new_value: b("5"),
                    session: None,
                },
            ],
        },
        Command::OpenSession {
            now_ms: NOW_MS + 3_000,
            ttl_ms: 60_000,
            max_sessions: 100,
        },
        Command::CloseSession { id: 2 },
    ];
    let mut log = vec![
        Entry::new_membership(log_id(0, 0, 0), membership(&[&[1]], 1)),
        Entry::new_blank(log_id(1, 1, 1)),
        Entry::new_membership(log_id(1, 1, 2), membership(&[&[1], &[1, 2, 3]], 4)),
        Entry::new_membership(log_id(1, 1, 3), membership(&[&[1, 2, 3]], 4)),
        Entry::new_blank(log_id(2, 1, 4)),
    ];
    log.extend(normal_entries(log_id(2, 1, 5), commands));
    log
}

fn v1_last_log_id() -> LogId {
    log_id(2, 1, 13)
}

/// An etcd transaction operation.
fn op(request: Request) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(request),
    }
}

fn put_op(key: &str, value: &str, lease: i64, prev_kv: bool) -> etcd::RequestOp {
    op(Request::RequestPut(etcd::PutRequest {
        key: b(key),
        value: b(value),
        lease,
        prev_kv,
        ..Default::default()
    }))
}

fn txn(
    compare: Vec<etcd::Compare>,
    success: Vec<etcd::RequestOp>,
    failure: Vec<etcd::RequestOp>,
) -> etcd::TxnRequest {
    etcd::TxnRequest {
        compare,
        success,
        failure,
    }
}

/// The whole log `format-v2` was written from: [`v1_log`], then the commands of the
/// multi-version store: two lease grants; a transaction whose comparisons (every target, one
/// over a range) hold, running puts with leases, a range, a delete-range and a nested
/// transaction; a session write; etcd's put (a one-op transaction); a compaction; a lease revoke
/// (deleting its key); a transaction whose comparison fails, running its failure branch (a put
/// keeping value and lease).
fn fixture_log() -> Vec<Entry> {
    use CompareResult::*;
    use CompareTarget::*;
    let success = txn(
        vec![
            compare("c", Value, Equal, TargetUnion::Value(b("33"))),
            compare("x", Version, Greater, TargetUnion::Version(0)),
            compare("e", Mod, Less, TargetUnion::ModRevision(100)),
            compare("b", Create, Equal, TargetUnion::CreateRevision(0)),
            etcd::Compare {
                range_end: b("z"),
                ..compare("a", Lease, Equal, TargetUnion::Lease(0))
            },
        ],
        vec![
            put_op("f", "6", LEASE_REVOKED, true),
            put_op("g", "7", LEASE_KEPT, false),
            op(Request::RequestRange(etcd::RangeRequest {
                key: b("a"),
                range_end: b("\0"),
                limit: 2,
                sort_order: etcd::range_request::SortOrder::Descend as i32,
                sort_target: etcd::range_request::SortTarget::Mod as i32,
                ..Default::default()
            })),
            op(Request::RequestDeleteRange(etcd::DeleteRangeRequest {
                key: b("d"),
                range_end: b("e"),
                prev_kv: true,
            })),
            op(Request::RequestTxn(txn(
                vec![compare("f", Version, Equal, TargetUnion::Version(1))],
                vec![put_op("h", "8", 0, false)],
                vec![put_op("h", "0", 0, false)],
            ))),
        ],
        vec![put_op("never", "1", 0, false)],
    );
    let failure = txn(
        vec![compare("c", Value, Equal, TargetUnion::Value(b("nope")))],
        vec![put_op("never", "2", 0, false)],
        vec![
            put_op("e", "55", 0, false),
            op(Request::RequestPut(etcd::PutRequest {
                key: b("g"),
                ignore_value: true,
                ignore_lease: true,
                ..Default::default()
            })),
        ],
    );
    let commands = vec![
        Command::LeaseGrant {
            id: LEASE_REVOKED,
            ttl: 60,
        },
        Command::LeaseGrant {
            id: LEASE_KEPT,
            ttl: 30,
        },
        Command::Txn(Box::new(success)),
        Command::Put {
            key: b("x"),
            value: b("11"),
            return_prev: true,
            session: Some(stamp(1, 3, 3, NOW_MS + 5_000)),
        },
        Command::Txn(Box::new(txn(
            vec![],
            vec![put_op("c", "333", 0, true)],
            vec![],
        ))),
        Command::Compact { revision: 10 },
        Command::LeaseRevoke { id: LEASE_REVOKED },
        Command::Txn(Box::new(failure)),
    ];
    let mut log = v1_log();
    log.extend(normal_entries(log_id(2, 1, 14), commands));
    log
}

fn last_log_id() -> LogId {
    log_id(2, 1, 21)
}

fn vote() -> Vote {
    Vote::new_committed(2, 1)
}

/// The membership as of the end of either log.
fn last_membership() -> StoredMembership {
    StoredMembership::new(Some(log_id(1, 1, 3)), membership(&[&[1, 2, 3]], 4))
}

fn kv_version(
    value: &str,
    create_revision: i64,
    (mod_revision, mod_sub): (i64, u32),
    version: i64,
    lease: i64,
) -> KeyVersion {
    KeyVersion {
        create_revision,
        mod_revision,
        mod_sub,
        version,
        lease,
        value: b(value),
    }
}

/// The data keyspace after the whole log: each live key's current version.
fn expected_data() -> Vec<(Bytes, KeyVersion)> {
    [
        ("c", kv_version("333", 4, (12, 0), 3, 0)),
        ("e", kv_version("55", 9, (14, 0), 2, 0)),
        ("g", kv_version("7", 10, (14, 1), 2, LEASE_KEPT)),
        ("h", kv_version("8", 10, (10, 3), 1, 0)),
        ("x", kv_version("11", 3, (11, 0), 2, 0)),
    ]
    .into_iter()
    .map(|(k, v)| (b(k), v))
    .collect()
}

fn put_change(key: &str, value: &str, create: i64, version: i64, lease: i64) -> Change {
    Change {
        key: b(key),
        create_revision: create,
        version,
        lease,
        value: b(value),
        ..Change::default()
    }
}

fn replacing(change: Change, (prev_revision, prev_sub): (i64, u32)) -> Change {
    Change {
        prev_revision,
        prev_sub,
        ..change
    }
}

fn tombstone(key: &str, prev: (i64, u32)) -> Change {
    replacing(
        Change {
            key: b(key),
            tombstone: true,
            ..Change::default()
        },
        prev,
    )
}

/// The history keyspace after the whole log: the compaction at 10 removed every change before
/// it but each key's version as of 10 (and kept the deletion at 10 itself).
fn expected_history() -> Vec<(Rev, Change)> {
    let rev = |main, sub| Rev { main, sub };
    vec![
        (rev(3, 0), put_change("x", "10", 3, 1, 0)),
        (rev(5, 0), replacing(put_change("c", "33", 4, 2, 0), (4, 1))),
        (rev(9, 0), put_change("e", "5", 9, 1, 0)),
        (rev(10, 0), put_change("f", "6", 10, 1, LEASE_REVOKED)),
        (rev(10, 1), put_change("g", "7", 10, 1, LEASE_KEPT)),
        (rev(10, 2), tombstone("d", (7, 0))),
        (rev(10, 3), put_change("h", "8", 10, 1, 0)),
        (
            rev(11, 0),
            replacing(put_change("x", "11", 3, 2, 0), (3, 0)),
        ),
        (
            rev(12, 0),
            replacing(put_change("c", "333", 4, 3, 0), (5, 0)),
        ),
        (rev(13, 0), tombstone("f", (10, 0))),
        (
            rev(14, 0),
            replacing(put_change("e", "55", 9, 2, 0), (9, 0)),
        ),
        (
            rev(14, 1),
            replacing(put_change("g", "7", 10, 2, LEASE_KEPT), (10, 1)),
        ),
    ]
}

fn expected_meta() -> MvccMeta {
    MvccMeta {
        revision: 14,
        compact_revision: 10,
    }
}

/// Every record of a state machine, by keyspace (every keyspace present, maybe empty).
type Records = BTreeMap<Keyspace, Vec<(Bytes, Bytes)>>;

fn engine_records(engine: &dyn KvEngine) -> Records {
    Keyspace::ALL
        .into_iter()
        .map(|space| {
            let records = engine.scan_in(space, b"", None, usize::MAX).expect("scan");
            (space, records)
        })
        .collect()
}

/// Decodes each value as an `M`, which must be exactly its bytes (no field this rskv does not
/// know, none encoded otherwise than it encodes it).
fn decoded<M: Message + Default>(pairs: &[(Bytes, Bytes)]) -> Vec<(Bytes, M)> {
    pairs
        .iter()
        .map(|(key, value)| {
            let m = M::decode(value.as_ref())
                .unwrap_or_else(|e| panic!("{key:?}: {e} ({})", std::any::type_name::<M>()));
            assert_eq!(
                m.encode_to_vec(),
                value.as_ref(),
                "{key:?}: not exactly a {}",
                std::any::type_name::<M>()
            );
            (key.clone(), m)
        })
        .collect()
}

/// Checks every record of the fixture's state, in every keyspace.
fn assert_fixture_records(records: &Records) {
    assert_eq!(
        decoded::<KeyVersion>(&records[&Keyspace::Data]),
        expected_data()
    );
    let history: Vec<(Rev, Change)> = decoded::<Change>(&records[&Keyspace::History])
        .into_iter()
        .map(|(k, c)| (mvcc::parse_history_key(&k).expect("history key"), c))
        .collect();
    assert_eq!(history, expected_history());
    // The lease keyspace: the lease kept, then its key.
    let leases = &records[&Keyspace::Lease];
    assert_eq!(leases.len(), 2);
    assert_eq!(
        decoded::<mvcc::Lease>(&leases[..1]),
        vec![(
            mvcc::lease_key(LEASE_KEPT),
            mvcc::Lease {
                id: LEASE_KEPT,
                ttl: 30
            }
        )]
    );
    assert_eq!(
        leases[1],
        (mvcc::lease_key_of(LEASE_KEPT, b"g"), Bytes::new())
    );
    // The system keyspace: the revision counters, then the session table (session 1 open with
    // its last reply kept, session 2 closed).
    let system = &records[&Keyspace::System];
    let keys: Vec<&[u8]> = system.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(
        keys,
        vec![
            mvcc::META_KEY,
            &b"sessions/meta"[..],
            &b"sessions/s/\0\0\0\0\0\0\0\x01"[..]
        ]
    );
    assert_eq!(
        decoded::<MvccMeta>(&system[..1]),
        vec![(Bytes::from_static(mvcc::META_KEY), expected_meta())]
    );
    let mut table = SessionTable::load(system.clone()).expect("session table");
    assert_eq!(table.len(), 1);
    assert!(
        matches!(table.admit(1, 3, 3, NOW_MS + 6_000), Admission::Replay(_)),
        "the put of session 1 (seq 3) is answered from its stored reply"
    );
    assert_eq!(
        table.admit(2, 1, 1, NOW_MS + 6_000),
        Admission::Refuse(SessionRefusal::Expired { id: 2 })
    );
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("flushed");
}

async fn state_machine(engine: Arc<dyn KvEngine>, snapshots: &Path) -> io::Result<StateMachine> {
    let events = Arc::new(EventBus::new(16));
    StateMachine::open(engine, snapshots, events, SnapshotTrigger::new(0)).await
}

async fn apply(sm: &mut StateMachine, entries: &[Entry]) {
    let batch = entries.iter().cloned().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(batch)).await.expect("apply");
}

/// A fixture, copied where RocksDB may write.
fn fixture_copy(fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture_dir(fixture), dir.path());
    dir
}

/// A store's recorded format version, read without opening it for writing.
fn recorded_version(dir: &Path, meta_cf: &str) -> String {
    let opts = rocksdb::Options::default();
    let cfs = rocksdb::DB::list_cf(&opts, dir).expect("list");
    let db = rocksdb::DB::open_cf_for_read_only(&opts, dir, &cfs, false).expect("open");
    let meta = db.cf_handle(meta_cf).expect("meta cf");
    let value = db
        .get_cf(meta, version::VERSION_KEY)
        .expect("get")
        .expect("a version");
    String::from_utf8(value).expect("ascii")
}

#[test]
fn fixtures_should_be_of_the_versions_they_stand_for() {
    for (fixture, log_store, state_machine, magic) in [
        (
            FIXTURE,
            LOG_STORE_VERSION,
            STATE_MACHINE_VERSION,
            format!("RSKVSNP{SNAPSHOT_FILE_VERSION}"),
        ),
        (V1, 1, 1, "RSKVSNP3".to_owned()),
    ] {
        let dir = fixture_copy(fixture);
        assert_eq!(
            recorded_version(&dir.path().join("raft_log"), version::LOG_STORE.meta_cf),
            log_store.to_string()
        );
        assert_eq!(
            recorded_version(
                &dir.path().join("state_machine"),
                version::STATE_MACHINE.meta_cf
            ),
            state_machine.to_string()
        );
        let snapshot = std::fs::read(dir.path().join("snapshots/snapshot.bin")).expect("snapshot");
        assert_eq!(&snapshot[..8], magic.as_bytes(), "{fixture}");
    }
    // A version bump without a new fixture (and a decision about this one) fails here.
    assert_eq!(version::LOG_STORE.version, LOG_STORE_VERSION);
    assert_eq!(version::STATE_MACHINE.version, STATE_MACHINE_VERSION);
    assert_eq!(SNAPSHOT_VERSION, SNAPSHOT_FILE_VERSION);
}

/// Both fixtures' logs are log store format 1, which this rskv writes: each reads back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_log_stores_should_read_back_exactly() {
    for (fixture, log, last) in [
        (FIXTURE, fixture_log(), last_log_id()),
        (V1, v1_log(), v1_last_log_id()),
    ] {
        let dir = fixture_copy(fixture);
        let log_dir = dir.path().join("raft_log");
        let mut store = LogStore::open(&log_dir).expect("open the fixture's log store");
        let state = store.get_log_state().await.expect("log state");
        assert_eq!(state.last_purged_log_id, Some(log_id(0, 0, 0)));
        assert_eq!(state.last_log_id, Some(last));
        let mut reader = store.get_log_reader().await;
        let entries = reader.try_get_log_entries(..).await.expect("entries");
        assert_eq!(entries, log[1..].to_vec(), "{fixture}");
        assert_eq!(reader.read_vote().await.expect("vote"), Some(vote()));
        assert_eq!(store.read_committed().await.expect("committed"), Some(last));
        // And it goes on from there: the next entry is stored and read back after a reopen.
        let next = Entry::new_blank(log_id(3, 2, last.index + 1));
        append(&mut store, vec![next.clone()]).await;
        drop((reader, store));
        let mut store = LogStore::open(&log_dir).expect("reopen");
        let mut reader = store.get_log_reader().await;
        assert_eq!(
            reader
                .try_get_log_entries(last.index..)
                .await
                .expect("entries"),
            vec![log[last.index as usize].clone(), next]
        );
    }
}

fn kv(key: &str, v: KeyVersion) -> mvccpb::KeyValue {
    mvcc::to_etcd(b(key), &v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_state_machine_should_read_back_exactly() {
    let dir = fixture_copy(FIXTURE);
    let engine = Arc::new(RocksEngine::open(&dir.path().join("state_machine")).expect("open"));
    let expected_state = AppliedState {
        last_applied: Some(last_log_id()),
        membership: last_membership(),
    };
    assert_eq!(engine.applied_state().expect("state"), expected_state);
    assert_fixture_records(&engine_records(&*engine));
    // Written when compaction removed history in apply: no sweep record, and nothing to sweep.
    assert_eq!(mvcc::sweep::swept(&*engine).expect("sweep record"), None);
    assert!(mvcc::sweep::Pass::start(&*engine).expect("pass").is_none());
    // History reads back as the revisions it stands for: the store as of the compacted revision
    // (every change after it undone), and nothing before it.
    let source = mvcc::EngineSource::new(&*engine).expect("source");
    let everything = |revision| etcd::RangeRequest {
        key: b("a"),
        range_end: b("\0"),
        revision,
        ..Default::default()
    };
    let at_10 = mvcc::read::range(&source, &everything(10))
        .expect("range")
        .expect("readable");
    assert_eq!(
        at_10.kvs,
        vec![
            kv("c", kv_version("33", 4, (5, 0), 2, 0)),
            kv("e", kv_version("5", 9, (9, 0), 1, 0)),
            kv("f", kv_version("6", 10, (10, 0), 1, LEASE_REVOKED)),
            kv("g", kv_version("7", 10, (10, 1), 1, LEASE_KEPT)),
            kv("h", kv_version("8", 10, (10, 3), 1, 0)),
            kv("x", kv_version("10", 3, (3, 0), 1, 0)),
        ]
    );
    assert_eq!(
        mvcc::read::range(&source, &everything(9)).expect("range"),
        Err(MvccError::Compacted {
            requested: 9,
            compacted: 10
        })
    );
    // The state machine opens on it (with the snapshot file beside it) and applies on, at the
    // next revisions: a delete, then the revoke of the lease left (deleting its key).
    let mut sm = state_machine(engine.clone(), &dir.path().join("snapshots"))
        .await
        .expect("open state machine");
    assert_eq!(sm.open_sessions(), 1);
    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(
        (applied, membership),
        (Some(last_log_id()), last_membership())
    );
    let on = vec![
        Command::Delete {
            key: b("x"),
            session: None,
        },
        Command::LeaseRevoke { id: LEASE_KEPT },
    ];
    let on = normal_entries(log_id(3, 2, 22), on);
    apply(&mut sm, &on).await;
    let after = engine_records(&*engine);
    let keys: Vec<&Bytes> = after[&Keyspace::Data].iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec![&b("c"), &b("e"), &b("h")]);
    assert_eq!(after[&Keyspace::Lease], vec![]);
    assert_eq!(
        mvcc::load_meta(&*engine).expect("meta"),
        MvccMeta {
            revision: 16,
            compact_revision: 10
        }
    );
    let changes = decoded::<Change>(&after[&Keyspace::History][12..]);
    assert_eq!(
        changes,
        vec![
            (mvcc::history_key(Rev::new(15)), tombstone("x", (11, 0))),
            (mvcc::history_key(Rev::new(16)), tombstone("g", (14, 1))),
        ]
    );
}

/// A snapshot's records, by keyspace.
fn snapshot_records(file: &SnapshotFile) -> Records {
    let mut out: Records = Keyspace::ALL.into_iter().map(|s| (s, vec![])).collect();
    for record in file.reader().expect("reader") {
        let record = record.expect("record");
        out.entry(record.space)
            .or_default()
            .push((record.key, record.value));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_snapshot_should_read_back_exactly() {
    let dir = fixture_copy(FIXTURE);
    let file = SnapshotFile::open(&dir.path().join("snapshots/snapshot.bin")).expect("open");
    let meta = file.read_meta().expect("snapshot header");
    assert_eq!(meta.last_log_id, Some(last_log_id()));
    assert_eq!(meta.last_membership, last_membership());
    let records = snapshot_records(&file);
    assert_fixture_records(&records);
    // The same bytes as the state machine store, in every keyspace: the memory engine (one
    // apply batch) wrote what the RocksDB engine (several) did.
    let engine = RocksEngine::open(&dir.path().join("state_machine")).expect("open");
    assert!(records == engine_records(&engine), "snapshot != store");
    // A memory engine restores itself from it, as after a restart.
    let memory = Arc::new(MemoryEngine::new());
    let _sm = state_machine(memory.clone(), &dir.path().join("snapshots"))
        .await
        .expect("open state machine");
    assert!(records == engine_records(&*memory), "restored != snapshot");
    assert_eq!(
        memory.applied_state().expect("state").last_applied,
        Some(last_log_id())
    );
}

/// `format-v1`'s state machine (plain values, no revisions) has no migration: refused as an
/// older version, every file as it was.
#[test]
fn v1_state_machine_should_be_refused_untouched() {
    let dir = fixture_copy(V1);
    let store = dir.path().join("state_machine");
    let before = contents(&store);
    let err = RocksEngine::open(&store).map(drop).expect_err("refused");
    let expected = VersionError::Older {
        store: version::STATE_MACHINE.name,
        path: store.clone(),
        found: 1,
        supported: STATE_MACHINE_VERSION,
    };
    assert_eq!(version::version_error(&err), Some(&expected), "{err}");
    assert_eq!(err.to_string(), expected.to_string());
    assert!(err.to_string().contains("no migration"), "{err}");
    assert!(
        before == contents(&store),
        "a file was created, removed or changed"
    );
}

/// `format-v1`'s snapshot (`RSKVSNP3`) is refused, saying why, by the file reader and by a state
/// machine starting on it, and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_snapshot_should_be_refused_with_its_reason() {
    let dir = fixture_copy(V1);
    let snapshots = dir.path().join("snapshots");
    let before = contents(&snapshots);
    let reason = "snapshot file format version 3 is not read by this rskv (it reads version 4): \
                  written by an rskv from before its multi-version store";
    let file = SnapshotFile::open(&snapshots.join("snapshot.bin")).expect("open");
    let err = file.read_meta().expect_err("refused");
    assert!(err.to_string().starts_with(reason), "{err}");
    assert!(file.reader().is_err());
    let memory = Arc::new(MemoryEngine::new());
    let Err(err) = state_machine(memory.clone(), &snapshots).await else {
        panic!("a state machine started on a version 3 snapshot");
    };
    assert!(err.to_string().contains(reason), "{err}");
    assert_eq!(
        memory.applied_state().expect("state"),
        AppliedState::default()
    );
    assert!(before == contents(&snapshots), "a snapshot file changed");
}

/// Writes the fixture (see the module doc: only for a new format version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/format-vN; run by hand when a format version changes"]
async fn write_fixture() {
    let out = fixture_dir(FIXTURE);
    assert!(
        !out.exists(),
        "{} exists: a fixture stands for data on disks and is never rewritten",
        out.display()
    );
    let work = tempfile::tempdir().expect("tempdir");
    let log = fixture_log();
    {
        let mut store = LogStore::open(&work.path().join("raft_log")).expect("log store");
        store.save_vote(&vote()).await.expect("vote");
        append(&mut store, log.clone()).await;
        store
            .save_committed(Some(last_log_id()))
            .await
            .expect("committed");
        store.purge(log_id(0, 0, 0)).await.expect("purge");
    }
    // The RocksDB engine applies the log in several batches, the memory engine (which writes the
    // snapshot) in one: they must reach the same bytes.
    let rocks = Arc::new(RocksEngine::open(&work.path().join("state_machine")).expect("open"));
    {
        let mut sm = state_machine(rocks.clone(), &work.path().join("unused-snapshots"))
            .await
            .expect("state machine");
        for batch in log.chunks(4) {
            apply(&mut sm, batch).await;
        }
        // What the state machine's sweeper does in the background, done before the files are.
        mvcc::sweep::sweep_all(&*rocks).expect("sweep");
        rocks.sync().expect("flush");
    }
    {
        let memory = Arc::new(MemoryEngine::new());
        let mut sm = state_machine(memory.clone(), &work.path().join("snapshots"))
            .await
            .expect("state machine");
        apply(&mut sm, &log).await;
        mvcc::sweep::sweep_all(&*memory).expect("sweep");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert!(engine_records(&*memory) == engine_records(&*rocks));
    }
    assert_fixture_records(&engine_records(&*rocks));
    drop(rocks);
    std::fs::remove_dir_all(work.path().join("unused-snapshots")).expect("rm");
    // Few, small files: everything flushed into one table per column family, then RocksDB's
    // info logs and lock files (not data) removed.
    for store in ["raft_log", "state_machine"] {
        let dir = work.path().join(store);
        let opts = rocksdb::Options::default();
        let cfs = rocksdb::DB::list_cf(&opts, &dir).expect("list");
        let db = rocksdb::DB::open_cf(&opts, &dir, &cfs).expect("open");
        for name in &cfs {
            let cf = db.cf_handle(name).expect("cf");
            db.flush_cf(cf).expect("flush");
            db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        drop(db);
        for entry in std::fs::read_dir(&dir).expect("read") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("LOG") || name == "LOCK" {
                std::fs::remove_file(&path).expect("rm");
            }
        }
    }
    copy_dir(work.path(), &out);
    println!("fixture written to {}", out.display());
}
