//! The multi-version store: revisions, history, compaction and leases, as etcd has them, over any
//! [`KvEngine`].
//!
//! Every applied request that changes something gets the next **revision** (a counter kept in the
//! system keyspace, identical on every node because only apply moves it); all changes of one
//! request share it and are numbered within it (the *sub* revision). Three keyspaces hold the
//! store:
//!
//! - [`Keyspace::Data`]: each live key's current version, a [`KeyVersion`] (value, create and mod
//!   revision, version, lease). Reads at the latest revision are one lookup or one scan here, as
//!   before there were revisions.
//! - [`Keyspace::History`]: every change by revision ([`history_key`] → [`Change`]), each pointing
//!   at the version it replaced. Watches read forward from any revision; a read at an older
//!   revision starts from the current versions and undoes the changes made since.
//! - [`Keyspace::Lease`]: leases and the keys attached to each.
//!
//! [`Compact`](crate::types::Command::Compact) removes history before a revision, keeping the
//! version of every key as of it. The apply side lives in [`writer`], which learns what a write
//! replaces from the in-memory [`index`] of every live key's metadata instead of reading the
//! engine; reads (for the services and for the reads inside a transaction) in [`read`], over a
//! [`Source`] that is either the engine or the engine under a batch's pending writes.

pub mod index;
pub mod read;
pub mod sweep;
pub mod writer;

use std::io;

use bytes::Bytes;
use prost::Message;
use rskv_proto::etcd::mvccpb;

use crate::error::io_err;
use crate::state_machine::Keyspace;
use crate::KvEngine;

pub use rskv_proto::storage::Change;
pub use rskv_proto::storage::KeyVersion;
pub use rskv_proto::storage::Lease;
pub use rskv_proto::storage::MvccMeta;

/// The system-keyspace key of the store's revision counters ([`MvccMeta`]).
pub const META_KEY: &[u8] = b"mvcc/meta";

/// A position in history: a revision and a change's place within it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rev {
    /// The revision (etcd's main revision).
    pub main: i64,
    /// The change's place within it (etcd's sub revision).
    pub sub: u32,
}

impl Rev {
    /// The first change of revision `main`.
    pub fn new(main: i64) -> Rev {
        Rev { main, sub: 0 }
    }
}

/// The history keyspace's key of a change: its revision and sub revision, big-endian, so keys
/// sort in revision order.
pub fn history_key(rev: Rev) -> Bytes {
    let mut key = Vec::with_capacity(12);
    key.extend_from_slice(&rev.main.to_be_bytes());
    key.extend_from_slice(&rev.sub.to_be_bytes());
    Bytes::from(key)
}

/// The change position a history key names.
///
/// # Errors
/// When the key is not 12 bytes.
pub fn parse_history_key(key: &[u8]) -> io::Result<Rev> {
    match (key.get(..8), key.get(8..12), key.len()) {
        (Some(main), Some(sub), 12) => Ok(Rev {
            main: i64::from_be_bytes(main.try_into().map_err(io_err)?),
            sub: u32::from_be_bytes(sub.try_into().map_err(io_err)?),
        }),
        _ => Err(io_err(format!("history key {key:?} is not 12 bytes"))),
    }
}

/// The lease keyspace's key of lease `id`: its id, big-endian (so ids sort, and a lease's
/// attached keys, [`lease_key_of`], follow it).
pub fn lease_key(id: i64) -> Bytes {
    Bytes::copy_from_slice(&id.to_be_bytes())
}

/// The lease keyspace's key recording that `key` is attached to lease `id`.
pub fn lease_key_of(id: i64, key: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(8 + key.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(key);
    Bytes::from(out)
}

/// Decodes a stored record of the store, naming it in the error.
///
/// # Errors
/// When the bytes are not a `M`.
pub fn decode<M: Message + Default>(bytes: &[u8], what: &str) -> io::Result<M> {
    M::decode(bytes).map_err(|e| io_err(format!("multi-version store: damaged {what}: {e}")))
}

/// The change's position the version was written at.
pub fn mod_rev(kv: &KeyVersion) -> Rev {
    Rev {
        main: kv.mod_revision,
        sub: kv.mod_sub,
    }
}

/// etcd's view of a key's version.
pub fn to_etcd(key: Bytes, kv: &KeyVersion) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.clone(),
        lease: kv.lease,
    }
}

/// The version a put change wrote (`None` for a tombstone).
pub fn version_of(rev: Rev, change: &Change) -> Option<KeyVersion> {
    (!change.tombstone).then(|| KeyVersion {
        create_revision: change.create_revision,
        mod_revision: rev.main,
        mod_sub: rev.sub,
        version: change.version,
        lease: change.lease,
        value: change.value.clone(),
    })
}

/// Where the version a change replaced is in history, if the key existed.
pub fn prev_of(change: &Change) -> Option<Rev> {
    (change.prev_revision > 0).then_some(Rev {
        main: change.prev_revision,
        sub: change.prev_sub,
    })
}

/// What the store's reads need; implemented by the engine ([`EngineSource`]) and by a batch's
/// pending writes over it ([`writer::Writer`]).
pub trait Source {
    /// The store's counters.
    fn meta(&self) -> MvccMeta;
    /// The store's revision now, which [`Source::meta`] took when the source was made: reads
    /// compare them to notice a commit that landed while they read.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn revision_now(&self) -> io::Result<i64>;
    /// The current version of `key`.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn latest(&self, key: &[u8]) -> io::Result<Option<KeyVersion>>;
    /// The metadata of `key`'s current version: a source with the apply side's [`index`]
    /// answers it without reading the engine.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn latest_meta(&self, key: &[u8]) -> io::Result<Option<index::KeyMeta>> {
        Ok(self.latest(key)?.as_ref().map(index::KeyMeta::of))
    }
    /// Up to `limit` current versions with `start <= key < end` (no end: unbounded), in key order.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn latest_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, KeyVersion)>>;
    /// How many current versions have `start <= key < end` (no end: unbounded).
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn latest_count(&self, start: &[u8], end: Option<&[u8]>) -> io::Result<usize> {
        Ok(self.latest_range(start, end, usize::MAX)?.len())
    }
    /// The change at `rev`, unless compacted away.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn change(&self, rev: Rev) -> io::Result<Option<Change>>;
    /// Up to `limit` changes from `from` on (inclusive), in revision order.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    fn changes(&self, from: Rev, limit: usize) -> io::Result<Vec<(Rev, Change)>>;
}

/// A [`Source`] reading the engine as committed.
pub struct EngineSource<'a> {
    engine: &'a dyn KvEngine,
    meta: MvccMeta,
    /// Reads only what the engine answers at once ([`KvEngine::try_get_in_now`]); anything else
    /// fails with [`io::ErrorKind::WouldBlock`].
    now: bool,
}

impl<'a> EngineSource<'a> {
    /// The engine's store, with its counters read now.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    pub fn new(engine: &'a dyn KvEngine) -> io::Result<EngineSource<'a>> {
        Ok(EngineSource {
            engine,
            meta: load_meta(engine)?,
            now: false,
        })
    }

    /// The engine's store for a read on the async runtime: every read it makes is one the engine
    /// answers without waiting on a lock or a file, and any other fails with
    /// [`io::ErrorKind::WouldBlock`] (scans always do), for the caller to go to a blocking
    /// thread instead. A point read at the current revision is answered so.
    ///
    /// # Errors
    /// [`io::ErrorKind::WouldBlock`], a storage failure or a damaged record.
    pub fn now(engine: &'a dyn KvEngine) -> io::Result<EngineSource<'a>> {
        let mut source = EngineSource {
            engine,
            meta: MvccMeta::default(),
            now: true,
        };
        source.meta = source.load_meta()?;
        Ok(source)
    }

    fn get_in(&self, space: Keyspace, key: &[u8]) -> io::Result<Option<Bytes>> {
        if !self.now {
            return self.engine.get_in(space, key);
        }
        self.engine
            .try_get_in_now(space, key)
            .unwrap_or_else(|| Err(would_block()))
    }

    fn load_meta(&self) -> io::Result<MvccMeta> {
        meta_of(self.get_in(Keyspace::System, META_KEY)?)
    }

    /// The engine's own scans may wait: refused to a source that must not.
    fn may_wait(&self) -> io::Result<()> {
        if self.now {
            return Err(would_block());
        }
        Ok(())
    }
}

fn would_block() -> io::Error {
    io::Error::new(
        io::ErrorKind::WouldBlock,
        "the engine cannot answer without waiting",
    )
}

/// The store's counters as committed (an empty store is at revision 1, as etcd's).
///
/// # Errors
/// On a storage failure or a damaged record.
pub fn load_meta(engine: &dyn KvEngine) -> io::Result<MvccMeta> {
    meta_of(engine.get_in(Keyspace::System, META_KEY)?)
}

fn meta_of(stored: Option<Bytes>) -> io::Result<MvccMeta> {
    Ok(match stored {
        Some(bytes) => decode(&bytes, "revision record")?,
        None => MvccMeta {
            revision: 1,
            compact_revision: 0,
        },
    })
}

/// The current version of `key` as committed.
fn stored_version(engine: &dyn KvEngine, key: &[u8]) -> io::Result<Option<KeyVersion>> {
    version_of_record(engine.get(key)?)
}

/// The change at `rev` as committed.
fn stored_change(engine: &dyn KvEngine, rev: Rev) -> io::Result<Option<Change>> {
    change_of_record(engine.get_in(Keyspace::History, &history_key(rev))?)
}

fn version_of_record(stored: Option<Bytes>) -> io::Result<Option<KeyVersion>> {
    stored.map(|v| decode(&v, "key version")).transpose()
}

fn change_of_record(stored: Option<Bytes>) -> io::Result<Option<Change>> {
    stored.map(|v| decode(&v, "change")).transpose()
}

/// Decodes data-keyspace pairs.
fn versions(pairs: Vec<(Bytes, Bytes)>) -> io::Result<Vec<(Bytes, KeyVersion)>> {
    pairs
        .into_iter()
        .map(|(k, v)| Ok((k, decode(&v, "key version")?)))
        .collect()
}

impl Source for EngineSource<'_> {
    fn meta(&self) -> MvccMeta {
        self.meta
    }

    fn revision_now(&self) -> io::Result<i64> {
        Ok(self.load_meta()?.revision)
    }

    fn latest(&self, key: &[u8]) -> io::Result<Option<KeyVersion>> {
        version_of_record(self.get_in(Keyspace::Data, key)?)
    }

    fn latest_range(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> io::Result<Vec<(Bytes, KeyVersion)>> {
        self.may_wait()?;
        versions(self.engine.scan(start, end, limit)?)
    }

    fn latest_count(&self, start: &[u8], end: Option<&[u8]>) -> io::Result<usize> {
        self.may_wait()?;
        self.engine.count_in(Keyspace::Data, start, end)
    }

    fn change(&self, rev: Rev) -> io::Result<Option<Change>> {
        change_of_record(self.get_in(Keyspace::History, &history_key(rev))?)
    }

    fn changes(&self, from: Rev, limit: usize) -> io::Result<Vec<(Rev, Change)>> {
        self.may_wait()?;
        self.engine
            .scan_in(Keyspace::History, &history_key(from), None, limit)?
            .into_iter()
            .map(|(k, v)| Ok((parse_history_key(&k)?, decode(&v, "change")?)))
            .collect()
    }
}

/// CRC-32 (IEEE) of `bytes` continuing from `crc`: the checksum etcd's hashes use, here over
/// rskv's own records.
pub fn crc32(crc: u32, bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !crc;
    for b in bytes {
        c = TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// The engine's data as values only (the native API's reads): a stored [`KeyVersion`]'s value.
///
/// # Errors
/// On a damaged record.
pub fn value_of(stored: &[u8]) -> io::Result<Bytes> {
    Ok(decode::<KeyVersion>(stored, "key version")?.value)
}

#[cfg(test)]
pub(crate) mod tests {
    use rskv_proto::etcd::etcdserverpb as etcd;

    /// A transaction using every kind of comparison and operation (for format round trips).
    pub(crate) fn sample_txn() -> etcd::TxnRequest {
        use etcd::compare::TargetUnion;
        let put = etcd::RequestOp {
            request: Some(etcd::request_op::Request::RequestPut(etcd::PutRequest {
                key: "k".into(),
                value: "v".into(),
                lease: 7,
                prev_kv: true,
                ..Default::default()
            })),
        };
        etcd::TxnRequest {
            compare: vec![
                etcd::Compare {
                    result: etcd::compare::CompareResult::Greater as i32,
                    target: etcd::compare::CompareTarget::Mod as i32,
                    key: "k".into(),
                    target_union: Some(TargetUnion::ModRevision(3)),
                    range_end: "l".into(),
                },
                etcd::Compare {
                    target: etcd::compare::CompareTarget::Value as i32,
                    key: "k".into(),
                    target_union: Some(TargetUnion::Value("".into())),
                    ..Default::default()
                },
            ],
            success: vec![
                put.clone(),
                etcd::RequestOp {
                    request: Some(etcd::request_op::Request::RequestRange(
                        etcd::RangeRequest {
                            key: "a".into(),
                            range_end: "\0".into(),
                            limit: 2,
                            revision: 4,
                            ..Default::default()
                        },
                    )),
                },
            ],
            failure: vec![
                etcd::RequestOp {
                    request: Some(etcd::request_op::Request::RequestDeleteRange(
                        etcd::DeleteRangeRequest {
                            key: "d".into(),
                            range_end: "e".into(),
                            prev_kv: true,
                        },
                    )),
                },
                etcd::RequestOp {
                    request: Some(etcd::request_op::Request::RequestTxn(etcd::TxnRequest {
                        success: vec![put],
                        ..Default::default()
                    })),
                },
            ],
        }
    }
}

#[cfg(test)]
mod suite;
