#!/usr/bin/env bash
# Side-by-side benchmark on this machine: a 3-node rskv cluster (RocksDB engine, fsync on) and,
# when available, a 3-node etcd cluster with its defaults, driven by the same load generator
# (kv_bench, built with --features etcd) in one run. Prints one table with rskv/etcd ratios and
# writes every result as JSON lines under the results folder.
#
#   scripts/bench.sh                      # full matrix, 10 s per cell
#   DURATION=3 CLIENTS="1 16" scripts/bench.sh
#   ROUNDS=3 WORKLOADS=put CLIENTS="64 256" scripts/bench.sh
#                                         # each cell 3 times, systems alternating; the table
#                                         # shows each system's median run (by throughput)
#   AB="--no-sessions" ROUNDS=3 WORKLOADS=put CLIENTS="1 64 256" scripts/bench.sh
#                                         # an interleaved A/B of a client-side change: the
#                                         # second system is the same rskv cluster, driven by
#                                         # kv_bench with these extra flags (no etcd); ratio A/B
#   SERVER_ARGS="--auto-compaction-mode none" ...   # extra kv_server flags for this build's
#                                         # nodes (not the baseline's or etcd's)
#   BASELINE=/path/to/old/kv_server ROUNDS=3 WORKLOADS=put CLIENTS="1 64 256" scripts/bench.sh
#                                         # an interleaved A/B of a server-side change: the
#                                         # second system is a second 3-node rskv cluster running
#                                         # that binary (no etcd); ratio this build / baseline
#   SECURE=1 ROUNDS=3 WORKLOADS="put get-linearizable" CLIENTS="1 64 256" scripts/bench.sh
#                                         # what TLS and auth cost: the second system is a second
#                                         # 3-node cluster of this build with mutual TLS on both
#                                         # ports (a kv_certs CA) and etcd's auth enabled, loaded
#                                         # by a user whose role grants readwrite on the bench
#                                         # keys; ratio plain / TLS+auth. SECURE=tls: the same
#                                         # without auth (what TLS alone costs)
#   ETCD_API=1 scripts/bench.sh           # rskv through its etcd API: both systems driven by
#                                         # kv_bench --target etcd (the etcd-client crate) at
#                                         # their leader; rows put, get-linearizable,
#                                         # get-serializable, txn-put at 1, 64, 256 clients
#   ETCD_API=1 BASELINE=/path/to/old/kv_server ...   # a server change through the etcd API
#   SERVER=/a/kv_server BASELINE=/b/kv_server ...   # two other builds against each other
#                                         # (bisecting); this build still drives both
#   BASELINE=/old/kv_server BASELINE_BENCH=/old/kv_bench ...   # the baseline driven by its
#                                         # own build's generator (each build as its own tools
#                                         # measured it), where otherwise this build's drives both
#
# As root it installs what is missing (protobuf-compiler to build the etcd client, etcd-server and
# etcd-client from Debian). Without etcd it benchmarks rskv alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/prereqs.sh"
source "$ROOT/scripts/env.sh"
DURATION="${DURATION:-10}"
ETCD_API="${ETCD_API:-}"
if [[ -n "$ETCD_API" ]]; then
    CLIENTS="${CLIENTS:-1 64 256}"
    WORKLOADS="${WORKLOADS:-put get-linearizable get-serializable txn-put}"
    # rskv is loaded through its etcd API, with the client etcd is loaded with.
    RSKV_TARGET=etcd
else
    CLIENTS="${CLIENTS:-1 16 64 256}"
    WORKLOADS="${WORKLOADS:-put put-1conn get-linearizable get-stale get-lease}"
    RSKV_TARGET=rskv
fi
ROUNDS="${ROUNDS:-1}"
KEYS="${KEYS:-100000}"
OUT="${OUT:-$ROOT/results/bench-$(date +%Y%m%d-%H%M%S)}"
AB="${AB:-}"
BASELINE="${BASELINE:-}"
BASELINE_BENCH="${BASELINE_BENCH:-}"
SERVER="${SERVER:-}"
if [[ -n "$SERVER" && ( -z "$BASELINE" || ! -x "$SERVER" ) ]]; then
    echo "bench: SERVER=$SERVER must be an executable kv_server, given with BASELINE" >&2
    exit 1
fi
SECURE="${SECURE:-}"
if [[ -n "$SECURE" && -n "$AB$BASELINE$ETCD_API" ]]; then
    echo "bench: SECURE compares this build with itself under TLS and auth; it does not combine with AB, BASELINE or ETCD_API" >&2
    exit 1
fi
if [[ -n "$BASELINE" && -n "$AB" ]]; then
    echo "bench: AB and BASELINE are separate experiments; give one" >&2
    exit 1
fi
if [[ -n "$ETCD_API" && -n "$AB" ]]; then
    echo "bench: ETCD_API compares rskv's etcd API with etcd (or, with BASELINE, with another build's); it does not combine with AB" >&2
    exit 1
fi
if [[ -z "$ETCD_API" && " $WORKLOADS " == *" txn-put "* ]]; then
    echo "bench: txn-put is an etcd API workload; run it with ETCD_API=1" >&2
    exit 1
fi
if [[ -n "$BASELINE_BENCH" && ( -z "$BASELINE" || ! -x "$BASELINE_BENCH" ) ]]; then
    echo "bench: BASELINE_BENCH=$BASELINE_BENCH must be an executable kv_bench, given with BASELINE" >&2
    exit 1
fi
if [[ -n "$BASELINE" && ! -x "$BASELINE" ]]; then
    echo "bench: BASELINE=$BASELINE is not an executable kv_server" >&2
    exit 1
fi
# Node n (1-3) listens on port ${BASE}n of each base: rskv clients 751n, peers 752n, metrics
# 753n; etcd clients 761n, peers 762n; the baseline rskv clients 771n, peers 772n, metrics 773n.
RSKV_CLIENT=751 RSKV_PEER=752 RSKV_METRICS=753 ETCD_CLIENT=761 ETCD_PEER=762
BASE_CLIENT=771 BASE_PEER=772 BASE_METRICS=773
# The n-th port of a base, for n = 1..3, joined as FORMAT (%s is the port) with commas.
ports() { # base format
    local out=() n
    for n in 1 2 3; do out+=("$(printf "$2" "$1$n")"); done
    (IFS=,; echo "${out[*]}")
}
# A node of an earlier run that is still exiting holds its port, and a node that cannot bind
# would only show up a minute later as "did not become ready": refuse to start instead.
for base in $RSKV_CLIENT $RSKV_PEER $RSKV_METRICS $ETCD_CLIENT $ETCD_PEER $BASE_CLIENT $BASE_PEER $BASE_METRICS; do
    for n in 1 2 3; do
        if (exec 3<>"/dev/tcp/127.0.0.1/$base$n") 2>/dev/null; then
            echo "bench: 127.0.0.1:$base$n is already in use (a node of an earlier run?); stop it first" >&2
            exit 1
        fi
    done
done
mkdir -p "$OUT"
PIDS=()
# The nodes' data directories (2-3 GB per full run) go when the run ends; logs and results stay.
cleanup() {
    for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$OUT/rskv" "$OUT/etcd" "$OUT/baseline" "$OUT/tls"
}
trap cleanup EXIT

apt_install() {
    if [[ "$(id -u)" == 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
        echo "bench: not root; cannot install $*" >&2
        return 1
    fi
}
command -v protoc >/dev/null || apt_install protobuf-compiler
if [[ -z "$AB$BASELINE" ]] && ! command -v etcd >/dev/null; then apt_install etcd-server etcd-client || true; fi

(cd "$ROOT" && cargo build --release --quiet --features rskv-bench/etcd --bin kv_server --bin kv_bench --bin kv_certs)
BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release"
# The generator of each side: this build's, or for the baseline BASELINE_BENCH when given.
GEN="$BIN/kv_bench"
BASE_GEN="${BASELINE_BENCH:-$GEN}"
# SECURE: the baseline cluster is this build in TLS and auth (its flags, and its clients').
BASE_SERVER_EXTRA=()
BASE_BENCH_TLS=()
if [[ -n "$SECURE" ]]; then
    BASELINE="$BIN/kv_server"
    "$BIN/kv_certs" "$OUT/tls" >/dev/null
    T="$OUT/tls"
    BASE_SERVER_EXTRA=(--cert-file "$T/node.pem" --key-file "$T/node-key.pem" --trusted-ca-file "$T/rskv-ca.pem"
        --client-cert-auth --peer-cert-file "$T/node.pem" --peer-key-file "$T/node-key.pem"
        --peer-trusted-ca-file "$T/rskv-ca.pem")
    BASE_BENCH_TLS=(--cacert "$T/rskv-ca.pem" --cert "$T/client.pem" --cert-key "$T/client-key.pem")
fi
BASE_BENCH=("${BASE_BENCH_TLS[@]}")

printf 'node_id = 1\nlisten_addr = "127.0.0.1:1"\n' >"$OUT/base.toml"
RSKV_PIDS=()
read -r -a SERVER_EXTRA <<<"${SERVER_ARGS:-}"
start_cluster() { # server name client-base peer-base metrics-base read-policy [extra flags...]
    local server=$1 name=$2 client=$3 peer=$4 metrics=$5 policy=$6 members="" n
    local extra=("${@:7}")
    for n in 1 2 3; do members+="${members:+,}$n=127.0.0.1:$client$n/127.0.0.1:$peer$n"; done
    for n in 1 2 3; do
        RUST_LOG=warn "$server" --config "$OUT/base.toml" --node-id $n \
            --listen-addr 127.0.0.1:$client$n --peer-listen-addr 127.0.0.1:$peer$n \
            --metrics-addr 127.0.0.1:$metrics$n \
            --data-dir "$OUT/$name/n$n" --engine rocksdb --initial-members "$members" --read-policy "$policy" \
            "${extra[@]}" >>"$OUT/$name-n$n.log" 2>&1 &
        PIDS+=($!)
        RSKV_PIDS+=($!)
    done
}
start_rskv() { # read policy
    RSKV_PIDS=()
    start_cluster "${SERVER:-$BIN/kv_server}" rskv $RSKV_CLIENT $RSKV_PEER $RSKV_METRICS "$1" "${SERVER_EXTRA[@]}"
    if [[ -n "$BASELINE" ]]; then
        start_cluster "$BASELINE" baseline $BASE_CLIENT $BASE_PEER $BASE_METRICS "$1" "${BASE_SERVER_EXTRA[@]}"
    fi
}
stop_rskv() { # graceful: SIGTERM, wait for exit
    kill -TERM "${RSKV_PIDS[@]}" 2>/dev/null || true
    wait "${RSKV_PIDS[@]}" 2>/dev/null || true
}
start_rskv read_index
RSKV="$(ports $RSKV_CLIENT 127.0.0.1:%s)"
BASE_RSKV="$(ports $BASE_CLIENT 127.0.0.1:%s)"

ETCD=""
if [[ -z "$AB$BASELINE" ]] && command -v etcd >/dev/null; then
    CLUSTER=""
    for n in 1 2 3; do CLUSTER+="${CLUSTER:+,}e$n=http://127.0.0.1:$ETCD_PEER$n"; done
    for n in 1 2 3; do
        etcd --name e$n --data-dir "$OUT/etcd/e$n" \
            --listen-client-urls http://127.0.0.1:$ETCD_CLIENT$n --advertise-client-urls http://127.0.0.1:$ETCD_CLIENT$n \
            --listen-peer-urls http://127.0.0.1:$ETCD_PEER$n --initial-advertise-peer-urls http://127.0.0.1:$ETCD_PEER$n \
            --initial-cluster "$CLUSTER" --initial-cluster-state new --log-level warn \
            >"$OUT/etcd-e$n.log" 2>&1 &
        PIDS+=($!)
    done
fi

wait_ready() { # target endpoints [kv_bench flags...]; env WITH: the generator (default GEN)
    local deadline=$((SECONDS + 60))
    while ((SECONDS < deadline)); do
        if "${WITH:-$GEN}" put --target "$1" --endpoints "$2" --total 1 "${@:3}" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "bench: $1 did not become ready" >&2
    exit 1
}
# The leader's client address among the comma-separated host:port endpoints, as etcdctl's
# endpoint status reports it (etcd, or rskv's etcd API); empty if none says it leads.
etcd_leader() { # endpoints
    ETCDCTL_API=3 etcdctl --endpoints="$1" endpoint status 2>/dev/null \
        | awk -F', ' '$5 == "true" {print $1}' | head -n1
}
# In ETCD_API mode the rskv endpoint is its leader's client address (etcd's client follows no
# redirect; a follower would forward every request), found again after every restart.
pick_rskv_leader() {
    [[ -n "$ETCD_API" ]] || return 0
    RSKV="$(leader_among "$RSKV_ALL")" || exit 1
    echo "rskv leader (etcd API): $RSKV" >&2
    if [[ -n "$BASELINE" ]]; then
        BASE_RSKV="$(WITH="$BASE_GEN" leader_among "$BASE_RSKV_ALL")" || exit 1
        echo "baseline leader (etcd API): $BASE_RSKV" >&2
    fi
}
# The leader among a cluster's endpoints once its etcd API serves, waiting up to 30 s for one
# to say it leads; the endpoints themselves if none does.
leader_among() { # endpoints
    wait_ready etcd "$1"
    local deadline=$((SECONDS + 30)) leader=""
    while ((SECONDS < deadline)) && [[ -z "$leader" ]]; do
        leader="$(etcd_leader "$1")"
        [[ -n "$leader" ]] || sleep 0.5
    done
    echo "${leader:-$1}"
}
RSKV_ALL="$RSKV"
BASE_RSKV_ALL="$BASE_RSKV"
wait_ready rskv "$RSKV"
pick_rskv_leader
[[ -n "$BASELINE" ]] && WITH="$BASE_GEN" wait_ready rskv "$BASE_RSKV" "${BASE_BENCH[@]}"
if [[ -n "$SECURE" && "$SECURE" != tls ]]; then
    # etcd's auth on the secure cluster: a user whose role grants readwrite on the bench keys
    # (zero-padded numbers), so every request takes the permission check, not root's shortcut.
    E=(env ETCDCTL_API=3 etcdctl --endpoints "$BASE_RSKV" --cacert "$T/rskv-ca.pem" --cert "$T/client.pem" --key "$T/client-key.pem")
    "${E[@]}" user add root:rootpw >/dev/null
    "${E[@]}" auth enable >/dev/null 2>&1
    "${E[@]}" --user root:rootpw user add bench:benchpw >/dev/null
    "${E[@]}" --user root:rootpw role add bench >/dev/null
    "${E[@]}" --user root:rootpw role grant-permission bench readwrite 0 --prefix=true >/dev/null
    "${E[@]}" --user root:rootpw user grant-role bench bench >/dev/null
    BASE_BENCH+=(--user bench:benchpw)
fi
if [[ -z "$AB$BASELINE" && -n "$(command -v etcd || true)" ]]; then
    wait_ready etcd "$(ports $ETCD_CLIENT http://127.0.0.1:%s)"
    # Puts go to etcd's leader, as they go to rskv's (its client follows redirects).
    ETCD="$(etcd_leader "$(ports $ETCD_CLIENT 127.0.0.1:%s)")"
    ETCD="http://${ETCD:-127.0.0.1:${ETCD_CLIENT}1}"
fi

# Same key space preloaded in both systems (in ETCD_API mode, in rskv's etcd keyspace).
"$GEN" put --target "$RSKV_TARGET" --endpoints "$RSKV" --clients 64 --conns 8 --total "$KEYS" --key-space "$KEYS" >/dev/null
[[ -n "$BASELINE" ]] && "$BASE_GEN" put --target "$RSKV_TARGET" --endpoints "$BASE_RSKV" --clients 64 --conns 8 --total "$KEYS" --key-space "$KEYS" "${BASE_BENCH[@]}" >/dev/null
[[ -n "$ETCD" ]] && "$GEN" put --target etcd --endpoints "$ETCD" --clients 64 --conns 8 --total "$KEYS" --key-space "$KEYS" >/dev/null

run() { # target endpoints workload clients [args...]; env WITH: the generator (default GEN)
    local target=$1 endpoints=$2 workload=$3 clients=$4
    shift 4
    local conns=${CONNS:-$(( clients < 16 ? clients : 16 ))}
    "${WITH:-$GEN}" "$workload" --target "$target" --endpoints "$endpoints" --clients "$clients" \
        --conns "$conns" --duration "$DURATION" --key-size 8 --val-size 256 --key-space "$KEYS" --json "$@"
}

B_NAME=etcd B_COL="etcd op/s"
A_NAME=rskv
if [[ -n "$ETCD_API" ]]; then
    A_NAME="rskv-etcd-api"
    [[ -n "$BASELINE" ]] ||
        echo "A: rskv through its etcd API, B: etcd; both driven by kv_bench --target etcd (etcd-client crate) at their leader" | tee "$OUT/table.txt"
fi
if [[ -n "$AB" ]]; then
    B_NAME="rskv $AB" B_COL="B op/s"
    echo "B: rskv driven with kv_bench $AB" | tee "$OUT/table.txt"
elif [[ "$SECURE" == tls ]]; then
    B_NAME="rskv tls" B_COL="tls op/s"
    echo "B: a second cluster of this build in mutual TLS, auth disabled (ratio: plain / TLS)" | tee "$OUT/table.txt"
elif [[ -n "$SECURE" ]]; then
    B_NAME="rskv tls+auth" B_COL="secure op/s"
    echo "B: a second cluster of this build in mutual TLS with etcd's auth enabled (ratio: plain / TLS+auth)" | tee "$OUT/table.txt"
elif [[ -n "$BASELINE" ]]; then
    B_NAME="rskv baseline" B_COL="base op/s"
    echo "B: a second rskv cluster running $BASELINE${ETCD_API:+, through its etcd API too}${BASELINE_BENCH:+, driven by $BASELINE_BENCH}" | tee "$OUT/table.txt"
fi
[[ -z "$SERVER" ]] || echo "A: an rskv cluster running $SERVER" | tee -a "$OUT/table.txt"
printf '%-16s %7s | %10s %8s %8s | %10s %8s %8s | %6s\n' workload clients "rskv op/s" p50ms p99ms "$B_COL" p50ms p99ms ratio | tee -a "$OUT/table.txt"
# put-1conn: the same puts with every client sharing one connection per system (one rskv Client,
# one etcd client; etcd's own benchmark defaults to --conns 1), where rskv's client coalesces
# requests into Multi RPCs. get-lease: the same linearizable gets with rskv restarted under
# raft.read_policy = "lease" (etcd has no lease reads; its row is its linearizable get again).
# get-serializable: get-stale under etcd's name (serializable ranges, served by the member asked);
# txn-put: one-put transactions without comparisons (ETCD_API only).
for spec in "put put" "put-1conn put" "get-linearizable get --consistency linearizable" \
    "get-stale get --consistency stale" "get-serializable get --consistency stale" \
    "txn-put txn-put" "get-lease get --consistency linearizable"; do
    set -- $spec
    name=$1; shift
    [[ " $WORKLOADS " == *" $name "* ]] || continue
    CONNS=""
    [[ "$name" == put-1conn ]] && CONNS=1
    if [[ "$name" == get-lease ]]; then
        stop_rskv
        start_rskv lease
        wait_ready rskv "$RSKV_ALL"
        pick_rskv_leader
        [[ -n "$BASELINE" ]] && WITH="$BASE_GEN" wait_ready rskv "$BASE_RSKV" "${BASE_BENCH[@]}"
    fi
    for c in $CLIENTS; do
        # One client has one connection anyway: its row would repeat the put row.
        [[ "$name" == put-1conn && "$c" == 1 ]] && continue
        rs="" es=""
        for round in $(seq "$ROUNDS"); do
            r="$(run "$RSKV_TARGET" "$RSKV" "$1" "$c" "${@:2}")"
            echo "{\"system\":\"$A_NAME\",\"cell\":\"$name\",\"round\":$round,\"result\":$r}" >>"$OUT/results.jsonl"
            rs="$rs$r"$'\n'
            if [[ -n "$AB" ]]; then
                # shellcheck disable=SC2086 # AB is a list of flags
                e="$(run rskv "$RSKV" "$1" "$c" "${@:2}" $AB)"
            elif [[ -n "$BASELINE" ]]; then
                e="$(WITH="$BASE_GEN" run "$RSKV_TARGET" "$BASE_RSKV" "$1" "$c" "${@:2}" "${BASE_BENCH[@]}")"
            elif [[ -n "$ETCD" ]]; then
                e="$(run etcd "$ETCD" "$1" "$c" "${@:2}")"
            else
                e=""
            fi
            if [[ -n "$e" ]]; then
                echo "{\"system\":\"$B_NAME\",\"cell\":\"$name\",\"round\":$round,\"result\":$e}" >>"$OUT/results.jsonl"
                es="$es$e"$'\n'
            fi
        done
        python3 - "$name" "$c" "$rs" "$es" <<'PY' | tee -a "$OUT/table.txt"
import json, sys
name, c = sys.argv[1], sys.argv[2]
def median_run(text):
    runs = sorted((json.loads(l) for l in text.splitlines() if l.strip()), key=lambda x: x["throughput"])
    return runs[(len(runs) - 1) // 2] if runs else {}
r, e = median_run(sys.argv[3]), median_run(sys.argv[4])
def cols(x):
    return ("%10.0f %8.2f %8.2f" % (x["throughput"], x["p50_ms"], x["p99_ms"])) if x else "%10s %8s %8s" % ("-", "-", "-")
ratio = ("%6.2f" % (r["throughput"] / e["throughput"])) if e and e.get("throughput") else "     -"
print("%-16s %7s | %s | %s | %s" % (name, c, cols(r), cols(e), ratio))
PY
    done
done
echo "results: $OUT/results.jsonl, table: $OUT/table.txt"
