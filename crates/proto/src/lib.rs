//! # rskv-proto: the wire
//!
//! Everything two rskv processes must agree on to talk: the protobuf schemas in `proto/` (the
//! client API `rskv.v1` and the Raft transport `rskv.raft.v2`), compiled by `build.rs` into
//! [`kv`] and [`raft`], and the error contract every status carries ([`status`]): which reason a
//! failure has, and what the client may do about it. The client and the server both depend on
//! this crate and on nothing of each other.
//!
//! It also holds rskv's durable formats ([`storage`], `rskv.storage.v1`): what the Raft log, the
//! state machine's metadata and the snapshot header are written as, and what the Raft messages
//! are built of. Only generated code lives here; `rskv-storage` maps openraft's types to and from
//! it, so this crate (and the client with it) never depends on openraft.

// Library code never unwraps: a panic on a server path is a bug report, not an error message.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// Declares module `$name` holding the code generated for protobuf package `$package`: generated
/// code is exempt from the lints and doc requirements the crate's own code meets.
macro_rules! generated {
    ($(#[$doc:meta])* $name:ident = $package:literal) => {
        $(#[$doc])*
        #[allow(
            missing_docs,
            clippy::all,
            clippy::pedantic,
            clippy::unwrap_used,
            clippy::expect_used
        )]
        pub mod $name {
            tonic::include_proto!($package);
        }
    };
}

pub mod status;

generated! {
    /// Client API: key-value operations (`rskv.v1.Kv`) and introspection (`rskv.v1.Cluster`).
    kv = "rskv.v1"
}

generated! {
    /// Node-to-node Raft transport (`rskv.raft.v2.Raft`): typed messages built of
    /// [`storage`]'s.
    raft = "rskv.raft.v2"
}

generated! {
    /// rskv's durable formats (`rskv.storage.v1`, `proto/storage.proto`): log entries, votes, log
    /// ids, memberships, snapshot metadata, the applied state. Their schema is rskv's, so a new
    /// openraft cannot change what is on disk without rskv changing it deliberately.
    storage = "rskv.storage.v1"
}

/// etcd's v3 API (`proto/etcd/`), compiled from rskv's own copy of etcd's schema: package, message
/// and field names and field numbers are etcd's, so these types encode to the bytes etcd's do
/// (`tests/etcd_wire.rs` checks that against the `etcd-client` crate's own generated types).
/// Server and client stubs are generated; `rskv-server` serves them.
pub mod etcd {
    generated! {
        /// etcd's gRPC services and their messages (`etcdserverpb`): KV, Watch, Lease, Cluster,
        /// Maintenance, Auth.
        etcdserverpb = "etcdserverpb"
    }

    generated! {
        /// etcd's MVCC types (`mvccpb`): `KeyValue` and the watch `Event`.
        mvccpb = "mvccpb"
    }

    generated! {
        /// etcd's authentication types (`authpb`): `User`, `Role`, `Permission`,
        /// `UserAddOptions`.
        authpb = "authpb"
    }

    generated! {
        /// etcd's lock service (`v3lockpb`): `Lock` and `Unlock`, etcd's mutex recipe run by the
        /// server for clients that would rather not run it themselves.
        v3lockpb = "v3lockpb"
    }

    generated! {
        /// etcd's election service (`v3electionpb`): `Campaign`, `Proclaim`, `Leader`, `Observe`,
        /// `Resign`, etcd's election recipe run by the server.
        v3electionpb = "v3electionpb"
    }
}

/// Most pairs in a `BatchPut` and ops in a `Multi` a node accepts unless configured otherwise
/// (`limits.max_ops_per_request`, as etcd's `--max-txn-ops`); the client library never puts more
/// in one Multi.
pub const DEFAULT_MAX_OPS_PER_REQUEST: usize = 1024;
