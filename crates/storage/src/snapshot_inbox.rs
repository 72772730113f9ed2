//! Where snapshots sent by a leader arrive: the Raft service streams the chunks in, and gets back
//! a [`SnapshotFile`] to hand to openraft, which installs it through the state machine.
//!
//! The service never sees the snapshot directory. Files are named uniquely here, written on the
//! blocking pool (a slow disk holds a blocking thread, never an async worker), and a transfer
//! that fails or is dropped half way leaves no file behind. Leftovers from a crash are removed
//! when the inbox opens at the next start.

use std::fs::File;
use std::io;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use crate::io_thread::blocking;
use crate::snapshot::SnapshotFile;

/// Receives snapshot files into the state machine's snapshot directory.
#[derive(Debug)]
pub struct SnapshotInbox {
    dir: PathBuf,
    /// Names incoming files uniquely within this process.
    seq: AtomicU64,
}

impl SnapshotInbox {
    /// The inbox of `dir`; removes partial files left by a previous run (incoming transfers and
    /// snapshots being built when the process stopped).
    pub fn open(dir: &Path) -> SnapshotInbox {
        remove_partial_files(dir);
        SnapshotInbox {
            dir: dir.to_path_buf(),
            seq: AtomicU64::new(0),
        }
    }

    /// Starts receiving one snapshot, whose first bytes are `first`.
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub async fn receive(&self, first: Bytes) -> io::Result<IncomingSnapshot> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .dir
            .join(format!("incoming-{}-{seq}.tmp", std::process::id()));
        let mut incoming = IncomingSnapshot {
            file: None,
            path: Some(path.clone()),
            received: 0,
        };
        let file = blocking(move || File::create(&path)).await?;
        incoming.file = Some(file);
        incoming.write(first).await?;
        Ok(incoming)
    }
}

/// A snapshot being received; its file is removed if this is dropped before [`Self::finish`].
#[derive(Debug)]
pub struct IncomingSnapshot {
    file: Option<File>,
    /// `None` once finished (the file then belongs to whoever installs it).
    path: Option<PathBuf>,
    received: u64,
}

impl IncomingSnapshot {
    /// Appends `data`. Writes go to the page cache; the state machine syncs the file before it
    /// installs it.
    ///
    /// # Errors
    /// When the write fails.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("snapshot write after a failed write"))?;
        let len = data.len() as u64;
        let file = blocking(move || file.write_all(&data).map(|()| file)).await?;
        self.file = Some(file);
        self.received += len;
        Ok(())
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Ends the transfer: the file, ready to install, and what to clean up after the install.
    ///
    /// # Errors
    /// When the file cannot be reopened for reading.
    pub async fn finish(mut self) -> io::Result<(SnapshotFile, Leftover)> {
        drop(self.file.take());
        let path = self
            .path
            .clone()
            .ok_or_else(|| io::Error::other("snapshot finished twice"))?;
        let opened = {
            let path = path.clone();
            blocking(move || SnapshotFile::open(&path)).await?
        };
        // From here the file is openraft's: the state machine renames it into place, or it is
        // left for `Leftover` (and, failing that, for the next start) to remove.
        self.path = None;
        Ok((opened, Leftover(path)))
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        drop(self.file.take());
        if let Some(path) = &self.path {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial snapshot");
            }
        }
    }
}

/// A received snapshot's path, to remove once its install has returned. An installed snapshot was
/// renamed into place, so this only removes one openraft declined (e.g. older than what is
/// applied). It is not removed on drop: if the request is dropped while openraft still holds the
/// install, the file must stay.
#[derive(Debug)]
pub struct Leftover(PathBuf);

impl Leftover {
    /// Removes the file if the install did not take it.
    pub async fn remove(self) {
        let path = self.0;
        let _ = blocking(move || match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        })
        .await;
    }
}

/// Removes `incoming-*` and `building-*` files: transfers and builds a stopped process left.
fn remove_partial_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("incoming-") || name.starts_with("building-") {
            if let Err(e) = std::fs::remove_file(entry.path()) {
                tracing::warn!(file = %name, error = %e, "cannot remove stale snapshot file");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_dropped_transfer_should_leave_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = SnapshotInbox::open(dir.path());
        let mut incoming = inbox
            .receive(Bytes::from_static(b"abc"))
            .await
            .expect("receive");
        incoming
            .write(Bytes::from_static(b"def"))
            .await
            .expect("write");
        assert_eq!(incoming.received(), 6);
        assert_eq!(names(dir.path()).len(), 1);
        drop(incoming);
        assert!(names(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_finished_transfer_should_hold_every_chunk_until_its_leftover_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = SnapshotInbox::open(dir.path());
        let mut incoming = inbox
            .receive(Bytes::from_static(b"abc"))
            .await
            .expect("receive");
        incoming
            .write(Bytes::from_static(b"def"))
            .await
            .expect("write");
        let (file, leftover) = incoming.finish().await.expect("finish");
        assert_eq!(std::fs::read(&file.path).expect("read"), b"abcdef");
        assert_eq!(
            names(dir.path()).len(),
            1,
            "finished file kept for the install"
        );
        leftover.remove().await;
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn opening_should_remove_partial_files_and_keep_the_snapshot() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["incoming-1-0.tmp", "building-3.tmp", "snapshot.bin"] {
            std::fs::write(dir.path().join(name), b"x").expect("write");
        }
        let _inbox = SnapshotInbox::open(dir.path());
        assert_eq!(names(dir.path()), vec!["snapshot.bin".to_string()]);
    }
}
