//! The snapshot file: one self-describing file per snapshot, shared by both engines.
//!
//! Layout (version 4): the magic `RSKVSNP4` (its last byte is the format version), a `u32` length
//! and the [`SnapshotMeta`] in rskv's format (a `rskv.storage.v1.SnapshotMeta`, see
//! [`crate::format`]), then one section per keyspace of the state machine, in the order of
//! [`Keyspace::ALL`]: client data (each key's latest version), the system keyspace (client
//! sessions, revision counters), the history of changes, leases. Each section is records of (`u32` key
//! length, key, `u32` value length, value) in key order, then an end marker (`u32::MAX`) and the
//! section's `u64` record count, which detects truncated files. All integers are little-endian.
//! Everything is streamed: neither writing, sending nor reading a snapshot holds it in memory.
//!
//! Versions 1 (`RSKVSNP1`, data only) and 2 (`RSKVSNP2`) had a MessagePack encoding of openraft's
//! own metadata type as the header; version 3 had rskv's header but only the data and system
//! sections, with plain values (no revisions). All are refused with a message saying so, as is a
//! newer version, rather than read as something they are not.
//!
//! A **backup** (what etcd's `Snapshot` RPC streams and `etcdctl snapshot save` writes) is framed
//! as etcd frames its own: zero bytes up to a multiple of 512, then the SHA-256 of everything
//! before it ([`BackupReader`]; [`verify_backup`] checks it). Its body is etcd's format, a bbolt
//! file ([`crate::etcd_backup::write`]); a snapshot file framed so (what rskv streamed before)
//! still restores.
//!
//! A snapshot travels as [`SnapshotData`]: a file (the memory engine's snapshots, and every
//! snapshot a follower receives) or a [`SnapshotStream`], the file format produced on demand from
//! a point-in-time view of a durable engine (see [`crate::StateMachine`]).

use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;

use bytes::Buf;
use bytes::Bytes;

use crate::error::io_err;
use crate::format;
use crate::state_machine::Keyspace;
use crate::state_machine::Record;
use crate::types::SnapshotMeta;

/// The snapshot file format version written and read now (the last byte of the magic).
pub const SNAPSHOT_VERSION: u8 = 4;
/// Magic of the format written now: rskv's own header, a section per keyspace.
const MAGIC: &[u8; 8] = b"RSKVSNP4";
/// The magic every format version shares before its version digit.
const MAGIC_PREFIX: &[u8; 7] = b"RSKVSNP";
const END: u32 = u32::MAX;
/// Largest header or record field accepted when reading, so a corrupt length cannot allocate GBs.
const MAX_FIELD: u32 = 256 * 1024 * 1024;

/// A snapshot file: an open handle plus its path.
///
/// Holding the open file (not just a path) pins the exact snapshot even if a newer one replaces
/// the path while this one is being sent.
#[derive(Debug)]
pub struct SnapshotFile {
    /// Open handle, positioned anywhere; readers seek to the start.
    pub file: File,
    /// Where the file lives (for logs and for renaming an incoming snapshot into place).
    pub path: PathBuf,
}

impl SnapshotFile {
    /// Opens an existing snapshot file.
    ///
    /// # Errors
    /// When the file cannot be opened.
    pub fn open(path: &Path) -> io::Result<SnapshotFile> {
        Ok(SnapshotFile {
            file: File::open(path)?,
            path: path.to_path_buf(),
        })
    }

    /// Reads the metadata header.
    ///
    /// # Errors
    /// When the file is not a snapshot or is truncated.
    pub fn read_meta(&self) -> io::Result<SnapshotMeta> {
        Ok(self.reader()?.meta)
    }

    /// A reader over the records, from the start of the file.
    ///
    /// # Errors
    /// When the header cannot be read.
    pub fn reader(&self) -> io::Result<SnapshotReader> {
        SnapshotReader::new(self.read_from(0)?)
    }

    /// A reader from byte `offset` that does not move the shared file cursor, so several readers
    /// (a send in progress, a status query) never disturb each other.
    ///
    /// # Errors
    /// When the file handle cannot be duplicated.
    pub fn read_from(&self, offset: u64) -> io::Result<PositionalReader> {
        Ok(PositionalReader {
            file: self.file.try_clone()?,
            pos: offset,
        })
    }
}

/// Reads a file with positional reads (`pread`), independent of the file cursor.
pub struct PositionalReader {
    file: File,
    pos: u64,
}

impl Read for PositionalReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Encodes a snapshot in the file format into any writer: header first, then records, then
/// [`SnapshotWriter::end`]. Files and the in-memory stream of a durable engine's export share it,
/// so a follower receives the same bytes whichever the leader sends.
pub struct SnapshotWriter<W: Write = BufWriter<File>> {
    out: W,
    /// Records in the section being written.
    count: u64,
    /// Records in every section so far.
    total: u64,
    /// The section being written, in the order of [`Keyspace::ALL`].
    section: Keyspace,
}

impl SnapshotWriter<BufWriter<File>> {
    /// Writes the end marker and syncs the file to disk; returns the record count.
    ///
    /// # Errors
    /// On a write or sync failure.
    pub fn finish(self) -> io::Result<u64> {
        let count = self.total;
        let file = self.end()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(count)
    }
}

impl<W: Write> SnapshotWriter<W> {
    /// Writes the header to `out`.
    ///
    /// # Errors
    /// On a write failure.
    pub fn start(mut out: W, meta: &SnapshotMeta) -> io::Result<SnapshotWriter<W>> {
        out.write_all(MAGIC)?;
        write_field(&mut out, &format::encode(meta))?;
        Ok(SnapshotWriter {
            out,
            count: 0,
            total: 0,
            section: Keyspace::Data,
        })
    }

    /// Appends one record of `space`: keyspace by keyspace, in the order of [`Keyspace::ALL`].
    ///
    /// # Errors
    /// On a write failure, or a record of a keyspace whose section is already ended.
    pub fn record(&mut self, space: Keyspace, key: &[u8], value: &[u8]) -> io::Result<()> {
        if space < self.section {
            return Err(io_err(format!(
                "snapshot record of {space:?} after the {:?} section",
                self.section
            )));
        }
        while self.section < space {
            self.end_section()?;
        }
        write_field(&mut self.out, key)?;
        write_field(&mut self.out, value)?;
        self.count += 1;
        self.total += 1;
        Ok(())
    }

    /// Ends the current section with its record count and starts the next (after the last, it
    /// stays on the last).
    fn end_section(&mut self) -> io::Result<()> {
        self.out.write_all(&END.to_le_bytes())?;
        self.out.write_all(&self.count.to_le_bytes())?;
        self.count = 0;
        if let Some(next) = Keyspace::ALL.get(self.section.position() + 1) {
            self.section = *next;
        }
        Ok(())
    }

    /// The underlying writer, as it is (to end a stream with an error).
    pub fn into_inner(self) -> W {
        self.out
    }

    /// Ends the sections (empty ones for keyspaces without records) and flushes; returns the
    /// writer.
    ///
    /// # Errors
    /// On a write failure.
    pub fn end(mut self) -> io::Result<W> {
        let last = Keyspace::ALL.len() - 1;
        for _ in self.section.position()..=last {
            self.end_section()?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// A backup's body is padded to a multiple of this, as etcd's database files are.
const BACKUP_ALIGN: u64 = 512;

/// Bytes of the SHA-256 a backup ends with.
const CHECKSUM_BYTES: u64 = 32;

/// How much of a file of `len` bytes is the backup's body: all of it but the checksum a backup
/// ends with, when its length has room for one (a body is a whole number of 512-byte blocks);
/// all of it otherwise (etcd's database file copied from a data directory has none).
pub fn backup_body_len(len: u64) -> u64 {
    if len % BACKUP_ALIGN == CHECKSUM_BYTES {
        len - CHECKSUM_BYTES
    } else {
        len
    }
}

/// Reads a snapshot as a backup: the snapshot's bytes, the padding, then the checksum (see the
/// module doc).
pub struct BackupReader<R: Read> {
    inner: Option<R>,
    hasher: sha2::Sha256,
    len: u64,
    /// Padding and checksum, once the snapshot's bytes are done.
    tail: Bytes,
}

impl<R: Read> BackupReader<R> {
    /// A backup of the snapshot `inner` produces.
    pub fn new(inner: R) -> BackupReader<R> {
        BackupReader {
            inner: Some(inner),
            hasher: sha2::Sha256::default(),
            len: 0,
            tail: Bytes::new(),
        }
    }
}

impl<R: Read> Read for BackupReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use sha2::Digest;
        if let Some(inner) = &mut self.inner {
            let n = inner.read(buf)?;
            if n > 0 {
                self.hasher.update(&buf[..n]);
                self.len += n as u64;
                return Ok(n);
            }
            self.inner = None;
            let pad = (BACKUP_ALIGN - self.len % BACKUP_ALIGN) % BACKUP_ALIGN;
            let padding = vec![0u8; pad as usize];
            self.hasher.update(&padding);
            let mut tail = padding;
            tail.extend_from_slice(&std::mem::take(&mut self.hasher).finalize());
            self.tail = Bytes::from(tail);
        }
        let n = buf.len().min(self.tail.len());
        buf[..n].copy_from_slice(&self.tail[..n]);
        self.tail.advance(n);
        Ok(n)
    }
}

/// Checks a backup file's framing and checksum (see the module doc).
///
/// # Errors
/// When the file has no checksum where a backup has one, or the checksum does not match.
pub fn verify_backup(path: &Path) -> io::Result<()> {
    use sha2::Digest;
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let body = backup_body_len(len);
    if body == len {
        return Err(io_err(format!(
            "{} is not a backup: its length ({len} bytes) leaves no room for the checksum a \
             backup ends with",
            path.display()
        )));
    }
    let mut hasher = sha2::Sha256::default();
    std::io::copy(&mut (&mut file).take(body), &mut hasher)?;
    let mut stored = [0u8; 32];
    file.read_exact(&mut stored)?;
    if hasher.finalize().as_slice() != stored {
        return Err(io_err(format!(
            "{} is damaged: its SHA-256 checksum does not match its content",
            path.display()
        )));
    }
    Ok(())
}

fn write_field(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l < MAX_FIELD)
        .ok_or_else(|| io_err("snapshot field too large"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

/// Streams the records of a snapshot file, section by section.
pub struct SnapshotReader {
    input: BufReader<PositionalReader>,
    /// The header of the file.
    pub meta: SnapshotMeta,
    /// Records read in the current section.
    count: u64,
    /// The section being read.
    section: Keyspace,
    done: bool,
}

impl SnapshotReader {
    fn new(file: PositionalReader) -> io::Result<SnapshotReader> {
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut magic = [0u8; 8];
        input.read_exact(&mut magic)?;
        check_magic(&magic)?;
        let len = read_u32(&mut input)?;
        let header = read_exact_vec(&mut input, len)?;
        let meta = format::decode(&header).map_err(io_err)?;
        Ok(SnapshotReader {
            input,
            meta,
            count: 0,
            section: Keyspace::Data,
            done: false,
        })
    }
}

/// Refuses every file but one of [`SNAPSHOT_VERSION`], saying which version it is and why.
fn check_magic(magic: &[u8; 8]) -> io::Result<()> {
    if magic == MAGIC {
        return Ok(());
    }
    let Some(version) = magic
        .strip_prefix(MAGIC_PREFIX)
        .and_then(|digit| char::from(digit[0]).to_digit(10))
    else {
        return Err(io_err("not an rskv snapshot file"));
    };
    let why = if version == 3 {
        "written by an rskv from before its multi-version store (no revisions, no history), which \
         this rskv has no migration from. Run the rskv that wrote it, or move the data directory \
         away and start this node empty so it rejoins the cluster and catches up from it"
    } else if version < u32::from(SNAPSHOT_VERSION) {
        "written by an rskv from before its formats were versioned (a MessagePack header of \
         openraft's types), which this rskv cannot read and has no migration from. Run the rskv \
         that wrote it, or move the data directory away and start this node empty so it rejoins \
         the cluster and catches up from it"
    } else {
        "written by a newer rskv; run that rskv or a newer one"
    };
    Err(io_err(format!(
        "snapshot file format version {version} is not read by this rskv (it reads version \
         {SNAPSHOT_VERSION}): {why}"
    )))
}

fn read_u32(input: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    input.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_exact_vec(input: &mut impl Read, len: u32) -> io::Result<Vec<u8>> {
    if len >= MAX_FIELD {
        return Err(io_err("corrupt snapshot: field length too large"));
    }
    let mut v = vec![0u8; len as usize];
    input.read_exact(&mut v)?;
    Ok(v)
}

impl SnapshotReader {
    /// The next record, `None` after the last section's end marker.
    fn step(&mut self) -> io::Result<Option<Record>> {
        loop {
            let klen = read_u32(&mut self.input)?;
            if klen != END {
                let key = read_exact_vec(&mut self.input, klen)?;
                let vlen = read_u32(&mut self.input)?;
                let value = read_exact_vec(&mut self.input, vlen)?;
                self.count += 1;
                return Ok(Some(Record {
                    space: self.section,
                    key: Bytes::from(key),
                    value: Bytes::from(value),
                }));
            }
            let mut b = [0u8; 8];
            self.input.read_exact(&mut b)?;
            let expected = u64::from_le_bytes(b);
            if expected != self.count {
                return Err(io_err(format!(
                    "corrupt snapshot: {} records in a section whose trailer says {expected}",
                    self.count
                )));
            }
            match Keyspace::ALL.get(self.section.position() + 1) {
                Some(next) => self.section = *next,
                None => return Ok(None),
            }
            self.count = 0;
        }
    }
}

impl Iterator for SnapshotReader {
    type Item = io::Result<Record>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.step();
        match step {
            Ok(Some(kv)) => Some(Ok(kv)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// A snapshot's data as openraft passes it around.
pub enum SnapshotData {
    /// A snapshot file on disk.
    File(SnapshotFile),
    /// The file format streamed from an engine export that is still running.
    Stream(SnapshotStream),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::File(file) => write!(f, "file {}", file.path.display()),
            SnapshotData::Stream(_) => write!(f, "engine export stream"),
        }
    }
}

impl SnapshotData {
    /// A blocking reader over the snapshot's bytes in the file format, from the start.
    ///
    /// # Errors
    /// When the file handle cannot be duplicated.
    pub fn into_reader(self) -> io::Result<Box<dyn Read + Send>> {
        Ok(match self {
            SnapshotData::File(file) => Box::new(file.read_from(0)?),
            SnapshotData::Stream(stream) => Box::new(stream),
        })
    }
}

/// Pieces a [`StreamWriter`] hands to its [`SnapshotStream`] at once.
const STREAM_PIECE_BYTES: usize = 1 << 20;
/// Pieces buffered between producer and consumer: the export runs at most this far ahead of the
/// send, so a stream no one reads holds a few MiB, not the data set.
const STREAM_PIECES_AHEAD: usize = 2;

/// The writing end of a snapshot stream: a [`Write`] that sends its bytes in pieces.
pub struct StreamWriter {
    tx: std::sync::mpsc::SyncSender<io::Result<Bytes>>,
    buf: Vec<u8>,
}

/// The reading end: a [`Read`] over the pieces, in order. Dropping it makes the producer's next
/// write fail, which ends the export.
pub struct SnapshotStream {
    rx: std::sync::mpsc::Receiver<io::Result<Bytes>>,
    piece: Bytes,
    /// Told at the first read (dropped unread: the [`FirstRead`] learns that too).
    first_read: Option<std::sync::mpsc::SyncSender<()>>,
}

/// Lets a producer wait until its stream is first read. openraft drops the data of most
/// snapshots it asks for unread (it wants their metadata; a follower that needs the data asks
/// again), so an export that waited for nothing would encode a few MiB for no one every time.
pub struct FirstRead(std::sync::mpsc::Receiver<()>);

impl FirstRead {
    /// Blocks until the stream is first read.
    ///
    /// # Errors
    /// `BrokenPipe` when the stream was dropped without being read.
    pub fn wait(self) -> io::Result<()> {
        self.0.recv().map_err(|_| {
            io::Error::new(io::ErrorKind::BrokenPipe, "snapshot stream dropped unread")
        })
    }
}

/// A connected writer and reader, and the signal of the reader's first read.
pub fn snapshot_stream() -> (StreamWriter, SnapshotStream, FirstRead) {
    let (tx, rx) = std::sync::mpsc::sync_channel(STREAM_PIECES_AHEAD);
    let (first_tx, first_rx) = std::sync::mpsc::sync_channel(1);
    (
        StreamWriter {
            tx,
            buf: Vec::with_capacity(STREAM_PIECE_BYTES),
        },
        SnapshotStream {
            rx,
            piece: Bytes::new(),
            first_read: Some(first_tx),
        },
        FirstRead(first_rx),
    )
}

impl StreamWriter {
    fn send(&mut self, piece: io::Result<Bytes>) -> io::Result<()> {
        self.tx
            .send(piece)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "snapshot stream dropped"))
    }

    /// Ends the stream with an error the reader will see (an export that failed midway).
    pub fn fail(mut self, error: io::Error) {
        let _ = self.send(Err(error));
    }
}

impl Write for StreamWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= STREAM_PIECE_BYTES {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(STREAM_PIECE_BYTES));
        self.send(Ok(Bytes::from(piece)))
    }
}

impl Read for SnapshotStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(first_read) = self.first_read.take() {
            let _ = first_read.send(());
        }
        while self.piece.is_empty() {
            match self.rx.recv() {
                Ok(piece) => self.piece = piece?,
                // The writer is gone: after `end` that is the end of the stream; an export that
                // stopped early sent its error first, and a truncated stream fails the reader's
                // record-count check.
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len());
        buf[..n].copy_from_slice(&self.piece[..n]);
        self.piece.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<crate::types::TypeConfig>(
                2, 1, index,
            )),
            last_membership: crate::types::StoredMembership::default(),
        }
    }

    fn record(space: Keyspace, key: &str, value: &str) -> Record {
        Record {
            space,
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// A snapshot file holding `bytes`.
    fn file_with(dir: &Path, bytes: &[u8]) -> SnapshotFile {
        let path = dir.join("snapshot.bin");
        std::fs::write(&path, bytes).expect("write");
        SnapshotFile::open(&path).expect("open")
    }

    fn read_all(file: &SnapshotFile) -> io::Result<Vec<Record>> {
        file.reader()?.collect()
    }

    #[test]
    fn snapshot_should_carry_every_keyspace_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let records = vec![
            record(Keyspace::Data, "a", "1"),
            record(Keyspace::Data, "b", "2"),
            record(Keyspace::System, "sessions/meta", "m"),
            record(Keyspace::History, "r1", "h"),
            record(Keyspace::Lease, "l1", "x"),
        ];
        let mut writer = SnapshotWriter::start(Vec::new(), &meta(5)).expect("start");
        for r in &records {
            writer.record(r.space, &r.key, &r.value).expect("record");
        }
        let bytes = writer.end().expect("end");
        let file = file_with(dir.path(), &bytes);
        assert_eq!(file.read_meta().expect("meta"), meta(5));
        assert_eq!(read_all(&file).expect("read"), records);
        // A data record after the system section is a bug in the exporter, refused.
        let mut writer = SnapshotWriter::start(Vec::new(), &meta(5)).expect("start");
        writer.record(Keyspace::System, b"s", b"1").expect("record");
        assert!(writer.record(Keyspace::Data, b"a", b"1").is_err());
        // No records after the data: empty sections.
        let mut writer = SnapshotWriter::start(Vec::new(), &meta(6)).expect("start");
        writer.record(Keyspace::Data, b"a", b"1").expect("record");
        let file = file_with(dir.path(), &writer.end().expect("end"));
        assert_eq!(
            read_all(&file).expect("read"),
            vec![record(Keyspace::Data, "a", "1")]
        );
    }

    /// Versions 1 and 2 (a MessagePack header of openraft's types) and 3 (no revisions) are
    /// refused, saying so, before anything of the file is taken for data.
    #[test]
    fn version_1_2_and_3_snapshots_should_be_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        for old in [b"RSKVSNP1", b"RSKVSNP2", b"RSKVSNP3"] {
            let mut bytes = SnapshotWriter::start(Vec::new(), &meta(3))
                .and_then(SnapshotWriter::end)
                .expect("write");
            bytes[..8].copy_from_slice(old);
            let err = file_with(dir.path(), &bytes)
                .read_meta()
                .expect_err("old version");
            let version = char::from(old[7]);
            let why = if version == '3' {
                "before its multi-version store"
            } else {
                "before its formats were versioned"
            };
            assert!(
                err.to_string().contains(&format!(
                    "snapshot file format version {version} is not read by this rskv (it reads version 4)"
                )) && err.to_string().contains(why),
                "{err}"
            );
        }
    }

    #[test]
    fn newer_or_foreign_snapshot_should_be_refused_with_a_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut bytes = SnapshotWriter::start(Vec::new(), &meta(1))
            .and_then(SnapshotWriter::end)
            .expect("write");
        bytes[7] = b'9';
        let err = file_with(dir.path(), &bytes)
            .read_meta()
            .expect_err("newer version");
        assert!(
            err.to_string().contains("version 9 is not read")
                && err.to_string().contains("newer rskv"),
            "{err}"
        );
        // A damaged header is an error naming it, not a panic.
        let mut bytes = SnapshotWriter::start(Vec::new(), &meta(1))
            .and_then(SnapshotWriter::end)
            .expect("write");
        bytes[12] = 0xff;
        let err = file_with(dir.path(), &bytes)
            .read_meta()
            .expect_err("damaged header");
        assert!(err.to_string().contains("snapshot metadata"), "{err}");
        let err = file_with(dir.path(), b"not a snapshot at all")
            .read_meta()
            .expect_err("foreign file");
        assert!(err.to_string().contains("not an rskv snapshot"), "{err}");
    }

    /// The last section cut short is detected by its own count.
    #[test]
    fn truncated_last_section_should_be_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = SnapshotWriter::start(Vec::new(), &meta(2)).expect("start");
        writer.record(Keyspace::Data, b"a", b"1").expect("record");
        writer.record(Keyspace::Lease, b"s1", b"x").expect("record");
        writer.record(Keyspace::Lease, b"s2", b"y").expect("record");
        let bytes = writer.end().expect("end");
        // Drop the last record but keep a trailer: the count no longer matches.
        let record_len = 4 + 2 + 4 + 1;
        let mut cut = bytes[..bytes.len() - 12 - record_len].to_vec();
        cut.extend_from_slice(&bytes[bytes.len() - 12..]);
        let err = read_all(&file_with(dir.path(), &cut)).expect_err("count mismatch");
        assert!(err.to_string().contains("trailer says 2"), "{err}");
    }

    #[test]
    fn stream_producer_should_wait_for_the_first_read() {
        // Dropped unread: the producer learns it before it writes anything.
        let (_out, stream, first_read) = snapshot_stream();
        drop(stream);
        let err = first_read.wait().expect_err("dropped unread");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        // Read: the producer goes on, and what it writes then arrives.
        let (mut out, mut stream, first_read) = snapshot_stream();
        let producer = std::thread::spawn(move || {
            first_read.wait()?;
            out.write_all(b"records")?;
            out.flush()
        });
        let mut got = Vec::new();
        stream.read_to_end(&mut got).expect("read");
        producer.join().expect("producer").expect("write");
        assert_eq!(got, b"records");
    }
}
