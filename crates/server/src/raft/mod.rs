//! Consensus glue: openraft over rskv's storage, and the transport between nodes.
//!
//! openraft owns the protocol (elections, replication, commit). rskv supplies the command type
//! and what applying it answers (defined with the storage, in [`rskv_storage::types`], and
//! re-exported here), the storage ([`rskv_storage`]) and the network ([`network`]).

pub mod network;

pub use rskv_storage::types::*;

/// The Raft handle, parameterised by rskv's state machine.
pub type Raft = openraft::Raft<TypeConfig, rskv_storage::StateMachine>;

/// The index `raft`'s state machine has applied (0 before any), from its metrics: a read taken
/// after it reflects at least that index.
pub fn applied_index(raft: &Raft) -> u64 {
    use openraft::type_config::async_runtime::WatchReceiver;
    raft.metrics()
        .borrow_watched()
        .last_applied
        .as_ref()
        .map_or(0, |l| l.index)
}

/// Checks that both addresses of a membership record can be dialled (see
/// [`rskv_client::transport::member_address`]), so a record nobody can reach is refused before
/// it enters a membership.
///
/// # Errors
/// Which address is wrong, and why.
pub fn check_dialable(info: &NodeInfo) -> Result<(), String> {
    for (what, addr) in [("client", &info.addr), ("peer", &info.peer_addr)] {
        rskv_client::transport::member_address(addr)
            .map_err(|e| format!("{what} address `{addr}`: {e}"))?;
    }
    Ok(())
}
