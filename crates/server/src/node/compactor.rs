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

/// Most revisions of history one `Compact` command covers. Apply only moves the compacted
/// revision; each node's sweep (`rskv_storage::mvcc::sweep`) then removes what it superseded, one
/// pass per compaction, recording its progress at the end of a pass and leaving what it has yet
/// to remove out of HashKV by reading it first. Steps bound both: what a crash makes a sweep
/// redo, and what a HashKV reads twice.
pub const MAX_STEP: i64 = 10_000;

/// The revisions to compact at, in order, to go from `compacted` to `target`: steps of at most
/// `step` revisions, the last one `target` itself (alone when it is within a step, or when it
/// is not a revision that can be compacted yet).
pub fn steps(compacted: i64, target: i64, step: i64) -> Vec<i64> {
    let step = step.max(1);
    let mut out = Vec::new();
    let mut at = compacted;
    while target - at > step {
        at += step;
        out.push(at);
    }
    out.push(target);
    out
}

/// Compacts history up to `target`, from `compacted` (the compacted revision now) in
/// [`steps`] of at most [`MAX_STEP`] revisions, and answers what the last command, the
/// `Compact` at `target`, answers. Steps before it that are refused (another compaction got
/// further meanwhile) do not matter; a proposal that fails stops here. `current` is the store's
/// revision: a `target` beyond it is proposed alone, so a refused compaction changes nothing.
///
/// # Errors
/// A proposal's error (no leader, timeout, ...).
pub async fn compact_to(
    proposer: &Proposer,
    compacted: i64,
    current: i64,
    target: i64,
) -> crate::error::Result<(u64, crate::raft::CommandResponse)> {
    let plan = if target <= current {
        steps(compacted, target, MAX_STEP)
    } else {
        vec![target]
    };
    // `steps` always ends at `target`.
    let (last, before) = plan.split_last().unwrap_or((&target, &[]));
    for revision in before {
        proposer
            .write(Command::Compact {
                revision: *revision,
            })
            .await?;
    }
    proposer.write(Command::Compact { revision: *last }).await
}

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
        let Ok(compacted) = view.compacted().await else {
            continue;
        };
        let target = match policy {
            Compaction::Off => return,
            Compaction::Revision(keep) => {
                // Compact in steps of a tenth of the retention, not at every write.
                let step = (keep / 10).max(1);
                let target = current - keep;
                if target >= compacted + step {
                    target
                } else {
                    continue;
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
                match target {
                    Some(target) if target > compacted => target,
                    _ => continue,
                }
            }
        };
        match compact_to(&proposer, compacted, current, target).await {
            Ok(_) => tracing::info!(revision = target, current, "history compacted"),
            Err(e) => {
                tracing::debug!(revision = target, error = %e, "automatic compaction failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::steps;

    #[test]
    fn a_long_history_should_be_compacted_in_bounded_steps_ending_at_the_target() {
        assert_eq!(steps(0, 5, 10), vec![5], "within a step: one command");
        assert_eq!(steps(0, 10, 10), vec![10]);
        assert_eq!(steps(0, 25, 10), vec![10, 20, 25]);
        assert_eq!(steps(100, 130, 10), vec![110, 120, 130]);
        assert_eq!(
            steps(100, 90, 10),
            vec![90],
            "a compacted target alone, to be refused as one command would be"
        );
        assert_eq!(
            steps(0, 3, 0),
            vec![1, 2, 3],
            "a step of at least one revision"
        );
    }
}
