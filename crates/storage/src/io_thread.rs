//! A thread of the storage's own for disk work that openraft awaits, as TiKV's store writers and
//! apply pool are: a RocksDB write stall then holds this thread, never one of the async
//! runtime's workers (which also serve every client and peer connection).
//!
//! Jobs run one at a time, in the order they were submitted; the caller awaits the result.
//! Disk work that needs no order of its own goes to tokio's blocking pool through [`blocking`].

use std::io;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::io_err;

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` (file or RocksDB work) on tokio's blocking pool, never on an async worker.
///
/// # Errors
/// `f`'s error, or one saying the blocking task panicked.
pub async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

/// A named thread running submitted jobs in order; stopped and joined on drop.
#[derive(Debug)]
pub struct IoThread {
    name: String,
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl IoThread {
    /// Starts the thread `name`.
    ///
    /// # Errors
    /// When the operating system refuses a thread.
    pub fn spawn(name: &str) -> io::Result<IoThread> {
        let (tx, rx) = mpsc::channel::<Job>();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            })?;
        Ok(IoThread {
            name: name.to_string(),
            tx: Some(tx),
            handle: Some(handle),
        })
    }

    /// Runs `job` on the thread, after every job submitted before it, and returns its result.
    ///
    /// # Errors
    /// When the thread has stopped, or `job` panicked (the thread survives it).
    pub async fn run<T, F>(&self, job: F) -> io::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            // A panic drops `done_tx`, which the caller sees as an error; the thread goes on.
            if let Ok(value) = std::panic::catch_unwind(AssertUnwindSafe(job)) {
                let _ = done_tx.send(value);
            }
        });
        self.tx
            .as_ref()
            .ok_or_else(|| io_err(format!("{} thread stopped", self.name)))?
            .send(job)
            .map_err(|_| io_err(format!("{} thread stopped", self.name)))?;
        done_rx
            .await
            .map_err(|_| io_err(format!("a job on the {} thread panicked", self.name)))
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        // Closing the channel ends the loop once the queued jobs are done.
        drop(self.tx.take());
        if let Some(handle) = self.handle.take() {
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_should_run_in_order_on_the_named_thread() {
        let thread = IoThread::spawn("rskv-test-io").expect("spawn");
        let first = thread.run(|| 1).await.expect("run");
        let name = thread
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .expect("run");
        assert_eq!(first, 1);
        assert_eq!(name.as_deref(), Some("rskv-test-io"));
    }

    #[tokio::test]
    async fn a_panicking_job_should_fail_alone() {
        let thread = IoThread::spawn("rskv-test-io").expect("spawn");
        let failed = thread.run(|| -> u8 { panic!("boom") }).await;
        assert!(failed.is_err());
        assert_eq!(thread.run(|| 7).await.expect("the thread survives"), 7);
    }
}
