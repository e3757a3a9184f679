#!/usr/bin/env bash
# Builds the GPU kit here and stages what a GPU machine needs in one folder:
#   benches/gpu/build.sh            # release build (what is carried to a GPU machine)
#   KIT_PROFILE=dev benches/gpu/build.sh   # a dev build, for the dry run in CI
# The folder (KIT_DIR, default target/gpu-kit) holds gpu_kit (stripped), run.sh and
# torch_matmul.py; carry it to the GPU machine and run `target/gpu-kit/run.sh OUT`.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${KIT_PROFILE:-release}
kit_dir=${KIT_DIR:-target/gpu-kit}
target_dir=${CARGO_TARGET_DIR:-target}
case "$profile" in
  release) out_dir=release ;;
  dev) out_dir=debug ;;
  *) out_dir=$profile ;;
esac
# No debug information, symbols stripped: the binary must travel small.
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
  cargo build --locked --profile "$profile" -p ember-benches --bin gpu_kit
mkdir -p "$kit_dir"
rm -f "$kit_dir/gpu_kit"
cp "$target_dir/$out_dir/gpu_kit" "$kit_dir/gpu_kit"
strip --strip-all "$kit_dir/gpu_kit" 2>/dev/null || true
cp benches/gpu/run.sh benches/gpu/torch_matmul.py "$kit_dir/"
chmod +x "$kit_dir/run.sh" "$kit_dir/gpu_kit"
echo "staged in $kit_dir ($profile build):"
ls -l "$kit_dir"
du -sh "$kit_dir"
