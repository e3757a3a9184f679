"""The interpreter is never stuck: Ctrl-C interrupts a wait, a forked child gets an error."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def test_a_forked_child_gets_a_clear_error_not_a_hang():
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what calling ember does, then leave at once
        os.close(read)
        try:
            nap.remote(0)
            message = "no error"
        except ember.EmberError as e:
            message = str(e)
        os.write(write, message.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as r:
        message = r.read().decode()
    os.waitpid(pid, 0)
    assert "fork" in message, message
    assert ember.get(nap.remote(0)) == 0


def test_ctrl_c_interrupts_a_get():
    script = textwrap.dedent(
        """
        import signal, sys, time
        import ember
        # As in an interactive interpreter: a shell that starts this in the background
        # (CI) passes SIGINT on ignored, and Python then installs no handler for it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        ember.init(workers=1)

        @ember.remote
        def forever():
            time.sleep(600)

        r = forever.remote()
        try:
            print("waiting", flush=True)
            ember.get(r)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        ember.shutdown()
        """
    )
    p = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "waiting"
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=30)
    finally:
        p.kill()
    assert "interrupted" in out
    assert p.returncode == 0
