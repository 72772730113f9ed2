#!/usr/bin/env bash
# The Jepsen-style fault suite: a cluster of real kv_server processes, clients recording every
# operation, faults, then the checks (linearizability, lost writes, replica agreement, watch
# streams). Arguments go to `kv_jepsen run`, e.g.
#   scripts/jepsen.sh --nodes 5 --time 300 --nemesis partition,kill,pause --rate 200
# Nemeses: partition, kill, pause, restart, member, clock, disk (or all); --engine memory for
# the memory state machine. As root, nodes run in network namespaces the suite creates and
# removes, and missing tools (nftables, faketime, fiu-utils) are installed first; otherwise the
# nodes run on loopback behind the suite's fault-injecting proxy. Results (history, summary,
# node logs) go to results/jepsen-<time> unless --results is given. Exit status: 0 all checks
# passed, 1 an anomaly was found, 2 the run could not be set up.
# Builds the debug profile, shared with scripts/test.sh; JEPSEN_PROFILE=release for release.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"

"$ROOT/scripts/fault-tools.sh"

profile="${JEPSEN_PROFILE:-debug}"
flags=(--locked --bin kv_server --bin kv_jepsen)
[[ "$profile" == release ]] && flags+=(--release)
cargo build "${flags[@]}"
bin="${CARGO_TARGET_DIR:-$ROOT/target}/$profile"
exec "$bin/kv_jepsen" run --server-bin "$bin/kv_server" "$@"
