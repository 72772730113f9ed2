//! Apply events: every change the state machine applies is published here, in apply order, on
//! every node (leader and followers alike).
//!
//! Two kinds of subscribers: in-process hooks ([`EventBus::register`]: a handler for a key prefix,
//! run on its own task so a slow handler can never stall Raft) and `Watch` streams (gRPC). Both
//! read a bounded `broadcast` channel whose unit is one applied batch (everything the state
//! machine applied at once, however many keys it touched), so a subscriber's lag is counted in
//! batches it has not read: a caught-up watcher is never dropped because one write changed more
//! keys than the buffer holds. A subscriber that falls more than `watch_buffer` batches behind is
//! dropped with a clear error rather than buffering without bound or skipping silently.
//! The last `history` events are retained so a watch can start from a past log index: the backlog
//! is taken and the live subscription opened under the same lock that publishing holds, so the
//! two join with no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::broadcast;
use tokio::sync::watch;

use crate::error::SubscribeError;
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

/// What live subscribers receive.
#[derive(Debug, Clone)]
pub enum Published {
    /// The changes of one applied batch, in apply order (never empty). One message per batch,
    /// so a subscriber's lag is counted in batches applied, not in the keys they touched.
    Batch(Arc<[Arc<Event>]>),
    /// The node jumped to this index by installing a snapshot: the changes before it cannot be
    /// delivered as events, so subscribers must stop (or start over from a fresh read).
    Reset(u64),
}

struct History {
    events: VecDeque<Arc<Event>>,
    /// Bytes of keys and values held in `events`.
    bytes: usize,
    /// Events with an index up to this one are not retained (evicted, before this run, or
    /// skipped by a snapshot install).
    evicted_through: u64,
    /// Index of the newest event published (or of the last reset).
    last_index: u64,
}

fn event_bytes(e: &Event) -> usize {
    let value = match &e.kind {
        EventKind::Put { value } => value.len(),
        EventKind::Delete => 0,
    };
    e.key.len() + value + e.prev.as_ref().map_or(0, |p| p.len()) + 64
}

/// The publish side of apply events, shared by the state machine, the Watch service and hooks.
pub struct EventBus {
    history: Mutex<History>,
    capacity: usize,
    capacity_bytes: usize,
    live: broadcast::Sender<Published>,
    /// Flips to `true` at shutdown; open watch streams end with a clean status.
    closed: watch::Sender<bool>,
    /// The store's revision as of the last applied batch (see [`crate::mvcc`]): the header
    /// revision of reads, and what etcd watch streams wait on to read history further.
    revision: watch::Sender<i64>,
}

/// A live subscription joined to its backlog.
pub struct Subscription {
    /// Past events from the requested index, oldest first.
    pub backlog: Vec<Arc<Event>>,
    /// Events published after the backlog was taken.
    pub live: broadcast::Receiver<Published>,
    /// The newest index published when the subscription was taken.
    pub last_index: u64,
    /// Becomes `true` when the node shuts down.
    pub closed: watch::Receiver<bool>,
}

impl EventBus {
    /// A bus retaining at most `history` events and `history_bytes` bytes of them, letting
    /// subscribers lag by at most `buffer` applied batches.
    pub fn new(history: usize, history_bytes: usize, buffer: usize) -> EventBus {
        let (live, _) = broadcast::channel(buffer.max(1));
        let (closed, _) = watch::channel(false);
        let (revision, _) = watch::channel(0);
        EventBus {
            revision,
            history: Mutex::new(History {
                events: VecDeque::with_capacity(history.min(65_536)),
                bytes: 0,
                evicted_through: 0,
                last_index: 0,
            }),
            capacity: history,
            capacity_bytes: history_bytes,
            live,
            closed,
        }
    }

    /// Records the store's revision after an applied batch, a start or a snapshot install
    /// (subscribers of [`EventBus::watch_revision`] wake when it moves).
    pub fn revision_applied(&self, revision: i64) {
        self.revision.send_if_modified(|current| {
            let moved = *current != revision;
            *current = revision;
            moved
        });
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

    /// Declares that the state machine jumped to `index` without events for what came before
    /// (node start, snapshot install): the history restarts there, and live subscribers are told.
    pub fn reset(&self, index: u64) {
        let Ok(mut history) = self.history.lock() else {
            tracing::error!("event history lock poisoned");
            return;
        };
        history.events.clear();
        history.bytes = 0;
        history.evicted_through = index;
        history.last_index = index;
        let _ = self.live.send(Published::Reset(index));
    }

    /// Publishes the changes of one applied batch, in order. Called by the state machine after
    /// the batch is visible to reads.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let count = events.len() as u64;
        let Ok(mut history) = self.history.lock() else {
            tracing::error!("event history lock poisoned; events dropped");
            return;
        };
        let batch: Arc<[Arc<Event>]> = events.into_iter().map(Arc::new).collect();
        for event in batch.iter() {
            history.last_index = event.index;
            if self.capacity > 0 {
                history.bytes += event_bytes(event);
                history.events.push_back(event.clone());
                while history.events.len() > self.capacity || history.bytes > self.capacity_bytes {
                    let Some(old) = history.events.pop_front() else {
                        break;
                    };
                    history.bytes = history.bytes.saturating_sub(event_bytes(&old));
                    history.evicted_through = old.index;
                }
            } else {
                history.evicted_through = event.index;
            }
        }
        // Sent under the history lock, so a concurrent subscribe sees this batch either in its
        // backlog or live, never both or neither. No receivers is fine: nobody is watching.
        let _ = self.live.send(Published::Batch(batch));
        crate::metrics::events_published(count);
    }

    /// Subscribes to events with index ≥ `start_index` (0: only events published from now on).
    ///
    /// # Errors
    /// [`SubscribeError::Compacted`] when events from `start_index` are no longer retained.
    pub fn subscribe(&self, start_index: u64) -> Result<Subscription, SubscribeError> {
        let history = self.history.lock().map_err(|_| SubscribeError::Poisoned)?;
        let live = self.live.subscribe();
        let closed = self.closed.subscribe();
        let last_index = history.last_index;
        if start_index == 0 {
            return Ok(Subscription {
                backlog: Vec::new(),
                live,
                last_index,
                closed,
            });
        }
        if start_index <= history.evicted_through {
            return Err(SubscribeError::Compacted {
                requested: start_index,
                oldest: history.evicted_through + 1,
            });
        }
        let backlog = history
            .events
            .iter()
            .filter(|e| e.index >= start_index)
            .cloned()
            .collect();
        Ok(Subscription {
            backlog,
            live,
            last_index,
            closed,
        })
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

    /// Ends every watch stream (node shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
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

    #[tokio::test]
    async fn subscribe_should_join_backlog_and_live_without_gap() {
        let bus = EventBus::new(100, 1 << 20, 16);
        bus.publish(vec![put(1, "a"), put(2, "b")]);
        let mut sub = bus.subscribe(2).expect("subscribe");
        bus.publish(vec![put(3, "c")]);
        let backlog: Vec<u64> = sub.backlog.iter().map(|e| e.index).collect();
        assert_eq!(backlog, vec![2]);
        match sub.live.recv().await.expect("live") {
            Published::Batch(events) => {
                let live: Vec<u64> = events.iter().map(|e| e.index).collect();
                assert_eq!(live, vec![3]);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn lag_should_count_batches_not_keys() {
        let bus = EventBus::new(100, 1 << 20, 4);
        let mut sub = bus.subscribe(0).expect("subscribe");
        // One write of 100 keys is one message: a caught-up subscriber gets it whole.
        bus.publish((1..=100).map(|_| put(1, "k")).collect());
        match sub
            .live
            .recv()
            .await
            .expect("a batch larger than the buffer")
        {
            Published::Batch(events) => assert_eq!(events.len(), 100),
            other => panic!("unexpected {other:?}"),
        }
        // More unread batches than the buffer holds is lag, reported as such.
        for index in 2..=6 {
            bus.publish(vec![put(index, "k")]);
        }
        assert!(matches!(
            sub.live.recv().await,
            Err(broadcast::error::RecvError::Lagged(1))
        ));
    }

    #[tokio::test]
    async fn compacted_start_should_be_refused() {
        let bus = EventBus::new(2, 1 << 20, 16);
        bus.publish(vec![put(1, "a"), put(2, "b"), put(3, "c")]);
        assert!(matches!(
            bus.subscribe(1),
            Err(SubscribeError::Compacted { .. })
        ));
        assert_eq!(bus.subscribe(2).expect("retained").backlog.len(), 2);
        // Byte-bounded too: one big event evicts the rest.
        let bus = EventBus::new(100, 1000, 16);
        bus.publish(vec![put(1, "a"), put(2, "b")]);
        let mut big = put(3, "c");
        big.kind = EventKind::Put {
            value: Bytes::from(vec![0u8; 900]),
        };
        bus.publish(vec![big]);
        assert!(matches!(
            bus.subscribe(2),
            Err(SubscribeError::Compacted { .. })
        ));
        // A reset (snapshot install) forgets the history and tells live subscribers.
        let mut sub = bus.subscribe(0).expect("live");
        bus.reset(50);
        assert!(matches!(sub.live.recv().await, Ok(Published::Reset(50))));
        assert!(matches!(
            bus.subscribe(50),
            Err(SubscribeError::Compacted { .. })
        ));
        assert!(bus.subscribe(51).expect("after reset").backlog.is_empty());
    }

    #[tokio::test]
    async fn hook_should_see_matching_events_in_order() {
        let bus = EventBus::new(10, 1 << 20, 16);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let _hook = bus.register("user/", move |e: &Event| {
            let _ = tx.send(e.index);
        });
        bus.publish(vec![put(1, "user/a"), put(2, "other"), put(3, "user/b")]);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(3));
    }
}
