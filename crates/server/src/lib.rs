//! # rskv-server: an rskv node
//!
//! ## Layout (dependencies point down this list: the services use Raft, Raft uses storage)
//! - [`node`]: a [`node::Node`] (the gRPC services: client API, cluster status, Raft RPCs) and
//!   its lifecycle: start, serve, limits, graceful shutdown.
//! - [`raft`]: the openraft type configuration, the replicated [`raft::Command`], and the tonic
//!   transport between nodes ([`raft::network`]).
//! - [`storage`]: the Raft log in RocksDB ([`storage::log_store`]) and the state machine with its
//!   two engines, memory and RocksDB ([`storage::state_machine`]), plus the snapshot file format.
//! - [`events`]: apply events: in-process hooks and the fan-out behind the `Watch` RPC.
//! - [`config`]: the TOML configuration, flag overrides and validation.
//! - [`error`]: the node's error type and its one mapping to gRPC status (the reasons themselves
//!   are the wire's, in `rskv_proto::status`).
//! - [`metrics`]: every metric the node exports, and `/metrics` and `/health`.
//! - [`log_throttle`]: warnings that can repeat per event, logged once per interval with a count.
//!
//! Data flows one way: a client write reaches the leader's [`node::kv_service`], becomes a
//! [`raft::Command`] in the log, is replicated and committed by openraft, and is applied by
//! [`storage::StateMachine`] on every node; only apply changes data.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod events;
pub mod log_throttle;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod storage;

pub use config::Config;
pub use error::Error;
pub use error::Result;
