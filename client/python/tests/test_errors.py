"""Bad input from Python: each a clear exception in the caller, and the cluster serves on."""

import os
import threading

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
def fails(message):
    raise ValueError(message)


@ember.remote
def echo(x):
    return x


def test_an_exception_is_raised_in_the_caller_with_the_remote_traceback():
    with pytest.raises(ValueError, match="no such row") as info:
        ember.get(fails.remote("no such row"))
    cause = info.value.__cause__
    assert isinstance(cause, ember.RemoteError)
    assert "in fails" in cause.remote_traceback
    assert "ValueError: no such row" in cause.remote_traceback
    # The cluster serves on.
    assert ember.get(echo.remote(7)) == 7


class Unrebuildable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")

    def __reduce__(self):
        raise TypeError("not picklable")


@ember.remote
def fails_oddly():
    raise Unrebuildable(1, 2)


def test_an_exception_that_cannot_be_rebuilt_is_a_remote_error_naming_it():
    with pytest.raises(ember.RemoteError, match="Unrebuildable") as info:
        ember.get(fails_oddly.remote())
    assert info.value.type_name.endswith("Unrebuildable")
    assert "1/2" in info.value.message


def test_an_unpicklable_argument_fails_at_the_call():
    with pytest.raises(ember.SerializationError, match="argument of echo"):
        echo.remote(threading.Lock())
    assert ember.get(echo.remote(1)) == 1


@ember.remote
def returns_a_lock():
    return threading.Lock()


def test_an_unpicklable_result_fails_in_get():
    with pytest.raises(ember.SerializationError, match="result of returns_a_lock"):
        ember.get(returns_a_lock.remote())


def test_an_impossible_request_is_refused_at_once_naming_the_resource():
    with pytest.raises(ember.EmberError, match="GPU"):
        ember.get(echo.options(gpus=8).remote(1), timeout=10)
    with pytest.raises(ember.EmberError, match="H100"):
        ember.get(echo.options(gpus=1, accelerator="H100").remote(1), timeout=10)


def test_an_unknown_option_is_refused():
    with pytest.raises(TypeError, match="gpuz"):
        ember.remote(gpuz=1)(lambda: 1)


def test_an_object_ref_nested_in_a_value_is_refused():
    with pytest.raises(ember.SerializationError, match="top-level argument"):
        echo.remote([ember.put(1)])


@ember.remote(max_retries=0)
def dies():
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_a_task_whose_process_dies_mid_call_fails_clearly_and_the_cluster_serves_on():
    with pytest.raises(ember.EmberError) as info:
        ember.get(dies.remote(), timeout=60)
    assert "went away during the call" in str(info.value), str(info.value)
    assert ember.get(echo.remote(5), timeout=60) == 5


@ember.remote
class Mortal:
    def pid(self):
        import os

        return os.getpid()

    def die(self):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def test_a_call_to_an_actor_whose_process_died_fails_clearly():
    m = Mortal.remote()
    ember.get(m.pid.remote(), timeout=60)
    with pytest.raises(ember.EmberError) as info:
        ember.get(m.die.remote(), timeout=60)
    assert "process went away during the call" in str(info.value), str(info.value)
    # No restarts allowed (max_restarts 0): the actor is dead, and says so.
    with pytest.raises(ember.EmberError):
        ember.get(m.pid.remote(), timeout=60)
    assert ember.get(echo.remote(6), timeout=60) == 6


@ember.remote(max_retries=1)
def dies_once(marker):
    import os
    import signal

    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return os.getpid()


def test_a_task_whose_process_dies_is_retried_in_a_new_process(tmp_path):
    marker = tmp_path / "died"
    pid = ember.get(dies_once.remote(str(marker)), timeout=60)
    # The first attempt ran, and its process died; the retry ran in another.
    assert pid != int(marker.read_text())
    assert ember.get(echo.remote(7), timeout=60) == 7


@ember.remote(max_restarts=1, max_task_retries=1)
class Phoenix:
    def __init__(self):
        self.calls = 0

    def pid(self):
        import os

        return os.getpid()

    def die_once(self, marker):
        import os
        import signal

        self.calls += 1
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.calls


def test_an_actor_whose_process_dies_restarts_and_its_call_is_retried(tmp_path):
    p = Phoenix.remote()
    first = ember.get(p.pid.remote(), timeout=60)
    marker = tmp_path / "died"
    # The call that killed the process runs again on the restarted actor: a new instance
    # (no checkpoint), so this is its first call.
    assert ember.get(p.die_once.remote(str(marker)), timeout=60) == 1
    assert ember.get(p.pid.remote(), timeout=60) != first
