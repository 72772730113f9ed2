//! A data directory written by the current formats, checked in
//! (`tests/fixtures/format-v1/`), opened by today's code.
//!
//! The fixture is what a node of this version leaves on disk: a Raft log (log store format 1)
//! with a purged prefix, a vote and a commit marker; a RocksDB state machine (format 1) with data,
//! a client session and its applied state; and a snapshot file (format 3). The test copies it to
//! a temporary directory (RocksDB never writes to the fixture) and checks every record reads back
//! exactly as [`fixture_log`] and the expectations below say.
//!
//! **When a format changes**, this test fails until the change ships either a migration (the
//! new code reads this fixture: keep the test, and add a fixture of the new version) or a
//! deliberate refusal (turn this test into one that asserts the refusal message). Never
//! regenerate this fixture to make the test pass: it stands for data already on disks.
//!
//! Regenerating is for a new version only: bump the versions in
//! `crates/storage/src/format/version.rs` (and `SNAPSHOT_VERSION` in `snapshot.rs`), point
//! [`FIXTURE`] at a new `format-vN` directory, and run
//! `cargo test -p rskv-storage --test format_fixture -- --ignored write_fixture`.
//! The generator refuses to overwrite an existing fixture.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
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
use rskv_storage::events::EventBus;
use rskv_storage::format::version;
use rskv_storage::memory::MemoryEngine;
use rskv_storage::rocks::RocksEngine;
use rskv_storage::snapshot::SNAPSHOT_VERSION;
use rskv_storage::state_machine::sessions::Admission;
use rskv_storage::state_machine::sessions::SessionTable;
use rskv_storage::state_machine::Keyspace;
use rskv_storage::types::Command;
use rskv_storage::types::Entry;
use rskv_storage::types::LogId;
use rskv_storage::types::Membership;
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
use rskv_testkit::fs::copy_dir;

/// The fixture directory, laid out as a node's data directory.
const FIXTURE: &str = "tests/fixtures/format-v1";
/// The versions it was written with.
const LOG_STORE_VERSION: u32 = 1;
const STATE_MACHINE_VERSION: u32 = 1;
const SNAPSHOT_FILE_VERSION: u8 = 3;

/// The session clock of the fixture's log: 2025-12-06, Unix milliseconds.
const NOW_MS: u64 = 1_765_000_000_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
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

/// The whole log the fixture was written from: an initial membership, a leader's blank entry, a
/// joint membership change with a learner, a new term, and every kind of command (with and
/// without sessions). Index 0 is purged in the fixture's log store.
fn fixture_log() -> Vec<Entry> {
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
    log.extend(
        commands
            .into_iter()
            .zip(5..)
            .map(|(c, index)| Entry::new_normal(log_id(2, 1, index), c)),
    );
    log
}

fn last_log_id() -> LogId {
    log_id(2, 1, 13)
}

fn vote() -> Vote {
    Vote::new_committed(2, 1)
}

/// The membership as of the end of the log.
fn last_membership() -> StoredMembership {
    StoredMembership::new(Some(log_id(1, 1, 3)), membership(&[&[1, 2, 3]], 4))
}

/// Client data after the whole log is applied.
fn expected_data() -> Vec<(Bytes, Bytes)> {
    [("c", "33"), ("d", "4"), ("e", "5"), ("x", "10")]
        .into_iter()
        .map(|(k, v)| (b(k), b(v)))
        .collect()
}

async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    let (tx, rx) = TypeConfig::oneshot();
    store
        .append(entries, IOFlushed::signal(tx))
        .await
        .expect("append");
    rx.await.expect("callback").expect("flushed");
}

async fn state_machine(engine: Arc<dyn KvEngine>, snapshots: &Path) -> StateMachine {
    let events = Arc::new(EventBus::new(16, 1 << 20, 16));
    StateMachine::open(engine, snapshots, events, SnapshotTrigger::new(0))
        .await
        .expect("open state machine")
}

async fn apply(sm: &mut StateMachine, entries: &[Entry]) {
    let batch = entries.iter().cloned().map(|e| Ok((e, None)));
    sm.apply(futures::stream::iter(batch)).await.expect("apply");
}

/// The fixture, copied where RocksDB may write.
fn fixture_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&fixture_dir(), dir.path());
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
fn fixture_should_be_of_the_versions_this_rskv_writes() {
    let dir = fixture_copy();
    assert_eq!(
        recorded_version(&dir.path().join("raft_log"), version::LOG_STORE.meta_cf),
        LOG_STORE_VERSION.to_string()
    );
    assert_eq!(
        recorded_version(
            &dir.path().join("state_machine"),
            version::STATE_MACHINE.meta_cf
        ),
        STATE_MACHINE_VERSION.to_string()
    );
    let snapshot = std::fs::read(dir.path().join("snapshots/snapshot.bin")).expect("snapshot");
    assert_eq!(&snapshot[..8], b"RSKVSNP3");
    // A version bump without a new fixture (and a decision about this one) fails here.
    assert_eq!(version::LOG_STORE.version, LOG_STORE_VERSION);
    assert_eq!(version::STATE_MACHINE.version, STATE_MACHINE_VERSION);
    assert_eq!(SNAPSHOT_VERSION, SNAPSHOT_FILE_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_log_store_should_read_back_exactly() {
    let dir = fixture_copy();
    let log_dir = dir.path().join("raft_log");
    let mut store = LogStore::open(&log_dir).expect("open the fixture's log store");
    let state = store.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(0, 0, 0)));
    assert_eq!(state.last_log_id, Some(last_log_id()));
    let mut reader = store.get_log_reader().await;
    let entries = reader.try_get_log_entries(..).await.expect("entries");
    assert_eq!(entries, fixture_log()[1..].to_vec());
    assert_eq!(reader.read_vote().await.expect("vote"), Some(vote()));
    assert_eq!(
        store.read_committed().await.expect("committed"),
        Some(last_log_id())
    );
    // And it goes on from there: the next entry is stored and read back after a reopen.
    let next = Entry::new_blank(log_id(3, 2, 14));
    append(&mut store, vec![next.clone()]).await;
    drop((reader, store));
    let mut store = LogStore::open(&log_dir).expect("reopen");
    let mut reader = store.get_log_reader().await;
    assert_eq!(
        reader.try_get_log_entries(13..).await.expect("entries"),
        vec![fixture_log()[13].clone(), next]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_state_machine_should_read_back_exactly() {
    let dir = fixture_copy();
    let engine = Arc::new(RocksEngine::open(&dir.path().join("state_machine")).expect("open"));
    let expected_state = AppliedState {
        last_applied: Some(last_log_id()),
        membership: last_membership(),
    };
    assert_eq!(engine.applied_state().expect("state"), expected_state);
    assert_eq!(engine.scan(b"", None, 100).expect("scan"), expected_data());
    // The session table: session 1 open with its last reply kept, session 2 closed.
    let records = engine.system_records().expect("system records");
    let keys: Vec<&[u8]> = records.iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(
        keys,
        vec![&b"sessions/meta"[..], &b"sessions/s/\0\0\0\0\0\0\0\x01"[..]]
    );
    let mut table = SessionTable::load(records).expect("session table");
    assert_eq!(table.len(), 1);
    assert!(
        matches!(table.admit(1, 2, 2, NOW_MS + 4_000), Admission::Replay(_)),
        "the CAS of session 1 (seq 2) is answered from its stored reply"
    );
    assert_eq!(
        table.admit(2, 1, 1, NOW_MS + 4_000),
        Admission::Refuse(SessionRefusal::Expired { id: 2 })
    );
    // The state machine opens on it (with the snapshot file beside it) and applies on.
    let mut sm = state_machine(engine.clone(), &dir.path().join("snapshots")).await;
    assert_eq!(sm.open_sessions(), 1);
    let (applied, membership) = sm.applied_state().await.expect("applied");
    assert_eq!(
        (applied, membership),
        (Some(last_log_id()), last_membership())
    );
    apply(
        &mut sm,
        &[Entry::new_normal(
            log_id(3, 2, 14),
            Command::Delete {
                key: b("x"),
                session: None,
            },
        )],
    )
    .await;
    assert_eq!(engine.get(b"x").expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_snapshot_should_read_back_exactly() {
    let dir = fixture_copy();
    let file = SnapshotFile::open(&dir.path().join("snapshots/snapshot.bin")).expect("open");
    let meta = file.read_meta().expect("snapshot header");
    assert_eq!(meta.last_log_id, Some(last_log_id()));
    assert_eq!(meta.last_membership, last_membership());
    let records = file
        .reader()
        .expect("reader")
        .collect::<std::io::Result<Vec<_>>>()
        .expect("records");
    let data: Vec<(Bytes, Bytes)> = records
        .iter()
        .filter(|r| r.space == Keyspace::Data)
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect();
    assert_eq!(data, expected_data());
    // The same session records as the state machine store: one engine applied what the other did.
    let engine = RocksEngine::open(&dir.path().join("state_machine")).expect("open");
    let system: Vec<(Bytes, Bytes)> = records
        .iter()
        .filter(|r| r.space == Keyspace::System)
        .map(|r| (r.key.clone(), r.value.clone()))
        .collect();
    assert_eq!(system, engine.system_records().expect("system"));
    // A memory engine restores itself from it, as after a restart.
    let memory = Arc::new(MemoryEngine::new());
    let _sm = state_machine(memory.clone(), &dir.path().join("snapshots")).await;
    assert_eq!(memory.scan(b"", None, 100).expect("scan"), expected_data());
    assert_eq!(
        memory.applied_state().expect("state").last_applied,
        Some(last_log_id())
    );
}

/// Writes the fixture (see the module doc: only for a new format version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes tests/fixtures/format-vN; run by hand when a format version changes"]
async fn write_fixture() {
    let out = fixture_dir();
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
    {
        let engine =
            Arc::new(RocksEngine::open(&work.path().join("state_machine")).expect("state machine"));
        let mut sm = state_machine(engine.clone(), &work.path().join("unused-snapshots")).await;
        apply(&mut sm, &log).await;
        engine.sync().expect("flush");
    }
    {
        let memory = Arc::new(MemoryEngine::new());
        let mut sm = state_machine(memory, &work.path().join("snapshots")).await;
        apply(&mut sm, &log).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
    }
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
