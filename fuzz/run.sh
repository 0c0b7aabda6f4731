#!/usr/bin/env bash
# Run one cargo-fuzz target: fuzz/run.sh TARGET [SECONDS|-runs=N] [extra libFuzzer flags...]
#
#   fuzz/run.sh mqtt_codec 1800        # 30 minutes
#   fuzz/run.sh http_parse -runs=10000000
#
# One job, one worker (the machines are shared). The corpus grows in fuzz/corpus/TARGET (seeded
# from fuzz/regressions/TARGET), crashes land in fuzz/artifacts/TARGET, the log in
# fuzz/logs/TARGET-<UTC time>.log. Toolchain: `nightly` if rustup has it, else
# `rustup toolchain install nightly --profile minimal`, else stable with RUSTC_BOOTSTRAP=1; the
# choice is printed. cargo-fuzz is installed with `cargo install cargo-fuzz --locked` if missing.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
targets="mqtt_codec http_parse topic_tree mqtt_broker mqtt_broker_v5 lab_stall mqtt_store"
target="${1:-}"
if [[ -z "$target" || ! " $targets " == *" $target "* ]]; then
    echo "usage: fuzz/run.sh TARGET [SECONDS|-runs=N] [libFuzzer flags...]; TARGET is one of: $targets" >&2
    exit 2
fi
shift
limit="${1:-600}"
[[ $# -gt 0 ]] && shift
case "$limit" in
    -runs=*) limit_flag="$limit" ;;
    *[!0-9]*) echo "fuzz/run.sh: '$limit' is neither SECONDS nor -runs=N" >&2; exit 2 ;;
    *) limit_flag="-max_total_time=$limit" ;;
esac

# The toolchain.
toolchain_args=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain_args=(+nightly)
    toolchain="nightly ($(rustc +nightly --version))"
elif rustup toolchain install nightly --profile minimal >/dev/null 2>&1; then
    toolchain_args=(+nightly)
    toolchain="nightly, just installed ($(rustc +nightly --version))"
else
    export RUSTC_BOOTSTRAP=1
    toolchain="no nightly available: stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi

echo "fuzz/run.sh: toolchain: $toolchain"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

corpus="$here/corpus/$target"
mkdir -p "$corpus" "$here/artifacts/$target" "$here/logs"
if [[ -d "$here/regressions/$target" ]]; then
    cp -n "$here/regressions/$target"/* "$corpus/" 2>/dev/null || true
fi
log="$here/logs/$target-$(date -u +%Y%m%dT%H%M%SZ).log"
echo "fuzz/run.sh: $target, $limit_flag $*, toolchain $toolchain, commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'), log $log" | tee "$log"

cd "$here"
rm -f fuzz-0.log
# -jobs/-workers=1: one process; -rss_limit_mb guards against a leak eating the shared machine.
set +e
cargo "${toolchain_args[@]}" fuzz run "$target" "$corpus" -- \
    "$limit_flag" -jobs=1 -workers=1 -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$target/" "$@" 2>&1 | tee -a "$log"
status=${PIPESTATUS[0]}
set -e
# With -jobs, libFuzzer's worker writes its progress to fuzz-0.log in the current directory.
if [[ -f fuzz-0.log ]]; then
    { echo "---- libFuzzer worker log (fuzz-0.log) ----"; cat fuzz-0.log; } >> "$log"
    rm -f fuzz-0.log
fi
echo "fuzz/run.sh: exit $status; corpus $(find "$corpus" -type f | wc -l) files; log $log"
exit "$status"
