#!/usr/bin/env bash
# Quick start: installs missing build prerequisites, then runs a single-node dev cluster on
# 127.0.0.1:7379 (data in a temporary directory unless you pass --data-dir). Extra arguments go
# to kv_server. Stop it with Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
RUST_LOG="${RUST_LOG:-info}" exec cargo run --bin kv_server -- "$@"
