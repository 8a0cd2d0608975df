#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target for a bounded time (FUZZ_SECONDS, default 60).
# Not part of `make test`. A crash input is saved under fuzz/artifacts/<target>/; copy it
# to fuzz/regressions/<target>/ and `cargo test --test fuzz_regressions` keeps it a test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# libFuzzer needs nightly-only flags; the stable toolchain accepts them with RUSTC_BOOTSTRAP.
export RUSTC_BOOTSTRAP=1
status=0
for target in config_parser traceparent query_rewrite path_normalize sse_stream ai_request; do
  # New inputs go to fuzz/corpus-work (ignored by git); fuzz/corpus holds the seeds.
  mkdir -p "fuzz/corpus-work/$target"
  echo "== fuzzing $target for ${seconds}s"
  if ! cargo fuzz run "$target" "fuzz/corpus-work/$target" "fuzz/corpus/$target" -- -max_total_time="$seconds" -rss_limit_mb=4096; then
    echo "!! $target found a crash: see fuzz/artifacts/$target/" >&2
    status=1
  fi
done
exit $status
