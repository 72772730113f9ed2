//! A restarted node keeps the promise that leader leases rest on.
//!
//! A follower that acknowledges a leader promises not to help elect another one for
//! `election_timeout_max` from then: openraft rejects votes and pre-votes, and does not campaign,
//! while that lease runs. A leader serves lease reads on the promise (`raft.read_policy =
//! "lease"`: a quorum acknowledgement younger than 90% of it). openraft 0.10.0-alpha.37 keeps the
//! promise in memory only: a restarted node starts with the lease already expired (a TODO in its
//! `storage/helper.rs` says that breaks lease reads), so a follower that restarts quickly can vote
//! for, or become, a new leader while the old one still answers reads from its lease. Seen in
//! `tests/lease_restart.rs` in 6 runs of 6: a new leader 0.35–2.5 s after the follower restarted
//! (elected with its vote, or the restarted follower itself), well inside the old leader's 7.2 s
//! lease, which then answered a read with the value the new leader had already overwritten.
//!
//! So a node that restarts with a committed vote (it had acknowledged a leader) stays out of
//! elections for `election_timeout_max` after it started: openraft runs with elections disabled
//! until then, and the Raft service answers vote and pre-vote requests "not granted", as openraft
//! does while a lease runs. A leadership transfer still gets its vote (the leader asked for it;
//! openraft lets it through a running lease too). A node that never acknowledged a leader cannot
//! be in any leader's lease quorum, so a fresh cluster elects at once; nor is there another
//! leader's lease to respect when the node is the only voter.

use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::error::Result;
use crate::raft::NodeId;
use crate::raft::Raft;

/// Until when a restarted node stays out of elections (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseHold {
    /// The end of the hold; `None` when there is none.
    until: Option<Instant>,
}

impl LeaseHold {
    /// No hold: the node never acknowledged a leader, or is the only voter.
    pub fn none() -> LeaseHold {
        LeaseHold { until: None }
    }

    /// The hold for node `id`, which restarted with a committed vote: `lease` from now, unless
    /// it is the only voter (then elections are enabled at once, and there is no hold).
    ///
    /// # Errors
    /// When openraft cannot be asked for the membership (it stopped).
    pub async fn after_start(raft: &Raft, id: NodeId, lease: Duration) -> Result<LeaseHold> {
        let only_voter = raft
            .with_raft_state(move |state| {
                state
                    .membership_state
                    .effective()
                    .voter_ids()
                    .all(|voter| voter == id)
            })
            .await
            .map_err(|e| Error::raft("reading the raft state", e))?;
        if only_voter {
            raft.runtime_config().elect(true);
            return Ok(LeaseHold::none());
        }
        tracing::info!(
            ?lease,
            "restarted after acknowledging a leader: not voting or campaigning until its lease has lapsed"
        );
        Ok(LeaseHold::from_now(lease))
    }

    /// A hold for `lease` from now: the node had acknowledged a leader before it (re)started, at
    /// the latest just before the process started, so any lease it granted ends by then.
    pub fn from_now(lease: Duration) -> LeaseHold {
        LeaseHold::ending_at(Instant::now() + lease)
    }

    fn ending_at(until: Instant) -> LeaseHold {
        LeaseHold { until: Some(until) }
    }

    /// Whether there is a hold at all (over or not).
    pub fn is_held(&self) -> bool {
        self.until.is_some()
    }

    /// How much longer a vote or pre-vote request must be refused; `None` when openraft may
    /// answer it: the hold is over, or the request is a leadership transfer.
    pub fn refuses(&self, leadership_transfer: bool) -> Option<Duration> {
        let left = self.until?.checked_duration_since(Instant::now())?;
        (!leadership_transfer && !left.is_zero()).then_some(left)
    }

    /// Waits until the hold is over, then lets `raft` campaign again.
    pub async fn release(&self, raft: &Raft) {
        let Some(until) = self.until else {
            return;
        };
        tokio::time::sleep_until(until).await;
        raft.runtime_config().elect(true);
        tracing::info!("lease hold over: voting and campaigning again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hold_should_refuse_votes_until_it_ends_but_never_a_leadership_transfer() {
        let running = LeaseHold::ending_at(Instant::now() + Duration::from_secs(60));
        assert!(running.is_held());
        let left = running.refuses(false).expect("refused while the hold runs");
        assert!(left > Duration::from_secs(59), "{left:?}");
        assert_eq!(
            running.refuses(true),
            None,
            "the leader asked for this vote"
        );
        let over = LeaseHold::ending_at(Instant::now());
        assert!(over.is_held());
        assert_eq!(
            over.refuses(false),
            None,
            "a hold that has ended refuses nothing"
        );
    }

    #[test]
    fn no_hold_should_refuse_nothing() {
        let hold = LeaseHold::none();
        assert!(!hold.is_held());
        assert_eq!(hold.refuses(false), None);
    }
}
