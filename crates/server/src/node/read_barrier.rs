//! Batched linearizable-read barrier.
//!
//! Every linearizable read needs the leader to confirm, after the read arrived, that it still
//! leads (a quorum-acknowledged heartbeat round, or a lease), and then to have applied up to the
//! commit index it saw. Asking openraft once per read costs a message to its core task and, for
//! ReadIndex, a heartbeat broadcast per read. Here one confirmation round serves every read that
//! was waiting when the round *started*: reads arriving during a round wait for the next one, so
//! each read is still ordered after its own arrival, which is what makes it linearizable.
//!
//! The rounds are the batches of a one-slot [`Batcher`], the same grouping that puts concurrent
//! writes in one log entry: a read queues, and the round that takes it starts after it arrived.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ForwardReason;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::LinearizerOption;
use rskv_client::batch::Batcher;
use rskv_client::batch::Limits;

use crate::error::Error;
use crate::error::Result;
use crate::raft::Raft;

/// Shares leadership confirmations among concurrent linearizable reads on one node.
pub struct ReadBarrier {
    /// One round at a time; the reads queued while it runs make the next round's batch.
    rounds: Batcher<(), Result<()>>,
}

/// What one round needs to ask openraft.
struct Confirm {
    raft: Raft,
    option: LinearizerOption,
    /// Bound on one confirmation round, so a stuck round cannot hold later reads forever.
    round_timeout: Duration,
    /// The election timeout maximum, for "no quorum" errors.
    quorum_window_ms: u64,
}

impl ReadBarrier {
    /// A barrier asking openraft with `option` (from `raft.read_policy`); `quorum_window_ms` is
    /// the election timeout maximum.
    pub fn new(
        raft: Raft,
        option: LinearizerOption,
        round_timeout: Duration,
        quorum_window_ms: u64,
    ) -> Arc<Self> {
        let confirm = Arc::new(Confirm {
            raft,
            option,
            round_timeout,
            quorum_window_ms,
        });
        let limits = Limits {
            max_inflight: 1,
            max_items: usize::MAX,
            max_weight: usize::MAX,
            // The next round starts at once: four passes, as the proposer lets go by between
            // groups, cost rskv's own linearizable reads 11% at 256 clients.
            passes_between: 0,
        };
        let rounds = Batcher::new(
            limits,
            |_: &()| 0,
            move |reads: Vec<()>| {
                let confirm = confirm.clone();
                async move {
                    crate::metrics::read_round(reads.len());
                    let outcome = confirm.round().await;
                    vec![outcome; reads.len()]
                }
            },
        );
        Arc::new(Self { rounds })
    }

    /// Returns once a leadership confirmation that started after this call has completed and
    /// the state machine has applied up to the index it confirmed.
    ///
    /// # Errors
    /// [`Error::NotLeader`] (with the leader when known), [`Error::NoQuorum`] when a quorum
    /// could not be reached, [`Error::Timeout`] when the round did not finish in time.
    pub async fn wait(&self) -> Result<()> {
        self.rounds
            .submit(())
            .await
            .unwrap_or_else(|| Err(Error::unavailable("read barrier stopped")))
    }
}

impl Confirm {
    async fn round(&self) -> Result<()> {
        let confirmed = tokio::time::timeout(
            self.round_timeout,
            self.raft.ensure_linearizable(self.option.clone()),
        )
        .await
        .map_err(|_| Error::Timeout("linearizable read barrier timed out".into()))?;
        let no_quorum = || {
            super::QuorumState::of(&self.raft, self.quorum_window_ms)
                .no_quorum("the read was not served")
        };
        match confirmed {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))
                if f.reason == ForwardReason::LeaseExpired =>
            {
                Err(no_quorum())
            }
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => Err(f.into()),
            // openraft's own text is a debug print of the membership: say it for people.
            Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => Err(no_quorum()),
            Err(e) => Err(Error::unavailable_by("confirming leadership", e)),
        }
    }
}
