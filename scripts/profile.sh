#!/usr/bin/env bash
# Where the CPU goes under load: starts a 3-node rskv cluster (release build, RocksDB engine),
# preloads the key space, drives it with kv_bench and records every thread of every process with
# `perf record -a` in the middle of the run. Prints the run's throughput, then the samples per
# process (leader, followers, load generator, idle) and per thread kind, each as a share and as
# microseconds of CPU per operation. docs/benchmarks.md ("Where a put's CPU goes") was made so.
#
#   scripts/profile.sh                           # puts through rskv's own client, 256 clients
#   TARGET=etcd CLIENTS=64 scripts/profile.sh    # puts through rskv's etcd API (etcd-client)
#   WORKLOAD=get CLIENTS=64 scripts/profile.sh   # linearizable gets
#   CONSISTENCY=stale WORKLOAD=get ...           # serializable gets (stale on rskv's own API)
#   SERVER=/path/to/old/kv_server scripts/profile.sh   # the same against another build
#   CALL_GRAPH=1 scripts/profile.sh              # the leader alone, with DWARF call graphs, for
#                                                # `perf report -i $OUT/perf.data --no-children`
#
# Needs perf (Debian: linux-perf) and root or kernel.perf_event_paranoid <= 0. The data
# directories go when it ends; perf.data and the nodes' logs stay in $OUT.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
TARGET="${TARGET:-rskv}"
WORKLOAD="${WORKLOAD:-put}"
CLIENTS="${CLIENTS:-256}"
SECONDS_RECORDED="${SECONDS_RECORDED:-8}"
KEYS="${KEYS:-100000}"
FREQ="${FREQ:-499}"
OUT="${OUT:-$ROOT/results/profile-$(date +%Y%m%d-%H%M%S)}"
command -v perf >/dev/null || { echo "profile: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --release --quiet --features rskv-bench/etcd --bin kv_server --bin kv_bench)
BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
SERVER="${SERVER:-$BIN/kv_server}"

# Node n listens on 758n (clients), 759n (peers), 760n (metrics): apart from bench.sh's ports.
printf 'node_id = 1\nlisten_addr = "127.0.0.1:1"\n' >"$OUT/base.toml"
MEMBERS=""
for n in 1 2 3; do MEMBERS+="${MEMBERS:+,}$n=127.0.0.1:758$n/127.0.0.1:759$n"; done
ALL="127.0.0.1:7581,127.0.0.1:7582,127.0.0.1:7583"
declare -A PID
cleanup() {
    for p in "${PID[@]:-}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$OUT"/n1 "$OUT"/n2 "$OUT"/n3
}
trap cleanup EXIT
for n in 1 2 3; do
    RUST_LOG=warn "$SERVER" --config "$OUT/base.toml" --node-id $n --listen-addr 127.0.0.1:758$n \
        --peer-listen-addr 127.0.0.1:759$n --metrics-addr 127.0.0.1:760$n --data-dir "$OUT/n$n" \
        --engine rocksdb --initial-members "$MEMBERS" --read-policy read_index \
        ${SERVER_ARGS:-} >"$OUT/n$n.log" 2>&1 &
    PID[$n]=$!
done
deadline=$((SECONDS + 60))
until "$BIN/kv_bench" put --target "$TARGET" --endpoints "$ALL" --total 1 >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "profile: the cluster did not become ready" >&2; exit 1; }
    sleep 0.5
done
# The leader, as etcdctl's endpoint status names it (a build without the etcd API: none, and
# rskv's own client finds the leader itself).
LEADER="$(ETCDCTL_API=3 etcdctl --endpoints="$ALL" endpoint status 2>/dev/null |
    awk -F', ' '$5 == "true" {print $1}' | head -n1 || true)"
ENDPOINTS="${LEADER:-$ALL}"
LEADER_NODE="${LEADER: -1}"
echo "leader: ${LEADER:-unknown (rskv client finds it)}"
"$BIN/kv_bench" put --target "$TARGET" --endpoints "$ENDPOINTS" --clients 64 --conns 8 \
    --total "$KEYS" --key-space "$KEYS" >/dev/null
ARGS=()
[[ "$WORKLOAD" == get ]] && ARGS=(--consistency "${CONSISTENCY:-linearizable}")
conns=$((CLIENTS < 16 ? CLIENTS : 16))
# Recording starts 3 s in and ends 3 s before the load does.
"$BIN/kv_bench" "$WORKLOAD" --target "$TARGET" --endpoints "$ENDPOINTS" --clients "$CLIENTS" \
    --conns "$conns" --duration $((SECONDS_RECORDED + 6)) --key-size 8 --val-size 256 \
    --key-space "$KEYS" --json "${ARGS[@]}" >"$OUT/bench.json" &
LOAD=$!
sleep 3
if [[ -n "${CALL_GRAPH:-}" && -n "$LEADER_NODE" ]]; then
    perf record -F "$FREQ" --call-graph dwarf,16384 -p "${PID[$LEADER_NODE]}" -o "$OUT/perf.data" \
        -- sleep "$SECONDS_RECORDED" >/dev/null 2>&1
else
    perf record -F "$FREQ" -a -o "$OUT/perf.data" -- sleep "$SECONDS_RECORDED" >/dev/null 2>&1
fi
wait "$LOAD"
OPS="$(sed -n 's/.*"throughput":\([0-9.]*\).*/\1/p' "$OUT/bench.json")"
echo "throughput: $OPS op/s ($WORKLOAD, $CLIENTS clients, target $TARGET)"
[[ -n "${CALL_GRAPH:-}" ]] && { echo "perf data: $OUT/perf.data"; exit 0; }
NAMES=""
for n in 1 2 3; do
    role=follower
    [[ "$n" == "$LEADER_NODE" ]] && role=leader
    NAMES+="${PID[$n]}=node-$n-$role "
done
# One line per sample: thread name, process id. Processes not named above are the load
# generator (kv_bench) or the kernel (pid 0: idle).
perf script -i "$OUT/perf.data" -F comm,pid 2>/dev/null | awk -v ops="$OPS" -v secs="$SECONDS_RECORDED" \
    -v freq="$FREQ" -v names="$NAMES" '
    BEGIN { n = split(names, pairs, " "); for (i = 1; i <= n; i++) { split(pairs[i], kv, "="); who[kv[1]] = kv[2] } }
    {
        pid = $NF; comm = $1; for (i = 2; i < NF; i++) comm = comm " " $i
        proc = (pid in who) ? who[pid] : (pid == 0 ? "idle" : "other (load generator, kernel)")
        byproc[proc]++; bythread[comm]++; total++
    }
    END {
        us = 1e6 / (freq * secs * ops)
        printf "%-34s %7s %10s\n", "process", "share", "us/op"
        for (p in byproc) printf "%-34s %6.1f%% %10.1f\n", p, 100 * byproc[p] / total, byproc[p] * us
        printf "\n%-34s %7s %10s\n", "thread kind (all processes)", "share", "us/op"
        for (t in bythread) if (bythread[t] / total >= 0.005) printf "%-34s %6.1f%% %10.1f\n", t, 100 * bythread[t] / total, bythread[t] * us
    }'
