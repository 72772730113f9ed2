//! Compiles `proto/*.proto` into Rust with tonic; protoc comes from `protoc-bin-vendored`, so no
//! system protobuf compiler is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=../../proto");
    tonic_prost_build::configure().bytes(".").compile_protos(
        &["../../proto/kv.proto", "../../proto/raft.proto"],
        &["../../proto"],
    )?;
    Ok(())
}
