//! The RocksDB engine: data in column family `data`, the system keyspace (client sessions) in
//! `sm_system`, the applied state in `sm_meta` (in rskv's format, [`crate::format`]), with the
//! store's `format_version`, recorded when it is created and checked before it is opened
//! ([`crate::format::version`]): a store of another version is refused, untouched.
//!
//! Each applied batch — its data and system writes, the new last-applied log id and membership —
//! is one
//! `WriteBatch`, so data and applied index always agree and openraft replays the log from exactly
//! the right place. Writes skip RocksDB's WAL: the Raft log is already the durable record of every
//! committed write, and writing each one a second time (one `write(2)` per applied batch, and the
//! kernel writing those pages back to the disk the log fsyncs on) bought nothing a replay of the
//! log does not. Memtables are flushed atomically across both column families (RocksDB's
//! `atomic_flush`, meant for writes without a WAL), so after a crash the engine holds the state as
//! of its last flush, data, system records and applied index together, and openraft re-applies the entries after
//! it. [`KvEngine::sync`] flushes the memtables; it runs before a snapshot lets the log behind it
//! be purged (so the purged entries are always in the flushed state), after an import and at
//! shutdown (so a clean restart replays nothing). A crash between snapshots replays at most the
//! writes since the last one (`raft.snapshot_every`).
//! Snapshots export from a RocksDB snapshot (a consistent point-in-time view) while writes go on.

use std::io;
use std::path::Path;
use std::sync::RwLock;
use std::sync::RwLockReadGuard;

use bytes::Bytes;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::ReadOptions;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

use super::AppliedState;
use super::Keyspace;
use super::KvEngine;
use super::Record;
use super::SnapshotSink;
use super::Visitor;
use super::WriteSet;
use crate::error::io_err;
use crate::format;
use crate::format::version;

const CF_DATA: &str = "data";
const CF_SYSTEM: &str = "sm_system";
const CF_HISTORY: &str = "sm_history";
const CF_LEASE: &str = "sm_lease";
const CF_META: &str = "sm_meta";
/// Every column family, in the order they are flushed and created.
const CFS: [&str; 5] = [CF_DATA, CF_SYSTEM, CF_HISTORY, CF_LEASE, CF_META];
const KEY_APPLIED: &[u8] = b"applied_state";
const KEY_IMPORTING: &[u8] = b"importing";
/// Import writes are grouped into batches of about this many bytes.
const IMPORT_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// RocksDB-backed engine.
pub struct RocksEngine {
    db: DB,
    /// Readers share it; a snapshot import takes it exclusively, so no read (or export) ever sees
    /// a half-imported data set. Reads wait while a snapshot is being installed.
    import_lock: RwLock<()>,
    /// Reads that answer from the memtables and the block cache only (RocksDB says "incomplete"
    /// where it would read a file): what may run on an async worker.
    cached_only: ReadOptions,
}

impl RocksEngine {
    /// Opens (or creates) the engine's database under `dir`.
    ///
    /// # Errors
    /// When the store is of another format version ([`version::VersionError`]; nothing is
    /// changed then), or RocksDB cannot open the directory.
    pub fn open(dir: &Path) -> io::Result<RocksEngine> {
        Self::open_with(dir, Options::default(), Options::default())
    }

    /// Opens with `opts` and `data_opts` as the base database and `data` column family options
    /// (tests use them to close without a flush, as a crash would, and to flush early).
    fn open_with(dir: &Path, mut opts: Options, mut data_opts: Options) -> io::Result<RocksEngine> {
        let found = version::check(dir, &version::STATE_MACHINE)?;
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // No WAL (see the module doc): a flush must persist `data` and `sm_meta` together.
        opts.set_atomic_flush(true);
        data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let mut history_opts = Options::default();
        history_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
            ColumnFamilyDescriptor::new(CF_SYSTEM, Options::default()),
            ColumnFamilyDescriptor::new(CF_HISTORY, history_opts),
            ColumnFamilyDescriptor::new(CF_LEASE, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io_err)?;
        if found == version::Found::New {
            version::record(&db, &version::STATE_MACHINE)?;
        }
        Ok(RocksEngine {
            db,
            import_lock: RwLock::new(()),
            cached_only: {
                let mut ro = ReadOptions::default();
                ro.set_read_tier(rocksdb::ReadTier::BlockCache);
                ro
            },
        })
    }

    fn get_raw(&self, space: Keyspace, key: &[u8]) -> io::Result<Option<Bytes>> {
        Ok(self
            .db
            .get_pinned_cf(self.space_cf(space)?, key)
            .map_err(io_err)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn read_guard(&self) -> io::Result<RwLockReadGuard<'_, ()>> {
        self.import_lock
            .read()
            .map_err(|_| io_err("import lock poisoned"))
    }

    fn cf(&self, name: &str) -> io::Result<&rocksdb::ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| io_err(format!("column family {name} missing")))
    }

    /// The keyspace writes of `batch`, as one RocksDB batch.
    fn batch_of(&self, batch: &WriteSet) -> io::Result<WriteBatch> {
        let mut wb = WriteBatch::default();
        for (space, writes) in batch.spaces() {
            let cf = self.space_cf(space)?;
            for (key, value) in writes {
                match value {
                    Some(v) => wb.put_cf(cf, key, v),
                    None => wb.delete_cf(cf, key),
                }
            }
        }
        Ok(wb)
    }

    /// Writes `batch` to the memtables only; it is durable after the next [`KvEngine::sync`].
    fn write(&self, batch: WriteBatch) -> io::Result<()> {
        let mut wo = WriteOptions::default();
        wo.disable_wal(true);
        self.db.write_opt(batch, &wo).map_err(io_err)
    }

    fn encode_state(state: &AppliedState) -> Vec<u8> {
        format::encode(state)
    }

    fn decode_state(bytes: &[u8]) -> io::Result<AppliedState> {
        format::decode(bytes).map_err(|e| io_err(format!("state machine `applied_state`: {e}")))
    }

    /// The column family holding `space`.
    fn space_cf(&self, space: Keyspace) -> io::Result<&rocksdb::ColumnFamily> {
        self.cf(match space {
            Keyspace::Data => CF_DATA,
            Keyspace::System => CF_SYSTEM,
            Keyspace::History => CF_HISTORY,
            Keyspace::Lease => CF_LEASE,
        })
    }

    /// Deletes every key of `space`.
    fn clear(&self, space: Keyspace) -> io::Result<()> {
        let data = self.space_cf(space)?;
        let first = self.db.iterator_cf(data, IteratorMode::Start).next();
        let last = self.db.iterator_cf(data, IteratorMode::End).next();
        if let (Some(first), Some(last)) = (first, last) {
            let (first, _) = first.map_err(io_err)?;
            let (last, _) = last.map_err(io_err)?;
            let mut end = last.to_vec();
            end.push(0);
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(data, &first[..], &end[..]);
            self.write(batch)?;
        }
        Ok(())
    }
}

#[cfg(test)]
impl RocksEngine {
    /// An engine whose close loses what is not flushed, as a crash would (tests of recovery).
    pub(crate) fn open_crashing(dir: &Path) -> RocksEngine {
        Self::open_crashing_with(dir, Options::default())
    }

    fn open_crashing_with(dir: &Path, data_opts: Options) -> RocksEngine {
        let opts = Options::default()
            .get_options_from_string("avoid_flush_during_shutdown=true")
            .expect("options");
        RocksEngine::open_with(dir, opts, data_opts).expect("open")
    }
}

impl KvEngine for RocksEngine {
    fn name(&self) -> &'static str {
        "rocksdb"
    }

    fn get_in(&self, space: Keyspace, key: &[u8]) -> io::Result<Option<Bytes>> {
        let _guard = self.read_guard()?;
        self.get_raw(space, key)
    }

    fn try_get_in_now(&self, space: Keyspace, key: &[u8]) -> Option<io::Result<Option<Bytes>>> {
        match self.import_lock.try_read() {
            Ok(_guard) => {
                let cf = match self.space_cf(space) {
                    Ok(cf) => cf,
                    Err(e) => return Some(Err(e)),
                };
                match self.db.get_pinned_cf_opt(cf, key, &self.cached_only) {
                    Ok(value) => Some(Ok(value.map(|v| Bytes::copy_from_slice(&v)))),
                    Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => None,
                    Err(e) => Some(Err(io_err(e))),
                }
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(_)) => Some(Err(io_err("import lock poisoned"))),
        }
    }

    fn scan_in(
        &self,
        space: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, Bytes)>> {
        let _guard = self.read_guard()?;
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let iter = self.db.iterator_cf_opt(
            self.space_cf(space)?,
            ro,
            IteratorMode::From(start, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter.take(limit) {
            let (k, v) = item.map_err(io_err)?;
            out.push((Bytes::from(k.into_vec()), Bytes::from(v.into_vec())));
        }
        Ok(out)
    }

    fn visit_in(
        &self,
        space: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        visit: &mut Visitor<'_>,
    ) -> io::Result<()> {
        let _guard = self.read_guard()?;
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_vec());
        }
        let mut iter = self.db.raw_iterator_cf_opt(self.space_cf(space)?, ro);
        iter.seek(start);
        while let (Some(key), Some(value)) = (iter.key(), iter.value()) {
            visit(key, value)?;
            iter.next();
        }
        iter.status().map_err(io_err)
    }

    fn applied_state(&self) -> io::Result<AppliedState> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_META)?, KEY_APPLIED)
            .map_err(io_err)?
        {
            Some(bytes) => Self::decode_state(&bytes),
            None => Ok(AppliedState::default()),
        }
    }

    fn commit(&self, batch: WriteSet) -> io::Result<()> {
        let mut wb = self.batch_of(&batch)?;
        wb.put_cf(
            self.cf(CF_META)?,
            KEY_APPLIED,
            Self::encode_state(&batch.state),
        );
        self.write(wb)
    }

    fn commit_outside_apply(&self, batch: WriteSet) -> io::Result<()> {
        let wb = self.batch_of(&batch)?;
        self.write(wb)
    }

    fn export(&self, sink: &mut dyn SnapshotSink) -> io::Result<()> {
        let snapshot = {
            let _guard = self.read_guard()?;
            self.db.snapshot()
        };
        let state = match snapshot
            .get_cf(self.cf(CF_META)?, KEY_APPLIED)
            .map_err(io_err)?
        {
            Some(bytes) => Self::decode_state(&bytes)?,
            None => AppliedState::default(),
        };
        sink.begin(&state)?;
        for space in Keyspace::ALL {
            for item in snapshot.iterator_cf(self.space_cf(space)?, IteratorMode::Start) {
                let (k, v) = item.map_err(io_err)?;
                sink.record(space, &k, &v)?;
            }
        }
        Ok(())
    }

    fn import(
        &self,
        state: &AppliedState,
        records: &mut dyn Iterator<Item = io::Result<Record>>,
    ) -> io::Result<()> {
        let _exclusive = self
            .import_lock
            .write()
            .map_err(|_| io_err("import lock poisoned"))?;
        let meta = self.cf(CF_META)?;
        let mut marker = WriteBatch::default();
        marker.put_cf(meta, KEY_IMPORTING, b"1");
        self.write(marker)?;
        // The marker is durable before any data is deleted.
        self.sync()?;
        for space in Keyspace::ALL {
            self.clear(space)?;
        }
        let mut batch = WriteBatch::default();
        for record in records {
            let record = record?;
            batch.put_cf(self.space_cf(record.space)?, &record.key, &record.value);
            if batch.size_in_bytes() >= IMPORT_BATCH_BYTES {
                self.write(std::mem::take(&mut batch))?;
            }
        }
        batch.put_cf(meta, KEY_APPLIED, Self::encode_state(state));
        batch.delete_cf(meta, KEY_IMPORTING);
        self.write(batch)?;
        self.sync()
    }

    fn sync(&self) -> io::Result<()> {
        let cfs = CFS
            .iter()
            .map(|name| self.cf(name))
            .collect::<io::Result<Vec<_>>>()?;
        self.db
            .flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())
            .map_err(io_err)
    }

    fn durable(&self) -> bool {
        true
    }

    fn defragment(&self) -> io::Result<()> {
        let _guard = self.read_guard()?;
        for space in Keyspace::ALL {
            self.db
                .compact_range_cf(self.space_cf(space)?, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn import_interrupted(&self) -> io::Result<bool> {
        Ok(self
            .db
            .get_pinned_cf(self.cf(CF_META)?, KEY_IMPORTING)
            .map_err(io_err)?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine_suite;
    use super::*;

    #[test]
    fn rocks_engine_should_pass_suite() {
        let a = tempfile::tempdir().expect("tempdir");
        let b = tempfile::tempdir().expect("tempdir");
        engine_suite::commit_should_be_visible_and_ordered(
            &RocksEngine::open(a.path()).expect("open"),
        );
        let c = tempfile::tempdir().expect("tempdir");
        engine_suite::export_import_should_round_trip(
            &RocksEngine::open(b.path()).expect("open"),
            &RocksEngine::open(c.path()).expect("open"),
        );
    }

    #[test]
    fn rocks_engine_should_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let engine = RocksEngine::open(dir.path()).expect("open");
            engine
                .commit(WriteSet {
                    writes: vec![(Bytes::from_static(b"k"), Some(Bytes::from_static(b"v")))],
                    system: vec![(Bytes::from_static(b"s"), Some(Bytes::from_static(b"1")))],
                    state: AppliedState::default(),
                    ..WriteSet::default()
                })
                .expect("commit");
        }
        let engine = RocksEngine::open(dir.path()).expect("reopen");
        assert_eq!(
            engine.get(b"k").expect("get"),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            engine.system_records().expect("system"),
            vec![(Bytes::from_static(b"s"), Bytes::from_static(b"1"))]
        );
        assert!(!engine.import_interrupted().expect("marker"));
    }

    #[test]
    fn a_read_now_should_answer_from_memory_and_decline_a_file_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |engine: &RocksEngine, key: &'static [u8]| {
            engine
                .commit(WriteSet {
                    writes: vec![(Bytes::from_static(key), Some(Bytes::from_static(b"v")))],
                    state: AppliedState::default(),
                    ..WriteSet::default()
                })
                .expect("commit");
        };
        {
            let engine = RocksEngine::open(dir.path()).expect("open");
            write(&engine, b"flushed");
            // In the memtable: answered at once, a missing key too.
            assert_eq!(
                engine
                    .try_get_in_now(Keyspace::Data, b"flushed")
                    .map(|r| r.expect("read")),
                Some(Some(Bytes::from_static(b"v")))
            );
            assert_eq!(
                engine
                    .try_get_in_now(Keyspace::Data, b"absent")
                    .map(|r| r.expect("read")),
                Some(None)
            );
        }
        // Reopened, the key is in a table file no read has cached yet.
        let engine = RocksEngine::open(dir.path()).expect("reopen");
        assert!(engine.try_get_in_now(Keyspace::Data, b"flushed").is_none());
        assert_eq!(
            engine.get(b"flushed").expect("get"),
            Some(Bytes::from_static(b"v"))
        );
        assert_eq!(
            engine
                .try_get_in_now(Keyspace::Data, b"flushed")
                .map(|r| r.expect("read")),
            Some(Some(Bytes::from_static(b"v")))
        );
        // A snapshot import holds reads: they wait, so a read now declines.
        let importing = engine.import_lock.write().expect("lock");
        assert!(engine.try_get_in_now(Keyspace::Data, b"flushed").is_none());
        drop(importing);
    }

    /// The applied state after log index `index`.
    fn applied(index: u64) -> AppliedState {
        AppliedState {
            last_applied: Some(openraft::testing::log_id::<crate::types::TypeConfig>(
                1, 1, index,
            )),
            ..AppliedState::default()
        }
    }

    /// An engine whose close loses the memtables, as a crash would.
    fn open_crashing(dir: &Path, data_opts: Options) -> RocksEngine {
        RocksEngine::open_crashing_with(dir, data_opts)
    }

    /// Writes skip the WAL: what a crash keeps is the last flush, with data and applied state
    /// from the same point, and `sync` is what makes commits survive.
    #[test]
    fn rocks_engine_should_keep_data_and_applied_state_together_across_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crash_on_close = || open_crashing(dir.path(), Options::default());
        let put = |key: &'static [u8], value: &'static [u8]| {
            (Bytes::from_static(key), Some(Bytes::from_static(value)))
        };
        // Each commit also writes its index to the system keyspace, which must go with the data.
        let commit = |engine: &RocksEngine, index: u64, writes| {
            engine
                .commit(WriteSet {
                    writes,
                    system: vec![(
                        Bytes::from_static(b"at"),
                        Some(Bytes::from(index.to_string())),
                    )],
                    state: applied(index),
                    ..WriteSet::default()
                })
                .expect("commit")
        };
        let value = |engine: &RocksEngine, key: &[u8]| engine.get(key).expect("get");
        let system = |engine: &RocksEngine| engine.system_records().expect("system");
        {
            let engine = crash_on_close();
            commit(&engine, 1, vec![put(b"a", b"1")]);
            engine.sync().expect("sync");
            commit(&engine, 2, vec![put(b"a", b"2"), put(b"b", b"2")]);
        }
        let engine = crash_on_close();
        assert_eq!(engine.applied_state().expect("state"), applied(1));
        assert_eq!(value(&engine, b"a"), Some(Bytes::from_static(b"1")));
        assert_eq!(value(&engine, b"b"), None);
        assert_eq!(
            system(&engine),
            vec![(Bytes::from_static(b"at"), Bytes::from_static(b"1"))]
        );
        commit(&engine, 2, vec![put(b"b", b"3")]);
        engine.sync().expect("sync");
        drop(engine);
        let engine = crash_on_close();
        assert_eq!(engine.applied_state().expect("state"), applied(2));
        assert_eq!(value(&engine, b"b"), Some(Bytes::from_static(b"3")));
    }

    /// RocksDB flushes a full memtable on its own: the applied state and the system keyspace must
    /// go with it, or a crash would leave data ahead of the applied index (and a replay would
    /// apply it twice) or the session table behind the data it describes.
    #[test]
    fn rocks_engine_should_flush_data_and_applied_state_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let crash_on_close = || {
            let mut data_opts = Options::default();
            data_opts.set_write_buffer_size(64 * 1024);
            open_crashing(dir.path(), data_opts)
        };
        {
            let engine = crash_on_close();
            for index in 1..=64u64 {
                let writes = vec![
                    (
                        Bytes::from_static(b"index"),
                        Some(Bytes::from(index.to_string())),
                    ),
                    (
                        Bytes::from(format!("filler{index}")),
                        Some(Bytes::from(vec![b'x'; 8 * 1024])),
                    ),
                ];
                let system = vec![(
                    Bytes::from_static(b"index"),
                    Some(Bytes::from(index.to_string())),
                )];
                let state = applied(index);
                engine
                    .commit(WriteSet {
                        writes,
                        system,
                        state,
                        ..WriteSet::default()
                    })
                    .expect("commit");
            }
        }
        let engine = crash_on_close();
        let applied = engine
            .applied_state()
            .expect("state")
            .last_applied
            .map(|l| l.index)
            .expect("512 KiB through 64 KiB memtables: some flush completed");
        let index = engine.get(b"index").expect("get").expect("index key");
        assert_eq!(index, Bytes::from(applied.to_string()));
        assert_eq!(
            engine.system_records().expect("system"),
            vec![(Bytes::from_static(b"index"), index)],
            "the system keyspace is flushed with the data"
        );
    }
}
