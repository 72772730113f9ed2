#!/usr/bin/env bash
# The whole test suite, as CI runs it: prerequisites, formatting, lints, unit and integration
# tests (integration tests start real kv_server processes on loopback ports), then, as root, a
# short run of the fault suite in network namespaces.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
if command -v sccache >/dev/null 2>&1; then sccache --start-server >/dev/null 2>&1 || true; fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --workspace --all-targets --locked
echo "== the client library builds neither RocksDB nor openraft"
if cargo tree --locked -p rskv-client -e normal --prefix none | grep -E '^(rocksdb|librocksdb-sys|openraft) '; then
    echo "rskv-client depends on the crates above: it must not" >&2
    exit 1
fi
# As root, the fault tests cut links in network namespaces (nftables) rather than on the proxy.
"$ROOT/scripts/fault-tools.sh"
echo "== cargo test"
# Cluster tests each run three nodes; two at a time keeps a 2-core machine responsive.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo test --workspace --all-targets --locked
echo "== doc tests"
# --all-targets leaves doc examples out; they are few and quick.
cargo test --doc --workspace --locked
if [[ "$(id -u)" == 0 ]]; then
    # Both in mutual TLS on every port (plaintext under faults: the loopback scenario above).
    echo "== fault suite over TLS: 5 nodes, 90 s of partitions, kills and pauses (fails on any anomaly)"
    scripts/jepsen.sh --nodes 5 --time 90 --interval 4 --nemesis partition,kill,pause --rate 200 \
        --tls --results "${TMPDIR:-/tmp}/rskv-ci-jepsen-$$"
    echo "== fault suite over TLS, etcd's API (etcd-client: Txn registers, watches from revision 1, a lease-held lock): 60 s"
    scripts/jepsen.sh --workload etcd --nodes 5 --time 60 --interval 4 --nemesis partition,kill,pause \
        --tls --results "${TMPDIR:-/tmp}/rskv-ci-jepsen-etcd-$$"
else
    echo "== fault suite skipped: network namespaces need root (cargo test ran the loopback scenario)"
fi
