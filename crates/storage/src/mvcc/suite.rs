//! One suite for the multi-version store, run against both engines through the state machine's
//! own apply path: revisions, history reads, transactions, compaction, leases, and a snapshot
//! moving all of it to another engine.

use std::sync::Arc;

use bytes::Bytes;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::compare::CompareResult;
use rskv_proto::etcd::etcdserverpb::compare::CompareTarget;
use rskv_proto::etcd::etcdserverpb::compare::TargetUnion;
use rskv_proto::etcd::etcdserverpb::request_op::Request;
use rskv_proto::etcd::etcdserverpb::response_op::Response;
use rskv_testkit::etcd::compare;

use super::index::KeyIndex;
use super::read;
use super::writer::Writer;
use super::EngineSource;
use super::Rev;
use super::Source;
use crate::memory::MemoryEngine;
use crate::rocks::RocksEngine;
use crate::state_machine::execute;
use crate::state_machine::sessions::SessionTable;
use crate::state_machine::Keyspace;
use crate::state_machine::WriteSet;
use crate::types::Command;
use crate::types::CommandResponse;
use crate::types::EtcdReply;
use crate::types::MvccError;
use crate::KvEngine;

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Applies commands one entry each, as the state machine does (one batch per call), keeping the
/// key index as the state machine does.
struct Store {
    engine: Arc<dyn KvEngine>,
    keys: KeyIndex,
    index: u64,
    auth: crate::state_machine::auth::AuthStore,
    alarms: crate::state_machine::alarms::AlarmSet,
    /// Whether each apply is followed by a sweep of what it compacted, as the state machine's
    /// sweeper soon does (without: the compacted records stay, for tests of the sweep itself).
    sweep: bool,
}

impl Store {
    fn apply(&mut self, commands: Vec<Command>) -> Vec<CommandResponse> {
        let mut writer = Writer::new(&*self.engine, &mut self.keys);
        let mut sessions = SessionTable::default();
        let mut out = Vec::new();
        for command in commands {
            self.index += 1;
            out.push(
                execute(
                    &mut writer,
                    &mut sessions,
                    crate::state_machine::Replicated {
                        auth: &self.auth,
                        alarms: &self.alarms,
                    },
                    command,
                    self.index,
                )
                .expect("execute"),
            );
        }
        let mut set = WriteSet::default();
        writer.finish(&mut set);
        self.engine.commit(set).expect("commit");
        if self.sweep {
            super::sweep::sweep_all(&*self.engine).expect("sweep");
        }
        assert_eq!(
            self.keys,
            KeyIndex::load(&*self.engine).expect("load"),
            "the index kept by apply describes what the engine holds"
        );
        out
    }

    fn one(&mut self, command: Command) -> CommandResponse {
        self.apply(vec![command]).remove(0)
    }

    fn txn(&mut self, txn: etcd::TxnRequest) -> Result<etcd::TxnResponse, MvccError> {
        match self.one(Command::Txn(Box::new(txn))).etcd {
            Some(EtcdReply::Txn(r)) => Ok(*r),
            Some(EtcdReply::Refused(e)) => Err(e),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn source(&self) -> EngineSource<'_> {
        EngineSource::new(&*self.engine).expect("source")
    }

    fn range(&self, key: &str, end: &str, revision: i64) -> Result<Vec<Listed>, MvccError> {
        let request = etcd::RangeRequest {
            key: b(key),
            range_end: b(end),
            revision,
            ..Default::default()
        };
        let answer = read::range(&self.source(), &request).expect("read");
        // What the async runtime reads (a source that never waits) answers a point read at the
        // current revision alike, and declines everything else.
        match EngineSource::now(&*self.engine).and_then(|now| read::range(&now, &request)) {
            Ok(now) => assert_eq!(
                now, answer,
                "a read now differs for {key}..{end}@{revision}"
            ),
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                assert!(
                    !end.is_empty() || revision > 0,
                    "a point read at the current revision was declined"
                );
            }
        }
        answer.map(|r| {
            r.kvs
                .into_iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        String::from_utf8_lossy(&kv.value).into_owned(),
                        kv.create_revision,
                        kv.mod_revision,
                        kv.version,
                    )
                })
                .collect()
        })
    }
}

fn put(key: &str, value: &str) -> etcd::RequestOp {
    put_lease(key, value, 0)
}

fn put_lease(key: &str, value: &str, lease: i64) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(Request::RequestPut(etcd::PutRequest {
            key: b(key),
            value: b(value),
            lease,
            prev_kv: true,
            ..Default::default()
        })),
    }
}

fn delete(key: &str, end: &str) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(Request::RequestDeleteRange(etcd::DeleteRangeRequest {
            key: b(key),
            range_end: b(end),
            prev_kv: true,
        })),
    }
}

fn range_op(key: &str, end: &str) -> etcd::RequestOp {
    etcd::RequestOp {
        request: Some(Request::RequestRange(etcd::RangeRequest {
            key: b(key),
            range_end: b(end),
            ..Default::default()
        })),
    }
}

fn ops(ops: Vec<etcd::RequestOp>) -> etcd::TxnRequest {
    etcd::TxnRequest {
        success: ops,
        ..Default::default()
    }
}

/// A key as a range lists it: key, value, create revision, mod revision, version.
type Listed = (String, String, i64, i64, i64);

/// Everything the suite checks, on one engine; returns the store for the snapshot check.
fn suite(engine: Arc<dyn KvEngine>) -> Store {
    let mut s = Store {
        keys: KeyIndex::load(&*engine).expect("index"),
        engine,
        index: 0,
        auth: Default::default(),
        alarms: Default::default(),
        sweep: true,
    };
    assert_eq!(
        s.source().meta().revision,
        1,
        "an empty store is at revision 1, as etcd's"
    );

    // Revisions: one per request, shared by its changes; create/mod/version as etcd's.
    let r = s.txn(ops(vec![put("a", "1"), put("b", "1")])).expect("txn");
    assert!(r.succeeded);
    assert_eq!(s.source().meta().revision, 2);
    s.txn(ops(vec![put("a", "2")])).expect("put");
    assert_eq!(
        s.range("a", "", 0).expect("range"),
        vec![("a".into(), "2".into(), 2, 3, 2)]
    );
    // A native write takes a revision too, and answers with it.
    let native = s.one(Command::Put {
        key: b("c"),
        value: b("1"),
        return_prev: false,
        session: None,
    });
    assert_eq!(native.revision, 4);
    // Deleting: a tombstone in history; version restarts at the next put.
    let r = s.txn(ops(vec![delete("a", "")])).expect("delete");
    let Some(Response::ResponseDeleteRange(d)) = &r.responses[0].response else {
        panic!("delete response");
    };
    assert_eq!((d.deleted, d.prev_kvs[0].version), (1, 2));
    s.txn(ops(vec![put("a", "3")])).expect("put");
    assert_eq!(
        s.range("a", "", 0).expect("range"),
        vec![("a".into(), "3".into(), 6, 6, 1)]
    );
    // Deleting nothing takes no revision.
    s.txn(ops(vec![delete("zz", "")])).expect("delete nothing");
    assert_eq!(s.source().meta().revision, 6);

    // Reads at older revisions: every key as it was.
    let all = |s: &Store, rev| s.range("a", "\0", rev).expect("range");
    assert_eq!(
        all(&s, 2),
        vec![
            ("a".into(), "1".into(), 2, 2, 1),
            ("b".into(), "1".into(), 2, 2, 1)
        ]
    );
    assert_eq!(
        all(&s, 5).iter().map(|kv| kv.0.clone()).collect::<Vec<_>>(),
        vec!["b", "c"]
    );
    assert_eq!(all(&s, 6).len(), 3);
    assert_eq!(
        s.range("", "", 7),
        Err(MvccError::FutureRevision {
            requested: 7,
            current: 6
        })
    );

    // Pages: a limit returns the first keys and counts the whole range; a count alone is never
    // "more"; the same at the current revision (read without every version) and through history.
    let page = |s: &Store, rev, limit, count_only| {
        let request = etcd::RangeRequest {
            key: b("a"),
            range_end: b("\0"),
            revision: rev,
            limit,
            count_only,
            ..Default::default()
        };
        let r = read::range(&s.source(), &request)
            .expect("read")
            .expect("range");
        let keys: Vec<String> = r
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect();
        (keys, r.count, r.more)
    };
    for rev in [0, 6] {
        assert_eq!(
            page(&s, rev, 2, false),
            (vec!["a".into(), "b".into()], 3, true)
        );
        assert_eq!(
            page(&s, rev, 3, false),
            (vec!["a".into(), "b".into(), "c".into()], 3, false)
        );
        assert_eq!(page(&s, rev, 1, true), (vec![], 3, false));
        assert_eq!(page(&s, rev, 0, true), (vec![], 3, false));
    }
    assert_eq!(page(&s, 5, 1, false), (vec!["b".into()], 2, true));

    // Transactions: comparisons choose the branch; ranges inside see earlier ops.
    let cmp = compare(
        "a",
        CompareTarget::Value,
        CompareResult::Equal,
        TargetUnion::Value(b("3")),
    );
    let r = s
        .txn(etcd::TxnRequest {
            compare: vec![cmp.clone()],
            success: vec![put("d", "1"), range_op("a", "e")],
            failure: vec![put("x", "1")],
        })
        .expect("txn");
    assert!(r.succeeded);
    let Some(Response::ResponseRange(seen)) = &r.responses[1].response else {
        panic!("range response");
    };
    assert_eq!(seen.count, 4, "a, b, c and the d this txn wrote");
    let r = s
        .txn(ops(vec![
            put("d2", "1"),
            etcd::RequestOp {
                request: Some(Request::RequestRange(etcd::RangeRequest {
                    key: b("d"),
                    range_end: b("e"),
                    limit: 1,
                    ..Default::default()
                })),
            },
        ]))
        .expect("txn");
    let Some(Response::ResponseRange(seen)) = &r.responses[1].response else {
        panic!("range response");
    };
    assert_eq!(
        (seen.kvs.len(), seen.count, seen.more),
        (1, 2, true),
        "a page inside a txn counts the keys the txn wrote"
    );
    s.txn(ops(vec![delete("d2", "")])).expect("delete d2");
    let r = s
        .txn(etcd::TxnRequest {
            compare: vec![compare(
                "a",
                CompareTarget::Mod,
                CompareResult::Less,
                TargetUnion::ModRevision(6),
            )],
            success: vec![put("x", "1")],
            failure: vec![etcd::RequestOp {
                request: Some(Request::RequestTxn(ops(vec![put("e", "1")]))),
            }],
        })
        .expect("txn");
    assert!(!r.succeeded, "a's mod revision is 6, not less");
    assert_eq!(s.range("x", "", 0).expect("range"), vec![]);
    assert_eq!(
        s.range("e", "", 0).expect("range").len(),
        1,
        "the nested txn ran"
    );
    // Every comparison, nested ones included, is evaluated before the transaction runs, as
    // etcd's: the nested one sees `n` absent although the put before it wrote `n`, so its success
    // branch runs, and its failure branch (a put on an unknown lease, never checked) is not taken.
    let nested = etcd::TxnRequest {
        compare: vec![compare(
            "n",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        success: vec![put("n2", "1")],
        failure: vec![put_lease("n3", "1", 4242)],
    };
    let r = s
        .txn(ops(vec![
            put("n", "1"),
            etcd::RequestOp {
                request: Some(Request::RequestTxn(nested)),
            },
        ]))
        .expect("the nested txn takes the branch chosen before anything ran");
    let Some(Response::ResponseTxn(inner)) = &r.responses[1].response else {
        panic!("nested txn response");
    };
    assert!(inner.succeeded);
    assert_eq!(s.range("n2", "", 0).expect("range").len(), 1);
    s.txn(ops(vec![delete("n", "n3")])).expect("delete n, n2");
    // A comparison over a range holds only when every key does; absent keys have version 0.
    let mut over = compare(
        "a",
        CompareTarget::Version,
        CompareResult::Greater,
        TargetUnion::Version(0),
    );
    over.range_end = b("f");
    assert!(
        s.txn(etcd::TxnRequest {
            compare: vec![over],
            ..Default::default()
        })
        .expect("txn")
        .succeeded
    );
    let absent = compare(
        "nope",
        CompareTarget::Create,
        CompareResult::Equal,
        TargetUnion::CreateRevision(0),
    );
    assert!(
        s.txn(etcd::TxnRequest {
            compare: vec![absent],
            ..Default::default()
        })
        .expect("txn")
        .succeeded
    );
    // A range with no key in it compares as one absent key, as etcd's does: a value comparison
    // fails, revisions, versions and lease are 0 (not: every key of none holds).
    let holds = |s: &mut Store, target, result, value| {
        let mut c = compare("q/", target, result, value);
        c.range_end = b("q0");
        s.txn(etcd::TxnRequest {
            compare: vec![c],
            ..Default::default()
        })
        .expect("txn")
        .succeeded
    };
    assert!(!holds(
        &mut s,
        CompareTarget::Value,
        CompareResult::NotEqual,
        TargetUnion::Value(b("x"))
    ));
    assert!(!holds(
        &mut s,
        CompareTarget::Mod,
        CompareResult::Greater,
        TargetUnion::ModRevision(0)
    ));
    assert!(holds(
        &mut s,
        CompareTarget::Create,
        CompareResult::Equal,
        TargetUnion::CreateRevision(0)
    ));
    assert!(holds(
        &mut s,
        CompareTarget::Version,
        CompareResult::Less,
        TargetUnion::Version(1)
    ));

    // Leases: a put naming an unknown lease is refused whole; a revoke deletes at one revision.
    let before = s.source().meta().revision;
    assert_eq!(
        s.txn(ops(vec![put("l1", "x"), put_lease("l2", "x", 77)])),
        Err(MvccError::LeaseNotFound(77))
    );
    assert_eq!(
        s.range("l1", "", 0).expect("range"),
        vec![],
        "nothing of a refused txn applied"
    );
    assert_eq!(s.source().meta().revision, before);
    assert!(matches!(
        s.one(Command::LeaseGrant { id: 77, ttl: 10 }).etcd,
        Some(EtcdReply::LeaseGranted { id: 77, ttl: 10 })
    ));
    assert!(matches!(
        s.one(Command::LeaseGrant { id: 77, ttl: 10 }).etcd,
        Some(EtcdReply::Refused(MvccError::LeaseExists(77)))
    ));
    s.txn(ops(vec![
        put_lease("l1", "x", 77),
        put_lease("l2", "x", 77),
    ]))
    .expect("attach");
    s.txn(ops(vec![put("l2", "y")]))
        .expect("detach l2 by a put without the lease");
    assert_eq!(
        Writer::leases(&*s.engine).expect("leases")[0].1,
        vec![b("l1")]
    );
    let before = s.source().meta().revision;
    assert!(matches!(
        s.one(Command::LeaseRevoke { id: 77 }).etcd,
        Some(EtcdReply::Done)
    ));
    assert_eq!(s.source().meta().revision, before + 1);
    assert_eq!(s.range("l1", "", 0).expect("range"), vec![]);
    assert_eq!(s.range("l2", "", 0).expect("range").len(), 1);
    assert!(Writer::leases(&*s.engine).expect("leases").is_empty());
    assert!(matches!(
        s.one(Command::LeaseRevoke { id: 77 }).etcd,
        Some(EtcdReply::Refused(MvccError::LeaseNotFound(77)))
    ));
    // Ids whose bytes sort last and around the sign change: each revokes only its own keys.
    for id in [-1, i64::MAX, i64::MIN] {
        s.one(Command::LeaseGrant { id, ttl: 10 });
        s.txn(ops(vec![put_lease(&format!("edge{id}"), "x", id)]))
            .expect("attach");
    }
    for id in [-1, i64::MAX, i64::MIN] {
        assert!(matches!(
            s.one(Command::LeaseRevoke { id }).etcd,
            Some(EtcdReply::Done)
        ));
        assert_eq!(s.range(&format!("edge{id}"), "", 0).expect("range"), vec![]);
    }
    assert!(Writer::leases(&*s.engine).expect("leases").is_empty());

    // Watch reads: every change from a revision, in order, with the version it replaced.
    let changes = s.source().changes(Rev::new(5), 100).expect("changes");
    assert_eq!(changes[0].0, Rev::new(5));
    let delete_a = read::event(&s.source(), changes[0].0, &changes[0].1, true).expect("event");
    assert_eq!(delete_a.r#type, 1, "DELETE");
    assert_eq!(delete_a.kv.as_ref().map(|kv| kv.mod_revision), Some(5));
    assert_eq!(
        delete_a.prev_kv.as_ref().map(|kv| kv.value.clone()),
        Some(b("2"))
    );

    // Compaction: reads before it fail, reads at it see every key as it was then.
    let at_6 = all(&s, 6);
    assert!(matches!(
        s.one(Command::Compact { revision: 6 }).etcd,
        Some(EtcdReply::Done)
    ));
    assert_eq!(all(&s, 6), at_6);
    assert_eq!(
        s.range("a", "", 5),
        Err(MvccError::Compacted {
            requested: 5,
            compacted: 6
        })
    );
    assert!(matches!(
        s.one(Command::Compact { revision: 6 }).etcd,
        Some(EtcdReply::Refused(MvccError::Compacted { .. }))
    ));
    assert!(matches!(
        s.one(Command::Compact { revision: 1000 }).etcd,
        Some(EtcdReply::Refused(MvccError::FutureRevision { .. }))
    ));
    let kept: Vec<i64> = s
        .source()
        .changes(Rev::new(0), usize::MAX)
        .expect("changes")
        .into_iter()
        .filter(|(rev, _)| rev.main < 6)
        .map(|(rev, _)| rev.main)
        .collect();
    assert_eq!(
        kept,
        vec![2, 4],
        "b@2 and c@4 are current at 6; a@2, a@3 and a's deletion are gone"
    );
    // A compaction in the batch that wrote what it compacts sees those writes (the batch's own
    // history over the engine's).
    let before = s.source().meta().revision;
    let out = s.apply(vec![
        Command::Txn(Box::new(ops(vec![put("p", "1")]))),
        Command::Txn(Box::new(ops(vec![put("p", "2")]))),
        Command::Compact {
            revision: before + 2,
        },
    ]);
    assert!(matches!(out[2].etcd, Some(EtcdReply::Done)));
    let p_kept: Vec<i64> = s
        .source()
        .changes(Rev::new(before + 1), usize::MAX)
        .expect("changes")
        .into_iter()
        .filter(|(_, change)| change.key == b("p"))
        .map(|(rev, _)| rev.main)
        .collect();
    assert_eq!(
        p_kept,
        vec![before + 2],
        "p's first version, superseded at the compacted revision, is gone"
    );
    s
}

#[test]
fn memory_engine_should_pass_the_mvcc_suite() {
    suite(Arc::new(MemoryEngine::new()));
}

#[test]
fn rocks_engine_should_pass_the_mvcc_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    suite(Arc::new(RocksEngine::open(dir.path()).expect("open")));
}

/// Both engines end in the same state, and an export of one imports into the other with every
/// revision, change and lease.
#[test]
fn engines_should_agree_and_move_history_through_a_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let memory = suite(Arc::new(MemoryEngine::new()));
    let rocks = suite(Arc::new(
        RocksEngine::open(&dir.path().join("a")).expect("open"),
    ));
    for space in crate::state_machine::Keyspace::ALL {
        assert_eq!(
            memory
                .engine
                .scan_in(space, b"", None, usize::MAX)
                .expect("scan"),
            rocks
                .engine
                .scan_in(space, b"", None, usize::MAX)
                .expect("scan"),
            "{space:?} differs between engines"
        );
    }
    // HashKV: a checksum over the history records up to the revision asked, as a swept store
    // holds them, which both engines agree on.
    let crc_of = |pairs: Vec<(Bytes, Bytes)>| {
        pairs
            .iter()
            .fold(0, |h, (k, v)| super::crc32(super::crc32(h, k), v))
    };
    let history = crate::state_machine::Keyspace::History;
    let compacted = memory.source().meta().compact_revision;
    let upto = super::history_key(Rev::new(compacted + 1));
    let expected_then = crc_of(
        memory
            .engine
            .scan_in(history, b"", Some(&upto), usize::MAX)
            .expect("scan"),
    );
    let expected_now = crc_of(
        memory
            .engine
            .scan_in(history, b"", None, usize::MAX)
            .expect("scan"),
    );
    for store in [&memory, &rocks] {
        let then = super::sweep::hash_kv(&*store.engine, compacted)
            .expect("hash")
            .expect("readable");
        assert_eq!((then.0, then.1), (expected_then, compacted));
        let now = super::sweep::hash_kv(&*store.engine, 0)
            .expect("hash")
            .expect("readable");
        assert_eq!(now.0, expected_now);
    }
    let mut sink = crate::state_machine::engine_suite::VecSink(None, Vec::new());
    memory.engine.export(&mut sink).expect("export");
    let target = RocksEngine::open(&dir.path().join("b")).expect("open");
    target
        .import(
            &sink.0.clone().unwrap_or_default(),
            &mut sink.1.into_iter().map(Ok),
        )
        .expect("import");
    let moved = Store {
        keys: KeyIndex::load(&target).expect("index"),
        engine: Arc::new(target),
        index: 100,
        auth: Default::default(),
        alarms: Default::default(),
        sweep: true,
    };
    assert_eq!(
        moved.keys, memory.keys,
        "an import's index is the exporter's"
    );
    assert_eq!(moved.range("a", "\0", 6), memory.range("a", "\0", 6));
    assert_eq!(moved.source().meta(), memory.source().meta());
}

/// A source whose engine gets a commit after its counters were taken and before its first read
/// of current versions, as apply can commit between the lookups of a read on another thread.
struct Racing<'a> {
    inner: EngineSource<'a>,
    commit: std::cell::RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl Racing<'_> {
    fn fire(&self) {
        if let Some(commit) = self.commit.borrow_mut().take() {
            commit();
        }
    }
}

impl Source for Racing<'_> {
    fn meta(&self) -> super::MvccMeta {
        self.inner.meta()
    }

    fn revision_now(&self) -> std::io::Result<i64> {
        self.inner.revision_now()
    }

    fn latest(&self, key: &[u8]) -> std::io::Result<Option<super::KeyVersion>> {
        self.fire();
        self.inner.latest(key)
    }

    fn latest_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> std::io::Result<Vec<(Bytes, super::KeyVersion)>> {
        self.fire();
        self.inner.latest_range(start, end, limit)
    }

    fn change(&self, rev: Rev) -> std::io::Result<Option<super::Change>> {
        self.inner.change(rev)
    }

    fn changes(&self, from: Rev, limit: usize) -> std::io::Result<Vec<(Rev, super::Change)>> {
        self.inner.changes(from, limit)
    }
}

#[test]
fn a_read_racing_a_commit_should_answer_for_the_revision_it_names() {
    for (single, end, limit) in [(true, "", 0), (false, "\0", 0), (false, "\0", 1)] {
        let engine: Arc<dyn KvEngine> = Arc::new(MemoryEngine::new());
        let mut s = Store {
            keys: KeyIndex::load(&*engine).expect("index"),
            engine: engine.clone(),
            index: 0,
            auth: Default::default(),
            alarms: Default::default(),
            sweep: true,
        };
        s.txn(ops(vec![put("a", "1"), put("b", "1")])).expect("txn");
        let mut racer = Store {
            keys: KeyIndex::load(&*engine).expect("index"),
            engine: engine.clone(),
            index: 10,
            auth: Default::default(),
            alarms: Default::default(),
            sweep: true,
        };
        let source = Racing {
            inner: EngineSource::new(&*engine).expect("source"),
            commit: std::cell::RefCell::new(Some(Box::new(move || {
                racer
                    .txn(ops(vec![put("a", "2"), delete("b", "")]))
                    .expect("racing txn");
            }))),
        };
        let request = etcd::RangeRequest {
            key: b("a"),
            range_end: b(end),
            limit,
            ..Default::default()
        };
        let read = read::range(&source, &request)
            .expect("read")
            .expect("range");
        let listed: Vec<(Bytes, Bytes, i64)> = read
            .kvs
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision))
            .collect();
        let mut expected = vec![(b("a"), b("1"), 2)];
        if !single && limit == 0 {
            expected.push((b("b"), b("1"), 2));
        }
        assert_eq!(
            listed, expected,
            "the versions as of the revision read at, not the racing commit's (single key: \
             {single}, limit {limit})"
        );
        assert_eq!(
            (read.count, read.more),
            (if single { 1 } else { 2 }, limit > 0),
            "the count as of the revision read at"
        );
        assert_eq!(read.header.map(|h| h.revision), Some(2));
        assert_eq!(s.source().meta().revision, 3, "the racing commit landed");
    }
}

#[test]
fn a_write_checked_before_a_revocation_should_be_refused_at_apply() {
    use crate::state_machine::auth::AuthError;
    use crate::state_machine::auth::Perm;
    use rskv_proto::storage as pb;
    use rskv_proto::storage::auth_change::Op;
    let change = |op: Op, user: &str, role: &str, key: &str, end: &str| {
        let mut c = pb::AuthChange {
            user: user.into(),
            role: role.into(),
            permission: (!key.is_empty()).then(|| pb::AuthPermission {
                kind: 2,
                key: b(key),
                range_end: b(end),
            }),
            ..Default::default()
        };
        c.set_op(op);
        c
    };
    let mut s = suite_store(Arc::new(MemoryEngine::new()));
    for c in [
        change(Op::UserAdd, "root", "", "", ""),
        change(Op::UserGrantRole, "root", "root", "", ""),
        change(Op::UserAdd, "alice", "", "", ""),
        change(Op::RoleAdd, "", "w", "", ""),
        change(Op::RoleGrantPermission, "", "w", "a/", "a0"),
        change(Op::UserGrantRole, "alice", "w", "", ""),
        change(Op::Enable, "", "", "", ""),
    ] {
        s.auth.apply(&c).expect("set up");
    }
    // What the leader proposes: the write with the user and the revision its check saw.
    let checked = s
        .auth
        .check("alice", b"a/x", b"", Perm::Write)
        .expect("allowed");
    let as_alice = |command: Command| Command::Authorized {
        user: "alice".into(),
        revision: checked,
        command: Box::new(command),
    };
    let write = |value: &str| {
        as_alice(Command::Put {
            key: b("a/x"),
            value: b(value),
            return_prev: false,
            session: None,
        })
    };
    assert_eq!(
        s.one(write("1")).etcd,
        None,
        "applied at the revision it was checked at"
    );
    // Another change moves the revision: checked again, still allowed.
    s.auth
        .apply(&change(Op::RoleAdd, "", "other", "", ""))
        .expect("role");
    assert_eq!(s.one(write("2")).etcd, None, "checked again and allowed");
    // The permission is revoked between the check and the apply: refused, nothing written.
    s.auth
        .apply(&change(Op::RoleRevokePermission, "", "w", "a/", "a0"))
        .expect("revoke");
    let denied = Some(EtcdReply::AuthRefused(AuthError::PermissionDenied));
    assert_eq!(s.one(write("3")).etcd, denied);
    let txn = as_alice(Command::Txn(Box::new(ops(vec![put("a/y", "4")]))));
    assert_eq!(s.one(txn).etcd, denied, "an etcd transaction too");
    let listed = s.range("a/", "a0", 0).expect("range");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].1, "2", "the refused writes left nothing");
}

/// An empty store over `engine`.
fn suite_store(engine: Arc<dyn KvEngine>) -> Store {
    Store {
        keys: KeyIndex::load(&*engine).expect("index"),
        engine,
        index: 0,
        auth: Default::default(),
        alarms: Default::default(),
        sweep: true,
    }
}

#[test]
fn a_nospace_alarm_should_stop_what_grows_the_store_and_nothing_else() {
    use crate::state_machine::alarms::NOSPACE;
    let mut s = suite_store(Arc::new(MemoryEngine::new()));
    s.txn(ops(vec![put("a", "1"), put("b", "1")])).expect("txn");
    let alarm = |activate| Command::Alarm {
        member: 2,
        alarm: NOSPACE,
        activate,
    };
    assert_eq!(s.one(alarm(true)).etcd, Some(EtcdReply::Done));
    assert_eq!(s.alarms.list(), vec![(2, NOSPACE)]);
    let no_space = Some(EtcdReply::Refused(MvccError::NoSpace));
    let native_put = Command::Put {
        key: b("n"),
        value: b("1"),
        return_prev: false,
        session: None,
    };
    assert_eq!(s.one(native_put.clone()).etcd, no_space, "a native put");
    assert_eq!(s.txn(ops(vec![put("c", "1")])), Err(MvccError::NoSpace));
    let nested = etcd::RequestOp {
        request: Some(Request::RequestTxn(ops(vec![put("a", "2")]))),
    };
    assert_eq!(
        s.txn(ops(vec![range_op("a", ""), nested])),
        Err(MvccError::NoSpace),
        "a transaction with a put anywhere"
    );
    assert_eq!(
        s.one(Command::LeaseGrant { id: 7, ttl: 60 }).etcd,
        no_space,
        "a lease grant"
    );
    // Reads and deletes go on: the cluster can be cleaned up.
    let read = s
        .txn(ops(vec![range_op("a", "")]))
        .expect("a read-only transaction");
    assert!(read.succeeded);
    s.txn(ops(vec![delete("b", "")])).expect("a delete");
    assert_eq!(
        s.one(Command::Delete {
            key: b("a"),
            session: None
        })
        .etcd,
        None,
        "a native delete"
    );
    assert_eq!(s.range("a", "c", 0).expect("range"), Vec::<Listed>::new());
    // Disarmed, writes go through again.
    assert_eq!(s.one(alarm(false)).etcd, Some(EtcdReply::Done));
    assert_eq!(s.one(native_put).etcd, None);
    s.txn(ops(vec![put("c", "1")])).expect("txn after disarm");
}

/// Every record of every keyspace, in order.
fn records(engine: &dyn KvEngine) -> Vec<Vec<(Bytes, Bytes)>> {
    Keyspace::ALL
        .into_iter()
        .map(|space| engine.scan_in(space, b"", None, usize::MAX).expect("scan"))
        .collect()
}

/// A compaction leaves what it supersedes to the sweep: until the sweep runs, reads, watches
/// and HashKV answer as they do after it; a sweep in steps of one change, or cut short and
/// begun again, ends in the same records as a sweep after every apply.
#[test]
fn the_sweep_should_change_nothing_reads_or_hashkv_see() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engines: [Arc<dyn KvEngine>; 4] = [
        Arc::new(MemoryEngine::new()),
        Arc::new(MemoryEngine::new()),
        Arc::new(RocksEngine::open(&dir.path().join("a")).expect("open")),
        Arc::new(RocksEngine::open(&dir.path().join("b")).expect("open")),
    ];
    let [m_swept, m_lazy, r_swept, r_lazy] = engines;
    for (swept, lazy, cut_short) in [(m_swept, m_lazy, false), (r_swept, r_lazy, true)] {
        let (mut swept, mut lazy) = (suite_store(swept), suite_store(lazy));
        lazy.sweep = false;
        let both = |swept: &mut Store, lazy: &mut Store, command: Command| {
            let (a, b) = (swept.one(command.clone()), lazy.one(command));
            assert_eq!(a, b, "the same command answers alike");
        };
        // Twenty keys written five times, every fourth deleted and written again, with two
        // compactions before any sweep (the second starts where the first began).
        for round in 0..5 {
            for key in 0..20 {
                both(
                    &mut swept,
                    &mut lazy,
                    Command::Txn(Box::new(ops(vec![put(
                        &format!("k{key:02}"),
                        &format!("{round}"),
                    )]))),
                );
                if key % 4 == 0 && round % 2 == 1 {
                    both(
                        &mut swept,
                        &mut lazy,
                        Command::Txn(Box::new(ops(vec![delete(&format!("k{key:02}"), "")]))),
                    );
                }
            }
            if round == 2 || round == 3 {
                let at = swept.source().meta().revision - 7;
                both(&mut swept, &mut lazy, Command::Compact { revision: at });
            }
        }
        let meta = lazy.source().meta();
        let garbage = records(&*lazy.engine)[Keyspace::History.position()].len()
            - records(&*swept.engine)[Keyspace::History.position()].len();
        assert!(
            garbage > 20,
            "the compactions left {garbage} records to sweep"
        );
        let seen = |s: &Store| {
            let at: Vec<_> = [meta.compact_revision, meta.compact_revision + 5, 0]
                .into_iter()
                .map(|rev| s.range("k", "l", rev))
                .collect();
            let watch = s
                .source()
                .changes(Rev::new(meta.compact_revision), usize::MAX)
                .expect("changes");
            let hashes = [meta.compact_revision, 0]
                .map(|rev| super::sweep::hash_kv(&*s.engine, rev).expect("hash"));
            (at, watch, hashes)
        };
        let expected = seen(&swept);
        assert_eq!(seen(&lazy), expected, "before the sweep");
        let mut pass = super::sweep::Pass::start(&*lazy.engine)
            .expect("pass")
            .expect("a pass is due");
        let mut steps = 0;
        while !pass.step(&*lazy.engine, 1).expect("step") {
            steps += 1;
            assert_eq!(seen(&lazy), expected, "after {steps} steps of the sweep");
            if cut_short && steps == 10 {
                // As after a crash: the pass is begun again from its start.
                pass = super::sweep::Pass::start(&*lazy.engine)
                    .expect("pass")
                    .expect("the pass is still due");
            }
        }
        assert!(super::sweep::Pass::start(&*lazy.engine)
            .expect("pass")
            .is_none());
        assert_eq!(seen(&lazy), expected, "after the sweep");
        assert_eq!(records(&*lazy.engine), records(&*swept.engine));
    }
}
