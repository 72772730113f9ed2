//! Write proposals, grouped: writes that arrive while earlier ones are still being replicated
//! share one Raft log entry ([`Command::Group`]).
//!
//! Each log entry costs the leader a trip through openraft's core, a log record, a replication
//! message entry and an apply call, on every node. Under load most writes find
//! `raft.max_inflight_proposals` entries already in flight; they queue and the next free slot
//! proposes all of them as one entry (at most [`MAX_GROUP_COMMANDS`] commands or
//! [`MAX_GROUP_BYTES`]). A lone write is proposed at once, on its own, as before. Every write in a
//! group is still answered on its own: its own response, the group's log index.

use std::time::Duration;

use crate::error::Error;
use crate::error::Result;
use crate::raft::Command;
use crate::raft::CommandResponse;
use crate::raft::Raft;
use rskv_client::batch::Batcher;
use rskv_client::batch::Limits;

/// Most writes grouped in one log entry.
pub const MAX_GROUP_COMMANDS: usize = 512;
/// Most key and value bytes grouped in one log entry (a single larger write still goes alone).
pub const MAX_GROUP_BYTES: usize = 1024 * 1024;

/// Scheduler passes between answering a group and proposing the next ([`Limits::passes_between`]):
/// the writes just answered are sent back first, and what arrives meanwhile joins the next
/// group. Against none, four gave 1.01-1.15x on puts and txn-puts through the etcd API at 64 and
/// 256 clients over two interleaved runs, and 0.96-1.06x (noise) on rskv's own puts
/// (docs/benchmarks.md).
pub const PASSES_BETWEEN_GROUPS: usize = 4;

/// What a proposal answers: the log index and the command's response.
type Outcome = Result<(u64, CommandResponse)>;

/// Proposes writes to Raft, grouping concurrent ones.
pub struct Proposer {
    raft: Raft,
    timeout: Duration,
    /// The election timeout maximum: a leader unacknowledged by a quorum for longer refuses
    /// writes (see [`super::QuorumState`]).
    quorum_window_ms: u64,
    /// `None` when grouping is off (`raft.max_inflight_proposals = 0`).
    groups: Option<Batcher<Command, Outcome>>,
}

impl Proposer {
    /// A proposer for `raft` whose writes give up after `timeout`; `max_inflight` groups are
    /// replicated at once (0: no grouping, every write its own entry). `quorum_window_ms` is the
    /// election timeout maximum, for "no quorum" errors.
    pub fn new(
        raft: Raft,
        timeout: Duration,
        max_inflight: usize,
        quorum_window_ms: u64,
    ) -> Proposer {
        let groups = (max_inflight > 0).then(|| {
            let raft = raft.clone();
            Batcher::new(
                Limits {
                    max_inflight,
                    max_items: MAX_GROUP_COMMANDS,
                    max_weight: MAX_GROUP_BYTES,
                    passes_between: PASSES_BETWEEN_GROUPS,
                },
                Command::approx_bytes,
                move |commands: Vec<Command>| {
                    let raft = raft.clone();
                    async move { propose_group(&raft, timeout, quorum_window_ms, commands).await }
                },
            )
        });
        Proposer {
            raft,
            timeout,
            quorum_window_ms,
            groups,
        }
    }

    /// Proposes `command` and waits until it is committed and applied.
    ///
    /// # Errors
    /// NOT_LEADER and other refusals from Raft; [`Error::Timeout`] (outcome unknown) when not
    /// applied within the request timeout.
    pub async fn write(&self, command: Command) -> Outcome {
        let command = command.detached();
        let Some(groups) = &self.groups else {
            return propose(&self.raft, self.timeout, self.quorum_window_ms, command).await;
        };
        match tokio::time::timeout(self.timeout, groups.submit(command)).await {
            Ok(Some(outcome)) => outcome,
            Ok(None) => Err(Error::unavailable(
                "write proposal lost without an answer (node shutting down); it may or may not be applied",
            )),
            Err(_) => Err(timeout_error()),
        }
    }
}

fn timeout_error() -> Error {
    Error::Timeout("write not committed in time; it may or may not be applied".into())
}

async fn propose(
    raft: &Raft,
    timeout: Duration,
    quorum_window_ms: u64,
    command: Command,
) -> Outcome {
    crate::metrics::write_group(command.writes());
    let result = tokio::time::timeout(timeout, raft.client_write(command))
        .await
        .map_err(|_| timeout_error())?;
    let resp = result.map_err(|e| super::write_error(raft, quorum_window_ms, e))?;
    Ok((resp.log_id.index, resp.data))
}

async fn propose_group(
    raft: &Raft,
    timeout: Duration,
    quorum_window_ms: u64,
    mut commands: Vec<Command>,
) -> Vec<Outcome> {
    if commands.len() == 1 {
        if let Some(command) = commands.pop() {
            return vec![propose(raft, timeout, quorum_window_ms, command).await];
        }
    }
    let n = commands.len();
    match propose(raft, timeout, quorum_window_ms, Command::Group { commands }).await {
        Ok((index, resp)) if resp.group.len() == n => {
            resp.group.into_iter().map(|r| Ok((index, r))).collect()
        }
        Ok((index, resp)) => {
            let e = Error::raft_unexpected(format!(
                "group at index {index} answered {} responses for {n} commands",
                resp.group.len()
            ));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    }
}
