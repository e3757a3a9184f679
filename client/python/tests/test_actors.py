"""Python actors: state across calls, order, refs between calls, bad input, checkpoints."""

import gc
import json
import os
import signal
import time

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote(gpus=0.5)
class Counter:
    def __init__(self, start=0):
        self.n = start

    def add(self, k=1):
        self.n += k
        return self.n

    def where(self):
        return ember.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid()

    def fail(self):
        raise KeyError("nope")


def test_an_actor_keeps_its_state_and_takes_calls_in_order():
    c = Counter.remote(10)
    refs = [c.add.remote() for _ in range(20)]
    assert ember.get(refs, timeout=60) == list(range(11, 31))
    gpus, visible, _ = ember.get(c.where.remote())
    assert gpus == [0] and visible == "0"


def test_a_call_takes_another_calls_result():
    c = Counter.remote()
    first = c.add.remote(5)
    assert ember.get(c.add.remote(first)) == 10
    assert ember.get(c.add.remote(ember.put(1))) == 11


def test_an_unknown_method_is_an_attribute_error_at_once():
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no method 'nope'"):
        c.nope
    assert ember.get(c.add.remote()) == 1


def test_an_exception_in_a_method_is_raised_and_the_actor_serves_on():
    c = Counter.remote()
    with pytest.raises(KeyError, match="nope"):
        ember.get(c.fail.remote())
    assert ember.get(c.add.remote()) == 1


@ember.remote
class BadInit:
    def __init__(self):
        raise ValueError("cannot start")

    def ping(self):
        return "pong"


def test_an_exception_in_init_fails_the_actors_calls_clearly():
    b = BadInit.remote()
    with pytest.raises(ember.EmberError, match="ValueError in BadInit.__init__: cannot start"):
        ember.get(b.ping.remote(), timeout=60)


def test_a_killed_actor_refuses_calls():
    c = Counter.remote()
    assert ember.get(c.add.remote()) == 1
    ember.kill(c)
    with pytest.raises(ember.EmberError):
        ember.get(c.add.remote(), timeout=60)


@ember.remote(max_restarts=-1, max_task_retries=-1, checkpoint_every=1)
class Ledger:
    def __init__(self):
        self.entries = []

    def record(self, x):
        self.entries.append(x)
        return len(self.entries)

    def entries_and_pid(self):
        return list(self.entries), os.getpid()

    def save_checkpoint(self):
        return self.entries

    @classmethod
    def restore_checkpoint(cls, state):
        ledger = cls()
        ledger.entries = list(state)
        return ledger


def test_a_checkpointing_actor_comes_back_with_its_state_after_its_process_is_killed():
    ledger = Ledger.remote()
    for i in range(5):
        assert ember.get(ledger.record.remote(i), timeout=60) == i + 1
    entries, pid = ember.get(ledger.entries_and_pid.remote())
    os.kill(pid, signal.SIGKILL)
    # Every answered call is in its checkpoint: the next calls see all of them, once each.
    assert ember.get(ledger.record.remote(5), timeout=60) == 6
    entries, new_pid = ember.get(ledger.entries_and_pid.remote(), timeout=60)
    assert new_pid != pid
    assert entries == [0, 1, 2, 3, 4, 5]


def test_a_checkpointing_class_without_its_methods_is_refused_at_once():
    with pytest.raises(TypeError, match="save_checkpoint"):

        @ember.remote(checkpoint_every=1)
        class NoSave:
            pass


def test_actor_options_on_a_function_are_refused():
    with pytest.raises(TypeError, match="max_restarts"):
        ember.remote(max_restarts=1)(lambda: 1)


def test_an_actor_whose_handles_are_gone_stops_and_frees_its_gpu_share():
    # Six half-GPU actors one after another on two GPUs: each stops once its handle goes.
    for i in range(6):
        c = Counter.remote(i)
        assert ember.get(c.add.remote(), timeout=60) == i + 1
        del c


@ember.remote
def bump_through(counter, times):
    # A handle passed to a task: the task calls the same actor.
    return [ember.get(counter.add.remote()) for _ in range(times)][-1]


@ember.remote
class Relay:
    def __init__(self, counter):
        self.counter = counter

    def bump(self):
        return ember.get(self.counter.add.remote(100))


def test_an_actor_handle_passed_to_a_task_and_to_an_actor_calls_the_same_actor():
    c = Counter.remote()
    assert ember.get(c.add.remote()) == 1
    assert ember.get(bump_through.remote(c, 3), timeout=60) == 4
    relay = Relay.remote(c)
    assert ember.get(relay.bump.remote(), timeout=60) == 104
    # The task's and the relay's copies held it while they lived: it lives on for its
    # creator.
    del relay
    assert ember.get(c.add.remote(), timeout=60) == 105


def _actor_status(actor_id):
    """The actor's entry in the cluster's status, or None once the head no longer has it."""
    status = json.loads(ember._ember.status_json())
    return next((a for a in status["actors"] if a["id"] == actor_id), None)


def _wait_for_actor(actor_id, what, until, within=60):
    """Waits, bounded, until `until(entry)` holds for the actor's status entry (None: gone)."""
    deadline = time.monotonic() + within
    while not until(_actor_status(actor_id)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{actor_id} {what} within {within} s: {_actor_status(actor_id)}")
        time.sleep(0.05)


@ember.remote
class Keeper:
    """Keeps an actor handle it was passed, and calls through it."""

    def __init__(self):
        self.kept = None

    def keep(self, handle):
        self.kept = handle
        return True

    def bump(self):
        return ember.get(self.kept.add.remote(1), timeout=60)


def test_tasks_that_join_the_cluster_at_the_same_time_all_call_the_actor():
    # A fresh cluster, so that the tasks' executor joins it as they run: two lease threads
    # unpickle their handles at once and both join (it deadlocked once, each thread holding
    # what the other waited for: the GIL and the connection's lock).
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import ember
        ember.init()

        @ember.remote
        class Counter:
            def __init__(self): self.n = 0
            def add(self): self.n += 1; return self.n

        @ember.remote(cpus=1)
        def work(counter):
            return ember.get([counter.add.remote() for _ in range(50)], timeout=60)[-1]

        counter = Counter.remote()
        ends = ember.get([work.remote(counter) for _ in range(4)], timeout=60)
        print(max(ends), ember.get(counter.add.remote(), timeout=60))
        ember.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["200", "201"], out.stdout


def test_a_drain_moves_an_actor_that_can_checkpoint_with_its_state():
    # Its own cluster of two workers, one of which the test drains with `ember drain`. The
    # class sets no checkpoint policy: the drain seals it with a final checkpoint.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import json, os, subprocess, sys
        import ember

        ember.init(workers=2, gpus=1)

        @ember.remote(gpus=1, max_restarts=-1, max_task_retries=-1)
        class Ledger:
            def __init__(self): self.rows = []
            def add(self, x): self.rows.append(x); return len(self.rows), os.getpid()
            def save_checkpoint(self): return self.rows
            @classmethod
            def restore_checkpoint(cls, rows):
                ledger = cls(); ledger.rows = rows; return ledger

        @ember.remote
        def cluster_file():
            return os.environ["EMBER_CLUSTER"]

        def node_of(actor):
            actors = json.loads(ember._ember.status_json())["actors"]
            return [a["node"] for a in actors if a["id"] == actor][0]

        ledger = Ledger.remote()
        for i in range(10):
            _, pid = ember.get(ledger.add.remote(i), timeout=60)
        (actor,) = [a["id"] for a in json.loads(ember._ember.status_json())["actors"]]
        before = node_of(actor)
        drain = [sys.executable, "-m", "ember", "drain", before,
                 "--cluster", ember.get(cluster_file.remote(), timeout=60)]
        drained = subprocess.run(drain, capture_output=True, text=True, timeout=120)
        assert drained.returncode == 0, drained.stderr
        n, moved_pid = ember.get(ledger.add.remote(10), timeout=60)
        print(n, node_of(actor) != before, moved_pid != pid)
        ember.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["11", "True", "True"], (out.stdout, out.stderr[-2000:])


def test_a_checkpointing_actor_whose_worker_is_sigkilled_comes_back_with_every_answered_call():
    # Its own cluster of two workers: the test SIGKILLs the one running the actor (its
    # process's parent), and the actor comes back on the other from its newest checkpoint.
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import os, signal
        import ember

        ember.init(workers=2, gpus=1)

        @ember.remote(gpus=1, max_restarts=-1, max_task_retries=-1, checkpoint_every=1)
        class Ledger:
            def __init__(self): self.rows = []
            def add(self, x): self.rows.append(x); return len(self.rows)
            def rows_and_worker(self): return self.rows, os.getpid(), os.getppid()
            def save_checkpoint(self): return self.rows
            @classmethod
            def restore_checkpoint(cls, rows):
                ledger = cls(); ledger.rows = rows; return ledger

        ledger = Ledger.remote()
        answered = [ember.get(ledger.add.remote(i), timeout=60) for i in range(10)]
        _, pid, worker = ember.get(ledger.rows_and_worker.remote(), timeout=60)
        os.kill(worker, signal.SIGKILL)
        answered.append(ember.get(ledger.add.remote(10), timeout=60))
        rows, new_pid, new_worker = ember.get(ledger.rows_and_worker.remote(), timeout=60)
        print(answered == list(range(1, 12)), rows == list(range(11)), new_worker != worker)
        ember.shutdown()
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "True", "True"], (out.stdout, out.stderr[-2000:])


def test_an_actor_another_actor_keeps_outlives_its_creators_handle_then_stops_with_the_last():
    c = Counter.remote()
    assert ember.get(c.add.remote(), timeout=60) == 1
    actor_id = c.actor_id()
    keeper = Keeper.remote()
    assert ember.get(keeper.keep.remote(c), timeout=60)
    _wait_for_actor(actor_id, "was not held by the keeper", lambda a: a["actor"]["holders"] == 2)

    # The creator drops its handle: the keeper's hold keeps the actor.
    del c
    gc.collect()
    _wait_for_actor(actor_id, "kept its creator's hold", lambda a: a["actor"]["holders"] == 1)
    assert ember.get(keeper.bump.remote(), timeout=60) == 2
    assert ember.get(keeper.bump.remote(), timeout=60) == 3

    # The keeper goes too: nothing holds the actor, and it stops.
    ember.kill(keeper)
    del keeper
    gc.collect()
    _wait_for_actor(actor_id, "still runs with no handle left", lambda a: a is None)


@ember.remote
def call_later(counter, delay):
    # Unpickling `counter` held the actor before this runs.
    time.sleep(delay)
    return ember.get(counter.add.remote(7), timeout=60)


def test_a_handle_passed_to_a_call_keeps_its_actor_though_the_creator_drops_it_at_once():
    c = Counter.remote()
    actor_id = c.actor_id()
    ref = call_later.remote(c, 0.5)
    del c
    gc.collect()
    assert ember.get(ref, timeout=60) == 7
    # The task's handle went with the task, and the creator's with `del`: the actor stops.
    _wait_for_actor(actor_id, "still runs with no handle left", lambda a: a is None)


def test_a_killed_actor_stops_though_another_actor_holds_it():
    c = Counter.remote()
    actor_id = c.actor_id()
    keeper = Keeper.remote()
    assert ember.get(keeper.keep.remote(c), timeout=60)
    ember.kill(c)
    _wait_for_actor(actor_id, "was not stopped by the kill", lambda a: a is None)
    # Raised in the keeper, it comes back as the keeper's exception: ember.EmberError.
    with pytest.raises(ember.EmberError, match=f"no actor {actor_id} in the cluster"):
        ember.get(keeper.bump.remote(), timeout=60)


@ember.remote
def make_counter(start):
    # Remote code creates an actor (joining the cluster on first use) and returns its
    # handle; its own handle goes as it returns.
    c = Counter.remote(start)
    assert ember.get(c.add.remote(), timeout=60) == start + 1
    return {"counter": c, "id": c.actor_id()}


def test_a_handle_a_task_returns_keeps_its_actor_after_the_task_lets_go():
    ref = make_counter.remote(40)
    ember.wait([ref], timeout=60)
    # The result's arrival held the actor for this process (before anything unpickled it);
    # the task's process lets go of its own hold a little later. Only then is it unpickled.
    actor_id = ember.get(ref)["id"]
    _wait_for_actor(actor_id, "is not held by the result alone", lambda a: a and a["actor"]["holders"] == 1)
    c = ember.get(ref)["counter"]
    assert ember.get(c.add.remote(), timeout=60) == 42
    # Nothing holds it once the handle and the result are gone: it stops.
    del c, ref
    gc.collect()
    _wait_for_actor(actor_id, "still runs with no handle left", lambda a: a is None)


@ember.remote
class Factory:
    def make(self, start):
        return Counter.remote(start)


def test_a_handle_an_actor_method_returns_calls_the_actor_it_created():
    factory = Factory.remote()
    c = ember.get(factory.make.remote(5), timeout=60)
    assert ember.get(c.add.remote(), timeout=60) == 6


def test_a_handle_in_a_put_value_keeps_its_actor_while_the_value_lives():
    c = Counter.remote(1)
    actor_id = c.actor_id()
    value = ember.put({"counter": c})
    del c
    gc.collect()
    assert ember.get(ember.get(value)["counter"].add.remote(), timeout=60) == 2
    assert ember.get(bump_through.remote(ember.get(value)["counter"], 1), timeout=60) == 3
    gc.collect()
    _wait_for_actor(actor_id, "lost the put value's hold", lambda a: a and a["actor"]["holders"] == 1)
    del value
    gc.collect()
    _wait_for_actor(actor_id, "still runs with no handle left", lambda a: a is None)
