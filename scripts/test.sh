#!/usr/bin/env bash
# The whole test suite, as CI runs it: prerequisites, formatting, lints, unit and integration
# tests (integration tests start real kv_server processes on loopback ports).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
if command -v sccache >/dev/null 2>&1; then sccache --start-server >/dev/null 2>&1 || true; fi
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings
echo "== cargo build"
cargo build --all-targets --locked
echo "== cargo test"
# Cluster tests each run three nodes; two at a time keeps a 2-core machine responsive.
RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo test --all-targets --locked
