#!/usr/bin/env bash
# The one command run on a GPU machine (from the folder benches/gpu/build.sh staged):
#   run.sh OUT_DIR [--dry-run] [gpu_kit flags]
# Writes OUT_DIR/results.json, results.md, kit.log, machine.txt (and torch_matmul.json when
# torch with CUDA is importable). Ends within 6 minutes: torch's matmul at most 60 s, the kit
# at most 280 s. Exit status: the kit's (0: every check passed or was skipped; 1: a check
# failed; 124: the time ran out).
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: run.sh OUT_DIR [--dry-run] [gpu_kit flags]}
shift
mkdir -p "$out"
kit=${GPU_KIT_BIN:-$here/gpu_kit}
if [ ! -x "$kit" ]; then
  kit=$here/../../target/gpu-kit/gpu_kit
fi
dry=0
for arg in "$@"; do
  if [ "$arg" = --dry-run ]; then dry=1; fi
done
{
  date -u
  uname -a
  nvidia-smi --query-gpu=name,uuid,memory.total,driver_version --format=csv 2>&1 | head -5
  python3 -c 'import sys; print("python", sys.version.split()[0])' 2>&1
  python3 -c 'import nvidia, sys; print("nvidia wheels:", list(nvidia.__path__))' 2>&1 | tail -1
} >"$out/machine.txt" 2>&1
torch_args=()
if [ "$dry" = 0 ] && python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "== torch.matmul on the same GPU (the comparison for cuBLAS)"
  if timeout 60 python3 "$here/torch_matmul.py" "$out/torch_matmul.json"; then
    torch_args=(--torch-json "$out/torch_matmul.json")
  else
    echo "torch_matmul.py failed or ran out of time; the kit runs without torch's figures"
  fi
fi
echo "== gpu_kit"
timeout 280 "$kit" --out "$out" ${torch_args[@]+"${torch_args[@]}"} "$@" 2>&1 | tee "$out/kit.log"
exit "${PIPESTATUS[0]}"
