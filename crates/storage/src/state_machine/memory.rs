//! The in-memory engine: an ordered persistent map (`imbl::OrdMap`).
//!
//! A persistent map makes a point-in-time view an O(1) clone, so building a snapshot never blocks
//! apply and never copies the data set. Nothing is written to disk except snapshots: after a
//! restart the state machine imports the last snapshot and openraft replays the log after it.

use std::io;
use std::ops::Bound;
use std::sync::RwLock;

use bytes::Bytes;
use imbl::OrdMap;

use super::AppliedState;
use super::Keyspace;
use super::KvEngine;
use super::Record;
use super::SnapshotSink;
use super::WriteSet;
use crate::error::io_err;

#[derive(Clone, Default)]
struct Inner {
    /// One map per keyspace, at [`Keyspace::position`].
    spaces: [OrdMap<Bytes, Bytes>; 4],
    state: AppliedState,
}

impl Inner {
    fn space(&self, space: Keyspace) -> &OrdMap<Bytes, Bytes> {
        &self.spaces[space.position()]
    }
}

/// Applies `writes` (`None` deletes) to `map`.
fn apply(map: &mut OrdMap<Bytes, Bytes>, writes: Vec<(Bytes, Option<Bytes>)>) {
    for (key, value) in writes {
        match value {
            Some(v) => {
                map.insert(key, v);
            }
            None => {
                map.remove(&key);
            }
        }
    }
}

/// Ordered in-memory engine.
#[derive(Default)]
pub struct MemoryEngine {
    inner: RwLock<Inner>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn read(&self) -> io::Result<std::sync::RwLockReadGuard<'_, Inner>> {
        self.inner
            .read()
            .map_err(|_| io_err("memory engine lock poisoned"))
    }

    fn write(&self) -> io::Result<std::sync::RwLockWriteGuard<'_, Inner>> {
        self.inner
            .write()
            .map_err(|_| io_err("memory engine lock poisoned"))
    }
}

impl KvEngine for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn get_in(&self, space: Keyspace, key: &[u8]) -> io::Result<Option<Bytes>> {
        Ok(self.read()?.space(space).get(key).cloned())
    }

    fn try_get_in_now(&self, space: Keyspace, key: &[u8]) -> Option<io::Result<Option<Bytes>>> {
        match self.inner.try_read() {
            Ok(inner) => Some(Ok(inner.space(space).get(key).cloned())),
            Err(std::sync::TryLockError::WouldBlock) => None,
            Err(std::sync::TryLockError::Poisoned(_)) => {
                Some(Err(io_err("memory engine lock poisoned")))
            }
        }
    }

    fn scan_in(
        &self,
        space: Keyspace,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, Bytes)>> {
        let map = self.read()?.space(space).clone();
        let upper = match end {
            Some(e) => Bound::Excluded(Bytes::copy_from_slice(e)),
            None => Bound::Unbounded,
        };
        let range = (Bound::Included(Bytes::copy_from_slice(start)), upper);
        Ok(map
            .range(range)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn applied_state(&self) -> io::Result<AppliedState> {
        Ok(self.read()?.state.clone())
    }

    fn commit(&self, batch: WriteSet) -> io::Result<()> {
        let mut batch = batch;
        let mut inner = self.write()?;
        for (space, writes) in batch.take_spaces() {
            apply(&mut inner.spaces[space.position()], writes);
        }
        inner.state = batch.state;
        Ok(())
    }

    fn commit_outside_apply(&self, mut batch: WriteSet) -> io::Result<()> {
        let mut inner = self.write()?;
        for (space, writes) in batch.take_spaces() {
            apply(&mut inner.spaces[space.position()], writes);
        }
        Ok(())
    }

    fn export(&self, sink: &mut dyn SnapshotSink) -> io::Result<()> {
        let view = self.read()?.clone();
        sink.begin(&view.state)?;
        for space in Keyspace::ALL {
            for (k, v) in view.space(space).iter() {
                sink.record(space, k, v)?;
            }
        }
        Ok(())
    }

    fn import(
        &self,
        state: &AppliedState,
        records: &mut dyn Iterator<Item = io::Result<Record>>,
    ) -> io::Result<()> {
        let mut imported = Inner {
            state: state.clone(),
            ..Inner::default()
        };
        for record in records {
            let Record { space, key, value } = record?;
            imported.spaces[space.position()].insert(key, value);
        }
        *self.write()? = imported;
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::engine_suite;
    use super::*;

    #[test]
    fn memory_engine_should_pass_suite() {
        engine_suite::commit_should_be_visible_and_ordered(&MemoryEngine::new());
        engine_suite::export_import_should_round_trip(&MemoryEngine::new(), &MemoryEngine::new());
    }
}
