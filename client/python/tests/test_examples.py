"""Every example under examples/python runs, as a user would run it."""

import pathlib
import subprocess
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[3] / "examples" / "python"


def run(name):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart():
    out = run("quickstart.py")
    assert "cluster up, first result (45)" in out
    assert out.count("x0.25 CUDA_VISIBLE_DEVICES=") == 4
    assert "cpu task: 499999500000" in out
    assert "8 GPUs: refused: no node has 8 GPUs" in out


def test_every_example_is_tested():
    tested = {"quickstart.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested
