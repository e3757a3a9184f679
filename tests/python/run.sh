#!/usr/bin/env bash
# The Python package's tests: builds the extension with maturin into a virtual environment
# of its own (target/python-venv), installs the package with its test extras, and runs the
# pytest suite under client/python/tests (real head and worker processes on 127.0.0.1).
#
# The package is built with cargo's dev profile (EMBER_PY_PROFILE, default dev), sharing the
# workspace's target directory with `cargo test`; users install it with
# `pip install ./client/python`, a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${PYTHON:-python3}
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q 'maturin>=1.9,<2' 'cloudpickle>=3' 'pytest>=8' 'numpy>=1.26'
# The build backend runs `maturin` from PATH (maturin 1.16 and later): the venv's.
PATH="$PWD/$venv/bin:$PATH" MATURIN_PEP517_ARGS="--profile ${EMBER_PY_PROFILE:-dev}" \
  "$venv/bin/python" -m pip install -q --no-build-isolation ./client/python
# The Rust `ember` binary, for the test of a cluster whose workers run no Python: in cargo's
# target directory, which CARGO_TARGET_DIR may move (relative paths are from the repository).
cargo build -q --locked -p ember-client --bin ember
target_dir=${CARGO_TARGET_DIR:-target}
case $target_dir in
  /*) ;;
  *) target_dir="$(pwd)/$target_dir" ;;
esac
EMBER_RUST_BIN="$target_dir/debug/ember" exec "$venv/bin/python" -m pytest -q client/python/tests "$@"
