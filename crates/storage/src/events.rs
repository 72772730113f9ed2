//! Apply events: every change the state machine applies is published here, in apply order, on
//! every node (leader and followers alike), and the store's revision after each applied batch.
//!
//! Two kinds of listeners. In-process hooks ([`EventBus::register`]: a handler for a key prefix,
//! run on its own task so a slow handler can never stall Raft) read a bounded `broadcast` channel
//! whose unit is one applied batch (everything the state machine applied at once, however many
//! keys it touched), so a hook's lag is counted in batches it has not read: a caught-up hook is
//! never behind because one write changed more keys than the buffer holds. A hook that falls more
//! than `watch_buffer` batches behind misses them, which is logged and counted rather than
//! buffered without bound. Watch streams (rskv's and etcd's) do not read events at all: they read
//! the store's history, and only wait here for the revision to move
//! ([`EventBus::watch_revision`]) and for the node to shut down ([`EventBus::watch_closed`]). So
//! nothing is retained in memory, and a watch can resume after a restart or a snapshot install.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::log_throttle::LogThrottle;

/// What happened to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The key now holds `value`.
    Put {
        /// The new value.
        value: Bytes,
    },
    /// The key was removed.
    Delete,
}

/// One applied change of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Log index of the entry that made the change (a batch's keys share one index).
    pub index: u64,
    /// The store revision of the change (every change of one request shares it; see
    /// [`crate::mvcc`]).
    pub revision: i64,
    /// The key changed.
    pub key: Bytes,
    /// Put or delete.
    pub kind: EventKind,
    /// The previous value, when the request read it (a delete, a compare-and-swap, a put that
    /// asked for it): a plain put learns what it replaces from the index and skips reading it.
    pub prev: Option<Bytes>,
}

/// Which keys a subscriber wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFilter {
    /// Exactly this key.
    Key(Bytes),
    /// Every key starting with this prefix (empty: all keys).
    Prefix(Bytes),
}

impl KeyFilter {
    /// Whether `key` passes the filter.
    pub fn matches(&self, key: &[u8]) -> bool {
        match self {
            KeyFilter::Key(k) => k.as_ref() == key,
            KeyFilter::Prefix(p) => key.starts_with(p),
        }
    }
}

/// What hooks receive.
#[derive(Debug, Clone)]
enum Published {
    /// The changes of one applied batch, in apply order (never empty). One message per batch,
    /// so a hook's lag is counted in batches applied, not in the keys they touched.
    Batch(Arc<[Arc<Event>]>),
    /// The node jumped to this index by installing a snapshot: the changes before it were never
    /// applied here one by one, so hooks cannot be given them.
    Reset(u64),
}

/// The publish side of apply events and of the store's revision, shared by the state machine
/// (which publishes), hooks, and the watch services (which wait on the revision).
pub struct EventBus {
    /// Applied batches, to hooks.
    live: broadcast::Sender<Published>,
    /// Flips to `true` at shutdown; open watch streams end with a clean status.
    closed: watch::Sender<bool>,
    /// The store's revision as of the last applied batch (see [`crate::mvcc`]): the header
    /// revision of reads, where a live watch starts, and what watch streams wait on to read
    /// history further.
    revision: watch::Sender<i64>,
    /// The log index the state machine has applied, with that revision: what a member that
    /// forwarded a write waits for, so it answers only once it reflects the write (see
    /// [`EventBus::wait_applied`]).
    index: watch::Sender<u64>,
}

impl EventBus {
    /// A bus letting hooks lag by at most `buffer` applied batches (`events.watch_buffer`).
    pub fn new(buffer: usize) -> EventBus {
        let (live, _) = broadcast::channel(buffer.max(1));
        let (closed, _) = watch::channel(false);
        let (revision, _) = watch::channel(0);
        let (index, _) = watch::channel(0);
        EventBus {
            live,
            closed,
            revision,
            index,
        }
    }

    /// Records the store's revision and the applied log index after an applied batch, a start
    /// or a snapshot install, once what they cover is readable (subscribers of
    /// [`EventBus::watch_revision`] wake when the revision moves).
    pub fn applied(&self, revision: i64, index: u64) {
        fn set<T: PartialEq>(sender: &watch::Sender<T>, value: T) {
            sender.send_if_modified(|current| {
                let moved = *current != value;
                *current = value;
                moved
            });
        }
        set(&self.revision, revision);
        set(&self.index, index);
    }

    /// The log index of the last applied batch. Unlike openraft's metrics, which learn of an
    /// apply after its responders were answered, it never lags what a client was told.
    pub fn applied_index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Returns once the state machine has applied log index `index` (at once if it has; never
    /// after shutdown drops the bus).
    pub async fn wait_applied(&self, index: u64) {
        let mut applied = self.index.subscribe();
        let _ = applied.wait_for(|i| *i >= index).await;
    }

    /// The store's revision as of the last applied batch. Data read after this call is at least
    /// as new, so it is a safe header revision for such a read.
    pub fn revision(&self) -> i64 {
        *self.revision.borrow()
    }

    /// A receiver that wakes whenever the store's revision moves.
    pub fn watch_revision(&self) -> watch::Receiver<i64> {
        self.revision.subscribe()
    }

    /// Declares that the state machine jumped to `index` by installing a snapshot, without
    /// events for what came before: hooks are told (they log that they missed those changes).
    pub fn reset(&self, index: u64) {
        // No receivers is fine: no hook is registered.
        let _ = self.live.send(Published::Reset(index));
    }

    /// Publishes the changes of one applied batch, in order, to hooks. Called by the state
    /// machine after the batch is visible to reads.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        let batch: Arc<[Arc<Event>]> = events.into_iter().map(Arc::new).collect();
        // No receivers is fine: no hook is registered.
        let _ = self.live.send(Published::Batch(batch));
        crate::metrics::events_published(count);
    }

    /// Runs `handler` for every event whose key starts with `prefix`, on a task of its own, until
    /// the returned handle is dropped. A handler that falls more than the buffer's batches behind
    /// misses them; that is logged (throttled) and counted, and the hook carries on with newer ones.
    pub fn register<F>(&self, prefix: impl Into<Bytes>, handler: F) -> HookHandle
    where
        F: Fn(&Event) + Send + Sync + 'static,
    {
        static LAGGING: LogThrottle = LogThrottle::every_interval();
        let filter = KeyFilter::Prefix(prefix.into());
        let mut rx = self.live.subscribe();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(Published::Batch(events)) => {
                        for event in events.iter().filter(|e| filter.matches(&e.key)) {
                            handler(event);
                        }
                    }
                    Ok(Published::Reset(index)) => {
                        tracing::warn!(index, "event hook: node installed a snapshot; changes before it were not delivered");
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        crate::warn_throttled!(
                            LAGGING,
                            0,
                            missed_batches = n,
                            "event hook fell behind events.watch_buffer; events skipped"
                        );
                        crate::metrics::watcher_dropped();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        HookHandle { task }
    }

    /// Tells watch streams the node is shutting down (see [`EventBus::watch_closed`]), so they
    /// end rather than hold up the drain.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// A receiver whose value becomes `true` when the node shuts down, so a watch stream, which
    /// would otherwise wait for changes forever, ends with a status that says where to resume.
    pub fn watch_closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }
}

/// Keeps a hook registered; dropping it stops the hook's task.
pub struct HookHandle {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HookHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, key: &'static str) -> Event {
        Event {
            index,
            revision: index as i64,
            key: Bytes::from(key),
            kind: EventKind::Put {
                value: Bytes::from("v"),
            },
            prev: None,
        }
    }

    /// A hook's (index, revision) pairs, as it sees them.
    fn recording_hook(
        bus: &EventBus,
        prefix: &'static str,
    ) -> (HookHandle, tokio::sync::mpsc::UnboundedReceiver<(u64, i64)>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let hook = bus.register(prefix, move |e: &Event| {
            let _ = tx.send((e.index, e.revision));
        });
        (hook, rx)
    }

    #[tokio::test]
    async fn hook_should_see_matching_events_in_order_with_their_revisions() {
        let bus = EventBus::new(16);
        let (_hook, mut rx) = recording_hook(&bus, "user/");
        bus.publish(vec![put(1, "user/a"), put(2, "other"), put(3, "user/b")]);
        assert_eq!(rx.recv().await, Some((1, 1)));
        assert_eq!(rx.recv().await, Some((3, 3)));
    }

    #[tokio::test]
    async fn hook_lag_should_count_batches_not_keys() {
        let bus = EventBus::new(4);
        let (_hook, mut rx) = recording_hook(&bus, "");
        // One write of 100 keys is one message: a caught-up hook gets it whole.
        bus.publish((1..=100).map(|_| put(1, "k")).collect());
        for _ in 0..100 {
            assert_eq!(rx.recv().await, Some((1, 1)));
        }
        // More unread batches than the buffer holds: the oldest are missed (the hook's task has
        // not run while these were published), and the hook carries on with the newer ones.
        for index in 2..=7 {
            bus.publish(vec![put(index, "k")]);
        }
        let mut seen = Vec::new();
        while seen.len() < 4 {
            seen.extend(rx.recv().await.map(|(index, _)| index));
        }
        assert_eq!(seen, vec![4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn hook_should_carry_on_after_a_snapshot_install() {
        let bus = EventBus::new(16);
        let (_hook, mut rx) = recording_hook(&bus, "");
        bus.reset(50);
        bus.publish(vec![put(51, "a")]);
        assert_eq!(rx.recv().await, Some((51, 51)));
    }

    #[tokio::test]
    async fn dropping_the_handle_should_stop_the_hook() {
        let bus = EventBus::new(16);
        let (hook, mut rx) = recording_hook(&bus, "");
        drop(hook);
        bus.publish(vec![put(1, "a")]);
        // The handler (and its sender) went with the aborted task: the channel closes.
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn close_should_wake_watch_streams() {
        let bus = EventBus::new(16);
        let closed = bus.watch_closed();
        assert!(!*closed.borrow());
        bus.close();
        assert!(*closed.borrow());
        assert!(
            *bus.watch_closed().borrow(),
            "a stream opened after close sees it too"
        );
    }
}
