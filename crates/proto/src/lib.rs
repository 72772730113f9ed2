//! # rskv-proto: the wire
//!
//! Everything two rskv processes must agree on to talk: the protobuf schemas in `proto/` (the
//! client API `rskv.v1` and the Raft transport `rskv.raft.v1`), compiled by `build.rs` into
//! [`kv`] and [`raft`], and the error contract every status carries ([`status`]): which reason a
//! failure has, and what the client may do about it. The client and the server both depend on
//! this crate and on nothing of each other.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod status;

/// Client API: key-value operations (`rskv.v1.Kv`) and introspection (`rskv.v1.Cluster`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod kv {
    tonic::include_proto!("rskv.v1");
}

/// Node-to-node Raft transport (`rskv.raft.v1.Raft`).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod raft {
    tonic::include_proto!("rskv.raft.v1");
}

/// Most pairs in a `BatchPut` and ops in a `Multi` a node accepts unless configured otherwise
/// (`limits.max_ops_per_request`, as etcd's `--max-txn-ops`); the client library never puts more
/// in one Multi.
pub const DEFAULT_MAX_OPS_PER_REQUEST: usize = 1024;
