//! # rskv-server: an rskv node
//!
//! ## Layout (dependencies point down this list: the services use Raft, Raft uses storage)
//! - [`node`]: a [`node::Node`] (the gRPC services: client API, cluster status, Raft RPCs) and
//!   its lifecycle: start, serve, limits, graceful shutdown.
//! - [`raft`]: openraft over rskv's storage, and the tonic transport between nodes
//!   ([`raft::network`]); it re-exports the replicated [`raft::Command`].
//! - Storage is the crate below, [`rskv_storage`]: the Raft log in RocksDB, the state machine
//!   with its two engines, snapshots, the command, and apply events (in-process hooks and the
//!   fan-out behind the `Watch` RPC). It is a separate crate so the compiler keeps it from
//!   reaching up.
//! - [`config`]: the TOML configuration, flag overrides and validation.
//! - [`error`]: the node's error type and its one mapping to gRPC status (the reasons themselves
//!   are the wire's, in `rskv_proto::status`).
//! - [`metrics`]: every metric the node exports, and `/metrics` and `/health`.
//!
//! Data flows one way: a client write reaches the leader's [`node::kv_service`], becomes a
//! [`raft::Command`] in the log, is replicated and committed by openraft, and is applied by
//! [`rskv_storage::StateMachine`] on every node; only apply changes data.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod error;
pub mod metrics;
pub mod node;
pub mod raft;

pub use config::Config;
pub use error::Error;
pub use error::Result;
