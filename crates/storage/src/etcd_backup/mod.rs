//! Backups in etcd's format: the file `etcdctl snapshot save` writes, etcd's bbolt backend
//! ([`bbolt`]), whether an etcd server or rskv ([`write`]) wrote it. Restoring one reads it into
//! the records of rskv's state machine, so a cluster moves from etcd to rskv (or back: etcd's
//! tools read what rskv writes) with its keys, their revisions and history, and its leases. What
//! [`restore_backup`](crate::state_machine::restore_backup) loads unless the file is an rskv
//! snapshot of the previous backup format.
//!
//! etcd keeps every version in its `key` bucket, keyed by revision (8 bytes big-endian, `_`, the
//! sub revision in 8 more, and `t` after a deletion), each value an `mvccpb.KeyValue`; the
//! compaction it finished in the `meta` bucket (`finishedCompactRev`); leases in the `lease`
//! bucket (`leasepb.Lease`: id 1, TTL 2). That is the same history rskv's store keeps
//! ([`crate::mvcc`]), so the conversion replays it in revision order: each version becomes a
//! history [`Change`] pointing at the version it replaced, the last version of each live key its
//! current [`KeyVersion`], each lease a lease record with its attached keys, and the revision
//! counters the backup's. Revisions are kept, so a client resumes a watch at the revision it had.
//!
//! Users, roles and whether auth was enabled come over too ([`auth`]: etcd's `auth*` buckets;
//! passwords are bcrypt hashes on both sides); an rskv backup carries its whole system keyspace
//! in a bucket of its own instead. Not carried over: alarms, and membership (a restored cluster
//! is a new one, as with `etcdctl snapshot restore`). The backup is held in memory, once, and
//! every version in it is checked before anything is written ([`restore`]).

pub mod auth;
pub mod bbolt;
pub mod write;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::io;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use prost::Message;
use rskv_proto::etcd::mvccpb;

use crate::error::io_err;
use crate::mvcc::history_key;
use crate::mvcc::lease_key;
use crate::mvcc::lease_key_of;
use crate::mvcc::Change;
use crate::mvcc::KeyVersion;
use crate::mvcc::Lease;
use crate::mvcc::MvccMeta;
use crate::mvcc::Rev;
use crate::mvcc::META_KEY;
use crate::state_machine::Keyspace;
use crate::state_machine::Record;

/// The bucket of rskv's own backups that holds its system keyspace verbatim (see [`write`]).
pub const SYSTEM_BUCKET: &[u8] = b"rskv_system";

/// etcd's `leasepb.Lease`, the value of its `lease` bucket (the fields rskv keeps).
#[derive(Clone, PartialEq, Message)]
struct EtcdLease {
    #[prost(int64, tag = "1")]
    id: i64,
    #[prost(int64, tag = "2")]
    ttl: i64,
}

/// What a restored etcd backup held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// The backup's revision.
    pub revision: i64,
    /// The revision its history was compacted at (0: never).
    pub compact_revision: i64,
    /// Live keys.
    pub keys: usize,
    /// Versions in history (tombstones included).
    pub changes: usize,
    /// Leases.
    pub leases: usize,
}

/// Whether the file at `path` is a bbolt file (an etcd backup) rather than rskv's own.
///
/// # Errors
/// When the file cannot be read.
pub fn is_etcd_backup(path: &Path) -> io::Result<bool> {
    let mut head = Vec::with_capacity(32);
    std::fs::File::open(path)?.take(32).read_to_end(&mut head)?;
    Ok(bbolt::looks_like_bbolt(&head))
}

/// etcd's key of a revision in its `key` bucket: main and sub revision, big-endian, split by
/// `_`, and `t` after a deletion's.
pub fn revision_key(rev: Rev, tombstone: bool) -> Vec<u8> {
    let mut key = Vec::with_capacity(18);
    key.extend_from_slice(&rev.main.to_be_bytes());
    key.push(b'_');
    key.extend_from_slice(&i64::from(rev.sub).to_be_bytes());
    if tombstone {
        key.push(b't');
    }
    key
}

/// A revision key of etcd's `key` bucket: the revision, and whether it records a deletion.
fn parse_revision(key: &[u8]) -> io::Result<(Rev, bool)> {
    let bad = || io_err(format!("etcd backup: {key:?} is not a revision key"));
    let tombstone = match key.len() {
        17 => false,
        18 if key[17] == b't' => true,
        _ => return Err(bad()),
    };
    if key[8] != b'_' {
        return Err(bad());
    }
    let main = i64::from_be_bytes(key[..8].try_into().map_err(|_| bad())?);
    let sub = i64::from_be_bytes(key[9..17].try_into().map_err(|_| bad())?);
    let sub = u32::try_from(sub).map_err(|_| bad())?;
    Ok((Rev { main, sub }, tombstone))
}

/// The records a backup's contents become, handed to whoever writes them (an engine's import).
pub type Consume<'a> =
    dyn FnMut(&mut dyn Iterator<Item = io::Result<Record>>) -> io::Result<()> + 'a;

/// Reads the backup of etcd's format at `path` (its SHA-256 trailer, when present, already
/// checked) and hands its state-machine records to `consume`, once every version in it has been
/// read and checked (a damaged file is refused before anything is written). Values are not
/// copied: the records are made as they are consumed, from the file's bytes, the one copy of the
/// backup held in memory.
///
/// # Errors
/// When the file is not a bbolt file with etcd's `key` bucket, a record in it is damaged, or
/// `consume` fails.
pub fn restore(path: &Path, consume: &mut Consume<'_>) -> io::Result<Summary> {
    restore_bytes(Bytes::from(std::fs::read(path)?), consume)
}

/// One version of etcd's `key` bucket: its revision, whether it is a deletion, and the version
/// (its key and value sharing the file's bytes).
fn version_of(
    db: &bbolt::Bolt,
    pair: &bbolt::Pair<'_>,
) -> io::Result<(Rev, bool, mvccpb::KeyValue)> {
    let (rev, tombstone) = parse_revision(pair.key)?;
    let kv = mvccpb::KeyValue::decode(db.shared(pair.value))
        .map_err(|e| io_err(format!("etcd backup: damaged version at {rev:?}: {e}")))?;
    if kv.key.is_empty() {
        return Err(io_err(format!(
            "etcd backup: version at {rev:?} has no key"
        )));
    }
    Ok((rev, tombstone, kv))
}

/// The history record of a version, `prev` the one it replaced.
fn change_record(rev: Rev, tombstone: bool, kv: mvccpb::KeyValue, prev: Rev) -> Record {
    let change = if tombstone {
        Change {
            key: kv.key,
            tombstone: true,
            prev_revision: prev.main,
            prev_sub: prev.sub,
            ..Change::default()
        }
    } else {
        Change {
            key: kv.key,
            tombstone: false,
            create_revision: kv.create_revision,
            version: kv.version,
            lease: kv.lease,
            value: kv.value,
            prev_revision: prev.main,
            prev_sub: prev.sub,
        }
    };
    Record {
        space: Keyspace::History,
        key: history_key(rev),
        value: Bytes::from(change.encode_to_vec()),
    }
}

/// [`restore`], of the file's bytes.
fn restore_bytes(mut bytes: Bytes, consume: &mut Consume<'_>) -> io::Result<Summary> {
    // etcd's snapshot stream ends with the SHA-256 of the database; bbolt files are whole pages.
    let body = crate::snapshot::backup_body_len(bytes.len() as u64);
    bytes.truncate(usize::try_from(body).unwrap_or(usize::MAX));
    let db = bbolt::Bolt::parse(bytes)?;
    let versions = db
        .bucket(b"key")?
        .ok_or_else(|| io_err("not an etcd v3 backup: its bbolt file has no `key` bucket"))?;
    let mut summary = Summary::default();
    // First pass: every version checked, what each replaced, and each key's latest version
    // (`None` once deleted). A compacted backup holds no version before a key's first kept one:
    // that one replaces nothing here, and nothing reads that far back.
    let mut prevs = Vec::with_capacity(versions.len());
    let mut latest: HashMap<Bytes, (Rev, Option<KeyVersion>)> = HashMap::new();
    for pair in &versions {
        let (rev, tombstone, kv) = version_of(&db, pair)?;
        prevs.push(match latest.get(&kv.key) {
            Some((at, Some(_))) => *at,
            _ => Rev::default(),
        });
        let current = (!tombstone).then(|| KeyVersion {
            create_revision: kv.create_revision,
            mod_revision: rev.main,
            mod_sub: rev.sub,
            version: kv.version,
            lease: kv.lease,
            value: kv.value,
        });
        summary.changes += 1;
        summary.revision = summary.revision.max(rev.main);
        latest.insert(kv.key, (rev, current));
    }
    // Current versions in key order.
    let live: BTreeMap<Bytes, KeyVersion> = latest
        .into_iter()
        .filter_map(|(key, (_, current))| Some((key, current?)))
        .collect();
    summary.keys = live.len();
    // The small keyspaces: leases with their attached keys, the revision counters, and rskv's
    // system keyspace or etcd's users and roles.
    let mut rest = Vec::new();
    for (key, version) in live.iter().filter(|(_, v)| v.lease != 0) {
        rest.push(Record {
            space: Keyspace::Lease,
            key: lease_key_of(version.lease, key),
            value: Bytes::new(),
        });
    }
    for pair in db.bucket(b"lease")?.unwrap_or_default() {
        let lease = EtcdLease::decode(pair.value)
            .map_err(|e| io_err(format!("etcd backup: damaged lease {:?}: {e}", pair.key)))?;
        let stored = Lease {
            id: lease.id,
            ttl: lease.ttl,
        };
        rest.push(Record {
            space: Keyspace::Lease,
            key: lease_key(lease.id),
            value: Bytes::from(stored.encode_to_vec()),
        });
        summary.leases += 1;
    }
    let meta = db.bucket(b"meta")?.unwrap_or_default();
    // A compaction etcd had scheduled and not finished (its records partly removed) stands as
    // done at its revision, its removal left to the sweep from where etcd had finished.
    let compaction = |name: &[u8]| {
        meta.iter()
            .find(|p| p.key == name)
            .map(|p| parse_revision(p.value).map(|(rev, _)| rev.main))
            .transpose()
            .map(Option::unwrap_or_default)
    };
    let finished = compaction(b"finishedCompactRev")?;
    summary.compact_revision = finished.max(compaction(b"scheduledCompactRev")?);
    // etcd's revision starts at 1 and is never below its compaction.
    summary.revision = summary.revision.max(summary.compact_revision).max(1);
    // rskv's own backup: its system keyspace as it was, revision counters included.
    let system = db.bucket(SYSTEM_BUCKET)?.unwrap_or_default();
    let exact_meta = system.iter().any(|p| p.key == META_KEY);
    for pair in system {
        rest.push(Record {
            space: Keyspace::System,
            key: db.shared(pair.key),
            value: db.shared(pair.value),
        });
    }
    if !exact_meta {
        // etcd's own backup: its users, roles and auth flag, and its revision counters.
        rest.extend(auth::from_etcd(&db)?);
        let counters = MvccMeta {
            revision: summary.revision,
            compact_revision: summary.compact_revision,
        };
        rest.push(Record {
            space: Keyspace::System,
            key: Bytes::from_static(META_KEY),
            value: Bytes::from(counters.encode_to_vec()),
        });
        if finished < summary.compact_revision {
            let (key, value) = crate::mvcc::sweep::swept_record(finished);
            rest.push(Record {
                space: Keyspace::System,
                key,
                value: value.unwrap_or_default(),
            });
        }
    }
    // Second pass, as the records are written: history, current versions, the rest.
    let history = versions.iter().zip(prevs).map(|(pair, prev)| {
        let (rev, tombstone, kv) = version_of(&db, pair)?;
        Ok(change_record(rev, tombstone, kv, prev))
    });
    let current = live.into_iter().map(|(key, version)| {
        Ok(Record {
            space: Keyspace::Data,
            key,
            value: Bytes::from(version.encode_to_vec()),
        })
    });
    let mut records = history.chain(current).chain(rest.into_iter().map(Ok));
    consume(&mut records)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::AppliedState;
    use rskv_proto::storage as pb;

    /// Every record a backup's bytes become, and its summary.
    fn read_bytes(bytes: Vec<u8>) -> io::Result<(Vec<Record>, Summary)> {
        let mut out = Vec::new();
        let summary = restore_bytes(Bytes::from(bytes), &mut |records| {
            out = records.collect::<io::Result<_>>()?;
            Ok(())
        })?;
        Ok((out, summary))
    }

    /// The backup an etcd 3.4.23 server wrote (see the server's etcdctl test that restores it).
    fn fixture() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/etcd-3.4.23.db");
        std::fs::read(path).expect("the etcd backup fixture")
    }

    fn decoded<M: Message + Default>(records: &[Record], space: Keyspace, key: &[u8]) -> M {
        let record = records
            .iter()
            .find(|r| r.space == space && r.key.as_ref() == key)
            .unwrap_or_else(|| panic!("no {space:?} record {key:?}"));
        M::decode(record.value.as_ref()).expect("decode")
    }

    #[test]
    fn etcds_backup_should_read_as_its_history_current_versions_and_leases() {
        let (records, summary) = read_bytes(fixture()).expect("read");
        assert_eq!(
            summary,
            Summary {
                revision: 10,
                compact_revision: 4,
                keys: 4,
                // a@4, b@3 kept by the compaction at 4; then 5, 6, 7, 8.0, 8.1, 9, 10.
                changes: 9,
                leases: 2,
            }
        );
        let meta: MvccMeta = decoded(&records, Keyspace::System, META_KEY);
        assert_eq!((meta.revision, meta.compact_revision), (10, 4));
        let d: KeyVersion = decoded(&records, Keyspace::Data, b"d");
        assert_eq!((d.create_revision, d.mod_revision, d.mod_sub), (8, 8, 1));
        // The put of `a` at 9 replaced its version at 4; the delete at 10 the one at 9.
        let put: Change = decoded(&records, Keyspace::History, &history_key(Rev::new(9)));
        assert_eq!(
            (put.version, put.prev_revision, put.value.as_ref()),
            (3, 4, &b"3"[..])
        );
        let del: Change = decoded(&records, Keyspace::History, &history_key(Rev::new(10)));
        assert!(del.tombstone && del.prev_revision == 9, "{del:?}");
        // `b`, deleted at 5 and put again at 6, started over.
        let again: Change = decoded(&records, Keyspace::History, &history_key(Rev::new(6)));
        assert_eq!(
            (again.create_revision, again.version, again.prev_revision),
            (6, 1, 0)
        );
        let lease: Lease = decoded(
            &records,
            Keyspace::Lease,
            &lease_key(2_324_035_878_308_226_827),
        );
        assert_eq!(lease.ttl, 600);
        assert!(records.iter().any(|r| r.space == Keyspace::Lease
            && r.key == lease_key_of(2_324_035_878_308_226_827, b"l")));
        assert!(records
            .iter()
            .all(|r| r.space != Keyspace::Data || r.key.as_ref() != b"a"));
    }

    /// What rskv writes as a backup of a store holding `records` (without the checksum).
    fn backup_of(records: &[Record]) -> Vec<u8> {
        let engine = crate::memory::MemoryEngine::new();
        let mut from = records.iter().cloned().map(Ok);
        crate::KvEngine::import(&engine, &AppliedState::default(), &mut from).expect("import");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = Vec::new();
        write::write_backup(&engine, dir.path())
            .expect("write")
            .read_to_end(&mut bytes)
            .expect("read");
        bytes
    }

    fn sorted(mut records: Vec<Record>) -> Vec<(usize, Bytes, Bytes)> {
        let mut out: Vec<_> = records
            .drain(..)
            .map(|r| (r.space.position(), r.key, r.value))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_backup_rskv_writes_should_read_back_as_the_store_it_came_from() {
        // etcd's backup into a store, that store written as a backup, and read again: the same
        // records, every keyspace.
        let (mut records, _) = read_bytes(fixture()).expect("read etcd's backup");
        // What only rskv keeps (sessions, users, alarms) lives in its system keyspace.
        records.push(Record {
            space: Keyspace::System,
            key: Bytes::from_static(b"session/1"),
            value: Bytes::from_static(b"kept as it is"),
        });
        let engine = crate::memory::MemoryEngine::new();
        let mut from = records.clone().into_iter().map(Ok);
        crate::KvEngine::import(&engine, &AppliedState::default(), &mut from).expect("import");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = write::write_backup(&engine, dir.path()).expect("write");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the file being written has no name"
        );
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read the backup");
        assert_eq!(bytes.len() % 4096, 0, "whole pages");
        let (again, summary) = read_bytes(bytes).expect("read rskv's backup");
        assert_eq!((summary.revision, summary.compact_revision), (10, 4));
        assert_eq!(sorted(again), sorted(records));
    }

    #[test]
    fn a_compaction_not_yet_swept_should_go_into_etcds_meta_as_scheduled() {
        // The fixture's store (compacted at 4), as if its sweep had only got to 2.
        let (mut records, _) = read_bytes(fixture()).expect("read etcd's backup");
        let (key, value) = crate::mvcc::sweep::swept_record(2);
        records.push(Record {
            space: Keyspace::System,
            key,
            value: value.unwrap_or_default(),
        });
        let engine = crate::memory::MemoryEngine::new();
        let mut from = records.clone().into_iter().map(Ok);
        crate::KvEngine::import(&engine, &AppliedState::default(), &mut from).expect("import");
        let dir = tempfile::tempdir().expect("tempdir");
        let mut file = write::write_backup(&engine, dir.path()).expect("write");
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).expect("read the backup");
        // etcd finishes a scheduled compaction when it opens the file.
        let db = bbolt::Bolt::parse(bytes.clone()).expect("bbolt");
        let meta: Vec<(Vec<u8>, i64)> = db
            .bucket(b"meta")
            .expect("meta")
            .unwrap_or_default()
            .iter()
            .map(|p| (p.key.to_vec(), parse_revision(p.value).expect("rev").0.main))
            .collect();
        assert_eq!(
            meta,
            vec![
                (b"finishedCompactRev".to_vec(), 2),
                (b"scheduledCompactRev".to_vec(), 4)
            ]
        );
        // rskv reads it back compacted at 4, its sweep to go on from 2.
        let (again, summary) = read_bytes(bytes).expect("read rskv's backup");
        assert_eq!(summary.compact_revision, 4);
        assert_eq!(sorted(again), sorted(records));
    }

    /// Every record `engine` exports.
    fn exported(engine: &dyn crate::KvEngine) -> Vec<(usize, Bytes, Bytes)> {
        struct Collect(Vec<(usize, Bytes, Bytes)>);
        impl crate::state_machine::SnapshotSink for Collect {
            fn begin(&mut self, _: &AppliedState) -> io::Result<()> {
                Ok(())
            }
            fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
                let (k, v) = (Bytes::copy_from_slice(key), Bytes::copy_from_slice(value));
                self.0.push((space.position(), k, v));
                Ok(())
            }
        }
        let mut sink = Collect(Vec::new());
        engine.export(&mut sink).expect("export");
        sink.0
    }

    #[test]
    fn restore_backup_should_load_rskvs_backups_of_either_format_and_etcds() {
        let (records, _) = read_bytes(fixture()).expect("read etcd's backup");
        let source: std::sync::Arc<dyn crate::KvEngine> =
            std::sync::Arc::new(crate::memory::MemoryEngine::new());
        let mut from = records.into_iter().map(Ok);
        source
            .import(&AppliedState::default(), &mut from)
            .expect("import");
        let dir = tempfile::tempdir().expect("tempdir");
        // What etcd's Snapshot streams now (etcd's format), what it streamed before (rskv's
        // snapshot file framed as a backup), and etcd's own.
        let mut bbolt = Vec::new();
        let file = write::write_backup(&*source, dir.path()).expect("write");
        crate::snapshot::BackupReader::new(file)
            .read_to_end(&mut bbolt)
            .expect("read");
        let mut older = Vec::new();
        let snapshot = crate::state_machine::stream_snapshot(source.clone()).expect("stream");
        let crate::SnapshotData::Stream(stream) = snapshot.snapshot else {
            panic!("a stream")
        };
        crate::snapshot::BackupReader::new(stream)
            .read_to_end(&mut older)
            .expect("read");
        for (name, bytes) in [("bbolt", bbolt), ("rskv", older), ("etcd", fixture())] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).expect("write");
            let target = crate::memory::MemoryEngine::new();
            crate::state_machine::restore_backup(&target, &path, true).expect(name);
            assert_eq!(exported(&target), exported(&*source), "{name}");
        }
    }

    #[test]
    fn a_large_backup_should_span_branch_pages_and_overflow_pages() {
        // Enough keys for a three-level tree, and values larger than a page.
        let mut records = Vec::new();
        for i in 1..=20_000i64 {
            let value = if i % 1000 == 0 {
                vec![b'v'; 10_000]
            } else {
                i.to_string().into_bytes()
            };
            let change = Change {
                key: Bytes::from(format!("key/{i:08}")),
                create_revision: i + 1,
                version: 1,
                value: Bytes::from(value),
                ..Change::default()
            };
            records.push(Record {
                space: Keyspace::History,
                key: history_key(Rev::new(i + 1)),
                value: Bytes::from(change.encode_to_vec()),
            });
        }
        let meta = MvccMeta {
            revision: 20_001,
            compact_revision: 0,
        };
        records.push(Record {
            space: Keyspace::System,
            key: Bytes::from_static(META_KEY),
            value: Bytes::from(meta.encode_to_vec()),
        });
        let bytes = backup_of(&records);
        let (again, summary) = read_bytes(bytes).expect("read back");
        assert_eq!((summary.keys, summary.changes), (20_000, 20_000));
        let history: Vec<_> = sorted(again)
            .into_iter()
            .filter(|(space, _, _)| *space == Keyspace::History.position())
            .collect();
        let expected: Vec<_> = sorted(records)
            .into_iter()
            .filter(|(space, _, _)| *space == Keyspace::History.position())
            .collect();
        assert_eq!(history, expected);
    }

    /// A backup etcd 3.4.23 wrote with auth enabled: users root (role root), alice (role
    /// reader: read on the prefix `a/`) and bob (no password).
    fn auth_fixture() -> Vec<u8> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/etcd-3.4.23-auth.db"
        );
        std::fs::read(path).expect("the etcd auth backup fixture")
    }

    /// Users and roles as (name, password hash, roles, no password) and (name, permissions).
    type Users = Vec<(String, String, Vec<String>, bool)>;
    type Roles = Vec<(String, Vec<(i32, Bytes, Bytes)>)>;

    fn users_and_roles(records: &[Record]) -> (Option<pb::AuthMeta>, Users, Roles) {
        use crate::state_machine::auth::META_KEY as AUTH_META;
        use crate::state_machine::auth::ROLE_PREFIX;
        use crate::state_machine::auth::USER_PREFIX;
        let system = || records.iter().filter(|r| r.space == Keyspace::System);
        let meta = system()
            .find(|r| r.key.as_ref() == AUTH_META)
            .map(|r| pb::AuthMeta::decode(r.value.as_ref()).expect("meta"));
        let users = system()
            .filter(|r| r.key.starts_with(USER_PREFIX))
            .map(|r| pb::AuthUser::decode(r.value.as_ref()).expect("user"))
            .map(|u| (u.name, u.password_hash, u.roles, u.no_password))
            .collect();
        let roles = system()
            .filter(|r| r.key.starts_with(ROLE_PREFIX))
            .map(|r| pb::AuthRole::decode(r.value.as_ref()).expect("role"))
            .map(|r| {
                let perms = r.permissions.into_iter();
                (
                    r.name,
                    perms.map(|p| (p.kind, p.key, p.range_end)).collect(),
                )
            })
            .collect();
        (meta, users, roles)
    }

    #[test]
    fn etcds_users_and_roles_should_come_over_and_go_back_in_etcds_buckets() {
        let (records, _) = read_bytes(auth_fixture()).expect("read etcd's backup");
        let (meta, users, roles) = users_and_roles(&records);
        assert!(meta.as_ref().is_some_and(|m| m.enabled), "{meta:?}");
        let names: Vec<_> = users
            .iter()
            .map(|u| (u.0.as_str(), u.2.clone(), u.3))
            .collect();
        assert_eq!(
            names,
            vec![
                ("alice", vec!["reader".to_string()], false),
                ("bob", vec![], true),
                ("root", vec!["root".to_string()], false),
            ]
        );
        assert!(
            users[0].1.starts_with("$2a$"),
            "a bcrypt hash: {:?}",
            users[0].1
        );
        assert_eq!(
            roles,
            vec![
                (
                    "reader".to_string(),
                    vec![(0, Bytes::from_static(b"a/"), Bytes::from_static(b"a0"))]
                ),
                ("root".to_string(), vec![]),
            ]
        );
        // Written by rskv: in etcd's buckets as etcd wrote them (the system keyspace's own
        // bucket is left out here, as etcd would read the file).
        let bytes = backup_of(&records);
        let ours = bbolt::Bolt::parse(bytes).expect("parse");
        let again = auth::from_etcd(&ours).expect("etcd's buckets");
        assert_eq!(users_and_roles(&again), (meta, users, roles));
    }

    #[test]
    fn a_damaged_or_cut_backup_should_be_refused_and_never_panic() {
        let whole = fixture();
        let body = whole.len() - 32;
        // Every single byte changed, and the file cut at every page: an error or a reading,
        // never a panic (the checksum that would refuse them is checked before, elsewhere).
        for at in (0..body).step_by(7) {
            let mut bytes = whole[..body].to_vec();
            bytes[at] ^= 0x5a;
            let _ = read_bytes(bytes);
        }
        for end in (0..body).step_by(512) {
            let _ = read_bytes(whole[..end].to_vec());
        }
        let err = read_bytes(vec![0; 8192]).expect_err("refused");
        assert!(
            err.to_string().contains("no valid bbolt meta page"),
            "{err}"
        );
    }
}
