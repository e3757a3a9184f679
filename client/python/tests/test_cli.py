"""The package's `ember` command: `ember up` started from Python runs Python workers, and a
script joins that cluster with ember.init(path) and runs its functions there."""

import json
import pathlib
import shutil
import signal
import subprocess
import sys
import textwrap

import ember


def test_ember_up_from_the_package_runs_python_work_for_a_script_that_joins_it(tmp_path):
    ember_cmd = shutil.which("ember", path=str(pathlib.Path(sys.executable).parent))
    assert ember_cmd, "the package puts an `ember` command beside its interpreter"
    up = subprocess.Popen(
        [ember_cmd, "up", "--workers", "1", "--gpus-per-worker", "1", "--listen", "127.0.0.1:0",
         "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        printed = ""
        for line in up.stdout:
            printed += line
            if "Press Ctrl-C" in line:
                break
        assert "NODES (1)" in printed, printed
        script = textwrap.dedent(
            f"""
            import ember
            ember.init({str(tmp_path)!r})

            @ember.remote(gpus=0.5)
            def hello(name):
                return f"hello {{name}} from GPUs {{ember.get_gpu_ids()}}"

            print(ember.get(hello.remote("cluster"), timeout=60))
            ember.shutdown()
            """
        )
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "hello cluster from GPUs [0]"
        # The cluster serves on after the script left; `ember status` sees its worker.
        status = subprocess.run(
            [sys.executable, "-m", "ember", "status", "--json", "--cluster", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert len(json.loads(status.stdout)["nodes"]) == 1
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        finally:
            up.kill()
    assert up.returncode == 0


def test_the_command_line_reports_usage_errors_with_its_name():
    out = subprocess.run(
        [sys.executable, "-m", "ember", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "ember" in out.stderr and "no-such-command" in out.stderr


def test_python_work_on_a_cluster_whose_workers_run_no_python_is_refused_saying_why(tmp_path):
    import os

    import pytest

    rust = os.environ.get("EMBER_RUST_BIN")
    if not rust or not os.path.exists(rust):
        pytest.skip("EMBER_RUST_BIN (the Rust `ember` binary) is not set: tests/python/run.sh sets it")
    up = subprocess.Popen(
        [rust, "up", "--workers", "1", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for line in up.stdout:
            if "Press Ctrl-C" in line:
                break
        script = textwrap.dedent(
            f"""
            import ember
            ember.init({str(tmp_path)!r})

            @ember.remote
            def f():
                return 1

            try:
                ember.get(f.remote(), timeout=30)
            except ember.EmberError as e:
                print(e)
            ember.shutdown()
            """
        )
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "no worker can run task `ember::python`" in out.stdout, out.stdout
        assert "no worker of this cluster runs Python" in out.stdout
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        finally:
            up.kill()
