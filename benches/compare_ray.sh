#!/usr/bin/env bash
# Ember's microbench beside Ray 2.60's `ray microbenchmark`, in one run on one machine, then a
# markdown table of both. Usage: benches/compare_ray.sh [microbench flags, e.g. --duration-secs S]
# A full run takes about 10 minutes on 2 cores (each Ray row starts Ray and sleeps 10 s first).
#
# Ray's venv is $RAY_VENV (default /tmp/ray-venv). The reference scripts live in ../shared
# beside the repository (override with EMBER_SHARED). The Ember binary is built in release in
# $CARGO_TARGET_DIR (default <repo>/target).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || root=$(cd "$here/.." && pwd)
. "$here/anchors.sh"
find_anchors "$root" ray_micro.sh
ray_micro="$shared/anchors/ray_micro.sh"
export RAY_VENV=${RAY_VENV:-/tmp/ray-venv}
if [ ! -x "$RAY_VENV/bin/ray" ]; then
  cat >&2 <<EOF
error: no Ray venv at $RAY_VENV (no $RAY_VENV/bin/ray).
Create it once (a few minutes, needs network) with either:
  RAY_VENV=$RAY_VENV bash $ray_micro "single client tasks sync"   # creates it on first use
  python3 -m venv $RAY_VENV && $RAY_VENV/bin/pip install "ray[default]==2.60.0" numpy
or point RAY_VENV at an existing one.
EOF
  exit 1
fi

target=${CARGO_TARGET_DIR:-$root/target}
echo "== building Ember's microbench (release) in $target" >&2
(cd "$root" && CARGO_TARGET_DIR=$target cargo build --release -q -p ember-benches --bin microbench)

# Ember's row names (as in Ray's release-test metrics) and the display names that Ray's
# `ray microbenchmark` prints and filters on (TESTS_TO_RUN is a substring of these).
rows=(single_client_tasks_sync single_client_tasks_async 1_1_actor_calls_sync
      1_1_actor_calls_async n_n_actor_calls_async placement_group_create_removal)
ray_names=("single client tasks sync" "single client tasks async" "1:1 actor calls sync"
           "1:1 actor calls async" "n:n actor calls async" "placement group create/removal")

# Ray's microbenchmark also runs Ray Client variants ("client: 1:1 actor calls sync", ...) of
# matching rows, each costing minutes; skip them unless asked otherwise.
export TESTS_TO_SKIP=${TESTS_TO_SKIP-client:}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== Ember microbench (actor calls through same-machine Unix sockets, the default)" >&2
"$target/release/microbench" "$@" | tee "$out/ember.txt"
echo "== Ember microbench over QUIC (tasks and actor calls as from another machine)" >&2
"$target/release/microbench" --quic "$@" | tee "$out/ember-quic.txt"

echo "== Ray $("$RAY_VENV/bin/python" -c 'import ray; print(ray.__version__)') microbenchmark (same machine, now)" >&2
: > "$out/ray.txt"
for name in "${ray_names[@]}"; do
  # Each invocation starts and stops its own Ray; a failure leaves that row empty.
  bash "$ray_micro" "$name" | tee -a "$out/ray.txt" || echo "warning: Ray row '$name' failed" >&2
  "$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true
done

rate() { # file, exact row name -> the mean rate, or empty
  awk -v n="$2" 'index($0, n " per second ") == 1 { print substr($0, length(n) + 13) }' "$1" \
    | awk '{ print $1 }' | head -1
}

ratio() { awk -v e="$1" -v r="$2" 'BEGIN { if (e != "" && r != "" && r > 0) printf "%.1fx", e / r; else print "-" }'; }

echo
echo "| row | Ray 2.60 /s | Ember /s | Ember ÷ Ray | Ember over QUIC /s | QUIC ÷ Ray |"
echo "|---|---:|---:|---:|---:|---:|"
for i in "${!rows[@]}"; do
  e=$(rate "$out/ember.txt" "${rows[$i]}")
  q=$(rate "$out/ember-quic.txt" "${rows[$i]}")
  r=$(rate "$out/ray.txt" "${ray_names[$i]}")
  printf '| %s | %s | %s | %s | %s | %s |\n' "${rows[$i]}" "${r:--}" "${e:--}" "$(ratio "$e" "$r")" \
    "${q:--}" "$(ratio "${q:-}" "$r")"
done
e=$(rate "$out/ember.txt" actor_creations)
q=$(rate "$out/ember-quic.txt" actor_creations)
printf '| actor_creations | - | %s | - | %s | - |\n' "${e:--}" "${q:--}"
