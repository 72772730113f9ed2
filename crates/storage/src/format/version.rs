//! Format versions of rskv's stores, and the rule for opening one.
//!
//! Each store records the version of its format when it is created: the Raft log store and the
//! RocksDB state machine as the key [`VERSION_KEY`] in their metadata column family (the version
//! in ASCII decimal, readable with RocksDB's own tools), the snapshot file in its magic
//! (`crate::snapshot`). Opening a store checks it before anything is written:
//!
//! - no store yet (or one created but never written): it is created and the version recorded;
//! - the version this rskv writes: opened;
//! - anything else (no version in a store that holds data, i.e. written before versions existed;
//!   an older version with no migration; a newer or unreadable one): refused with a
//!   [`VersionError`] that names the store, what was found and what this rskv reads, and the
//!   store is left exactly as it was (it was only opened read-only, with RocksDB's info log
//!   silenced so not even a `LOG` file is rotated).
//!
//! Changing a format means bumping its version here, and shipping either a migration (a version
//! this code knows how to upgrade from) or this refusal, with a new fixture
//! (`crates/storage/tests/fixtures/`) for the new version: the fixture test of the old one fails
//! until then.

use std::io;
use std::path::Path;
use std::path::PathBuf;

use rocksdb::IteratorMode;
use rocksdb::Options;
use rocksdb::WriteOptions;
use rocksdb::DB;

use crate::error::io_err;

/// The key holding a store's format version, in its metadata column family.
pub const VERSION_KEY: &[u8] = b"format_version";

/// A RocksDB store that records a format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Store {
    /// What the store is called in messages.
    pub name: &'static str,
    /// The column family holding [`VERSION_KEY`].
    pub meta_cf: &'static str,
    /// The version this rskv writes, and the only one it reads.
    pub version: u32,
}

/// The Raft log store (`raft_log/`): entries, vote, committed and purged markers.
pub const LOG_STORE: Store = Store {
    name: "Raft log store",
    meta_cf: "meta",
    version: 1,
};

/// The RocksDB state machine (`state_machine/`): data, system keyspace, history, leases, applied
/// state. Version 2 is the multi-version store (each key's value carries its revisions; history
/// and leases have column families of their own); version 1 held plain values, and is refused.
pub const STATE_MACHINE: Store = Store {
    name: "state machine store",
    meta_cf: "sm_meta",
    version: 2,
};

/// Why a store was not opened. Nothing in it was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The store holds data but no version: written before rskv's formats were versioned.
    #[error(
        "{store} in {path} records no format version: it was written by an rskv from before its \
         formats were versioned (MessagePack of openraft's types), which this rskv (format \
         version {supported}) cannot read and has no migration from. Nothing was changed. Run the \
         rskv that wrote it, or move the data directory away and start this node empty so it \
         rejoins the cluster and catches up from it",
        path = .path.display()
    )]
    Unversioned {
        /// The store.
        store: &'static str,
        /// Its directory.
        path: PathBuf,
        /// The version this rskv reads.
        supported: u32,
    },
    /// Written by a newer rskv.
    #[error(
        "{store} in {path} is format version {found}, newer than this rskv reads (version \
         {supported}): it was written by a newer rskv. Nothing was changed; run that rskv or a \
         newer one",
        path = .path.display()
    )]
    Newer {
        /// The store.
        store: &'static str,
        /// Its directory.
        path: PathBuf,
        /// The version it records.
        found: u32,
        /// The version this rskv reads.
        supported: u32,
    },
    /// An older version this rskv has no migration from.
    #[error(
        "{store} in {path} is format version {found}, older than this rskv reads (version \
         {supported}), and there is no migration from it. Nothing was changed. Run the rskv that \
         wrote it, or move the data directory away and start this node empty so it rejoins the \
         cluster and catches up from it",
        path = .path.display()
    )]
    Older {
        /// The store.
        store: &'static str,
        /// Its directory.
        path: PathBuf,
        /// The version it records.
        found: u32,
        /// The version this rskv reads.
        supported: u32,
    },
    /// The version record is not a version number.
    #[error(
        "{store} in {path} has a format version record {found:?} that is not a version number \
         (this rskv reads version {supported}). Nothing was changed",
        path = .path.display()
    )]
    Unreadable {
        /// The store.
        store: &'static str,
        /// Its directory.
        path: PathBuf,
        /// The record, lossily as text.
        found: String,
        /// The version this rskv reads.
        supported: u32,
    },
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// No store, or an empty one: create it and [`record`] the version.
    New,
    /// A store of the version this rskv reads.
    Current,
}

/// The value of [`VERSION_KEY`] for `version`.
pub fn version_value(version: u32) -> Vec<u8> {
    version.to_string().into_bytes()
}

/// Options that open an existing database without writing a byte: read-only, and RocksDB's info
/// log (which would otherwise rotate `LOG` to `LOG.old.*`) sent nowhere.
fn untouched() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(false);
    opts.set_info_logger(rocksdb::InfoLogger::new_callback_logger(
        rocksdb::LogLevel::Fatal,
        |_, _| {},
    ));
    opts
}

/// Checks the format version of `store` at `dir`, changing nothing there.
///
/// # Errors
/// A [`VersionError`] (as the source of the `io::Error`) when the store may not be opened, or
/// the RocksDB error when it cannot be read at all.
pub fn check(dir: &Path, store: &Store) -> io::Result<Found> {
    if !dir.join("CURRENT").exists() {
        return Ok(Found::New);
    }
    let opts = untouched();
    let names = DB::list_cf(&opts, dir).map_err(io_err)?;
    let db = DB::open_cf_for_read_only(&opts, dir, &names, false).map_err(io_err)?;
    let recorded = match db.cf_handle(store.meta_cf) {
        Some(meta) => db.get_cf(meta, VERSION_KEY).map_err(io_err)?,
        None => None,
    };
    let path = dir.to_path_buf();
    let Some(recorded) = recorded else {
        for name in &names {
            let Some(cf) = db.cf_handle(name) else {
                continue;
            };
            if let Some(item) = db.iterator_cf(cf, IteratorMode::Start).next() {
                item.map_err(io_err)?;
                return Err(io_err(VersionError::Unversioned {
                    store: store.name,
                    path,
                    supported: store.version,
                }));
            }
        }
        // Created, then stopped before the version was recorded: nothing to misread.
        return Ok(Found::New);
    };
    let found = std::str::from_utf8(&recorded)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|v| *v > 0);
    match found {
        Some(found) if found == store.version => Ok(Found::Current),
        Some(found) if found > store.version => Err(io_err(VersionError::Newer {
            store: store.name,
            path,
            found,
            supported: store.version,
        })),
        Some(found) => Err(io_err(VersionError::Older {
            store: store.name,
            path,
            found,
            supported: store.version,
        })),
        None => Err(io_err(VersionError::Unreadable {
            store: store.name,
            path,
            found: String::from_utf8_lossy(&recorded).into_owned(),
            supported: store.version,
        })),
    }
}

/// Records `store`'s version in a database just created (synced, so a store that holds anything
/// else always holds its version too).
///
/// # Errors
/// On a write failure.
pub fn record(db: &DB, store: &Store) -> io::Result<()> {
    let meta = db
        .cf_handle(store.meta_cf)
        .ok_or_else(|| io_err(format!("column family {} missing", store.meta_cf)))?;
    let mut wo = WriteOptions::default();
    wo.set_sync(true);
    db.put_cf_opt(meta, VERSION_KEY, version_value(store.version), &wo)
        .map_err(io_err)
}

/// The [`VersionError`] an error from [`check`] carries, if it is one.
pub fn version_error(e: &io::Error) -> Option<&VersionError> {
    e.get_ref()?.downcast_ref::<VersionError>()
}

#[cfg(test)]
mod tests {
    use rskv_testkit::fs::contents;

    use super::*;
    use crate::rocks::RocksEngine;
    use crate::LogStore;

    /// Opens `dir` as a plain RocksDB with `store`'s column families and lets `f` write to it.
    fn raw(dir: &Path, cfs: &[&str], f: impl FnOnce(&DB)) {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir, cfs).expect("open raw");
        f(&db);
        db.flush_wal(true).expect("sync");
    }

    fn open_log(dir: &Path) -> io::Result<()> {
        LogStore::open(dir).map(drop)
    }

    fn open_state_machine(dir: &Path) -> io::Result<()> {
        RocksEngine::open(dir).map(drop)
    }

    /// (store, its column families, how the node opens it)
    type Case = (Store, &'static [&'static str], fn(&Path) -> io::Result<()>);

    const CASES: [Case; 2] = [
        (LOG_STORE, &["logs", "meta"], open_log),
        (
            STATE_MACHINE,
            &["data", "sm_system", "sm_history", "sm_lease", "sm_meta"],
            open_state_machine,
        ),
    ];

    #[test]
    fn a_new_store_should_record_its_version_and_reopen() {
        for (store, _, open) in CASES {
            let dir = tempfile::tempdir().expect("tempdir");
            assert_eq!(check(dir.path(), &store).expect("check"), Found::New);
            open(dir.path()).expect("create");
            assert_eq!(check(dir.path(), &store).expect("check"), Found::Current);
            open(dir.path()).expect("reopen");
        }
    }

    /// A store RocksDB created but nothing was written to (stopped before the version was
    /// recorded) is taken as new.
    #[test]
    fn an_empty_store_without_a_version_should_be_taken_as_new() {
        for (store, cfs, open) in CASES {
            let dir = tempfile::tempdir().expect("tempdir");
            raw(dir.path(), cfs, |_| {});
            assert_eq!(check(dir.path(), &store).expect("check"), Found::New);
            open(dir.path()).expect("open");
            assert_eq!(check(dir.path(), &store).expect("check"), Found::Current);
        }
    }

    /// Refused with `expected` in the message, and every file left as it was.
    fn assert_refused_untouched(
        dir: &Path,
        open: fn(&Path) -> io::Result<()>,
        expected: &VersionError,
    ) {
        let before = contents(dir);
        let err = open(dir).expect_err("refused");
        assert_eq!(version_error(&err), Some(expected), "{err}");
        assert_eq!(err.to_string(), expected.to_string());
        let after = contents(dir);
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>(),
            "no file created or removed"
        );
        assert!(before == after, "a file changed");
    }

    #[test]
    fn a_store_from_before_versions_should_be_refused_untouched() {
        for (store, cfs, open) in CASES {
            let dir = tempfile::tempdir().expect("tempdir");
            // What rskv wrote before: data (here, a vote or an applied state), no version.
            raw(dir.path(), cfs, |db| {
                let cf = db.cf_handle(cfs[cfs.len() - 1]).expect("cf");
                db.put_cf(cf, b"vote", [0x93, 0x01, 0x02, 0xc3])
                    .expect("put");
            });
            let expected = VersionError::Unversioned {
                store: store.name,
                path: dir.path().to_path_buf(),
                supported: store.version,
            };
            assert_refused_untouched(dir.path(), open, &expected);
            assert!(
                expected.to_string().contains("records no format version")
                    && expected.to_string().contains("Nothing was changed"),
                "{expected}"
            );
        }
    }

    #[test]
    fn a_store_of_a_newer_or_unreadable_version_should_be_refused_untouched() {
        for (store, _, open) in CASES {
            let dir = tempfile::tempdir().expect("tempdir");
            open(dir.path()).expect("create");
            let cfs = DB::list_cf(&Options::default(), dir.path()).expect("list");
            let newer = store.version + 1;
            let mut cases = vec![
                (
                    newer.to_string().into_bytes(),
                    VersionError::Newer {
                        store: store.name,
                        path: dir.path().to_path_buf(),
                        found: newer,
                        supported: store.version,
                    },
                ),
                (
                    b"v1".to_vec(),
                    VersionError::Unreadable {
                        store: store.name,
                        path: dir.path().to_path_buf(),
                        found: "v1".into(),
                        supported: store.version,
                    },
                ),
                (
                    b"0".to_vec(),
                    VersionError::Unreadable {
                        store: store.name,
                        path: dir.path().to_path_buf(),
                        found: "0".into(),
                        supported: store.version,
                    },
                ),
            ];
            if store.version > 1 {
                // An older version with no migration (the state machine before revisions).
                cases.push((
                    b"1".to_vec(),
                    VersionError::Older {
                        store: store.name,
                        path: dir.path().to_path_buf(),
                        found: 1,
                        supported: store.version,
                    },
                ));
            }
            for (value, expected) in cases {
                let names: Vec<&str> = cfs.iter().map(String::as_str).collect();
                raw(dir.path(), &names, |db| {
                    let meta = db.cf_handle(store.meta_cf).expect("meta");
                    db.put_cf(meta, VERSION_KEY, &value).expect("put");
                });
                assert_refused_untouched(dir.path(), open, &expected);
            }
        }
    }

    #[test]
    fn refusal_messages_should_say_what_was_found_and_what_to_do() {
        let newer = VersionError::Newer {
            store: LOG_STORE.name,
            path: PathBuf::from("/var/lib/rskv/1/raft_log"),
            found: 2,
            supported: 1,
        };
        assert_eq!(
            newer.to_string(),
            "Raft log store in /var/lib/rskv/1/raft_log is format version 2, newer than this rskv \
             reads (version 1): it was written by a newer rskv. Nothing was changed; run that rskv \
             or a newer one"
        );
        let older = VersionError::Older {
            store: STATE_MACHINE.name,
            path: PathBuf::from("/d/state_machine"),
            found: 1,
            supported: 2,
        };
        assert!(older.to_string().contains("no migration"), "{older}");
    }
}
