//! The read side of the state machine, as the client services see it: point reads and scans of
//! applied data, and the index they reflect. Nothing here can write; only apply changes data.
//!
//! Reads that might wait on a lock or the disk run on the blocking pool, never on an async worker;
//! a point read the engine can answer at once (the memory engine, always) skips that hop.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use openraft::type_config::async_runtime::WatchReceiver;
use rskv_storage::KvEngine;

use crate::raft::Raft;
use crate::raft::TypeConfig;

/// A read-only handle on the state machine's engine, cheap to clone.
#[derive(Clone)]
pub struct ReadView {
    engine: Arc<dyn KvEngine>,
    metrics: openraft::type_config::alias::WatchReceiverOf<
        TypeConfig,
        openraft::RaftMetrics<TypeConfig>,
    >,
}

impl ReadView {
    /// A view of `engine`, whose applied index `raft` reports.
    pub fn new(engine: Arc<dyn KvEngine>, raft: &Raft) -> ReadView {
        ReadView {
            engine,
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
        if let Some(value) = self.engine.try_get_now(&key) {
            return value;
        }
        self.blocking(move |e| e.get(&key)).await
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
        self.blocking(move |e| e.scan(&start, end.as_deref(), limit))
            .await
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
