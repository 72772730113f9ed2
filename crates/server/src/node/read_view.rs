//! The read side of the state machine, as the client services see it: point reads and scans of
//! applied data, and the index they reflect. Nothing here can write; only apply changes data.
//!
//! Reads that might wait on a lock or the disk run on the blocking pool, never on an async worker;
//! a point read the engine can answer at once (the memory engine, always; RocksDB from its
//! memtables and block cache) skips that hop, which costs more than the read.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use openraft::type_config::async_runtime::WatchReceiver;
use rskv_proto::etcd::etcdserverpb::RangeRequest;
use rskv_proto::etcd::etcdserverpb::RangeResponse;
use rskv_proto::etcd::mvccpb;
use rskv_storage::mvcc;
use rskv_storage::mvcc::sweep::Sweeper;
use rskv_storage::mvcc::Source;
use rskv_storage::state_machine::Keyspace;
use rskv_storage::types::MvccError;
use rskv_storage::KvEngine;

use crate::raft::Raft;
use crate::raft::TypeConfig;

/// A read-only handle on the state machine's engine, cheap to clone.
#[derive(Clone)]
pub struct ReadView {
    engine: Arc<dyn KvEngine>,
    /// Removes compacted history beside apply: HashKV holds it off, a physical compaction waits
    /// for it.
    sweeper: Arc<Sweeper>,
    metrics: openraft::type_config::alias::WatchReceiverOf<
        TypeConfig,
        openraft::RaftMetrics<TypeConfig>,
    >,
}

impl ReadView {
    /// A view of `engine`, whose applied index `raft` reports and whose compacted history
    /// `sweeper` removes.
    pub fn new(engine: Arc<dyn KvEngine>, sweeper: Arc<Sweeper>, raft: &Raft) -> ReadView {
        ReadView {
            engine,
            sweeper,
            metrics: raft.metrics(),
        }
    }

    /// The index the local state machine has applied (so a read taken after it reflects at least
    /// that index).
    pub fn applied_index(&self) -> u64 {
        self.metrics
            .borrow_watched()
            .last_applied
            .as_ref()
            .map(|l| l.index)
            .unwrap_or(0)
    }

    /// The value of `key`, if any.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn get(&self, key: Bytes) -> io::Result<Option<Bytes>> {
        let stored = match self.engine.try_get_in_now(Keyspace::Data, &key) {
            Some(stored) => stored?,
            None => self.blocking(move |e| e.get(&key)).await?,
        };
        stored.map(|v| mvcc::value_of(&v)).transpose()
    }

    /// Up to `limit` pairs from `start` (inclusive) to `end` (exclusive; `None`: to the end), in
    /// key order.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn scan(
        &self,
        start: Bytes,
        end: Option<Bytes>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, Bytes)>> {
        self.blocking(move |e| {
            e.scan(&start, end.as_deref(), limit)?
                .into_iter()
                .map(|(k, v)| Ok((k, mvcc::value_of(&v)?)))
                .collect()
        })
        .await
    }

    /// etcd's Range over the multi-version store, with the revision the reply's header reports
    /// (read before the data, so the data is at least that new).
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one for a compacted or future revision.
    pub async fn range(
        &self,
        request: RangeRequest,
    ) -> io::Result<Result<RangeResponse, MvccError>> {
        // One key at the current revision: from the memtables or the cache when they have it.
        if request.range_end.is_empty() && request.revision <= 0 {
            match mvcc::EngineSource::now(&*self.engine)
                .and_then(|source| mvcc::read::range(&source, &request))
            {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                answered => return answered,
            }
        }
        self.blocking(move |e| mvcc::read::range(&mvcc::EngineSource::new(e)?, &request))
            .await
    }

    /// Up to `limit` changes of the store from `from` on, in revision order, each as etcd's
    /// watch event (with the version it replaced when `prev_kv`), and the store's counters as of
    /// the read.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn changes(
        &self,
        from: mvcc::Rev,
        limit: usize,
        prev_kv: bool,
    ) -> io::Result<(Vec<(mvcc::Rev, mvccpb::Event)>, mvcc::MvccMeta)> {
        self.blocking(move |e| {
            let source = mvcc::EngineSource::new(e)?;
            let changes = source.changes(from, limit)?;
            let events = changes
                .iter()
                .map(|(rev, change)| Ok((*rev, mvcc::read::event(&source, *rev, change, prev_kv)?)))
                .collect::<io::Result<_>>()?;
            Ok((events, source.meta()))
        })
        .await
    }

    /// A consistent backup of the whole state machine in etcd's format (a bbolt file, see
    /// `rskv_storage::etcd_backup::write`), built in `dir` (under a name removed at once) and
    /// ended by its SHA-256 as etcd ends its own: what etcd's `Snapshot` streams.
    ///
    /// # Errors
    /// On a storage or write failure.
    pub async fn backup(&self, dir: &std::path::Path) -> io::Result<Box<dyn io::Read + Send>> {
        let dir = dir.to_path_buf();
        let file = self
            .blocking(move |e| rskv_storage::etcd_backup::write::write_backup(e, &dir))
            .await?;
        Ok(Box::new(rskv_storage::snapshot::BackupReader::new(
            io::BufReader::with_capacity(1 << 20, file),
        )))
    }

    /// A CRC-32 of every record of the state machine, from a consistent export (etcd's `Hash`).
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn hash(&self) -> io::Result<u32> {
        self.blocking(|e| {
            struct Crc(u32);
            impl rskv_storage::state_machine::SnapshotSink for Crc {
                fn begin(&mut self, _: &rskv_storage::AppliedState) -> io::Result<()> {
                    Ok(())
                }
                fn record(&mut self, _: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
                    self.0 = mvcc::crc32(mvcc::crc32(self.0, key), value);
                    Ok(())
                }
            }
            let mut crc = Crc(0);
            e.export(&mut crc)?;
            Ok(crc.0)
        })
        .await
    }

    /// etcd's `HashKV` of the store's history up to `revision` (see [`mvcc::sweep::hash_kv`]).
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one for a compacted or future revision.
    pub async fn hash_kv(&self, revision: i64) -> io::Result<Result<(u32, i64, i64), MvccError>> {
        let sweeper = self.sweeper.clone();
        rskv_storage::io_thread::blocking(move || sweeper.hash_kv(revision)).await
    }

    /// Waits until this node's engine holds nothing of the history before `revision` (etcd's
    /// `physical` compaction), its sweep having removed it.
    pub async fn swept_to(&self, revision: i64) {
        self.sweeper.swept_to(revision).await;
    }

    /// Rewrites the engine's files without what deletions and compaction left behind (etcd's
    /// `Defragment`): it changes no data, only how it is stored.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn defragment(&self) -> io::Result<()> {
        self.blocking(|e| e.defragment()).await
    }

    /// The store's compacted revision (reads before it fail).
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn compacted(&self) -> io::Result<i64> {
        self.blocking(|e| Ok(mvcc::load_meta(e)?.compact_revision))
            .await
    }

    /// Lease `id`, if it exists.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn lease(&self, id: i64) -> io::Result<Option<mvcc::Lease>> {
        self.blocking(move |e| {
            e.get_in(Keyspace::Lease, &mvcc::lease_key(id))?
                .map(|v| mvcc::decode(&v, "lease"))
                .transpose()
        })
        .await
    }

    /// Every lease with its attached keys.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn leases(&self) -> io::Result<Vec<(mvcc::Lease, Vec<Bytes>)>> {
        self.blocking(mvcc::writer::Writer::leases).await
    }

    /// The engine's name, for status output.
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    async fn blocking<T, F>(&self, f: F) -> io::Result<T>
    where
        F: FnOnce(&dyn KvEngine) -> io::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let engine = self.engine.clone();
        rskv_storage::io_thread::blocking(move || f(&*engine)).await
    }
}
