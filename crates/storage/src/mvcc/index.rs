//! The apply side's in-memory index of every live key's revision metadata, with the store's
//! counters: etcd's `treeIndex`, reduced to what apply needs, the current version of each key.
//!
//! A put must know what it replaces (the key's create revision, version and lease, and where its
//! previous version is in history) but, unless a client asked for it, not the value. Without the
//! index every put read the key from the engine first, on every node — a RocksDB memtable and
//! block lookup that cost more than the write itself. With it, a put reads the engine only for a
//! value someone asked for (`return_prev`, `prev_kv`, `ignore_value`), and a read of a key that
//! does not exist never touches the engine.
//!
//! The index is rebuilt from the engine's data keyspace when the state machine opens and after a
//! snapshot is installed; in between only apply changes it, through the batch's
//! [`Writer`](super::writer::Writer), which updates a key's entry as it writes the key (while
//! the entry is still in cache from the lookup of what it replaces: a second lookup after the
//! commit cost as much as the first). Between batches it describes exactly what the engine
//! holds; during one it runs ahead by the batch's writes, which the writer's pending writes
//! shadow anyway, and a batch the engine fails to commit has the state machine reload it. It
//! costs about 100 bytes per live key plus the key.

use std::collections::HashMap;
use std::io;

use foldhash::fast::RandomState;

use bytes::Bytes;
use rskv_proto::storage::KeyVersionMeta;

use super::decode;
use super::load_meta;
use super::mod_rev;
use super::KeyVersion;
use super::MvccMeta;
use super::Rev;
use crate::state_machine::Keyspace;
use crate::KvEngine;

/// A live key's current version, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyMeta {
    /// The revision that created the key (since its last delete).
    pub create_revision: i64,
    /// Where the current version is in history.
    pub modified: Rev,
    /// Puts since the key was created, this one included.
    pub version: i64,
    /// The lease the key is attached to (0: none).
    pub lease: i64,
}

impl KeyMeta {
    /// The metadata of a stored version.
    pub fn of(kv: &KeyVersion) -> KeyMeta {
        KeyMeta {
            create_revision: kv.create_revision,
            modified: mod_rev(kv),
            version: kv.version,
            lease: kv.lease,
        }
    }
}

impl From<KeyVersionMeta> for KeyMeta {
    fn from(kv: KeyVersionMeta) -> KeyMeta {
        KeyMeta {
            create_revision: kv.create_revision,
            modified: Rev {
                main: kv.mod_revision,
                sub: kv.mod_sub,
            },
            version: kv.version,
            lease: kv.lease,
        }
    }
}

/// Every live key's metadata and the store's counters (see the module doc).
#[derive(Debug, Default, PartialEq)]
pub struct KeyIndex {
    keys: HashMap<Bytes, KeyMeta, RandomState>,
    meta: MvccMeta,
}

impl KeyIndex {
    /// The index of what `engine` holds now.
    ///
    /// # Errors
    /// On a storage failure or a damaged record.
    pub fn load(engine: &dyn KvEngine) -> io::Result<KeyIndex> {
        let mut keys = HashMap::default();
        engine.visit_in(Keyspace::Data, b"", None, &mut |key, value| {
            let kv: KeyVersionMeta = decode(value, "key version")?;
            keys.insert(Bytes::copy_from_slice(key), KeyMeta::from(kv));
            Ok(())
        })?;
        Ok(KeyIndex {
            keys,
            meta: load_meta(engine)?,
        })
    }

    /// The metadata of `key`'s current version (`None`: no such key).
    pub fn get(&self, key: &[u8]) -> Option<KeyMeta> {
        self.keys.get(key).copied()
    }

    /// The store's counters.
    pub fn meta(&self) -> MvccMeta {
        self.meta
    }

    /// Live keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the store has no live key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Records `key`'s new current version (`None`: deleted), as the writer writes it.
    pub(crate) fn set(&mut self, key: Bytes, meta: Option<KeyMeta>) {
        match meta {
            Some(meta) => {
                self.keys.insert(key, meta);
            }
            None => {
                self.keys.remove(&key);
            }
        }
    }

    /// Records the store's counters after a batch.
    pub(crate) fn set_meta(&mut self, meta: MvccMeta) {
        self.meta = meta;
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn a_stored_version_should_decode_to_the_same_metadata_without_its_value() {
        let kv = KeyVersion {
            create_revision: 3,
            mod_revision: 9,
            mod_sub: 2,
            version: 4,
            lease: -7,
            value: Bytes::from(vec![0xab; 300]),
        };
        let meta: KeyVersionMeta = decode(&kv.encode_to_vec(), "key version").expect("decode");
        assert_eq!(KeyMeta::from(meta), KeyMeta::of(&kv));
    }
}
