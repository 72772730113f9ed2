//! Protobuf types generated from `proto/` by `build.rs`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

/// Client API: key-value operations (`rskv.v1.Kv`) and introspection (`rskv.v1.Cluster`).
pub mod kv {
    tonic::include_proto!("rskv.v1");
}

/// Node-to-node Raft transport (`rskv.raft.v1.Raft`).
pub mod raft {
    tonic::include_proto!("rskv.raft.v1");
}
