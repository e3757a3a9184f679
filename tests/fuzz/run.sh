#!/usr/bin/env bash
# Builds every cargo-fuzz target in tests/fuzz and runs each for SECONDS (default 10); fails
# if any target crashes, leaving the input that did it under tests/fuzz/artifacts/TARGET/.
#
#   tests/fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`) and the stable toolchain. Environment:
#   FUZZ_SANITIZER=address  AddressSanitizer (the default): catches out-of-bounds reads that
#                           checked archives should make impossible, and enforces the limit on
#                           any one allocation. `-Zsanitizer` is a nightly flag, so this sets
#                           RUSTC_BOOTSTRAP=1 for the fuzz build only. `none`: no sanitizer and
#                           no nightly flag, about three times as many inputs a second.
#   FUZZ_PROFILE=release    optimised build (the default, for long runs), or `dev`: builds in
#                           about half the time, runs a few times slower (CI's short runs)
#   FUZZ_JOBS=N             run N targets at once (default 1)
#   CARGO_TARGET_DIR        where to build (default tests/fuzz/target)
# Each target starts from its corpus, tests/fuzz/corpus/TARGET/, which grows and is kept
# between runs, and from seeds: real messages of every kind (random bytes seldom make a valid
# archive), which the target writes in tests/fuzz/seeds/TARGET/ as it starts (src/lib.rs).
# Neither is committed.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_dir=$(pwd)

seconds=${1:-10}
shift || true
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is required: cargo install cargo-fuzz --locked" >&2
  exit 1
fi

# The fuzz crate is its own workspace with its own Cargo.lock (the repository's versions, plus
# libFuzzer). Like the rest of CI, refuse to build when that lock is out of date.
host=$(rustc -vV | sed -n 's/^host: //p')
if ! cargo fetch --locked --manifest-path Cargo.toml --target "$host"; then
  echo "tests/fuzz/Cargo.lock is out of date. Start it again from the repository's lock:" >&2
  echo "  cp Cargo.lock tests/fuzz/Cargo.lock && cargo tree --manifest-path tests/fuzz/Cargo.toml >/dev/null" >&2
  exit 1
fi

profile=()
case ${FUZZ_PROFILE:-release} in
  release) profile=(--release) ;;
  dev) profile=(--dev) ;;
  *) echo "FUZZ_PROFILE is release or dev" >&2; exit 2 ;;
esac
case ${FUZZ_SANITIZER:-address} in
  address) export RUSTC_BOOTSTRAP=1 ;;
  none) ;;
  *) echo "FUZZ_SANITIZER is address or none" >&2; exit 2 ;;
esac
# Debug assertions and overflow checks on: an overflow in a decoder is a finding.
flags=(--fuzz-dir "$fuzz_dir" -s "${FUZZ_SANITIZER:-address}" --debug-assertions "${profile[@]}")

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir "$fuzz_dir")
fi

echo "== building the fuzz targets (${FUZZ_PROFILE:-release}, sanitizer ${FUZZ_SANITIZER:-address})"
cargo fuzz build "${flags[@]}"

# libFuzzer's options: stop after SECONDS; inputs up to 64 KiB from the start (an rkyv
# archive's root is at its end, so lengths matter from the first input); 2 GiB of memory at
# most and, with the sanitizer, no single allocation over 300 MiB (the largest frame is
# 256 MiB): a decoder that allocates from a length field it read is a crash; 10 s for one
# input is a hang.
lib_opts=(-max_total_time="$seconds" -max_len=65536 -len_control=0 -rss_limit_mb=2048
  -malloc_limit_mb=300 -timeout=10 -print_final_stats=1)

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

run_one() {
  local target=$1
  local corpus=$fuzz_dir/corpus/$target seeds=$fuzz_dir/seeds/$target
  rm -rf "$seeds"
  mkdir -p "$corpus" "$seeds"
  if EMBER_FUZZ_SEEDS=$fuzz_dir/seeds cargo fuzz run "${flags[@]}" "$target" "$corpus" "$seeds" \
    -- "${lib_opts[@]}" >"$logs/$target.log" 2>&1; then
    local runs
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' || true)
    echo "ok    $target (${runs:-?} inputs, corpus $(find "$fuzz_dir/corpus/$target" -type f | wc -l))"
  else
    echo "FAILED $target (a crash leaves its input in tests/fuzz/artifacts/$target/):"
    tail -n 60 "$logs/$target.log"
    return 1
  fi
}

jobs=${FUZZ_JOBS:-1}
failed=0
running=0
for target in "${targets[@]}"; do
  run_one "$target" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || failed=1
    running=$((running - 1))
  fi
done
while [ "$running" -gt 0 ]; do
  wait -n || failed=1
  running=$((running - 1))
done

if [ "$failed" -ne 0 ]; then
  echo "== a fuzz target failed" >&2
  exit 1
fi
echo "== ${#targets[@]} fuzz targets ran ${seconds}s each without a crash"
