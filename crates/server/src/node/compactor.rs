//! Automatic compaction of the store's history, as etcd's `--auto-compaction-mode`: the leader
//! proposes a `Compact` when history exceeds the configured retention (a number of revisions, or
//! a span of time), so it is compacted at one revision on every node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use rskv_storage::events::EventBus;

use crate::config::Compaction;
use crate::node::proposer::Proposer;
use crate::node::read_view::ReadView;
use crate::raft::Command;
use crate::raft::Raft;

/// How often the leader checks.
const CHECK: Duration = Duration::from_secs(1);

/// Runs while `raft` does; compacts per `policy` whenever this node leads.
pub async fn run(
    raft: Raft,
    proposer: Arc<Proposer>,
    events: Arc<EventBus>,
    view: ReadView,
    policy: Compaction,
) {
    if policy == Compaction::Off {
        return;
    }
    let mut metrics = raft.metrics();
    let mut tick = tokio::time::interval(CHECK);
    // (when, revision) samples for periodic mode, oldest first.
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    loop {
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            _ = tick.tick() => {}
        }
        if metrics.borrow_watched().state != ServerState::Leader {
            samples.clear();
            continue;
        }
        let current = events.revision();
        let target = match policy {
            Compaction::Off => return,
            Compaction::Revision(keep) => {
                // Compact in steps of a tenth of the retention, not at every write.
                let step = (keep / 10).max(1);
                let target = current - keep;
                match view.compacted().await {
                    Ok(compacted) if target >= compacted + step => target,
                    _ => continue,
                }
            }
            Compaction::Periodic(keep) => {
                let now = Instant::now();
                let every = (keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if samples
                    .back()
                    .is_none_or(|(at, _)| now.duration_since(*at) >= every)
                {
                    samples.push_back((now, current));
                }
                // The newest sample at least `keep` old is the revision to keep from.
                let mut target = None;
                while samples
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) >= keep)
                {
                    target = samples.pop_front().map(|(_, rev)| rev);
                }
                match (target, view.compacted().await) {
                    (Some(target), Ok(compacted)) if target > compacted => target,
                    _ => continue,
                }
            }
        };
        match proposer.write(Command::Compact { revision: target }).await {
            Ok(_) => tracing::info!(revision = target, current, "history compacted"),
            Err(e) => {
                tracing::debug!(revision = target, error = %e, "automatic compaction failed; will retry")
            }
        }
    }
}
