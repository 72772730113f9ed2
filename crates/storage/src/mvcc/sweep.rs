//! Compaction's second half: removing, off the apply path, the history a `Compact` made
//! unreadable, as etcd's backend removes it in batches after its index has moved.
//!
//! Apply's `Compact` ([`super::writer::Writer::compact`]) only moves the compacted revision:
//! from then on every read below it fails, on every node, at the same log entry. The records
//! below it stay where they are until the [`Sweeper`], a thread of its own, removes them in
//! steps of [`STEP`] changes, each one engine commit. The system record [`SWEPT_KEY`] says how
//! far it has got: every record superseded at or before that revision is gone. A pass from there
//! to the compacted revision records its end only once it is done, so a pass cut short by a
//! crash is redone from its start (removing a record twice is harmless).
//!
//! What lies between the swept and the compacted revision is garbage that no read, watch or
//! snapshot import needs. HashKV leaves it out ([`hash_kv`]), so members agree on their hashes
//! whatever their sweeps' progress; it runs under the sweeper's lock, which snapshot imports
//! take too, so neither a sweep step nor an import lands halfway through a hash.

use std::collections::HashSet;
use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::thread::JoinHandle;

use bytes::Bytes;
use prost::Message;
use rskv_proto::storage::SweptRevision;

use super::decode;
use super::history_key;
use super::load_meta;
use super::parse_history_key;
use super::prev_of;
use super::read;
use super::Change;
use super::Rev;
use crate::error::io_err;
use crate::state_machine::Keyspace;
use crate::state_machine::WriteSet;
use crate::types::MvccError;
use crate::KvEngine;

/// The system-keyspace key of the sweep's progress ([`SweptRevision`]).
pub const SWEPT_KEY: &[u8] = b"mvcc/swept";

/// Changes read per sweep step: each step is one engine commit of at most this many removals,
/// short enough that apply's commits interleave with a long sweep.
pub const STEP: usize = 1024;

/// How far the sweep has removed history, if it has ever been recorded (see the module doc;
/// absent: as far as the compacted revision).
///
/// # Errors
/// On a storage failure or a damaged record.
pub fn swept(engine: &dyn KvEngine) -> io::Result<Option<i64>> {
    engine
        .get_in(Keyspace::System, SWEPT_KEY)?
        .map(|stored| swept_revision(&stored))
        .transpose()
}

/// The revision a stored sweep record ([`SWEPT_KEY`]'s value) names.
///
/// # Errors
/// On a damaged record.
pub fn swept_revision(stored: &[u8]) -> io::Result<i64> {
    Ok(decode::<SweptRevision>(stored, "sweep record")?.revision)
}

/// The record saying the sweep has got to `revision`.
pub fn swept_record(revision: i64) -> (Bytes, Option<Bytes>) {
    (
        Bytes::from_static(SWEPT_KEY),
        Some(Bytes::from(SweptRevision { revision }.encode_to_vec())),
    )
}

/// The records a sweep from `swept` to `compacted` removes, found in up to `limit` changes from
/// `from` on, and where to go on from (`None`: the pass has read every change it needs): each
/// change after `swept` and up to `compacted` removes the version it replaced (one before
/// `swept` went in an earlier pass), and a deletion before `compacted` removes itself (a watch
/// from the compacted revision must still see one at it).
fn removable(
    engine: &dyn KvEngine,
    swept: i64,
    compacted: i64,
    from: Rev,
    limit: usize,
) -> io::Result<(Vec<Rev>, Option<Rev>)> {
    let step = engine.scan_in(Keyspace::History, &history_key(from), None, limit)?;
    let full = step.len() == limit;
    let mut out = Vec::new();
    let mut next = from;
    for (key, value) in step {
        let rev = parse_history_key(&key)?;
        if rev.main > compacted {
            return Ok((out, None));
        }
        let change: Change = decode(&value, "history record")?;
        if let Some(prev) = prev_of(&change).filter(|_| rev.main > swept) {
            out.push(prev);
        }
        if change.tombstone && rev.main < compacted {
            out.push(rev);
        }
        next = Rev {
            main: rev.main,
            sub: rev.sub + 1,
        };
    }
    Ok((out, full.then_some(next)))
}

/// One pass of the sweep: from the swept revision to the compacted revision as they were when it
/// began.
#[derive(Debug)]
pub struct Pass {
    swept: i64,
    target: i64,
    next: Option<Rev>,
}

impl Pass {
    /// The pass the store needs now, if any.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    pub fn start(engine: &dyn KvEngine) -> io::Result<Option<Pass>> {
        let Some(swept) = swept(engine)? else {
            return Ok(None);
        };
        let target = load_meta(engine)?.compact_revision;
        Ok((swept < target).then(|| Pass {
            swept,
            target,
            next: Some(Rev::new(swept.max(1))),
        }))
    }

    /// The compacted revision the pass sweeps to.
    pub fn target(&self) -> i64 {
        self.target
    }

    /// Removes what up to `limit` more changes supersede, in one engine commit; the last step
    /// records the pass done. Returns whether it is.
    ///
    /// # Errors
    /// On a storage failure or a damaged record; nothing of the step is committed then.
    pub fn step(&mut self, engine: &dyn KvEngine, limit: usize) -> io::Result<bool> {
        let Some(from) = self.next else {
            return Ok(true);
        };
        let (removed, next) = removable(engine, self.swept, self.target, from, limit)?;
        crate::metrics::swept(removed.len());
        let mut set = WriteSet {
            history: removed
                .into_iter()
                .map(|r| (history_key(r), None))
                .collect(),
            ..WriteSet::default()
        };
        if next.is_none() {
            set.system.push(swept_record(self.target));
        }
        engine.commit_outside_apply(set)?;
        self.next = next;
        Ok(next.is_none())
    }
}

/// Sweeps every pass the store needs, at once (the [`Sweeper`]'s work without its thread, for
/// tests and tools that own the engine).
///
/// # Errors
/// On a storage failure or a damaged record.
pub fn sweep_all(engine: &dyn KvEngine) -> io::Result<()> {
    while let Some(mut pass) = Pass::start(engine)? {
        while !pass.step(engine, STEP)? {}
    }
    Ok(())
}

/// etcd's HashKV: a checksum of the store's history up to `revision` (0: the current one), as a
/// fully swept store holds it, which every member holding the same history agrees on. Returns
/// the hash, the revision it covers and the compacted revision. Nothing may sweep or import
/// while it reads ([`Sweeper::hash_kv`] sees to it).
///
/// # Errors
/// The inner error for a compacted or future revision; the outer one on a storage failure.
pub fn hash_kv(
    engine: &dyn KvEngine,
    revision: i64,
) -> io::Result<Result<(u32, i64, i64), MvccError>> {
    let meta = load_meta(engine)?;
    let at = match read::readable(revision, meta.revision, meta.compact_revision) {
        Ok(at) => at,
        Err(e) => return Ok(Err(e)),
    };
    // The garbage a sweep has yet to remove, left out of the hash.
    let mut garbage = HashSet::new();
    if let Some(swept) = swept(engine)?.filter(|s| *s < meta.compact_revision) {
        let mut from = Some(Rev::new(swept.max(1)));
        while let Some(at) = from {
            let (removed, next) = removable(engine, swept, meta.compact_revision, at, STEP)?;
            garbage.extend(removed);
            from = next;
        }
    }
    let end = history_key(Rev::new(at + 1));
    let mut hash = 0;
    engine.visit_in(Keyspace::History, b"", Some(&end), &mut |key, value| {
        if !garbage.contains(&parse_history_key(key)?) {
            hash = super::crc32(super::crc32(hash, key), value);
        }
        Ok(())
    })?;
    Ok(Ok((hash, at, meta.compact_revision)))
}

/// What the sweeper's thread shares with its handle.
struct Shared {
    engine: Arc<dyn KvEngine>,
    /// Held by each sweep step, by HashKV and by a snapshot import; counts the imports, so a
    /// pass begun before one is begun again (its position means nothing in the imported store).
    lock: Mutex<u64>,
    /// How far history is swept (the compacted revision once a pass has nothing to do): what a
    /// `Compact` with etcd's `physical` flag waits for.
    swept: tokio::sync::watch::Sender<i64>,
    /// Set when the handle is dropped: the pass in progress stops at its next step (and is
    /// redone at the next start), so a long sweep does not hold up a node's shutdown.
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> io::Result<MutexGuard<'_, u64>> {
        self.lock
            .lock()
            .map_err(|_| io_err("history sweep lock poisoned"))
    }

    /// Runs passes until the store needs none.
    fn run(&self) -> io::Result<()> {
        'passes: loop {
            let guard = self.lock()?;
            let imports = *guard;
            let Some(mut pass) = Pass::start(&*self.engine)? else {
                // Nothing to sweep: history is swept up to the compacted revision (the record,
                // when there is one, never names a revision beyond it).
                crate::metrics::sweep_backlog(0);
                self.swept
                    .send_replace(load_meta(&*self.engine)?.compact_revision);
                return Ok(());
            };
            crate::metrics::sweep_backlog(pass.target - pass.swept);
            drop(guard);
            let started = std::time::Instant::now();
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let guard = self.lock()?;
                if *guard != imports {
                    continue 'passes;
                }
                let done = pass.step(&*self.engine, STEP)?;
                drop(guard);
                if done {
                    break;
                }
                // Let apply, which shares the engine and the cores, go first.
                std::thread::yield_now();
            }
            tracing::debug!(
                revision = pass.target(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "history swept"
            );
            self.swept.send_replace(pass.target());
        }
    }
}

/// The thread that sweeps compacted history (see the module doc), woken after every apply that
/// compacts and every snapshot import; stopped and joined on drop.
pub struct Sweeper {
    shared: Arc<Shared>,
    wake: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Starts the sweeper of `engine`, which sweeps whatever a previous run left at once.
    ///
    /// # Errors
    /// When the operating system refuses a thread, or the store's counters cannot be read.
    pub fn spawn(engine: Arc<dyn KvEngine>) -> io::Result<Sweeper> {
        let meta = load_meta(&*engine)?;
        let now = swept(&*engine)?.unwrap_or(meta.compact_revision);
        let shared = Arc::new(Shared {
            engine,
            lock: Mutex::new(0),
            swept: tokio::sync::watch::Sender::new(now),
            stop: AtomicBool::new(false),
        });
        let (wake, woken) = mpsc::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("rskv-sweeper".to_string())
                .spawn(move || {
                    while woken.recv().is_ok() {
                        while woken.try_recv().is_ok() {}
                        if let Err(e) = shared.run() {
                            // Retried at the next wake-up (the next compaction); the garbage
                            // stays meanwhile, unread.
                            tracing::warn!(error = %e, "sweeping compacted history failed");
                        }
                    }
                })?
        };
        let sweeper = Sweeper {
            shared,
            wake: Some(wake),
            thread: Some(thread),
        };
        sweeper.wake();
        Ok(sweeper)
    }

    /// Asks for a sweep (after a compaction or an import).
    pub fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.send(());
        }
    }

    /// Holds off the sweep while the store is replaced wholesale (a snapshot import); the pass
    /// in progress, if any, begins again after it.
    ///
    /// # Errors
    /// When the lock is poisoned.
    pub fn pause(&self) -> io::Result<MutexGuard<'_, u64>> {
        let mut guard = self.shared.lock()?;
        *guard += 1;
        Ok(guard)
    }

    /// [`hash_kv`], with the sweep held off.
    ///
    /// # Errors
    /// As [`hash_kv`].
    pub fn hash_kv(&self, revision: i64) -> io::Result<Result<(u32, i64, i64), MvccError>> {
        let _guard = self.shared.lock()?;
        hash_kv(&*self.shared.engine, revision)
    }

    /// Waits until history is swept up to `revision` (etcd's `physical` compaction: its
    /// records are gone from the engine, for a defragment to reclaim).
    pub async fn swept_to(&self, revision: i64) {
        let mut swept = self.shared.swept.subscribe();
        // The sender lives as long as `self`: the wait cannot end with it.
        let _ = swept.wait_for(|s| *s >= revision).await;
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweep record is part of the durable format: its key and bytes are pinned.
    #[test]
    fn the_sweep_record_should_keep_its_encoding() {
        let (key, value) = swept_record(300);
        assert_eq!(&key[..], b"mvcc/swept");
        assert_eq!(value.as_deref(), Some(&[0x08, 0xac, 0x02][..]));
        let engine = crate::memory::MemoryEngine::new();
        assert_eq!(swept(&engine).expect("absent"), None);
        engine
            .commit_outside_apply(WriteSet {
                system: vec![(key, value)],
                ..WriteSet::default()
            })
            .expect("commit");
        assert_eq!(swept(&engine).expect("read"), Some(300));
        engine
            .commit_outside_apply(WriteSet {
                system: vec![(
                    Bytes::from_static(SWEPT_KEY),
                    Some(Bytes::from_static(b"\xff")),
                )],
                ..WriteSet::default()
            })
            .expect("commit");
        let damaged = swept(&engine).expect_err("a damaged record is an error");
        assert!(damaged.to_string().contains("sweep record"), "{damaged}");
    }

    #[tokio::test]
    async fn the_sweeper_should_remove_compacted_history_on_its_own_thread() {
        // Key k written at revisions 2, 3 and 4, each replacing the one before; compacted at 4
        // and not swept at all.
        let engine = Arc::new(crate::memory::MemoryEngine::new());
        let change = |value: &str, prev: i64| Change {
            key: Bytes::from_static(b"k"),
            value: Bytes::copy_from_slice(value.as_bytes()),
            version: 1,
            create_revision: 2,
            prev_revision: prev,
            ..Change::default()
        };
        let history = [
            (2, change("a", 0)),
            (3, change("b", 2)),
            (4, change("c", 3)),
        ]
        .into_iter()
        .map(|(rev, c)| {
            (
                history_key(Rev::new(rev)),
                Some(Bytes::from(c.encode_to_vec())),
            )
        })
        .collect();
        let meta = super::super::MvccMeta {
            revision: 4,
            compact_revision: 4,
        };
        engine
            .commit_outside_apply(WriteSet {
                history,
                system: vec![
                    (
                        Bytes::from_static(super::super::META_KEY),
                        Some(Bytes::from(meta.encode_to_vec())),
                    ),
                    swept_record(0),
                ],
                ..WriteSet::default()
            })
            .expect("commit");
        let before = hash_kv(&*engine, 0).expect("hash").expect("readable");
        let sweeper = Sweeper::spawn(engine.clone()).expect("spawn");
        tokio::time::timeout(std::time::Duration::from_secs(10), sweeper.swept_to(4))
            .await
            .expect("swept to 4 in time");
        let left: Vec<Bytes> = engine
            .scan_in(Keyspace::History, b"", None, usize::MAX)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![history_key(Rev::new(4))]);
        assert_eq!(swept(&*engine).expect("record"), Some(4));
        assert_eq!(sweeper.hash_kv(0).expect("hash"), Ok(before));
        drop(sweeper);
    }
}
