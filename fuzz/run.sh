#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), one after the
# other, starting from the committed seeds in fuzz/corpus/<target>/. New
# inputs libFuzzer finds go to fuzz/target/corpus/<target>/ (gitignored), so
# the committed seed corpus stays small; a crash lands in
# fuzz/artifacts/<target>/ and stops the script with libFuzzer's report.
#
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 600        # longer, by hand
#   TARGETS="envelope_id" fuzz/run.sh 30
#
# Needs the nightly toolchain (libFuzzer's sanitizer flags); installs
# cargo-fuzz when it is missing. The first build compiles the workspace's
# dependencies with coverage instrumentation: several minutes.
set -euo pipefail

seconds="${1:-60}"
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets="${TARGETS:-$(cargo +nightly fuzz list)}"
for target in $targets; do
    scratch="target/corpus/$target"
    mkdir -p "$scratch"
    echo "== $target: ${seconds}s"
    cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
