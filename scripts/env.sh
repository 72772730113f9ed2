# Sourced by the scripts: build settings shared by dev runs, the cluster script and tests.
# sccache, when installed (scripts/prereqs.sh installs it), caches the RocksDB C++ compile, so a
# fresh target dir rebuilds in about a minute instead of fifteen. The target dir stays cargo's
# default (./target) unless CARGO_TARGET_DIR is set, so plain `cargo run` reuses the same build.
if command -v sccache >/dev/null 2>&1 && [[ -z "${RUSTC_WRAPPER:-}" ]]; then
    export RUSTC_WRAPPER=sccache
    export SCCACHE_DIR="${SCCACHE_DIR:-$HOME/.cache/rskv/sccache}"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
