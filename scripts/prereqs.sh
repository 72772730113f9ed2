#!/usr/bin/env bash
# Installs what building rskv needs on Debian when it is missing: a C++ toolchain and libclang
# (RocksDB's bindings are generated with bindgen), plus sccache to cache the slow C++ build.
# rskv's own protos are compiled with a vendored protoc; the system protoc (protobuf-compiler) is
# for the etcd-client crate, which rskv-proto's etcd wire tests (and kv_bench --target etcd)
# build, and which reads protoc from the PATH. etcdctl (Debian's etcd-client) is etcd's own client,
# which the integration tests run against rskv's etcd API (crates/server/tests/etcdctl.rs).
# Idempotent; quiet when all is present.
set -euo pipefail

missing=()
command -v c++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
# bindgen needs libclang itself plus clang's resource headers; libclang-cpp (often preinstalled)
# is not enough, so ask dpkg for the package rather than globbing for library files.
if ! dpkg-query -W -f='${Status}' libclang-dev 2>/dev/null | grep -q "install ok installed"; then
    missing+=(libclang-dev)
fi
command -v sccache >/dev/null 2>&1 || missing+=(sccache)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)

if ((${#missing[@]})); then
    echo "prereqs: installing ${missing[*]}" >&2
    SUDO=""
    if [[ "$(id -u)" != 0 ]]; then
        command -v sudo >/dev/null 2>&1 || { echo "prereqs: need root or sudo to install ${missing[*]}" >&2; exit 1; }
        SUDO=sudo
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "prereqs: cargo not found; install Rust (rustup) 1.88 or newer first" >&2
    exit 1
fi
