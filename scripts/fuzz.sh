#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60). Needs a nightly
# toolchain and cargo-fuzz (installed here if missing). Not part of the test
# suite: fuzzing is open-ended; run it before releases and after parser changes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECONDS_EACH=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in $(cargo +nightly fuzz list); do
  echo "== $target (${SECONDS_EACH}s)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 2>&1 | tail -3
done
