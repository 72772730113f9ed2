//! The Raft log, vote and commit/purge markers, persisted in RocksDB.
//!
//! Layout: column family `logs` maps a big-endian `u64` index to the entry in rskv's format (a
//! `rskv.storage.v1.Entry`, see [`crate::format`]), so RocksDB's byte order is log order; column
//! family `meta` holds `vote`, `committed`, `last_purged` (in the same format) and
//! `format_version`, recorded when the store is created and checked before it is opened
//! ([`crate::format::version`]): a store of another version is refused, untouched.
//!
//! **The log writer thread, durability and group commit.** Every write to the log happens on one
//! thread of the store's own, `rskv-log-writer` (as TiKV's store writers do), never on an async
//! worker: a RocksDB write stall holds that thread, not the runtime serving clients and peers.
//! `append` encodes its entries, hands them and openraft's completion callback to the writer and
//! returns. The writer takes every write queued so far, writes them in order without syncing,
//! syncs the RocksDB WAL once (`flush_wal(true)`), and only then completes them all: each
//! acknowledgement is backed by an fsync that happened after its write, and many appends share
//! one fsync under load. The vote and truncations are synced the same way before they return, as
//! Raft requires; the commit marker and purges, whose loss in a crash is harmless, are not.
//!
//! **Recent entries in memory.** The leader's replication tasks read back every entry it has just
//! appended; [`RecentEntries`] keeps the tail of the log in memory (bounded by count and bytes,
//! and never dropping an entry the writer has not written yet, so everything below it is in
//! RocksDB) so those reads skip RocksDB, the decode and a blocking-thread hop. It mirrors every
//! append, truncation and purge, so it is always a suffix of the stored log.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;

use crate::error::io_err;
use crate::format;
use crate::format::version;
use crate::format::Wire;
use crate::io_thread::blocking;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::TypeConfig;
use crate::types::Vote;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogStorage;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Direction;
use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::WriteBatch;
use rocksdb::WriteOptions;
use rocksdb::DB;

const CF_LOGS: &str = "logs";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// WAL bytes kept before RocksDB flushes the column families that pin them: a little over two
/// memtables of log, so the oldest WAL file soon becomes obsolete and can be recycled.
const MAX_TOTAL_WAL_BYTES: u64 = 20 * 1024 * 1024;
/// Memtable size of the log column family, and so about the largest a WAL file grows (the
/// compaction after a purge flushes it, and switches WAL files, earlier).
const LOG_WRITE_BUFFER_BYTES: usize = 8 * 1024 * 1024;
/// Obsolete WAL files kept for reuse.
const RECYCLED_WAL_FILES: usize = 4;

/// Background compactions slower than this are logged.
const SLOW_IO: std::time::Duration = std::time::Duration::from_millis(50);

/// Most entries kept in [`RecentEntries`].
const RECENT_MAX_ENTRIES: usize = 16 * 1024;
/// Most bytes (approximately) kept in [`RecentEntries`].
const RECENT_MAX_BYTES: usize = 32 * 1024 * 1024;

/// The newest log entries, a contiguous suffix of the log (or empty). Entries the writer has not
/// written yet are always here: only written ones are evicted.
#[derive(Default)]
pub struct RecentEntries {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// The highest index the writer has written to RocksDB.
    written: u64,
}

fn entry_bytes(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(c) => c.approx_bytes(),
        _ => 256,
    }
}

impl RecentEntries {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index)
    }

    /// Drops every entry with index >= `from`.
    fn truncate_from(&mut self, from: u64) {
        while self.last_index().is_some_and(|i| i >= from) {
            self.pop_back();
        }
    }

    /// Drops every entry with index <= `upto`.
    fn purge_upto(&mut self, upto: u64) {
        while self.first_index().is_some_and(|i| i <= upto) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&e);
        }
    }

    fn pop_back(&mut self) {
        if let Some(e) = self.entries.pop_back() {
            self.bytes -= entry_bytes(&e);
        }
    }

    fn push(&mut self, entry: Entry) {
        let index = entry.log_id.index;
        match self.last_index() {
            Some(last) if index <= last => self.truncate_from(index),
            Some(last) if index > last + 1 => self.clear(),
            _ => {}
        }
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(entry);
        self.evict();
    }

    /// Drops the oldest written entries while over the bounds.
    fn evict(&mut self) {
        while (self.entries.len() > RECENT_MAX_ENTRIES || self.bytes > RECENT_MAX_BYTES)
            && self.first_index().is_some_and(|i| i <= self.written)
        {
            self.pop_front();
        }
    }

    /// The writer wrote every entry up to `index`: they may now be evicted.
    fn written_upto(&mut self, index: u64) {
        self.written = self.written.max(index);
        self.evict();
    }

    fn extend(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.push(e);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries `start..end` (`end` None: to the last), if all of them are held.
    fn get(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first_index()?;
        let last = self.last_index()?;
        let end = end.unwrap_or(last + 1).min(last + 1);
        if start < first {
            return None;
        }
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

/// The RocksDB-backed Raft log store handed to openraft.
pub struct LogStore {
    db: Arc<DB>,
    /// The tail of the log, shared with the readers and the writer.
    recent: Arc<Mutex<RecentEntries>>,
    /// A background compaction of purged entries is running.
    compacting: Arc<AtomicBool>,
    /// Writes for the writer thread; closing it stops the thread.
    writes: Option<mpsc::Sender<LogWrite>>,
    /// The writer thread, joined on drop so no thread outlives the store.
    writer: Option<JoinHandle<()>>,
}

/// A write for the writer thread, completed in the order written.
enum LogWrite {
    /// Entries up to `last`: openraft's callback runs once a WAL sync covers them.
    Append {
        batch: WriteBatch,
        last: u64,
        callback: IOFlushed<TypeConfig>,
    },
    /// A write that must be durable before it is answered (the vote, a truncation).
    Synced {
        batch: WriteBatch,
        done: tokio::sync::oneshot::Sender<io::Result<()>>,
    },
    /// A write whose loss in a crash is harmless (the commit marker, a purge); `done`, if given,
    /// hears once it is written.
    Unsynced {
        batch: WriteBatch,
        done: Option<tokio::sync::oneshot::Sender<io::Result<()>>>,
    },
}

/// A cheap, cloneable reader over the same RocksDB (openraft reads entries from replication
/// tasks concurrently with appends).
#[derive(Clone)]
pub struct LogReader {
    db: Arc<DB>,
    recent: Arc<Mutex<RecentEntries>>,
}

/// Decodes a stored value; an error names where it was (`at`) and what is wrong.
fn decode<T: Wire>(bytes: &[u8], at: impl std::fmt::Display) -> io::Result<T> {
    format::decode(bytes).map_err(|e| io_err(format!("raft log {at}: {e}")))
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn cf<'a>(db: &'a DB, name: &str) -> io::Result<&'a rocksdb::ColumnFamily> {
    db.cf_handle(name)
        .ok_or_else(|| io_err(format!("column family {name} missing")))
}

fn get_meta<T: Wire>(db: &DB, key: &[u8]) -> io::Result<Option<T>> {
    match db.get_cf(cf(db, CF_META)?, key).map_err(io_err)? {
        Some(bytes) => Ok(Some(decode(
            &bytes,
            format_args!("meta key `{}`", String::from_utf8_lossy(key)),
        )?)),
        None => Ok(None),
    }
}

impl LogStore {
    /// Opens (or creates) the log store under `dir`.
    ///
    /// # Errors
    /// When the store is of another format version ([`version::VersionError`]; nothing is
    /// changed then), or RocksDB cannot open the directory (permissions, another process holding
    /// the lock).
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        let found = version::check(dir, &version::LOG_STORE)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // The small `meta` column family would otherwise never flush and pin every WAL file
        // forever; bounding the WAL forces its flush, so purged log space is really given back.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // Every append is synced. Appending to a new WAL file grows it, and on ext4 each
        // fdatasync then also commits the journal for the new size; a recycled file is
        // overwritten in place, so its fdatasync flushes only data (etcd preallocates its WAL
        // segments for the same reason). Small log memtables make WAL files obsolete, and so
        // recyclable, after the first ~20 MiB of log, and keep each flush short.
        opts.set_recycle_log_file_num(RECYCLED_WAL_FILES);
        // The log is written once and read back soon; compression would only cost CPU.
        let mut logs_opts = Options::default();
        logs_opts.set_compression_type(rocksdb::DBCompressionType::None);
        logs_opts.set_write_buffer_size(LOG_WRITE_BUFFER_BYTES);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOGS, logs_opts),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(io_err)?;
        if found == version::Found::New {
            version::record(&db, &version::LOG_STORE)?;
        }
        let db = Arc::new(db);
        let recent: Arc<Mutex<RecentEntries>> = Arc::default();
        let (writes, queue) = mpsc::channel::<LogWrite>();
        let writer = {
            let db = db.clone();
            let recent = recent.clone();
            std::thread::Builder::new()
                .name("rskv-log-writer".into())
                .spawn(move || write_loop(&db, &queue, &recent))?
        };
        Ok(LogStore {
            db,
            recent,
            compacting: Arc::default(),
            writes: Some(writes),
            writer: Some(writer),
        })
    }

    fn submit(&self, write: LogWrite) -> io::Result<()> {
        self.writes
            .as_ref()
            .ok_or_else(|| io_err("log store is closed"))?
            .send(write)
            .map_err(|_| io_err("log writer thread stopped"))
    }

    /// Writes `batch` on the writer thread, synced when `sync`, and waits until it is.
    async fn write(&self, batch: WriteBatch, sync: bool) -> io::Result<()> {
        let (done, written) = tokio::sync::oneshot::channel();
        self.submit(if sync {
            LogWrite::Synced { batch, done }
        } else {
            LogWrite::Unsynced {
                batch,
                done: Some(done),
            }
        })?;
        written
            .await
            .map_err(|_| io_err("log writer thread stopped"))?
    }

    fn recent_mut(&self) -> io::Result<std::sync::MutexGuard<'_, RecentEntries>> {
        self.recent
            .lock()
            .map_err(|_| io_err("recent-entries lock poisoned"))
    }

    fn meta_batch<T: Wire>(&self, key: &[u8], value: &T) -> io::Result<WriteBatch> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_META)?, key, format::encode(value));
        Ok(batch)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once every queued write is done.
        drop(self.writes.take());
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!("log writer thread panicked");
            }
        }
    }
}

/// Most writes taken together under one WAL sync.
const MAX_WRITES_PER_SYNC: usize = 1024;

/// The writer thread: takes every write queued so far, writes each in order, syncs the WAL once
/// if any of them needs it, then completes them in order (group commit).
fn write_loop(db: &DB, queue: &mpsc::Receiver<LogWrite>, recent: &Mutex<RecentEntries>) {
    let unsynced = WriteOptions::default();
    while let Ok(first) = queue.recv() {
        let mut writes = vec![first];
        while writes.len() < MAX_WRITES_PER_SYNC {
            match queue.try_recv() {
                Ok(more) => writes.push(more),
                Err(_) => break,
            }
        }
        let mut needs_sync = false;
        let mut written_upto = None;
        let mut outcomes = Vec::with_capacity(writes.len());
        for write in writes {
            let (batch, completion) = match write {
                LogWrite::Append {
                    batch,
                    last,
                    callback,
                } => {
                    needs_sync = true;
                    (batch, Completion::Append(last, callback))
                }
                LogWrite::Synced { batch, done } => {
                    needs_sync = true;
                    (batch, Completion::Synced(done))
                }
                LogWrite::Unsynced { batch, done } => (batch, Completion::Unsynced(done)),
            };
            let result = db.write_opt(batch, &unsynced);
            if let (Ok(()), Completion::Append(last, _)) = (&result, &completion) {
                written_upto = Some(*last);
            }
            outcomes.push((completion, result));
        }
        let synced = if needs_sync {
            db.flush_wal(true)
        } else {
            Ok(())
        };
        if let Err(e) = &synced {
            tracing::error!(error = %e, "log WAL sync failed");
        }
        if let Some(index) = written_upto {
            match recent.lock() {
                Ok(mut recent) => recent.written_upto(index),
                Err(_) => tracing::error!("recent-entries lock poisoned"),
            }
        }
        for (completion, written) in outcomes {
            // Every waiter gets its own copy of a failure (rocksdb::Error is Clone).
            let durable = || {
                written
                    .clone()
                    .and_then(|()| synced.clone())
                    .map_err(io_err)
            };
            match completion {
                Completion::Append(_, callback) => callback.io_completed(durable()),
                Completion::Synced(done) => {
                    let _ = done.send(durable());
                }
                // Not synced: only its own write decides.
                Completion::Unsynced(Some(done)) => {
                    let _ = done.send(written.map_err(io_err));
                }
                Completion::Unsynced(None) => {}
            }
        }
    }
}

/// Who hears of a write once the writer is done with it.
enum Completion {
    Append(u64, IOFlushed<TypeConfig>),
    Synced(tokio::sync::oneshot::Sender<io::Result<()>>),
    Unsynced(Option<tokio::sync::oneshot::Sender<io::Result<()>>>),
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        // Everything below the recent entries is in RocksDB; the recent ones may not be yet.
        let (first_recent, tail) = {
            let recent = self
                .recent
                .lock()
                .map_err(|_| io_err("recent-entries lock poisoned"))?;
            if let Some(entries) = recent.get(start, end) {
                return Ok(entries);
            }
            match recent.first_index() {
                Some(first) if end.is_none_or(|end| end > first) => {
                    (Some(first), recent.get(first, end).unwrap_or_default())
                }
                _ => (None, Vec::new()),
            }
        };
        let db = self.db.clone();
        let stored_end =
            first_recent.map_or(end, |first| Some(end.map_or(first, |e| e.min(first))));
        let mut entries = blocking(move || read_range(&db, start, stored_end)).await?;
        entries.extend(tail);
        Ok(entries)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        let db = self.db.clone();
        blocking(move || get_meta(&db, KEY_VOTE)).await
    }
}

fn read_range(db: &DB, start: u64, end: Option<u64>) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    let start_key = index_key(start);
    let iter = db.iterator_cf(
        cf(db, CF_LOGS)?,
        IteratorMode::From(&start_key, Direction::Forward),
    );
    for item in iter {
        let (key, value) = item.map_err(io_err)?;
        let index = u64::from_be_bytes(
            key.as_ref()
                .try_into()
                .map_err(|_| io_err("corrupt log key"))?,
        );
        if end.is_some_and(|end| index >= end) {
            break;
        }
        out.push(decode(&value, format_args!("entry {index}"))?);
    }
    Ok(out)
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId> = get_meta(&db, KEY_LAST_PURGED)?;
            let last = db
                .iterator_cf(cf(&db, CF_LOGS)?, IteratorMode::End)
                .next()
                .transpose()
                .map_err(io_err)?;
            let last_log_id = match last {
                Some((_, value)) => Some(decode::<Entry>(&value, "last entry")?.log_id),
                None => last_purged,
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            db: self.db.clone(),
            recent: self.recent.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let batch = self.meta_batch(KEY_VOTE, vote)?;
        self.write(batch, true).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced, and not waited for: losing it in a crash only means re-learning the commit
        // index from the leader; it never makes the node claim more than was committed. openraft
        // awaits this on its core task before it applies the newly committed entries, so it
        // only queues the write (after every append before it).
        let batch = self.meta_batch(KEY_COMMITTED, &committed)?;
        self.submit(LogWrite::Unsynced { batch, done: None })
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let db = self.db.clone();
        blocking(move || Ok(get_meta::<Option<LogId>>(&db, KEY_COMMITTED)?.flatten())).await
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let mut kept = Vec::new();
        {
            let logs = cf(&self.db, CF_LOGS)?;
            for entry in entries {
                batch.put_cf(logs, index_key(entry.log_id.index), format::encode(&entry));
                kept.push(entry);
            }
        }
        let Some(last) = kept.last().map(|e| e.log_id.index) else {
            callback.io_completed(Ok(()));
            return Ok(());
        };
        // Readable at once from the recent entries; written and synced by the writer thread,
        // which then runs the callback.
        self.recent_mut()?.extend(kept);
        self.submit(LogWrite::Append {
            batch,
            last,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOGS)?, index_key(from), index_key(u64::MAX));
        // The entry at u64::MAX is excluded by the range end; no real log gets there.
        self.write(batch, true).await?;
        self.recent_mut()?.truncate_from(from);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut batch = self.meta_batch(KEY_LAST_PURGED, &log_id)?;
        batch.delete_range_cf(
            cf(&self.db, CF_LOGS)?,
            index_key(0),
            index_key(log_id.index + 1),
        );
        // Purge marker first in the same batch: after a crash the state is consistent either way.
        self.write(batch, false).await?;
        self.recent_mut()?.purge_upto(log_id.index);
        // Range deletes only leave tombstones; compacting the purged range gives the disk back,
        // so the log's footprint stays bounded under a steady write load. It runs in the
        // background: openraft awaits purge on its core task, and a 60-100 ms compaction there
        // stalled every write. One at a time; a purge that finds one running leaves its range to
        // the next (each compacts from the start of the log).
        if !self.compacting.swap(true, Ordering::AcqRel) {
            let db = self.db.clone();
            let flag = self.compacting.clone();
            let end = index_key(log_id.index + 1);
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                if let Ok(logs) = cf(&db, CF_LOGS) {
                    db.compact_range_cf(logs, None::<&[u8]>, Some(&end[..]));
                }
                flag.store(false, Ordering::Release);
                let elapsed = started.elapsed();
                if elapsed > SLOW_IO {
                    tracing::info!(?elapsed, "purged log range compacted");
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::entry::RaftEntry;
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::types::Command;

    fn log_id(term: u64, index: u64) -> LogId {
        openraft::testing::log_id::<TypeConfig>(term, 1, index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        Entry::new_blank(log_id(term, index))
    }

    async fn append_all(store: &mut LogStore, entries: Vec<Entry>) {
        let (tx, rx) = TypeConfig::oneshot();
        store
            .append(entries, IOFlushed::signal(tx))
            .await
            .expect("append");
        rx.await.expect("callback").expect("flushed");
    }

    #[tokio::test]
    async fn append_truncate_purge_should_keep_log_contiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append_all(&mut store, (1..=10).map(|i| blank(1, i)).collect()).await;
        let mut reader = store.get_log_reader().await;
        assert_eq!(
            reader.try_get_log_entries(3..6).await.expect("read").len(),
            3
        );

        // A conflicting suffix from a new leader replaces entries 8..=10.
        store
            .truncate_after(Some(log_id(1, 7)))
            .await
            .expect("truncate");
        append_all(&mut store, vec![blank(2, 8)]).await;
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(2, 8)));

        store.purge(log_id(1, 4)).await.expect("purge");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
        let left = reader.try_get_log_entries(..).await.expect("read");
        let indexes: Vec<u64> = left.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, vec![5, 6, 7, 8]);
    }

    #[tokio::test]
    async fn recent_entries_should_always_match_the_stored_log() {
        use rand::Rng;
        use rand::SeedableRng;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        let mut reader = store.get_log_reader().await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (mut first, mut last, mut term) = (1u64, 0u64, 1u64);
        for _ in 0..300 {
            match rng.random_range(0..10) {
                0..=5 => {
                    let n = rng.random_range(1..20);
                    append_all(
                        &mut store,
                        (last + 1..=last + n).map(|i| blank(term, i)).collect(),
                    )
                    .await;
                    last += n;
                }
                6 | 7 if last >= first => {
                    // A new leader's conflicting suffix.
                    let keep = rng.random_range(first - 1..=last);
                    store
                        .truncate_after((keep >= first).then(|| log_id(term, keep)))
                        .await
                        .expect("truncate");
                    term += 1;
                    last = keep;
                }
                8 if last >= first => {
                    let upto = rng.random_range(first..=last);
                    store.purge(log_id(term, upto)).await.expect("purge");
                    first = upto + 1;
                }
                _ => {}
            }
            let lo = rng.random_range(first..=last + 1);
            let hi = rng.random_range(lo..=last + 1);
            let cached = reader.try_get_log_entries(lo..hi).await.expect("read");
            let stored = read_range(&store.db, lo, Some(hi)).expect("stored");
            assert_eq!(cached, stored, "range {lo}..{hi} (log {first}..={last})");
            assert_eq!(
                reader.try_get_log_entries(lo..).await.expect("read"),
                read_range(&store.db, lo, None).expect("stored")
            );
        }
    }

    /// Appends are queued faster than the writer writes them here (no callback is awaited):
    /// every entry stays readable, from RocksDB below the recent entries and from memory above,
    /// and once the callbacks ran all of them are in RocksDB.
    #[tokio::test]
    async fn entries_should_be_readable_whether_or_not_the_writer_has_written_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        let per_append = (RECENT_MAX_ENTRIES / 2 + 1) as u64;
        let mut callbacks = Vec::new();
        for n in 0..4 {
            let (tx, rx) = TypeConfig::oneshot();
            let entries: Vec<Entry> = (n * per_append + 1..=(n + 1) * per_append)
                .map(|i| blank(1, i))
                .collect();
            store
                .append(entries, IOFlushed::signal(tx))
                .await
                .expect("append");
            callbacks.push(rx);
        }
        let total = 4 * per_append;
        let mut reader = store.get_log_reader().await;
        let read = reader.try_get_log_entries(1..).await.expect("read");
        let indexes: Vec<u64> = read.iter().map(|e| e.log_id.index).collect();
        assert_eq!(indexes, (1..=total).collect::<Vec<_>>());
        for rx in callbacks {
            rx.await.expect("callback").expect("flushed");
        }
        assert_eq!(
            read_range(&store.db, 1, None).expect("stored").len() as u64,
            total
        );
    }

    #[tokio::test]
    async fn vote_and_log_should_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vote = Vote::new_committed(3, 2);
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            store.save_vote(&vote).await.expect("vote");
            append_all(&mut store, (1..=3).map(|i| blank(3, i)).collect()).await;
            store
                .save_committed(Some(log_id(3, 2)))
                .await
                .expect("committed");
        }
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let mut reader = store.get_log_reader().await;
        assert_eq!(reader.read_vote().await.expect("vote"), Some(vote));
        assert_eq!(
            store.read_committed().await.expect("committed"),
            Some(log_id(3, 2))
        );
        assert_eq!(
            store.get_log_state().await.expect("state").last_log_id,
            Some(log_id(3, 3))
        );
    }

    #[tokio::test]
    async fn log_rewritten_over_recycled_wal_files_should_reopen_with_the_new_entries() {
        fn put(term: u64, index: u64) -> Entry {
            let value = Bytes::from(vec![term as u8; 64 * 1024]);
            let command = Command::Put {
                key: Bytes::from(index.to_be_bytes().to_vec()),
                value,
                return_prev: false,
                session: None,
            };
            Entry::new(log_id(term, index), EntryPayload::Normal(command))
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // Enough log for several WAL switches: earlier WAL files become obsolete and are
        // overwritten in place, still holding term-1 records past the new data.
        let n = 3 * MAX_TOTAL_WAL_BYTES / (64 * 1024);
        {
            let mut store = LogStore::open(dir.path()).expect("open");
            for term in [1, 2] {
                if term == 2 {
                    store.truncate_after(None).await.expect("truncate");
                }
                for chunk in (1..=n).collect::<Vec<_>>().chunks(16) {
                    append_all(&mut store, chunk.iter().map(|&i| put(term, i)).collect()).await;
                    store
                        .save_committed(Some(log_id(term, chunk[chunk.len() - 1])))
                        .await
                        .expect("committed");
                }
            }
        }
        let info = std::fs::read_to_string(dir.path().join("LOG")).expect("rocksdb LOG");
        assert!(info.contains("from recycle list"), "no WAL file was reused");
        let mut store = LogStore::open(dir.path()).expect("reopen");
        let mut reader = store.get_log_reader().await;
        let entries = reader.try_get_log_entries(..).await.expect("read");
        assert_eq!(entries.len() as u64, n);
        for (entry, index) in entries.iter().zip(1..) {
            assert_eq!(entry.log_id, log_id(2, index));
            assert_eq!(entry, &put(2, index));
        }
    }

    #[tokio::test]
    async fn empty_store_should_report_purged_as_last() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = LogStore::open(dir.path()).expect("open");
        append_all(&mut store, (1..=2).map(|i| blank(1, i)).collect()).await;
        store.purge(log_id(1, 2)).await.expect("purge");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 2)));
    }
}
