"""Async actors: a class with `async def` methods runs its calls concurrently on the actor's
event loop; its sync methods run on that loop too; errors reach the caller with their type;
an async actor that checkpoints runs its calls one at a time and comes back with its state."""

import asyncio
import os
import signal
import threading

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote
class Gate:
    def __init__(self):
        self.opened = asyncio.Event()
        self.inside = 0
        self.most = 0

    async def wait(self):
        await self.opened.wait()
        return "passed"

    async def open(self):
        self.opened.set()
        return "opened"

    async def nap(self, seconds):
        self.inside += 1
        self.most = max(self.most, self.inside)
        try:
            await asyncio.sleep(seconds)
        finally:
            self.inside -= 1
        return seconds

    def most_at_once(self):
        return self.most

    async def explode(self):
        await asyncio.sleep(0)
        raise ValueError("async boom")

    async def loop_thread(self):
        return threading.current_thread().name

    def sync_thread(self):
        return threading.current_thread().name

    async def echo(self, x):
        return x


def test_a_call_awaiting_an_event_that_a_later_call_sets_ends():
    gate = Gate.remote()
    # Run one at a time, the first call would wait forever for the second.
    waiting = [gate.wait.remote() for _ in range(3)]
    opening = gate.open.remote()
    assert ember.get(waiting + [opening], timeout=60) == ["passed"] * 3 + ["opened"]


def test_many_async_calls_overlap():
    gate = Gate.remote()
    refs = [gate.nap.remote(0.2) for _ in range(100)]
    assert ember.get(refs, timeout=60) == [0.2] * 100
    assert ember.get(gate.most_at_once.remote(), timeout=60) > 1, "the naps overlapped"


def test_an_exception_in_an_async_method_is_raised_with_its_type_and_the_actor_serves_on():
    gate = Gate.remote()
    with pytest.raises(ValueError, match="async boom"):
        ember.get(gate.explode.remote(), timeout=60)
    assert ember.get(gate.echo.remote(ember.put(5)), timeout=60) == 5


def test_sync_methods_of_an_async_actor_run_on_its_event_loop():
    gate = Gate.remote()
    on_loop, sync = ember.get([gate.loop_thread.remote(), gate.sync_thread.remote()], timeout=60)
    assert on_loop == sync


@ember.remote(max_restarts=-1, max_task_retries=-1, checkpoint_every=1)
class AsyncLedger:
    def __init__(self):
        self.entries = []

    async def record(self, x):
        await asyncio.sleep(0)
        self.entries.append(x)
        return len(self.entries)

    async def entries_and_pid(self):
        return list(self.entries), os.getpid()

    def save_checkpoint(self):
        return self.entries

    @classmethod
    def restore_checkpoint(cls, state):
        ledger = cls()
        ledger.entries = list(state)
        return ledger


def test_an_async_actor_that_checkpoints_runs_calls_in_order_and_comes_back_with_its_state():
    ledger = AsyncLedger.remote()
    # Checkpointing: one call at a time, in order, each answered once recorded.
    refs = [ledger.record.remote(i) for i in range(5)]
    assert ember.get(refs, timeout=60) == [1, 2, 3, 4, 5]
    entries, pid = ember.get(ledger.entries_and_pid.remote(), timeout=60)
    assert entries == [0, 1, 2, 3, 4]
    os.kill(pid, signal.SIGKILL)
    assert ember.get(ledger.record.remote(5), timeout=60) == 6
    entries, new_pid = ember.get(ledger.entries_and_pid.remote(), timeout=60)
    assert new_pid != pid
    assert entries == [0, 1, 2, 3, 4, 5]
