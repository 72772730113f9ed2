# Sourced by the scripts: build settings shared by dev runs, tests and CI.
# The target dir lives outside the clone so every clone on a machine (and CI) reuses one build;
# sccache, when present, caches the RocksDB C++ compile across target dirs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rskv/target}"
if command -v sccache >/dev/null 2>&1 && [[ -z "${RUSTC_WRAPPER:-}" ]]; then
    export RUSTC_WRAPPER=sccache
    export SCCACHE_DIR="${SCCACHE_DIR:-$HOME/.cache/rskv/sccache}"
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
