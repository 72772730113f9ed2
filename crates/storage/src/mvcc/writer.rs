//! The apply side of the multi-version store: a [`Writer`] executes one apply batch's commands
//! against the engine under the batch's own pending writes, giving each request that changes
//! something the next revision, and hands everything to the engine as one [`WriteSet`].
//!
//! Reads inside the batch (a put's previous version, a transaction's comparisons and ranges, a
//! revoke's attached keys) see the batch's earlier writes: the writer is itself a [`Source`].

use std::collections::BTreeMap;
use std::io;
use std::ops::Bound;

use bytes::Bytes;
use prost::Message;
use rskv_proto::etcd::etcdserverpb as etcd;
use rskv_proto::etcd::etcdserverpb::request_op::Request;
use rskv_proto::etcd::etcdserverpb::response_op::Response;

use super::decode;
use super::history_key;
use super::index::KeyIndex;
use super::index::KeyMeta;
use super::lease_key;
use super::lease_key_of;
use super::mod_rev;
use super::parse_history_key;
use super::read;
use super::to_etcd;
use super::Change;
use super::KeyVersion;
use super::Lease;
use super::MvccMeta;
use super::Rev;
use super::Source;
use super::META_KEY;
use crate::events::Event;
use crate::events::EventKind;
use crate::state_machine::Keyspace;
use crate::state_machine::WriteSet;
use crate::types::MvccError;
use crate::KvEngine;

/// Pending writes of one keyspace: key → new value (`None` deletes).
type Pending<V> = BTreeMap<Bytes, Option<V>>;

/// Executes one apply batch's changes (see the module doc).
pub struct Writer<'a> {
    engine: &'a dyn KvEngine,
    /// What the engine holds, plus the batch's writes so far (see [`super::index`]); every
    /// read of it checks the pending writes first.
    keys: &'a mut KeyIndex,
    meta: MvccMeta,
    meta_dirty: bool,
    /// The sweep's starting point, when this batch's compaction is the store's first.
    sweep_from: Option<i64>,
    data: Pending<KeyVersion>,
    /// Keyed by [`history_key`].
    history: Pending<Change>,
    leases: Pending<Bytes>,
    /// The last change position of the request being executed, once it has changed something.
    open: Option<Rev>,
    /// The log index of the entry being applied (for events).
    index: u64,
    events: Vec<Event>,
}

/// Merges a keyspace's stored pairs in `start..end` with pending writes over them: up to `limit`
/// pairs in key order, pending values winning, pending deletes hiding stored pairs.
fn merged<V: Clone>(
    engine: &dyn KvEngine,
    space: Keyspace,
    pending: &Pending<V>,
    start: &[u8],
    end: Option<&[u8]>,
    limit: usize,
    decode: impl Fn(&[u8]) -> io::Result<V>,
) -> io::Result<Vec<(Bytes, V)>> {
    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
    let over: Vec<(&Bytes, &Option<V>)> = pending
        .range::<[u8], _>((Bound::Included(start), upper))
        .collect();
    let stored = engine.scan_in(space, start, end, limit.saturating_add(over.len()))?;
    let mut out = Vec::new();
    let mut over = over.into_iter().peekable();
    let mut stored = stored.into_iter().peekable();
    while out.len() < limit {
        let take_pending = match (over.peek(), stored.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some((pk, _)), Some((sk, _))) => pk.as_ref() <= sk.as_ref(),
        };
        if take_pending {
            let Some((key, value)) = over.next() else {
                break;
            };
            if stored.peek().is_some_and(|(sk, _)| sk == key) {
                stored.next();
            }
            if let Some(value) = value {
                out.push((key.clone(), value.clone()));
            }
        } else if let Some((key, value)) = stored.next() {
            out.push((key, decode(&value)?));
        }
    }
    Ok(out)
}

impl<'a> Writer<'a> {
    /// A writer over `engine`, whose contents `keys` describes; it updates `keys` as it writes,
    /// so a batch the engine then fails to commit leaves `keys` ahead of the engine (reload it).
    pub fn new(engine: &'a dyn KvEngine, keys: &'a mut KeyIndex) -> Writer<'a> {
        let meta = keys.meta();
        Writer {
            engine,
            keys,
            meta,
            meta_dirty: false,
            sweep_from: None,
            data: Pending::new(),
            history: Pending::new(),
            leases: Pending::new(),
            open: None,
            index: 0,
            events: Vec::new(),
        }
    }

    /// Starts a request (everything it changes shares one revision), from the entry at `index`.
    pub fn begin(&mut self, index: u64) {
        self.open = None;
        self.index = index;
    }

    /// The store's revision now (after the request, once it is done).
    pub fn revision(&self) -> i64 {
        self.meta.revision
    }

    /// The events of the batch so far, taken.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Moves the batch's writes into `set` (the index already has them, and now the counters).
    pub fn finish(self, set: &mut WriteSet) {
        self.keys.set_meta(self.meta);
        set.writes.extend(
            self.data
                .into_iter()
                .map(|(k, v)| (k, v.map(|kv| Bytes::from(kv.encode_to_vec())))),
        );
        set.history.extend(
            self.history
                .into_iter()
                .map(|(k, v)| (k, v.map(|c| Bytes::from(c.encode_to_vec())))),
        );
        set.leases.extend(self.leases);
        if self.meta_dirty {
            set.system.push((
                Bytes::from_static(META_KEY),
                Some(Bytes::from(self.meta.encode_to_vec())),
            ));
        }
        if let Some(revision) = self.sweep_from {
            set.system.push(super::sweep::swept_record(revision));
        }
    }

    /// The next change position of the request: a new revision for its first change.
    fn next_rev(&mut self) -> Rev {
        let rev = match self.open {
            None => {
                self.meta.revision += 1;
                self.meta_dirty = true;
                Rev::new(self.meta.revision)
            }
            Some(last) => Rev {
                main: last.main,
                sub: last.sub + 1,
            },
        };
        self.open = Some(rev);
        rev
    }

    fn lease_exists(&self, id: i64) -> io::Result<bool> {
        let key = lease_key(id);
        Ok(match self.leases.get(&key) {
            Some(pending) => pending.is_some(),
            None => self.engine.get_in(Keyspace::Lease, &key)?.is_some(),
        })
    }

    /// Sets `key` (etcd's put): `value` `None` keeps the current value and `lease` `None` the
    /// current lease (etcd's `ignore_value` / `ignore_lease`, which need the key to exist).
    /// Returns the version it replaced when `read_prev` asks for it: reading it costs an engine
    /// lookup, which a plain put skips (the index says what it replaces), so its event carries
    /// no previous value either.
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one when the put is refused (nothing
    /// changed then).
    pub fn put(
        &mut self,
        key: Bytes,
        value: Option<Bytes>,
        lease: Option<i64>,
        read_prev: bool,
    ) -> io::Result<Result<Option<KeyVersion>, MvccError>> {
        let prev_version = if read_prev || value.is_none() {
            self.latest(&key)?
        } else {
            None
        };
        let prev = match &prev_version {
            Some(kv) => Some(KeyMeta::of(kv)),
            None => self.latest_meta(&key)?,
        };
        if let Err(e) = self.check_put(prev.is_some(), value.is_none(), lease)? {
            return Ok(Err(e));
        }
        let value = value.unwrap_or_else(|| {
            prev_version
                .as_ref()
                .map(|p| p.value.clone())
                .unwrap_or_default()
        });
        let old_lease = prev.map_or(0, |p| p.lease);
        let lease = lease.unwrap_or(old_lease);
        let rev = self.next_rev();
        let version = KeyVersion {
            create_revision: prev.map_or(rev.main, |p| p.create_revision),
            mod_revision: rev.main,
            mod_sub: rev.sub,
            version: prev.map_or(1, |p| p.version + 1),
            lease,
            value: value.clone(),
        };
        let prev_rev = prev.map(|p| p.modified).unwrap_or_default();
        let change = Change {
            key: key.clone(),
            tombstone: false,
            create_revision: version.create_revision,
            version: version.version,
            lease,
            value: value.clone(),
            prev_revision: prev_rev.main,
            prev_sub: prev_rev.sub,
        };
        if old_lease != 0 && old_lease != lease {
            self.leases.insert(lease_key_of(old_lease, &key), None);
        }
        if lease != 0 {
            self.leases
                .insert(lease_key_of(lease, &key), Some(Bytes::new()));
        }
        self.events.push(Event {
            index: self.index,
            revision: rev.main,
            key: key.clone(),
            kind: EventKind::Put { value },
            prev: prev_version.as_ref().map(|p| p.value.clone()),
        });
        self.history.insert(history_key(rev), Some(change));
        self.keys.set(key.clone(), Some(KeyMeta::of(&version)));
        self.data.insert(key, Some(version));
        Ok(Ok(prev_version.filter(|_| read_prev)))
    }

    /// Whether a put may go ahead: `ignore_value` needs the key, a lease must exist.
    fn check_put(
        &self,
        exists: bool,
        ignore_value: bool,
        lease: Option<i64>,
    ) -> io::Result<Result<(), MvccError>> {
        if !exists && (ignore_value || lease.is_none()) {
            return Ok(Err(MvccError::KeyNotFound));
        }
        if let Some(id) = lease.filter(|id| *id != 0) {
            if !self.lease_exists(id)? {
                return Ok(Err(MvccError::LeaseNotFound(id)));
            }
        }
        Ok(Ok(()))
    }

    /// Deletes `key`; returns the version it had (`None`: absent, nothing changed and no
    /// revision taken).
    ///
    /// # Errors
    /// On a storage failure.
    pub fn delete(&mut self, key: Bytes) -> io::Result<Option<KeyVersion>> {
        let Some(prev) = self.latest(&key)? else {
            return Ok(None);
        };
        self.delete_version(key, &prev);
        Ok(Some(prev))
    }

    /// Deletes `key`, whose current version is `prev`.
    fn delete_version(&mut self, key: Bytes, prev: &KeyVersion) {
        let rev = self.next_rev();
        let prev_rev = mod_rev(prev);
        let change = Change {
            key: key.clone(),
            tombstone: true,
            prev_revision: prev_rev.main,
            prev_sub: prev_rev.sub,
            ..Change::default()
        };
        if prev.lease != 0 {
            self.leases.insert(lease_key_of(prev.lease, &key), None);
        }
        self.events.push(Event {
            index: self.index,
            revision: rev.main,
            key: key.clone(),
            kind: EventKind::Delete,
            prev: Some(prev.value.clone()),
        });
        self.history.insert(history_key(rev), Some(change));
        self.keys.set(key.clone(), None);
        self.data.insert(key, None);
    }

    /// etcd's DeleteRange: deletes every key in the range; returns the versions deleted.
    ///
    /// # Errors
    /// On a storage failure.
    pub fn delete_range(
        &mut self,
        key: &[u8],
        range_end: &[u8],
    ) -> io::Result<Vec<(Bytes, KeyVersion)>> {
        let current = self.meta.revision;
        let victims = read::versions_at(self, key, range_end, current, 0)?;
        for (key, prev) in &victims {
            self.delete_version(key.clone(), prev);
        }
        Ok(victims)
    }

    /// Executes etcd's transaction: the comparisons, then the branch they choose, all at one
    /// revision. As etcd's, every comparison, nested transactions' included, is evaluated first,
    /// against the store as it was before the transaction (so a nested comparison does not see
    /// the writes of the operations before it), and every operation on the chosen branches is
    /// checked before any runs, so a refused transaction changes nothing.
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one when the transaction is refused.
    pub fn txn(
        &mut self,
        txn: &etcd::TxnRequest,
    ) -> io::Result<Result<etcd::TxnResponse, MvccError>> {
        let mut path = Vec::new();
        self.choose(txn, &mut path)?;
        if let Err(e) = self.check_ops(txn, &path, &mut 0)? {
            return Ok(Err(e));
        }
        self.run_txn(txn, &path, &mut 0)
    }

    /// Appends which branch `txn` and each nested transaction on its chosen branch take, in the
    /// order they run (etcd's `compareToPath`).
    fn choose(&self, txn: &etcd::TxnRequest, path: &mut Vec<bool>) -> io::Result<()> {
        let succeeded = self.compares_hold(&txn.compare)?;
        path.push(succeeded);
        for op in branch(txn, succeeded) {
            if let Some(Request::RequestTxn(nested)) = &op.request {
                self.choose(nested, path)?;
            }
        }
        Ok(())
    }

    /// Runs `txn` along `path` from `at` (see [`Writer::choose`]).
    fn run_txn(
        &mut self,
        txn: &etcd::TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> io::Result<Result<etcd::TxnResponse, MvccError>> {
        let succeeded = taken(path, at)?;
        let ops = branch(txn, succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                None => None,
                Some(Request::RequestRange(range)) => match read::range(self, range)? {
                    Ok(r) => Some(Response::ResponseRange(r)),
                    Err(e) => return Ok(Err(e)),
                },
                Some(Request::RequestPut(put)) => {
                    let value = (!put.ignore_value).then(|| put.value.clone());
                    let lease = (!put.ignore_lease).then_some(put.lease);
                    let prev = match self.put(put.key.clone(), value, lease, put.prev_kv)? {
                        Ok(prev) => prev,
                        Err(e) => return Ok(Err(e)),
                    };
                    Some(Response::ResponsePut(etcd::PutResponse {
                        header: None,
                        prev_kv: prev.map(|p| to_etcd(put.key.clone(), &p)),
                    }))
                }
                Some(Request::RequestDeleteRange(delete)) => {
                    let deleted = self.delete_range(&delete.key, &delete.range_end)?;
                    Some(Response::ResponseDeleteRange(etcd::DeleteRangeResponse {
                        header: None,
                        deleted: deleted.len() as i64,
                        prev_kvs: if delete.prev_kv {
                            deleted.iter().map(|(k, v)| to_etcd(k.clone(), v)).collect()
                        } else {
                            Vec::new()
                        },
                    }))
                }
                Some(Request::RequestTxn(nested)) => match self.run_txn(nested, path, at)? {
                    Ok(r) => Some(Response::ResponseTxn(r)),
                    Err(e) => return Ok(Err(e)),
                },
            };
            responses.push(etcd::ResponseOp { response });
        }
        Ok(Ok(etcd::TxnResponse {
            header: None,
            succeeded,
            responses,
        }))
    }

    fn compares_hold(&self, compares: &[etcd::Compare]) -> io::Result<bool> {
        for compare in compares {
            if !read::compare_holds(self, compare)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// etcd's checks before a transaction runs, on the branches `path` chooses from `at`:
    /// readable revisions, existing leases, existing keys for `ignore_value` / `ignore_lease`
    /// puts.
    fn check_ops(
        &self,
        txn: &etcd::TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> io::Result<Result<(), MvccError>> {
        for op in branch(txn, taken(path, at)?) {
            let checked = match &op.request {
                None | Some(Request::RequestDeleteRange(_)) => Ok(()),
                Some(Request::RequestRange(range)) => read::readable(
                    range.revision,
                    self.meta.revision,
                    self.meta.compact_revision,
                )
                .map(drop),
                Some(Request::RequestPut(put)) => {
                    // Only a put that keeps the value or the lease needs the key to exist.
                    let needs_key = put.ignore_value || put.ignore_lease;
                    let exists = !needs_key || self.latest_meta(&put.key)?.is_some();
                    let lease = (!put.ignore_lease).then_some(put.lease);
                    self.check_put(exists, put.ignore_value, lease)?
                }
                Some(Request::RequestTxn(nested)) => self.check_ops(nested, path, at)?,
            };
            if checked.is_err() {
                return Ok(checked);
            }
        }
        Ok(Ok(()))
    }

    /// Compacts history at `revision` (etcd's compaction): reads before it fail from now on, and
    /// the [`super::sweep`] removes what it superseded, keeping each key's version as of it.
    /// Takes no revision.
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one for a revision already compacted or
    /// not yet written.
    pub fn compact(&mut self, revision: i64) -> io::Result<Result<(), MvccError>> {
        if revision <= self.meta.compact_revision {
            return Ok(Err(MvccError::Compacted {
                requested: revision,
                compacted: self.meta.compact_revision,
            }));
        }
        if revision > self.meta.revision {
            return Ok(Err(MvccError::FutureRevision {
                requested: revision,
                current: self.meta.revision,
            }));
        }
        // The records below `revision` stay for the sweep to remove (see [`super::sweep`]),
        // from where it got to: the revision compacted before this one, at a store's first
        // compaction.
        if self.sweep_from.is_none() && super::sweep::swept(self.engine)?.is_none() {
            self.sweep_from = Some(self.meta.compact_revision);
        }
        self.meta.compact_revision = revision;
        self.meta_dirty = true;
        Ok(Ok(()))
    }

    /// Creates lease `id`. Takes no revision.
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one when the id is taken.
    pub fn lease_grant(&mut self, id: i64, ttl: i64) -> io::Result<Result<(), MvccError>> {
        if self.lease_exists(id)? {
            return Ok(Err(MvccError::LeaseExists(id)));
        }
        let lease = Lease { id, ttl };
        self.leases
            .insert(lease_key(id), Some(Bytes::from(lease.encode_to_vec())));
        Ok(Ok(()))
    }

    /// Ends lease `id`, deleting its keys at one revision.
    ///
    /// # Errors
    /// The outer error on a storage failure; the inner one when there is no such lease.
    pub fn lease_revoke(&mut self, id: i64) -> io::Result<Result<(), MvccError>> {
        if !self.lease_exists(id)? {
            return Ok(Err(MvccError::LeaseNotFound(id)));
        }
        // Lease keys sort as their big-endian bytes: the records of `id` end where the next id's
        // bytes begin, except for the largest bytes (-1: all 0xff), whose records run to the end.
        let prefix = lease_key(id);
        let end = (id != -1).then(|| lease_key(id.wrapping_add(1)));
        let attached = merged(
            self.engine,
            Keyspace::Lease,
            &self.leases,
            &prefix,
            end.as_deref(),
            usize::MAX,
            |v| Ok(Bytes::copy_from_slice(v)),
        )?;
        for (record, _) in attached {
            if record.len() > 8 {
                self.delete(record.slice(8..))?;
            }
            self.leases.insert(record, None);
        }
        Ok(Ok(()))
    }

    /// Every lease, with its attached keys (for the services' lease list and time-to-live, and
    /// the leader's expiry timers).
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    pub fn leases(engine: &dyn KvEngine) -> io::Result<Vec<(Lease, Vec<Bytes>)>> {
        let mut out: Vec<(Lease, Vec<Bytes>)> = Vec::new();
        for (key, value) in engine.scan_in(Keyspace::Lease, b"", None, usize::MAX)? {
            if key.len() == 8 {
                out.push((decode(&value, "lease")?, Vec::new()));
            } else if let Some((lease, keys)) = out.last_mut() {
                if key.get(..8) == Some(&lease.id.to_be_bytes()[..]) {
                    keys.push(key.slice(8..));
                }
            }
        }
        Ok(out)
    }
}

/// The operations of the branch a transaction takes.
fn branch(txn: &etcd::TxnRequest, succeeded: bool) -> &[etcd::RequestOp] {
    if succeeded {
        &txn.success
    } else {
        &txn.failure
    }
}

/// The next branch on a transaction's path (see [`Writer::choose`]).
fn taken(path: &[bool], at: &mut usize) -> io::Result<bool> {
    let succeeded = path
        .get(*at)
        .copied()
        .ok_or_else(|| io::Error::other("transaction path shorter than its transactions"))?;
    *at += 1;
    Ok(succeeded)
}

impl Source for Writer<'_> {
    fn meta(&self) -> MvccMeta {
        self.meta
    }

    /// Apply is the only writer: nothing moves under it.
    fn revision_now(&self) -> io::Result<i64> {
        Ok(self.meta.revision)
    }

    /// From the batch's writes or the index: no engine read.
    fn latest_meta(&self, key: &[u8]) -> io::Result<Option<KeyMeta>> {
        Ok(match self.data.get(key) {
            Some(pending) => pending.as_ref().map(KeyMeta::of),
            None => self.keys.get(key),
        })
    }

    fn latest(&self, key: &[u8]) -> io::Result<Option<KeyVersion>> {
        match self.data.get(key) {
            Some(pending) => Ok(pending.clone()),
            // A key the index does not know is not in the engine either.
            None if self.keys.get(key).is_none() => Ok(None),
            None => super::stored_version(self.engine, key),
        }
    }

    fn latest_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, KeyVersion)>> {
        merged(
            self.engine,
            Keyspace::Data,
            &self.data,
            start,
            end,
            limit,
            |v| decode(v, "key version"),
        )
    }

    fn change(&self, rev: Rev) -> io::Result<Option<Change>> {
        match self.history.get(&history_key(rev)) {
            Some(pending) => Ok(pending.clone()),
            None => super::stored_change(self.engine, rev),
        }
    }

    fn changes(&self, from: Rev, limit: usize) -> io::Result<Vec<(Rev, Change)>> {
        merged(
            self.engine,
            Keyspace::History,
            &self.history,
            &history_key(from),
            None,
            limit,
            |v| decode(v, "change"),
        )?
        .into_iter()
        .map(|(k, c)| Ok((parse_history_key(&k)?, c)))
        .collect()
    }
}
