"""numpy arrays: a large result on the same machine arrives without a copy (mapped from
shared memory), and arrays travel intact as arguments, through put, and between calls."""

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import ember
from shm_arrays import Inspector, inspect_argument

pytestmark = pytest.mark.usefixtures("cluster")


def test_a_200_mb_array_returned_on_this_machine_arrives_without_a_copy():
    # A fresh process, so its peak memory is this transfer's alone.
    script = textwrap.dedent(
        """
        import os, resource
        import numpy as np
        import ember

        N = 200 * 1024 * 1024 // 8
        ember.init(workers=1)

        @ember.remote
        def make(n):
            return np.arange(n, dtype=np.float64)

        ember.get(make.remote(1))  # the executor is warm
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        a = ember.get(make.remote(N), timeout=120)
        total = float(a.sum())  # every page touched
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
        print(a.flags.owndata, a.flags.writeable, a.nbytes, peak, total == float(N) * (N - 1) / 2)
        a[0] = 7.0  # copy-on-write: the caller may write it
        ember.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    owndata, writeable, nbytes, peak, correct = out.stdout.split()
    assert owndata == "False", "the array owns a copy of its data"
    assert writeable == "True"
    assert correct == "True"
    assert int(peak) < 2 * int(nbytes), f"peak memory grew by {int(peak) >> 20} MiB for {int(nbytes) >> 20} MiB"


@ember.remote
def scale(a, k):
    return a * k


def test_arrays_travel_intact_as_arguments_and_results():
    a = np.random.default_rng(1).standard_normal((512, 1024))  # 4 MiB: out of band
    assert np.array_equal(ember.get(scale.remote(a, 2.0)), a * 2.0)
    ref = ember.put(a)
    assert np.array_equal(ember.get(ref), a)
    # A result passed on to the next call (its shared buffer, as it came, to an executor here).
    twice = scale.remote(ref, 2.0)
    four = scale.remote(twice, 2.0)
    assert np.array_equal(ember.get(four), a * 4.0)
    assert np.array_equal(ember.get(twice), a * 2.0)


def test_the_shared_memory_of_results_goes_with_their_refs():
    import gc
    import os

    def mine():
        return {f for f in os.listdir("/dev/shm") if f.startswith("ember-buf-")}

    before = mine()
    ref = scale.remote(np.ones(1 << 20), 1.0)  # 8 MiB
    ember.get(ref)
    assert mine() - before, "the result came through shared memory"
    del ref
    gc.collect()
    assert not (mine() - before), "the result's file outlived its ref"


def test_a_killed_process_s_shared_memory_is_swept_and_its_workers_stop(tmp_path):
    import os

    # A process that holds a large result from shared memory, then is SIGKILLed: its files
    # outlive it, until the next ember.init() on this machine. (Its output goes to a file, not
    # a pipe: its orphaned worker processes would keep a pipe open.)
    pid_file = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        import ember

        ember.init(workers=1)

        @ember.remote
        def make(n):
            return np.ones(n)

        ref = make.remote(1 << 20)  # its file lives as long as the ref
        a = ember.get(ref, timeout=120)
        me = str(os.getpid())
        workers = []
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{{p}}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[1] == me:
                        workers.append(p)
            except OSError:
                pass
        with open({str(pid_file)!r}, "w") as f:
            f.write(me + " " + " ".join(workers))
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    log = tmp_path / "log"
    with open(log, "w") as out:
        subprocess.run([sys.executable, "-c", script], stdout=out, stderr=out, timeout=300)
    assert pid_file.exists(), log.read_text()
    pid, *workers = pid_file.read_text().split()
    assert workers, "the local cluster's worker processes were found"
    left = [f for f in os.listdir("/dev/shm") if f.startswith(f"ember-buf-{pid}-")]
    assert left, "the killed process's result came through shared memory and was left"
    init = "import ember; ember.init(workers=1); ember.shutdown()"
    run = subprocess.run([sys.executable, "-c", init], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"ember-buf-{pid}-")]
    # Its local cluster's workers lost their head for good (it lived in the killed process)
    # and stopped, rather than wait to join it again: they notice at QUIC's idle timeout
    # (10 s) and stop after one more try (about 20 s here; 135 s while they waited).
    def running(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + 60
    while [w for w in workers if running(w)]:
        assert time.monotonic() < deadline, "the killed process's workers still run"
        time.sleep(0.05)


def test_a_large_array_argument_crosses_through_shared_memory_and_its_file_goes_with_the_call():
    import gc
    import os

    def mine():
        return {f for f in os.listdir("/dev/shm") if f.startswith(f"ember-buf-{os.getpid()}-")}

    before = mine()
    a = np.arange(4 << 20, dtype=np.float64)  # 32 MiB
    assert ember.get(inspect_argument.remote(a), timeout=60) == (True, float(a[1:].sum()))
    assert a[0] == 0.0
    inspector = Inspector.remote()
    assert ember.get(inspector.inspect.remote(a), timeout=60) == (True, float(a.sum()))
    # Small arrays travel in the call's bytes.
    assert ember.get(inspector.inspect.remote(a[:1000]), timeout=60) == (False, float(a[:1000].sum()))
    gc.collect()
    deadline = time.monotonic() + 30
    while mine() - before:
        assert time.monotonic() < deadline, "an argument's file outlived its call"
        time.sleep(0.05)
        gc.collect()
