#!/usr/bin/env bash
# Ember's recovery benchmark beside Ray 2.60's, in one run on one machine:
#   - an actor's process SIGKILLed -> the actor answering again (Ray: max_restarts=-1,
#     max_task_retries=-1; Ember: the same, plus its state restored from a checkpoint);
#   - a whole worker SIGKILLed -> the actor answering from another worker (Ray: several
#     raylets through ray.cluster_utils.Cluster on 127.0.0.1).
# Usage: benches/compare_ray_recovery.sh [--kills N]   (about 3 minutes on 2 cores)
#
# Ray's venv is $RAY_VENV (default /tmp/ray-venv; benches/compare_ray.sh says how to make it).
# The reference scripts live in ../shared/anchors beside the repository (or $EMBER_SHARED).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || root=$(cd "$here/.." && pwd)
. "$here/anchors.sh"
find_anchors "$root" ray_actor_restart.py
RAY_VENV=${RAY_VENV:-/tmp/ray-venv}
if [ ! -x "$RAY_VENV/bin/python" ]; then
  echo "error: no Ray venv at $RAY_VENV: see benches/compare_ray.sh for how to make one" >&2
  exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
echo "== building Ember's recovery benchmark (release)" >&2
(cd "$root" && CARGO_TARGET_DIR=$target cargo build --release -q -p ember-benches --bin recovery)

echo "== Ember" >&2
"$target/release/recovery" "$@"
echo "== Ray $("$RAY_VENV/bin/python" -c 'import ray; print(ray.__version__)')" >&2
"$RAY_VENV/bin/python" "$shared/anchors/ray_actor_restart.py" 2>/dev/null | grep '^ray'
"$RAY_VENV/bin/python" "$shared/anchors/ray_node_kill.py" 2>/dev/null | grep '^ray'
