#!/usr/bin/env bash
# Runs a 3-node rskv cluster on loopback, in the background.
#
#   cluster/cluster.sh start        build once, start nodes 1-3, wait for a leader, print endpoints
#   cluster/cluster.sh stop         stop the nodes this script started (SIGTERM, by pid file)
#   cluster/cluster.sh status       kv_client status against all three
#   cluster/cluster.sh kill N       kill -9 node N (a crash, not a clean stop)
#   cluster/cluster.sh restart N    stop node N (SIGTERM) if running, then start it again
#   cluster/cluster.sh rolling-restart   restart 1, 2, 3 in turn, each once the previous caught up
#
# Data and logs live under $RSKV_CLUSTER_DIR (default: cluster/run). Set ENGINE=memory to use the
# memory state machine, PROFILE=release for an optimized build. TLS=1 start makes a throwaway CA
# and certificates under $RSKV_CLUSTER_DIR/tls (kv_certs) and runs every port in mutual TLS; a
# cluster dir holding tls/ stays in TLS for later commands (TLS=0 forces plaintext).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/env.sh"
RUN="${RSKV_CLUSTER_DIR:-$ROOT/cluster/run}"
PROFILE="${PROFILE:-debug}"
ENGINE="${ENGINE:-rocksdb}"
ENDPOINTS="127.0.0.1:7411,127.0.0.1:7412,127.0.0.1:7413"
NODES=(1 2 3)
TLS_DIR="$RUN/tls"
if [[ -z "${TLS:-}" ]]; then
    if [[ -f "$TLS_DIR/rskv-ca.pem" ]]; then TLS=1; else TLS=0; fi
fi
TLS_FLAGS=()
if [[ "$TLS" == 1 ]]; then
    TLS_FLAGS=(--cert-file "$TLS_DIR/node.pem" --key-file "$TLS_DIR/node-key.pem"
        --trusted-ca-file "$TLS_DIR/rskv-ca.pem" --client-cert-auth
        --peer-cert-file "$TLS_DIR/node.pem" --peer-key-file "$TLS_DIR/node-key.pem"
        --peer-trusted-ca-file "$TLS_DIR/rskv-ca.pem")
    # kv_client reads these.
    export RSKV_CACERT="$TLS_DIR/rskv-ca.pem" RSKV_CERT="$TLS_DIR/client.pem" \
        RSKV_CERT_KEY="$TLS_DIR/client-key.pem"
fi

die() { echo "cluster.sh: $*" >&2; exit 1; }

target_dir() {
    cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" \
        | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}

build() {
    local flags=()
    [[ "$PROFILE" == "release" ]] && flags+=(--release)
    (cd "$ROOT" && cargo build --quiet "${flags[@]}" --bin kv_server --bin kv_client --bin kv_certs)
    BIN="$(target_dir)/$PROFILE"
    [[ -x "$BIN/kv_server" ]] || die "kv_server not found in $BIN"
    if [[ "$TLS" == 1 && ! -f "$TLS_DIR/rskv-ca.pem" ]]; then
        "$BIN/kv_certs" "$TLS_DIR" >/dev/null
        echo "TLS: made a throwaway CA and certificates in $TLS_DIR"
    fi
}

pid_of() {
    local f="$RUN/node$1.pid"
    [[ -f "$f" ]] || return 1
    local pid
    pid="$(cat "$f")"
    # Only trust the pid if that process is still our kv_server.
    if kill -0 "$pid" 2>/dev/null && grep -q kv_server "/proc/$pid/cmdline" 2>/dev/null; then
        echo "$pid"
        return 0
    fi
    rm -f "$f"
    return 1
}

start_node() {
    local n="$1"
    if pid_of "$n" >/dev/null; then
        echo "node $n already running (pid $(pid_of "$n"))"
        return 0
    fi
    mkdir -p "$RUN/node$n"
    RUST_LOG="${RUST_LOG:-info}" nohup "$BIN/kv_server" \
        --config "$ROOT/cluster/node$n.toml" \
        --data-dir "$RUN/node$n/data" \
        --engine "$ENGINE" \
        "${TLS_FLAGS[@]}" \
        >>"$RUN/node$n/node.log" 2>&1 </dev/null &
    echo $! >"$RUN/node$n.pid"
    echo "node $n started (pid $!, log $RUN/node$n/node.log)"
}

stop_node() {
    local n="$1" pid
    pid="$(pid_of "$n")" || { echo "node $n not running"; return 0; }
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$RUN/node$n.pid"; echo "node $n stopped"; return 0; }
        sleep 0.1
    done
    echo "node $n did not stop within 10s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$RUN/node$n.pid"
}

wait_for_leader() {
    local deadline=$((SECONDS + 30)) n
    while ((SECONDS < deadline)); do
        for n in "${NODES[@]}"; do
            if [[ -f "$RUN/node$n.pid" ]] && ! pid_of "$n" >/dev/null; then
                tail -n 5 "$RUN/node$n/node.log" >&2 || true
                die "node $n exited; see $RUN/node$n/node.log"
            fi
        done
        local out
        out="$("$BIN/kv_client" --endpoints "$ENDPOINTS" --timeout 1 status --json 2>/dev/null || true)"
        [[ "$out" == *'"role":"leader"'* ]] && return 0
        sleep 0.2
    done
    die "no leader elected within 30s; see $RUN/node*/node.log"
}

# Waits until node N has applied everything the leader had committed when we started waiting.
wait_caught_up() {
    local n="$1" deadline=$((SECONDS + 60)) target applied
    # The highest commit index any node reports.
    target="$("$BIN/kv_client" --endpoints "$ENDPOINTS" --timeout 2 --json status 2>/dev/null \
        | grep -o '"committed":[0-9]*' | cut -d: -f2 | sort -n | tail -n1 || true)"
    target="${target:-0}"
    while ((SECONDS < deadline)); do
        applied="$("$BIN/kv_client" --endpoints "127.0.0.1:741$n" --timeout 1 --json status 2>/dev/null \
            | sed -n 's/.*"applied":\([0-9]*\).*/\1/p' || true)"
        if [[ -n "$applied" ]] && ((applied >= target)); then
            echo "node $n caught up (applied $applied >= $target)"
            return 0
        fi
        sleep 0.2
    done
    die "node $n did not catch up to index $target within 60s"
}

check_node() {
    [[ "${1:-}" =~ ^[123]$ ]] || die "node must be 1, 2 or 3 (got '${1:-}')"
}

cmd="${1:-}"
case "$cmd" in
    start)
        build
        for n in "${NODES[@]}"; do start_node "$n"; done
        wait_for_leader
        "$BIN/kv_client" --endpoints "$ENDPOINTS" status
        echo
        echo "endpoints: $ENDPOINTS"
        if [[ "$TLS" == 1 ]]; then
            echo "TLS: export RSKV_CACERT=$RSKV_CACERT RSKV_CERT=$RSKV_CERT RSKV_CERT_KEY=$RSKV_CERT_KEY"
            echo "     etcdctl --cacert $RSKV_CACERT --cert $RSKV_CERT --key $RSKV_CERT_KEY --endpoints $ENDPOINTS ..."
        fi
        echo "try: $BIN/kv_client --endpoints $ENDPOINTS set --key name --value 999999"
        ;;
    stop)
        for n in "${NODES[@]}"; do stop_node "$n"; done
        ;;
    status)
        build
        "$BIN/kv_client" --endpoints "$ENDPOINTS" status
        ;;
    kill)
        check_node "${2:-}"
        pid="$(pid_of "$2")" || die "node $2 is not running"
        kill -KILL "$pid"
        rm -f "$RUN/node$2.pid"
        echo "node $2 killed (pid $pid)"
        ;;
    restart)
        check_node "${2:-}"
        build
        stop_node "$2"
        start_node "$2"
        wait_for_leader
        ;;
    rolling-restart)
        build
        for n in "${NODES[@]}"; do
            stop_node "$n"
            start_node "$n"
            wait_for_leader
            wait_caught_up "$n"
        done
        "$BIN/kv_client" --endpoints "$ENDPOINTS" status
        ;;
    *)
        sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        [[ -z "$cmd" ]] && exit 2
        die "unknown command '$cmd'"
        ;;
esac
