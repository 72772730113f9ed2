//! Graceful shutdown, step by step.
//!
//! On SIGINT/SIGTERM [`super::Node::serve`] calls [`prepare`] and then drains: (1) new client
//! requests are refused with UNAVAILABLE so clients move to another node; (2) a leader hands
//! leadership to the most caught-up voter and waits, bounded, until that node leads; (3) watch
//! streams end with a clean UNAVAILABLE status; then the client server stops accepting
//! connections and in-flight requests finish (bounded by `shutdown_timeout_ms`), the Raft
//! transport stops, openraft shuts down and the state machine is synced.

use std::time::Duration;

use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ServerState;
use tokio::time::Instant;

use super::Node;
use crate::raft::NodeId;

/// Refuses new requests, hands leadership over if this node leads, and ends watch streams.
pub async fn prepare(node: &Node, deadline: Instant) {
    node.limiter.start_draining();
    tracing::info!(
        in_flight = node.limiter.in_flight(),
        "draining: new requests refused"
    );
    if node.raft.metrics().borrow_watched().state == ServerState::Leader {
        // Leave a third of the budget for draining after the hand-off.
        let now = Instant::now();
        let handoff_deadline = now + deadline.saturating_duration_since(now).mul_f32(0.66);
        match hand_off_leadership(node, handoff_deadline).await {
            Ok(Some(to)) => tracing::info!(new_leader = to, "leadership handed over"),
            Ok(None) => tracing::info!("no other voter to hand leadership to"),
            Err(e) => {
                tracing::warn!(error = %e, "leadership hand-off failed; stepping down by exiting")
            }
        }
    }
    node.events.close();
}

/// The voter, other than this node, whose replicated log reaches furthest.
pub fn most_caught_up_voter(node: &Node) -> Option<NodeId> {
    let m = node.raft.metrics().borrow_watched().clone();
    let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
    let replication = m.replication.clone().unwrap_or_default();
    voters
        .into_iter()
        .filter(|id| *id != node.id)
        .max_by_key(|id| {
            (
                replication
                    .get(id)
                    .and_then(|l| l.as_ref())
                    .map(|l| l.index)
                    .unwrap_or(0),
                std::cmp::Reverse(*id),
            )
        })
}

/// Transfers leadership to the most caught-up voter and waits until it leads.
///
/// # Errors
/// A message when the transfer cannot be started or does not finish before `deadline`.
pub async fn hand_off_leadership(node: &Node, deadline: Instant) -> Result<Option<NodeId>, String> {
    let Some(target) = most_caught_up_voter(node) else {
        return Ok(None);
    };
    transfer_leadership(node, target, deadline).await.map(Some)
}

/// Asks `target` to take over leadership and waits (until `deadline`) until it does.
///
/// # Errors
/// When openraft refuses or the new leader is not in place by `deadline`.
pub async fn transfer_leadership(
    node: &Node,
    target: NodeId,
    deadline: Instant,
) -> Result<NodeId, String> {
    tracing::info!(target, "transferring leadership");
    node.raft
        .trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| e.to_string())?;
    let mut rx = node.raft.metrics();
    loop {
        let leader = rx.borrow_watched().current_leader;
        if leader == Some(target) {
            return Ok(target);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(format!(
                "node {target} did not take over in time (leader: {leader:?})"
            ));
        }
        match tokio::time::timeout(remaining.min(Duration::from_millis(200)), rx.changed()).await {
            Ok(Ok(())) | Err(_) => {}
            Ok(Err(_)) => return Err("raft stopped".into()),
        }
    }
}
