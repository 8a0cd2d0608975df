#!/usr/bin/env bash
# Runs every test (unit and integration) and ends with one summary line.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
# The benchmark tools in benches/ must keep compiling; they have no tests of their own.
cargo build --examples --quiet || exit 1
cargo test --lib --tests -- --test-threads=4 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
