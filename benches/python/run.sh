#!/usr/bin/env bash
# Ember's Python microbenchmark (benches/python/micro.py) beside Ray 2.60's own
# `ray microbenchmark`, in one run on this machine, then a markdown table of both with the
# ratio per row. About 8 minutes on 2 cores, plus the release build.
#
#   bash benches/python/run.sh [micro.py flags, e.g. --startup-runs 3]
#
# The package is built in release (`pip install ./client/python`, maturin's default) into a
# venv of its own, $CARGO_TARGET_DIR/python-bench-venv (default target/), with cargo's
# target directory at $CARGO_TARGET_DIR. Ray's venv is $RAY_VENV (default /tmp/ray-venv);
# ../shared/anchors/ray_micro.sh makes it on first use (a few minutes, needs the network).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || root=$(cd "$here/../.." && pwd)
. "$here/../anchors.sh"
find_anchors "$root" ray_micro.sh
ray_micro="$shared/anchors/ray_micro.sh"
export RAY_VENV=${RAY_VENV:-/tmp/ray-venv}

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
venv=$CARGO_TARGET_DIR/python-bench-venv
python=${PYTHON:-python3}
echo "== building the ember package (release) into $venv" >&2
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
fi
"$venv/bin/python" -m pip install -q 'maturin>=1.9,<2' 'cloudpickle>=3' 'numpy>=1.26'
# The build backend runs `maturin` from PATH (maturin 1.16 and later): the venv's.
(cd "$root" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m pip install -q \
  --no-build-isolation --force-reinstall --no-deps ./client/python)

# Ember's row names, and the names Ray's microbenchmark prints (and filters on with
# TESTS_TO_RUN, a substring).
rows=(single_client_get_calls single_client_put_calls single_client_put_gigabytes
      single_client_tasks_sync single_client_tasks_async 1_1_actor_calls_sync
      1_1_actor_calls_async n_n_actor_calls_async 1_1_async_actor_calls_async)
ray_names=("single client get calls (Plasma Store)" "single client put calls (Plasma Store)"
           "single client put gigabytes" "single client tasks sync" "single client tasks async"
           "1:1 actor calls sync" "1:1 actor calls async" "n:n actor calls async"
           "1:1 async-actor calls async")
# Ray's Ray Client variants of the same rows ("client: 1:1 actor calls sync", ...) are not
# in this comparison.
export TESTS_TO_SKIP=${TESTS_TO_SKIP-client:}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load:$(uptime | sed 's/.*load average://')"
echo "== Ember $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?'), Python API, release build (benches/python/micro.py $*)"
"$venv/bin/python" "$here/micro.py" "$@" | tee "$out/ember.txt"

echo "== Ray $("$RAY_VENV/bin/python" -c 'import ray; print(ray.__version__)' 2>/dev/null || echo '2.60.0 (to install)') microbenchmark (same machine, right after)"
: > "$out/ray.txt"
for name in "${ray_names[@]}"; do
  # Each invocation starts and stops its own Ray; a failure leaves that row empty.
  # Ray's command may exit non-zero after printing its row (at its shutdown); a row it did
  # not print is left empty in the table.
  bash "$ray_micro" "$name" | tee -a "$out/ray.txt" || echo "note: Ray's run of '$name' exited with status $?" >&2
  "$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true
done
echo "== Ray's startup, measured as micro.py measures Ember's (micro.py --api ray)"
"$RAY_VENV/bin/python" "$here/micro.py" --api ray --no-rows --startup-runs "${RAY_STARTUP_RUNS:-5}" \
  || echo "warning: Ray's startup figures failed" >&2
"$RAY_VENV/bin/ray" stop --force >/dev/null 2>&1 || true

rate() { # file, exact row name -> the mean rate, or empty
  awk -v n="$2" 'index($0, n " per second ") == 1 { print substr($0, length(n) + 13) }' "$1" \
    | awk '{ print $1 }' | head -1
}
ratio() { awk -v e="$1" -v r="$2" 'BEGIN { if (e != "" && r != "" && r > 0) printf "%.1fx", e / r; else print "-" }'; }

echo
echo "| row | Ember /s | Ray 2.60 /s | Ember ÷ Ray |"
echo "|---|---:|---:|---:|"
for i in "${!rows[@]}"; do
  e=$(rate "$out/ember.txt" "${rows[$i]}")
  r=$(rate "$out/ray.txt" "${ray_names[$i]}")
  printf '| %s | %s | %s | %s |\n' "${rows[$i]}" "${e:--}" "${r:--}" "$(ratio "$e" "$r")"
done
