#!/usr/bin/env bash
# Ember's allreduce beside torch.distributed with Gloo, in one run on one machine: an f32 sum
# across 2 and 4 ranks from 4 KiB to 256 MiB, time and bus bandwidth (busbw = size / time x
# 2(n-1)/n, as nccl-tests defines it). Ember's ranks are actors, each in its own process.
# Usage: benches/compare_gloo.sh [RANKS...]   (default: 2 4; about 3 minutes on 2 cores)
#
# Gloo's venv is $TORCH_VENV (default /tmp/torch-venv), made with
#   python3 -m venv /tmp/torch-venv && /tmp/torch-venv/bin/pip install torch==2.15.0
# (its nvidia-* dependencies come along even for CPU use: several GB).
# The reference script lives in ../shared/anchors beside the repository (or $EMBER_SHARED).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || root=$(cd "$here/.." && pwd)
. "$here/anchors.sh"
find_anchors "$root" gloo_allreduce.py
TORCH_VENV=${TORCH_VENV:-/tmp/torch-venv}
if [ ! -x "$TORCH_VENV/bin/python" ]; then
  echo "error: no torch venv at $TORCH_VENV (see the top of this script)" >&2
  exit 1
fi
target=${CARGO_TARGET_DIR:-$root/target}
echo "== building Ember's allreduce benchmark (release)" >&2
(cd "$root" && CARGO_TARGET_DIR=$target cargo build --release -q -p ember-benches --bin allreduce)

ranks=("$@")
[ ${#ranks[@]} -gt 0 ] || ranks=(2 4)
for n in "${ranks[@]}"; do
  echo "== Ember, $n ranks" >&2
  "$target/release/allreduce" --ranks "$n"
  echo "== Gloo (torch $("$TORCH_VENV/bin/python" -c 'import torch; print(torch.__version__)')), $n ranks" >&2
  "$TORCH_VENV/bin/python" "$shared/anchors/gloo_allreduce.py" "$n" 2>&1 | grep '^gloo'
done
