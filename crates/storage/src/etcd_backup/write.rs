//! Writing rskv's backups in etcd's own format: a bbolt file with etcd's `key`, `lease` and
//! `meta` buckets, so etcd's tools read what `etcdctl snapshot save` saved from rskv
//! (`etcdctl snapshot status` checks and counts it, `etcdctl snapshot restore` makes an etcd
//! data directory of it), and rskv restores it as it restores etcd's ([`super::read`]).
//!
//! etcd's buckets hold the history (every change by revision, each an `mvccpb.KeyValue`; a
//! deletion as etcd writes one, the key alone under its revision marked `t`), the leases
//! (`leasepb.Lease`) and the compaction (`finishedCompactRev` and `scheduledCompactRev`). What
//! only rskv has (its system keyspace: the revision counters, client sessions, users and roles,
//! alarms) goes verbatim into a bucket of its own, `rskv_system`, which etcd ignores; users,
//! roles and the auth flag also into etcd's `auth` buckets ([`super::auth`]), so an etcd
//! restored from it has them. The current versions and lease attachments are not written (they
//! follow from history).
//!
//! The tree is written bottom-up and never rewritten: leaf pages as the sorted pairs arrive, then
//! the branch pages above them, each bucket's tree in turn, then the root bucket, and last the
//! free-list page and the two meta pages at the start of the file (FNV-1a checksums, the page
//! count as high water mark), so a consistency check (`tx.Check`, which `snapshot status` runs)
//! finds every page reachable exactly once.

use std::fs::File;
use std::io;
use std::io::BufWriter;
use std::io::Seek;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use prost::Message;
use rskv_proto::etcd::mvccpb;

use super::bbolt;
use super::bbolt::BRANCH_PAGE;
use super::bbolt::BUCKET_LEAF;
use super::bbolt::ELEMENT;
use super::bbolt::FREELIST_PAGE;
use super::bbolt::LEAF_PAGE;
use super::bbolt::META_PAGE;
use super::bbolt::PAGE_HEADER;
use super::revision_key;
use super::EtcdLease;
use super::SYSTEM_BUCKET;
use crate::error::io_err;
use crate::mvcc::decode;
use crate::mvcc::parse_history_key;
use crate::mvcc::sweep::SWEPT_KEY;
use crate::mvcc::Change;
use crate::mvcc::Lease;
use crate::mvcc::MvccMeta;
use crate::mvcc::Rev;
use crate::mvcc::META_KEY;
use crate::state_machine::AppliedState;
use crate::state_machine::Keyspace;
use crate::state_machine::SnapshotSink;
use crate::KvEngine;

/// The page size written: bbolt's default on the platforms etcd runs on.
const PAGE_SIZE: usize = 4096;
/// Pages 0 and 1 are the meta pages, then the (empty) free list; trees start after them.
const FREELIST_PAGE_ID: u64 = 2;
const FIRST_TREE_PAGE: u64 = 3;

/// One element of a page being filled: a key and a value (a leaf's) or a child page (a
/// branch's).
struct Item {
    key: Vec<u8>,
    value: Vec<u8>,
    child: u64,
    flags: u32,
}

impl Item {
    fn size(&self) -> usize {
        ELEMENT + self.key.len() + self.value.len()
    }
}

/// One level of a tree being written: the page being filled, and the first key and id of every
/// page of the level written so far (what the level above points at).
struct Level {
    /// `LEAF_PAGE` or `BRANCH_PAGE`.
    flags: u16,
    page: Vec<Item>,
    /// The bytes `page` takes, header included.
    size: usize,
    written: Vec<(Vec<u8>, u64)>,
}

impl Level {
    fn new(flags: u16) -> Level {
        Level {
            flags,
            page: Vec::new(),
            size: PAGE_HEADER,
            written: Vec::new(),
        }
    }
}

/// A bbolt file being written (see the module doc).
struct BoltWriter {
    out: BufWriter<File>,
    /// The next page's id.
    next: u64,
    /// Every finished bucket: its name and root page.
    buckets: Vec<(Vec<u8>, u64)>,
    /// The bucket being written, and its leaf level.
    open: Option<(Vec<u8>, Level)>,
}

impl BoltWriter {
    fn new(file: File) -> io::Result<BoltWriter> {
        let mut out = BufWriter::with_capacity(1 << 20, file);
        // Room for the meta and free-list pages, written last.
        out.write_all(&[0u8; PAGE_SIZE * FIRST_TREE_PAGE as usize])?;
        Ok(BoltWriter {
            out,
            next: FIRST_TREE_PAGE,
            buckets: Vec::new(),
            open: None,
        })
    }

    /// Starts bucket `name` (ending the one open); its pairs follow in key order.
    fn bucket(&mut self, name: &[u8]) -> io::Result<()> {
        self.end_bucket()?;
        self.open = Some((name.to_vec(), Level::new(LEAF_PAGE)));
        Ok(())
    }

    /// Adds a pair to the open bucket (after every smaller key).
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> io::Result<()> {
        let Some((name, mut leaves)) = self.open.take() else {
            return Err(io_err("bbolt writer: a pair outside any bucket"));
        };
        let item = Item {
            key,
            value,
            child: 0,
            flags: 0,
        };
        let result = self.push(&mut leaves, item);
        self.open = Some((name, leaves));
        result
    }

    /// Adds `item` to `level`'s page, writing the page first when `item` would overfill it (a
    /// page always takes one item, overflow pages holding what does not fit).
    fn push(&mut self, level: &mut Level, item: Item) -> io::Result<()> {
        if !level.page.is_empty() && level.size + item.size() > PAGE_SIZE {
            self.flush(level)?;
        }
        level.size += item.size();
        level.page.push(item);
        Ok(())
    }

    /// Writes `level`'s page and starts a new one.
    fn flush(&mut self, level: &mut Level) -> io::Result<()> {
        let items = std::mem::take(&mut level.page);
        level.size = PAGE_HEADER;
        let first = items.first().map(|i| i.key.clone()).unwrap_or_default();
        let id = self.write_page(level.flags, &items)?;
        level.written.push((first, id));
        Ok(())
    }

    /// Ends the open bucket: its last leaf page, then the branch pages above, up to its root.
    fn end_bucket(&mut self) -> io::Result<()> {
        let Some((name, leaves)) = self.open.take() else {
            return Ok(());
        };
        let root = self.finish_tree(leaves)?;
        self.buckets.push((name, root));
        Ok(())
    }

    /// Writes the last leaf page (an empty one for an empty tree) and the branch levels above
    /// it; returns the root page.
    fn finish_tree(&mut self, mut leaves: Level) -> io::Result<u64> {
        if !leaves.page.is_empty() || leaves.written.is_empty() {
            self.flush(&mut leaves)?;
        }
        let mut pages = leaves.written;
        while pages.len() > 1 {
            let mut branches = Level::new(BRANCH_PAGE);
            for (key, child) in pages {
                let item = Item {
                    key,
                    value: Vec::new(),
                    child,
                    flags: 0,
                };
                self.push(&mut branches, item)?;
            }
            self.flush(&mut branches)?;
            pages = branches.written;
        }
        pages
            .first()
            .map(|(_, id)| *id)
            .ok_or_else(|| io_err("bbolt writer: a tree without a page"))
    }

    /// Writes one page (and its overflow pages) of `items`; returns its id.
    fn write_page(&mut self, flags: u16, items: &[Item]) -> io::Result<u64> {
        let count = u16::try_from(items.len()).map_err(|_| io_err("bbolt page overfull"))?;
        let elements = PAGE_HEADER + items.len() * ELEMENT;
        let size = elements
            + items
                .iter()
                .map(|i| i.key.len() + i.value.len())
                .sum::<usize>();
        let pages = size.div_ceil(PAGE_SIZE).max(1);
        let id = self.next;
        let mut page = vec![0u8; pages * PAGE_SIZE];
        page[0..8].copy_from_slice(&id.to_le_bytes());
        page[8..10].copy_from_slice(&flags.to_le_bytes());
        page[10..12].copy_from_slice(&count.to_le_bytes());
        let overflow = u32::try_from(pages - 1).map_err(|_| io_err("bbolt value too large"))?;
        page[12..16].copy_from_slice(&overflow.to_le_bytes());
        let mut data = elements;
        for (i, item) in items.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let u32_of = |n: usize| u32::try_from(n).map_err(|_| io_err("bbolt element too large"));
            let pos = u32_of(data - at)?;
            let ksize = u32_of(item.key.len())?;
            let element = &mut page[at..at + ELEMENT];
            if flags == BRANCH_PAGE {
                element[0..4].copy_from_slice(&pos.to_le_bytes());
                element[4..8].copy_from_slice(&ksize.to_le_bytes());
                element[8..16].copy_from_slice(&item.child.to_le_bytes());
            } else {
                element[0..4].copy_from_slice(&item.flags.to_le_bytes());
                element[4..8].copy_from_slice(&pos.to_le_bytes());
                element[8..12].copy_from_slice(&ksize.to_le_bytes());
                element[12..16].copy_from_slice(&u32_of(item.value.len())?.to_le_bytes());
            }
            page[data..data + item.key.len()].copy_from_slice(&item.key);
            data += item.key.len();
            page[data..data + item.value.len()].copy_from_slice(&item.value);
            data += item.value.len();
        }
        self.out.write_all(&page)?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Writes the root bucket, the free list and the meta pages; returns the file, read from
    /// its start.
    fn finish(mut self) -> io::Result<File> {
        self.end_bucket()?;
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Level::new(LEAF_PAGE);
        for (name, page) in buckets {
            let mut header = page.to_le_bytes().to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            let item = Item {
                key: name,
                value: header,
                child: 0,
                flags: BUCKET_LEAF,
            };
            self.push(&mut root, item)?;
        }
        let root = self.finish_tree(root)?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        let mut freelist = vec![0u8; PAGE_SIZE];
        freelist[0..8].copy_from_slice(&FREELIST_PAGE_ID.to_le_bytes());
        freelist[8..10].copy_from_slice(&FREELIST_PAGE.to_le_bytes());
        file.write_all_at(&freelist, FREELIST_PAGE_ID * PAGE_SIZE as u64)?;
        for id in 0..2u64 {
            let mut page = vec![0u8; PAGE_SIZE];
            page[0..8].copy_from_slice(&id.to_le_bytes());
            page[8..10].copy_from_slice(&META_PAGE.to_le_bytes());
            let meta = &mut page[PAGE_HEADER..PAGE_HEADER + 64];
            meta[0..4].copy_from_slice(&bbolt::MAGIC.to_le_bytes());
            meta[4..8].copy_from_slice(&bbolt::VERSION.to_le_bytes());
            meta[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            meta[16..24].copy_from_slice(&root.to_le_bytes());
            meta[32..40].copy_from_slice(&FREELIST_PAGE_ID.to_le_bytes());
            meta[40..48].copy_from_slice(&self.next.to_le_bytes());
            meta[48..56].copy_from_slice(&1u64.to_le_bytes());
            let checksum = bbolt::fnv1a64(&meta[..56]);
            meta[56..64].copy_from_slice(&checksum.to_le_bytes());
            file.write_all_at(&page, id * PAGE_SIZE as u64)?;
        }
        file.rewind()?;
        Ok(file)
    }
}

/// Maps the engine's export onto etcd's buckets (see the module doc).
struct BoltSink {
    writer: BoltWriter,
    space: Option<Keyspace>,
    meta: MvccMeta,
    /// How far the sweep had removed compacted history ([`crate::mvcc::sweep`]), if recorded.
    swept: Option<i64>,
    /// etcd's auth buckets' pairs, written last (the system keyspace's bucket is open while
    /// they are seen).
    auth: Vec<super::auth::BucketPair>,
}

impl SnapshotSink for BoltSink {
    fn begin(&mut self, _state: &AppliedState) -> io::Result<()> {
        Ok(())
    }

    fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
        if self.space != Some(space) {
            self.space = Some(space);
            match space {
                Keyspace::Data => {}
                Keyspace::System => self.writer.bucket(SYSTEM_BUCKET)?,
                Keyspace::History => self.writer.bucket(b"key")?,
                Keyspace::Lease => self.writer.bucket(b"lease")?,
            }
        }
        match space {
            Keyspace::Data => Ok(()),
            Keyspace::System => {
                if key == META_KEY {
                    self.meta = decode(value, "revision counters")?;
                }
                if key == SWEPT_KEY {
                    self.swept = Some(crate::mvcc::sweep::swept_revision(value)?);
                }
                self.auth.extend(super::auth::to_etcd(key, value)?);
                self.writer.put(key.to_vec(), value.to_vec())
            }
            Keyspace::History => {
                let rev = parse_history_key(key)?;
                let change: Change = decode(value, "history record")?;
                let kv = if change.tombstone {
                    mvccpb::KeyValue {
                        key: change.key,
                        ..Default::default()
                    }
                } else {
                    mvccpb::KeyValue {
                        key: change.key,
                        create_revision: change.create_revision,
                        mod_revision: rev.main,
                        version: change.version,
                        value: change.value,
                        lease: change.lease,
                    }
                };
                self.writer
                    .put(revision_key(rev, change.tombstone), kv.encode_to_vec())
            }
            // A lease's own record (8 bytes of id); its attached keys follow from history.
            Keyspace::Lease if key.len() == 8 => {
                let lease: Lease = decode(value, "lease")?;
                let etcd = EtcdLease {
                    id: lease.id,
                    ttl: lease.ttl,
                };
                self.writer.put(key.to_vec(), etcd.encode_to_vec())
            }
            Keyspace::Lease => Ok(()),
        }
    }
}

/// Writes a consistent backup of `engine` in etcd's format (see the module doc) to a file in
/// `dir` that is unlinked at once (it goes when the handle is dropped, a crash leaves nothing
/// behind); returns the file, read from its start. Blocking.
///
/// # Errors
/// On a storage or write failure.
pub fn write_backup(engine: &dyn KvEngine, dir: &Path) -> io::Result<File> {
    let path = dir.join(format!(
        "backup-{}-{}.tmp",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    let mut sink = BoltSink {
        writer: BoltWriter::new(file)?,
        space: None,
        meta: MvccMeta::default(),
        swept: None,
        auth: Vec::new(),
    };
    engine.export(&mut sink)?;
    let BoltSink {
        mut writer,
        meta,
        swept,
        mut auth,
        ..
    } = sink;
    auth.sort();
    let mut open = None;
    for (bucket, key, value) in auth {
        if open != Some(bucket) {
            writer.bucket(bucket)?;
            open = Some(bucket);
        }
        writer.put(key, value)?;
    }
    // etcd's buckets exist even when empty, as etcd creates them.
    for name in [&b"key"[..], b"lease"] {
        if !writer.buckets.iter().any(|(n, _)| n == name)
            && writer.open.as_ref().is_none_or(|(n, _)| n != name)
        {
            writer.bucket(name)?;
        }
    }
    writer.bucket(b"meta")?;
    // A compaction whose sweep had not finished is one etcd had scheduled and not finished: etcd
    // finishes it when it opens the file, rskv's restore sweeps it.
    let finished = swept.map_or(meta.compact_revision, |s| s.min(meta.compact_revision));
    if finished > 0 {
        let at = revision_key(Rev::new(finished), false);
        writer.put(b"finishedCompactRev".to_vec(), at)?;
    }
    if meta.compact_revision > 0 {
        let at = revision_key(Rev::new(meta.compact_revision), false);
        writer.put(b"scheduledCompactRev".to_vec(), at)?;
    }
    writer.finish()
}
