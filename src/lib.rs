//! # rskv — a Raft-replicated key-value store
//!
//! ## Layout
//! - [`config`]: the TOML configuration, flag overrides and validation.
//! - [`storage`]: the Raft log in RocksDB ([`storage::log_store`]) and the state machine with its
//!   two engines, memory and RocksDB ([`storage::state_machine`]), plus the snapshot file format.
//! - [`raft`]: the openraft type configuration, the replicated [`raft::Command`], and the tonic
//!   transport between nodes ([`raft::network`]).
//! - [`server`]: a [`server::Node`] — storage + Raft + gRPC services (client API, cluster status,
//!   Raft RPCs) on one port — and its lifecycle.
//! - [`client`]: the library client with leader redirect, used by `kv_client`, tests and tools.
//! - [`bench`]: the load generator behind `kv_bench`.
//! - [`checker`]: the linearizability checker (Wing–Gong–Lowe with memoisation) for fault tests.
//! - [`jepsen`]: the fault suite — real processes, a network it can cut, nemeses, recorded
//!   histories and the checks run on them (`kv_jepsen`, `scripts/jepsen.sh`).
//! - [`events`]: apply events — in-process hooks and the fan-out behind the `Watch` RPC.
//! - [`pb`]: generated protobuf code. [`error`]: the error type and its one mapping to gRPC codes.
//! - [`batch`]: request coalescing (the server's group commit, the client's Multi RPCs), and
//!   [`gathered`]: socket writes gathered per HTTP/2 flush, for server and client connections.
//! - [`log_throttle`]: warnings that can repeat per event, logged once per interval with a count.
//!
//! Data flows one way: a client write reaches the leader's [`server::kv_service`], becomes a
//! [`raft::Command`] in the log, is replicated and committed by openraft, and is applied by
//! [`storage::StateMachine`] on every node; only apply changes data.

#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod batch;
pub mod bench;
pub mod checker;
pub mod client;
pub mod config;
pub mod error;
pub mod events;
pub mod gathered;
pub mod jepsen;
pub mod log_throttle;
pub mod pb;
pub mod raft;
pub mod server;
pub mod storage;

pub use client::Client;
pub use config::Config;
pub use error::Error;
pub use error::Result;
