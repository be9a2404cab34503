#!/usr/bin/env bash
# Fuzz smoke test for CI: builds every cargo-fuzz target on the stable
# toolchain (no sanitizer, so no nightly needed) and runs each one briefly,
# starting from the committed corpus in fuzz/corpus/<target>/.
#
# A crash, panic or failed invariant makes libFuzzer exit non-zero, which
# fails this script; the input that did it is left in
# fuzz/artifacts/<target>/ (reproduce with
# `cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/<file>`).
#
# New inputs go to a scratch directory, so the committed corpus is never
# modified here. Environment: FUZZ_SECONDS (per target, default 20).
set -euo pipefail
cd "$(dirname "$0")"

export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TERM_COLOR=never
seconds="${FUZZ_SECONDS:-20}"

if ! command -v cargo >/dev/null 2>&1; then
  echo "fuzz/smoke.sh: cargo not found (install the stable Rust toolchain first)" >&2
  exit 1
fi
# libfuzzer-sys compiles libFuzzer's C++ sources.
if ! command -v c++ >/dev/null 2>&1; then
  echo "== installing a C++ compiler (libFuzzer is C++)"
  apt-get update -qq && apt-get install -y -qq g++
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

targets=$(cargo fuzz list)
echo "== building: $(echo $targets)"
cargo fuzz build --sanitizer none

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  echo "== fuzz $t for ${seconds}s"
  if [ -z "$(ls -A "corpus/$t" 2>/dev/null)" ]; then
    echo "fuzz/smoke.sh: corpus/$t is empty" >&2
    exit 1
  fi
  mkdir -p "$scratch/$t"
  log="$scratch/$t.log"
  # The first directory receives new inputs; corpus/$t is only read.
  if ! cargo fuzz run --sanitizer none "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 80 "$log"
    echo "fuzz/smoke.sh: target $t failed; input saved under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec)' "$log" \
    || tail -n 5 "$log"
done
echo "== fuzz smoke: all targets ran ${seconds}s without a crash"
