//! Batched linearizable-read barrier.
//!
//! Every linearizable read needs the leader to confirm, after the read arrived, that it still
//! leads (a quorum-acknowledged heartbeat round, or a lease), and then to have applied up to the
//! commit index it saw. Asking openraft once per read costs a message to its core task and, for
//! ReadIndex, a heartbeat broadcast per read. Here one confirmation round serves every read that
//! was waiting when the round *started*: reads arriving during a round wait for the next one, so
//! each read is still ordered after its own arrival, which is what makes it linearizable.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use openraft::error::ForwardReason;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use openraft::LinearizerOption;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::error::Result;
use crate::raft::Raft;

type Waiter = oneshot::Sender<Result<()>>;

/// Shares leadership confirmations among concurrent linearizable reads on one node.
pub struct ReadBarrier {
    raft: Raft,
    option: LinearizerOption,
    /// Bound on one confirmation round, so a stuck round cannot hold later reads forever.
    round_timeout: Duration,
    /// The election timeout maximum, for "no quorum" errors.
    quorum_window_ms: u64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A round task is running; new waiters will be picked up by its next round.
    running: bool,
    /// Reads that arrived since the current round started.
    waiting: Vec<Waiter>,
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
        Arc::new(Self {
            raft,
            option,
            round_timeout,
            quorum_window_ms,
            state: Mutex::new(State::default()),
        })
    }

    /// Returns once a leadership confirmation that started after this call has completed and
    /// the state machine has applied up to the index it confirmed.
    ///
    /// # Errors
    /// [`Error::NotLeader`] (with the leader when known), [`Error::NoQuorum`] when a quorum
    /// could not be reached, [`Error::Timeout`] when the round did not finish in time.
    pub async fn wait(self: &Arc<Self>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            state.waiting.push(tx);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            // A task of its own, so a cancelled read cannot strand the others.
            tokio::spawn(self.clone().run());
        }
        rx.await
            .unwrap_or_else(|_| Err(Error::unavailable("read barrier stopped")))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent even if a holder panicked: every update is one statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn run(self: Arc<Self>) {
        loop {
            let batch = {
                let mut state = self.lock();
                if state.waiting.is_empty() {
                    state.running = false;
                    return;
                }
                std::mem::take(&mut state.waiting)
            };
            let outcome = self.round().await;
            for waiter in batch {
                // A waiter that gave up (client gone, timed out) just drops the answer.
                let _ = waiter.send(outcome.clone());
            }
        }
    }

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
