#!/usr/bin/env bash
# Installs, as root on Debian, what the fault tests need when it is missing: iproute2 and nftables
# (network namespaces whose links are cut by dropping packets), faketime and fiu-utils (the clock
# and disk nemeses). Without root it does nothing: the fault tests then run on loopback behind the
# suite's proxy and skip what needs the missing tools. Used by jepsen.sh and test.sh (whose
# integration tests cut links in namespaces when they can).
set -euo pipefail
[[ "$(id -u)" == 0 ]] || exit 0
missing=()
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
[[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1 ]] || missing+=(faketime)
[[ -e /usr/lib/fiu/fiu_posix_preload.so ]] || missing+=(fiu-utils)
if ((${#missing[@]})); then
    echo "fault-tools: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
