//! Compiles `proto/*.proto` into Rust with tonic; protoc comes from `protoc-bin-vendored`, so no
//! system protobuf compiler is needed.
//!
//! Two passes: `storage.proto` (rskv's durable formats, `rskv.storage.v1`) first, then the
//! services, whose Raft messages are built of storage messages: they refer to them as
//! `crate::storage` (the crate's modules are flat, not nested by package). Maps are `BTreeMap`s,
//! so an encoding is the same bytes every time.
//!
//! `storage.proto` carries etcd's transaction request in the log, referring to the etcd modules
//! below by path.
//!
//! A third pass compiles etcd's v3 API (`proto/etcd/`, packages `etcdserverpb`, `mvccpb`,
//! `authpb`, and the lock and election services `v3lockpb`, `v3electionpb`), server and client
//! stubs; `lib.rs` nests them under `etcd` so the generated `super::mvccpb` /
//! `super::etcdserverpb` references resolve.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure()
        .bytes(".")
        .btree_map(".")
        .build_client(false)
        .build_server(false)
        .extern_path(".etcdserverpb", "crate::etcd::etcdserverpb")
        .extern_path(".mvccpb", "crate::etcd::mvccpb")
        .extern_path(".authpb", "crate::etcd::authpb")
        .compile_protos(&["../../proto/storage.proto"], &["../../proto"])?;
    tonic_prost_build::configure()
        .bytes(".")
        .btree_map(".")
        .extern_path(".rskv.storage.v1", "crate::storage")
        .compile_protos(
            &["../../proto/kv.proto", "../../proto/raft.proto"],
            &["../../proto"],
        )?;
    tonic_prost_build::configure().bytes(".").compile_protos(
        &[
            "../../proto/etcd/rpc.proto",
            "../../proto/etcd/kv.proto",
            "../../proto/etcd/auth.proto",
            "../../proto/etcd/v3lock.proto",
            "../../proto/etcd/v3election.proto",
        ],
        &["../../proto"],
    )?;
    Ok(())
}
