//! A cursor in the store's history that waits for more: what every watch served from history
//! (etcd's `Watch`, and rskv's own `Watch` from a revision) reads.
//!
//! It reads the changes from its position on, in revision order, and once it has caught up waits
//! until the store's revision moves. Everything it yields comes from the committed history, so a
//! watch built on it has no gap and no duplicate, on any node, across restarts and leader changes.

use std::sync::Arc;

use rskv_proto::etcd::mvccpb;
use rskv_storage::events::EventBus;
use rskv_storage::mvcc::Rev;
use tokio::sync::watch;

use crate::node::read_view::ReadView;

/// Changes read per step.
const STEP: usize = 1000;

/// What [`HistoryFeed::next`] found.
pub enum Feed {
    /// Changes after the previous ones, in revision order (never empty), with the store's
    /// revision when they were read.
    Changes {
        /// Each change's position and etcd's event for it.
        events: Vec<(Rev, mvccpb::Event)>,
        /// The store's revision as of the read.
        revision: i64,
    },
    /// The feed's position was compacted away: it cannot go on.
    Compacted {
        /// The store's compacted revision.
        compact_revision: i64,
        /// The store's revision as of the read.
        revision: i64,
    },
    /// The node is shutting down.
    Closed,
}

/// A position in history, reading forward (see the module doc).
pub struct HistoryFeed {
    view: ReadView,
    moved: watch::Receiver<i64>,
    cursor: Rev,
    prev_kv: bool,
}

impl HistoryFeed {
    /// A feed from revision `start` on (every change of it and after), with the replaced versions
    /// when `prev_kv`.
    pub fn new(view: ReadView, events: &Arc<EventBus>, start: i64, prev_kv: bool) -> HistoryFeed {
        HistoryFeed {
            view,
            moved: events.watch_revision(),
            cursor: Rev::new(start.max(1)),
            prev_kv,
        }
    }

    /// The next changes, waiting for some when the feed has caught up. Cancel-safe: a call
    /// dropped before it returns loses nothing.
    ///
    /// # Errors
    /// On a storage failure.
    pub async fn next(&mut self) -> std::io::Result<Feed> {
        loop {
            // Marks the current revision seen before reading, so a commit during the read
            // wakes the wait below.
            self.moved.borrow_and_update();
            let (events, meta) = self.view.changes(self.cursor, STEP, self.prev_kv).await?;
            if self.cursor.main < meta.compact_revision {
                return Ok(Feed::Compacted {
                    compact_revision: meta.compact_revision,
                    revision: meta.revision,
                });
            }
            if let Some((last, _)) = events.last() {
                self.cursor = Rev {
                    main: last.main,
                    sub: last.sub + 1,
                };
                return Ok(Feed::Changes {
                    events,
                    revision: meta.revision,
                });
            }
            if self.moved.changed().await.is_err() {
                return Ok(Feed::Closed);
            }
        }
    }
}
