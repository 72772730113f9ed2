#!/usr/bin/env bash
# Footprint of a 3-node rskv cluster (release build) holding KEYS keys of VAL-byte values, each
# written VERSIONS times with every version kept (no compaction), for each state machine engine:
# resident memory of every node, the state machine's bytes on disk, disk bytes written per put (Raft log WAL
# and its SST files, state machine; from /proc/PID/io), the Raft log's on-disk bytes per put, and
# restart-to-serving times (one follower after SIGKILL; the whole cluster after SIGKILL).
#
#   scripts/footprint.sh                  # 1,000,000 keys x 256 bytes x 3 versions, both engines
#   KEYS=100000 ENGINES=memory scripts/footprint.sh
#   EXTRA="--snapshot-every 100000000" scripts/footprint.sh   # log bytes without snapshots
#   NODE_LOG=info scripts/footprint.sh    # the nodes' log level (default warn), e.g. to see how
#                                         # long loading the key index took at each restart
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
KEYS="${KEYS:-1000000}"
VAL="${VAL:-256}"
PUTS="${PUTS:-100000}"
VERSIONS="${VERSIONS:-3}"
ENGINES="${ENGINES:-rocksdb memory}"
read -r -a EXTRA_ARGS <<<"${EXTRA:-}"
OUT="${OUT:-$ROOT/results/footprint-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
(cd "$ROOT" && cargo build --release --quiet --bin kv_server --bin kv_bench --bin kv_client)
BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
declare -A PID
cleanup() { for p in "${PID[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
MEMBERS="1=127.0.0.1:7541/127.0.0.1:7551,2=127.0.0.1:7542/127.0.0.1:7552,3=127.0.0.1:7543/127.0.0.1:7553"
EPS="127.0.0.1:7541,127.0.0.1:7542,127.0.0.1:7543"
printf 'node_id = 1\nlisten_addr = "127.0.0.1:1"\n' >"$OUT/base.toml"

start() { # engine node
    RUST_LOG="${NODE_LOG:-warn}" "$BIN/kv_server" --config "$OUT/base.toml" --node-id "$2" \
        --listen-addr "127.0.0.1:754$2" --peer-listen-addr "127.0.0.1:755$2" --metrics-addr "127.0.0.1:756$2" \
        --data-dir "$OUT/$1/n$2" --engine "$1" --initial-members "$MEMBERS" \
        --auto-compaction-mode none "${EXTRA_ARGS[@]}" >>"$OUT/$1-n$2.log" 2>&1 &
    PID[$2]=$!
}
now_ms() { date +%s%3N; }
# Waits until node $1 serves key $2 (present) from its own copy (a stale read); prints the ms it took from $3.
wait_serving() {
    local deadline=$((SECONDS + 600))
    while ((SECONDS < deadline)); do
        local got
        got="$("$BIN/kv_client" --endpoints "127.0.0.1:754$1" --timeout 1 get --key "$2" --stale 2>/dev/null || true)"
        if [[ -n "$got" && "$got" != "(not found)" ]]; then
            echo $(($(now_ms) - $3)); return 0
        fi
        sleep 0.05
    done
    echo "timeout"; return 1
}
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
wbytes() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }

printf '%-8s %-28s %s\n' engine measure value | tee "$OUT/summary.txt"
for engine in $ENGINES; do
    for n in 1 2 3; do start "$engine" $n; done
    until "$BIN/kv_bench" put --endpoints "$EPS" --total 1 >/dev/null 2>&1; do sleep 0.5; done
    for v in $(seq "$VERSIONS"); do
        "$BIN/kv_bench" load --endpoints "$EPS" --key-space "$KEYS" --val-size "$VAL" --key-size 8 --clients 16 >"$OUT/$engine-load-$v.txt"
    done
    last="$(printf '%08d' $((KEYS - 1)))"
    for n in 1 2 3; do wait_serving $n "$last" "$(now_ms)" >/dev/null; done
    rss="$(for n in 1 2 3; do printf '%s ' "$(rss_mib "${PID[$n]}")"; done)"
    sm_mib="$(du -sm "$OUT/$engine/n2" --exclude raft_log | cut -f1)"
    # Disk bytes per single put (not batched), everything the node writes, and the log's share.
    declare -A before
    for n in 1 2 3; do before[$n]="$(wbytes "${PID[$n]}")"; done
    log_before="$(du -sb "$OUT/$engine/n2/raft_log" | cut -f1)"
    "$BIN/kv_bench" put --endpoints "$EPS" --total "$PUTS" --clients 64 --key-space "$KEYS" --val-size "$VAL" --key-size 8 >"$OUT/$engine-puts.txt"
    sleep 2
    per_put="$(for n in 1 2 3; do printf '%s ' $(( ($(wbytes "${PID[$n]}") - before[$n]) / PUTS )); done)"
    log_after="$(du -sb "$OUT/$engine/n2/raft_log" | cut -f1)"
    printf '%-8s %-28s %s\n' "$engine" "RSS MiB (nodes 1 2 3)" "$rss" | tee -a "$OUT/summary.txt"
    printf '%-8s %-28s %s\n' "$engine" "state machine disk MiB (n2)" "$sm_mib" | tee -a "$OUT/summary.txt"
    printf '%-8s %-28s %s\n' "$engine" "disk B written/put (1 2 3)" "$per_put" | tee -a "$OUT/summary.txt"
    printf '%-8s %-28s %s\n' "$engine" "raft_log growth B/put (n2)" "$(( (log_after - log_before) / PUTS ))" | tee -a "$OUT/summary.txt"
    # A follower killed and restarted: time from its start until it serves its own copy.
    key="$(printf '%08d' 12345)"
    kill -9 "${PID[3]}"; wait "${PID[3]}" 2>/dev/null || true
    t0="$(now_ms)"; start "$engine" 3
    printf '%-8s %-28s %s\n' "$engine" "follower restart ms" "$(wait_serving 3 "$key" "$t0")" | tee -a "$OUT/summary.txt"
    # The whole cluster killed and restarted: time until a linearizable read succeeds.
    for n in 1 2 3; do kill -9 "${PID[$n]}"; wait "${PID[$n]}" 2>/dev/null || true; done
    t0="$(now_ms)"
    for n in 1 2 3; do start "$engine" $n; done
    until "$BIN/kv_client" --endpoints "$EPS" --timeout 1 get --key "$key" >/dev/null 2>&1; do sleep 0.05; done
    printf '%-8s %-28s %s\n' "$engine" "cluster restart ms" "$(($(now_ms) - t0))" | tee -a "$OUT/summary.txt"
    rss="$(for n in 1 2 3; do printf '%s ' "$(rss_mib "${PID[$n]}")"; done)"
    printf '%-8s %-28s %s\n' "$engine" "RSS MiB after restart" "$rss" | tee -a "$OUT/summary.txt"
    for n in 1 2 3; do kill -9 "${PID[$n]}" 2>/dev/null; wait "${PID[$n]}" 2>/dev/null || true; done
    rm -rf "${OUT:?}/$engine"
done
echo "results: $OUT"
