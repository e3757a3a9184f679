"""Where a call's large argument buffers travel is decided when it is sent, by where its
executor runs: on this machine through shared memory (mapped, not copied) whether they are
the call's own arguments, a put value or an earlier call's result passed on, and whether
the caller started the cluster or joined it; inline when same-machine calls are off."""

import gc
import os
import time

import numpy as np
import pytest

import ember
from ember import _ember
from shm_arrays import Inspector
from shm_arrays import inspect_argument as inspect

pytestmark = pytest.mark.usefixtures("cluster")

N = 4 << 20  # float64s: 32 MiB


@ember.remote
def make(n):
    return np.arange(n, dtype=np.float64)


def _mine():
    return {f for f in os.listdir("/dev/shm") if f.startswith(f"ember-buf-{os.getpid()}-")}


def _until_gone(files):
    deadline = time.monotonic() + 30
    while files & _mine():
        assert time.monotonic() < deadline, "a value's shared-memory file outlived it"
        time.sleep(0.05)
        gc.collect()


def test_a_put_array_crosses_to_calls_through_one_shared_file_that_goes_with_the_value():
    a = np.arange(N, dtype=np.float64)
    expected = float(a[1:].sum())
    ref = ember.put(a)
    before = _mine()
    assert ember.get(inspect.remote(ref), timeout=60) == (True, expected)
    written = _mine() - before
    assert len(written) == 1, f"the put value's buffer written once: {written}"
    inspector = Inspector.remote()
    assert ember.get(inspector.inspect.remote(ref), timeout=60) == (True, float(a.sum()))
    assert ember.get(inspect.remote(ref), timeout=60) == (True, expected)
    assert _mine() - before == written, "later calls reuse the value's file"
    assert ember.get(ref)[0] == 0.0, "the put value is untouched by the executors' writes"
    del ref
    gc.collect()
    _until_gone(written)


def test_a_result_passed_on_crosses_through_shared_memory_to_the_next_call():
    made = make.remote(N)
    expected = float(np.arange(N, dtype=np.float64)[1:].sum())
    assert ember.get(inspect.remote(made), timeout=60) == (True, expected)
    inspector = Inspector.remote()
    assert ember.get(inspector.inspect.remote(made), timeout=60) == (True, expected)
    assert ember.get(made)[0] == 0.0


def test_with_same_host_calls_off_arguments_travel_inline_and_arrive_intact():
    a = np.arange(N, dtype=np.float64)
    expected = float(a[1:].sum())
    _ember._set_same_host_calls(False)
    try:
        ref = ember.put(a)
        made = make.remote(N)
        inspector = Inspector.remote()
        assert ember.get(inspect.remote(a), timeout=60) == (False, expected)
        assert ember.get(inspect.remote(ref), timeout=60) == (False, expected)
        assert ember.get(inspect.remote(made), timeout=60) == (False, expected)
        assert ember.get(inspector.inspect.remote(ref), timeout=60) == (False, float(a.sum()))
    finally:
        _ember._set_same_host_calls(True)
    # Back on: the same values cross through shared memory again.
    assert ember.get(inspect.remote(ref), timeout=60) == (True, expected)
    assert ember.get(inspect.remote(made), timeout=60) == (True, expected)


@ember.remote
def from_a_joined_process(n):
    # This executor joined the cluster on first use (EMBER_CLUSTER): its calls' large
    # arguments go through shared memory to executors on its machine all the same.
    a = np.arange(n, dtype=np.float64)
    ref = ember.put(a)
    made = make.remote(n)
    return [
        ember.get(inspect.remote(a), timeout=60),
        ember.get(inspect.remote(ref), timeout=60),
        ember.get(inspect.remote(made), timeout=60),
    ]


def test_in_a_joined_cluster_arguments_cross_through_shared_memory_on_one_machine():
    expected = float(np.arange(N, dtype=np.float64)[1:].sum())
    assert ember.get(from_a_joined_process.remote(N), timeout=120) == [(True, expected)] * 3


@ember.remote
def cluster_file():
    return os.environ["EMBER_CLUSTER"]


def test_a_second_process_that_joins_with_init_path_sends_arguments_through_shared_memory():
    import subprocess
    import sys
    import textwrap

    path = ember.get(cluster_file.remote(), timeout=60)
    script = textwrap.dedent(
        f"""
        import mmap
        import numpy as np
        import ember

        ember.init({path!r})

        def mapped(array):
            base = array.base
            while isinstance(base, np.ndarray):
                base = base.base
            if isinstance(base, memoryview):
                base = base.obj
            return isinstance(base, mmap.mmap)

        @ember.remote
        def inspect(a):
            return mapped(a), float(a.sum())

        @ember.remote
        def make(n):
            return np.arange(n, dtype=np.float64)

        a = np.arange({N}, dtype=np.float64)
        got = [
            ember.get(inspect.remote(a), timeout=60),
            ember.get(inspect.remote(ember.put(a)), timeout=60),
            ember.get(inspect.remote(make.remote({N})), timeout=60),
        ]
        print(got == [(True, float(a.sum()))] * 3, got)
        ember.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True"), out.stdout
