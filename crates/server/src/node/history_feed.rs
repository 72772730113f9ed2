//! A cursor in the store's history that waits for more: what every watch reads (etcd's `Watch`,
//! and rskv's own `Watch`, live or from a revision; there is no other watch path).
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

/// Takes the whole revisions of `held` (all of it once history has no more to give; else all but
/// the last revision, which may go on in the next read).
fn whole_revisions<T>(held: &mut Vec<(Rev, T)>, caught_up: bool) -> Vec<(Rev, T)> {
    if caught_up {
        return std::mem::take(held);
    }
    let last = held.last().map_or(0, |(rev, _)| rev.main);
    let cut = held.partition_point(|(rev, _)| rev.main < last);
    let rest = held.split_off(cut);
    std::mem::replace(held, rest)
}

/// A position in history, reading forward (see the module doc).
pub struct HistoryFeed {
    view: ReadView,
    moved: watch::Receiver<i64>,
    cursor: Rev,
    prev_kv: bool,
    /// Changes read but not yielded yet: the start of a revision whose end is still to be read.
    held: Vec<(Rev, mvccpb::Event)>,
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
            held: Vec::new(),
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
            let caught_up = events.len() < STEP;
            if let Some((last, _)) = events.last() {
                self.cursor = Rev {
                    main: last.main,
                    sub: last.sub + 1,
                };
            }
            self.held.extend(events);
            // Only whole revisions go out: a client resumes from the revision after the last one
            // it received, so a revision cut across two answers would lose its second part.
            let events = whole_revisions(&mut self.held, caught_up);
            if !events.is_empty() {
                return Ok(Feed::Changes {
                    events,
                    revision: meta.revision,
                });
            }
            if !caught_up {
                // One revision larger than a step: read on.
                continue;
            }
            if self.moved.changed().await.is_err() {
                return Ok(Feed::Closed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revs(items: &[(i64, u32)]) -> Vec<(Rev, ())> {
        items
            .iter()
            .map(|(main, sub)| {
                (
                    Rev {
                        main: *main,
                        sub: *sub,
                    },
                    (),
                )
            })
            .collect()
    }

    #[test]
    fn a_feed_should_yield_whole_revisions_only() {
        // Mid-history: revision 5 may go on, so it waits.
        let mut held = revs(&[(3, 0), (4, 0), (4, 1), (5, 0), (5, 1)]);
        let sent = whole_revisions(&mut held, false);
        assert_eq!(sent, revs(&[(3, 0), (4, 0), (4, 1)]));
        assert_eq!(held, revs(&[(5, 0), (5, 1)]));
        // One revision larger than a step: nothing to send yet, all of it held.
        held.extend(revs(&[(5, 2)]));
        assert!(whole_revisions(&mut held, false).is_empty());
        assert_eq!(held.len(), 3);
        // Caught up: history holds no more of revision 5, so all of it goes.
        let sent = whole_revisions(&mut held, true);
        assert_eq!(sent, revs(&[(5, 0), (5, 1), (5, 2)]));
        assert!(held.is_empty());
    }
}
