//! A read-only reader of bbolt files, the B+tree file etcd keeps its backend in and
//! `etcdctl snapshot save` writes: just enough to list every pair of a top-level bucket.
//!
//! The file is pages of one size (a meta page's `page_size`). Pages 0 and 1 are the two meta
//! pages, of which the valid one (magic, version 2, FNV-1a checksum) with the higher transaction
//! id names the root bucket's page. A page starts with a 16-byte header (id, flags, element count,
//! overflow pages); a branch page's elements point at child pages, a leaf page's hold key and
//! value (positions counted from the element itself). A bucket is a leaf value flagged as one: a
//! 16-byte header whose root page is 0 for an *inline* bucket, whose page then follows inside the
//! value. Numbers are in the writer's byte order: little-endian, as on every platform etcd ships
//! for (amd64, arm64, ppc64le, s390x aside).

use std::collections::HashSet;
use std::io;

use bytes::Bytes;

use crate::error::io_err;

/// bbolt's magic number, at the start of a meta page's body.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version bbolt writes.
pub(crate) const VERSION: u32 = 2;
/// A page's header: id, flags, element count, overflow pages.
pub(crate) const PAGE_HEADER: usize = 16;
/// A branch or leaf element.
pub(crate) const ELEMENT: usize = 16;
pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;
pub(crate) const FREELIST_PAGE: u16 = 0x10;
/// A leaf element holding a bucket.
pub(crate) const BUCKET_LEAF: u32 = 0x01;
/// Deeper than any tree a real file holds (a B+tree of 4 KiB pages is a few levels deep): a
/// damaged file whose pages chain on is refused before the walk's recursion runs deep.
const MAX_DEPTH: usize = 32;

/// An open bbolt file (held in memory).
pub struct Bolt {
    bytes: Bytes,
    page_size: usize,
    /// The root bucket's page.
    root: u64,
}

/// One pair of a bucket.
pub struct Pair<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value (a nested bucket's header and inline page when `bucket`).
    pub value: &'a [u8],
    /// Whether the value is a nested bucket.
    pub bucket: bool,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn damaged(what: &str) -> io::Error {
    io_err(format!("etcd backup (bbolt file) is damaged: {what}"))
}

/// FNV-1a, 64 bits: bbolt's meta page checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A valid meta page body's (page size, root page, transaction id).
fn meta(body: &[u8]) -> Option<(usize, u64, u64)> {
    let checksum = u64_at(body, 56)?;
    if u32_at(body, 0)? != MAGIC || u32_at(body, 4)? != VERSION {
        return None;
    }
    if fnv1a64(body.get(..56)?) != checksum {
        return None;
    }
    let page_size = usize::try_from(u32_at(body, 8)?).ok()?;
    Some((page_size, u64_at(body, 16)?, u64_at(body, 48)?))
}

/// Whether `head` (a file's first bytes) starts like a bbolt file.
pub fn looks_like_bbolt(head: &[u8]) -> bool {
    u32_at(head, PAGE_HEADER) == Some(MAGIC)
}

impl Bolt {
    /// Reads the file's meta pages.
    ///
    /// # Errors
    /// When neither meta page is valid.
    pub fn parse(bytes: impl Into<Bytes>) -> io::Result<Bolt> {
        let bytes = bytes.into();
        let first = bytes.get(PAGE_HEADER..).and_then(meta);
        // The second meta page sits one page in: its size from the first, or bbolt's default.
        let size = first.map_or(4096, |(size, _, _)| size);
        let second = bytes.get(size + PAGE_HEADER..).and_then(meta);
        let (page_size, root, _) = match (first, second) {
            (Some(a), Some(b)) => {
                if b.2 > a.2 {
                    b
                } else {
                    a
                }
            }
            (Some(m), None) | (None, Some(m)) => m,
            (None, None) => {
                return Err(io_err(
                    "not an etcd backup: no valid bbolt meta page (magic, version 2, checksum)",
                ))
            }
        };
        if !(512..=1 << 20).contains(&page_size) {
            return Err(damaged(&format!("page size {page_size}")));
        }
        Ok(Bolt {
            bytes,
            page_size,
            root,
        })
    }

    /// `part` (a key or value of a [`Pair`]) without copying it: it shares the file's bytes.
    pub fn shared(&self, part: &[u8]) -> Bytes {
        self.bytes.slice_ref(part)
    }

    /// Every pair of the top-level bucket `name`, in key order; `None` when there is no such
    /// bucket.
    ///
    /// # Errors
    /// When a page it reaches is damaged.
    pub fn bucket(&self, name: &[u8]) -> io::Result<Option<Vec<Pair<'_>>>> {
        let mut top = Vec::new();
        self.walk(self.page(self.root)?, &mut top, &mut HashSet::new(), 0)?;
        let Some(header) = top.into_iter().find(|p| p.bucket && p.key == name) else {
            return Ok(None);
        };
        let mut pairs = Vec::new();
        match u64_at(header.value, 0).ok_or_else(|| damaged("short bucket header"))? {
            // Inline: the bucket's one page follows its header.
            0 => {
                let page = header
                    .value
                    .get(16..)
                    .ok_or_else(|| damaged("short inline bucket"))?;
                self.walk(page, &mut pairs, &mut HashSet::new(), 0)?
            }
            root => self.walk(self.page(root)?, &mut pairs, &mut HashSet::new(), 0)?,
        }
        Ok(Some(pairs))
    }

    /// The bytes of page `id` and its overflow pages.
    fn page(&self, id: u64) -> io::Result<&[u8]> {
        let start = usize::try_from(id)
            .ok()
            .and_then(|id| id.checked_mul(self.page_size))
            .ok_or_else(|| damaged(&format!("page id {id}")))?;
        let overflow = self
            .bytes
            .get(start..)
            .and_then(|p| u32_at(p, 12))
            .ok_or_else(|| damaged(&format!("page {id} is past the end of the file")))?;
        let len = (overflow as usize + 1) * self.page_size;
        self.bytes
            .get(start..start + len)
            .ok_or_else(|| damaged(&format!("page {id} runs past the end of the file")))
    }

    /// Appends the pairs under the page `page` (branch or leaf) to `out`, in key order;
    /// `visited` holds the child pages reached so far, so a damaged file whose pages point back
    /// is refused rather than walked forever.
    fn walk<'a>(
        &'a self,
        page: &'a [u8],
        out: &mut Vec<Pair<'a>>,
        visited: &mut HashSet<u64>,
        depth: usize,
    ) -> io::Result<()> {
        if depth > MAX_DEPTH {
            return Err(damaged("the tree is deeper than any real one"));
        }
        let flags = u16_at(page, 8).ok_or_else(|| damaged("short page"))?;
        let count = usize::from(u16_at(page, 10).ok_or_else(|| damaged("short page"))?);
        for i in 0..count {
            let at = PAGE_HEADER + i * ELEMENT;
            let element = page
                .get(at..at + ELEMENT)
                .ok_or_else(|| damaged("element past its page"))?;
            let field = |n: usize| u32_at(element, n * 4).map_or(0, |v| v as usize);
            if flags & BRANCH_PAGE != 0 {
                let child = u64_at(element, 8).ok_or_else(|| damaged("short branch element"))?;
                if !visited.insert(child) {
                    return Err(damaged(&format!("page {child} is reached twice")));
                }
                self.walk(self.page(child)?, out, visited, depth + 1)?;
            } else if flags & LEAF_PAGE != 0 {
                let (leaf_flags, pos, ksize, vsize) = (field(0), field(1), field(2), field(3));
                let key_at = at + pos;
                let key = page
                    .get(key_at..key_at + ksize)
                    .ok_or_else(|| damaged("key past its page"))?;
                let value = page
                    .get(key_at + ksize..key_at + ksize + vsize)
                    .ok_or_else(|| damaged("value past its page"))?;
                out.push(Pair {
                    key,
                    value,
                    bucket: leaf_flags as u32 & BUCKET_LEAF != 0,
                });
            } else {
                return Err(damaged(&format!("page of kind {flags:#x} inside a tree")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_should_match_its_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn a_file_without_a_valid_meta_page_should_be_refused() {
        let err = Bolt::parse(vec![0u8; 8192]).err().expect("refused");
        assert!(
            err.to_string().contains("no valid bbolt meta page"),
            "{err}"
        );
        assert!(!looks_like_bbolt(&[0u8; 64]));
    }
}
