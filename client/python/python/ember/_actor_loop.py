"""The event loop of an async actor: a class with any public `async def` method. Its calls
run on an asyncio event loop on a thread of its own, so that a call awaiting something lets
the next ones run (as Ray's async actors do). Its sync methods, its constructor and its
checkpoints run on that loop too, between the awaits of the calls in flight: user code of the
actor never runs on two threads at once."""

import asyncio
import concurrent.futures
import inspect
import threading


def is_async_class(cls):
    """Whether `cls` makes an async actor: any of its public methods is `async def`."""
    for name in dir(cls):
        if name.startswith("_"):
            continue
        try:
            member = getattr(cls, name)
        except Exception:  # noqa: BLE001 - a descriptor that fails on the class is no method
            continue
        if inspect.iscoroutinefunction(member):
            return True
    return False


class ActorLoop:
    """An asyncio event loop running on a daemon thread of its own."""

    def __init__(self, name):
        self._loop = asyncio.new_event_loop()
        # Calls started and not yet taken by the loop, and the lock over them.
        self._incoming = []
        self._lock = threading.Lock()
        # Where the loop can run a call's coroutine at once until it first waits (Python
        # 3.12), a call that never waits costs no scheduling at all.
        eager = getattr(asyncio, "eager_task_factory", None)
        if eager is not None:
            self._loop.set_task_factory(eager)
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self):
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def run(self, fn):
        """Runs `fn()` on the loop's thread and returns what it returned (or raises what it
        raised), waiting with the GIL released."""
        future = concurrent.futures.Future()

        def go():
            try:
                future.set_result(fn())
            except BaseException as e:  # noqa: BLE001 - raised again in the caller
                future.set_exception(e)

        self._loop.call_soon_threadsafe(go)
        return future.result()

    def start(self, coro, done, on_error):
        """Runs the coroutine `coro` on the loop; when it ends, on the loop's thread, calls
        `done` with what it returned, or with `on_error(exception)` if it raised or was
        cancelled. Calls started while the loop has not yet taken the earlier ones wake it
        once for all of them."""
        with self._lock:
            self._incoming.append((coro, done, on_error))
            wake = len(self._incoming) == 1
        if wake:
            self._loop.call_soon_threadsafe(self._take_incoming)

    def _take_incoming(self):
        """On the loop: a task for every call started since the last time."""
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for coro, done, on_error in incoming:
            self._loop.create_task(_run_then(coro, done, on_error))

    def close(self):
        """Stops the loop (the calls still in it never end) and lets its thread end."""
        self._loop.call_soon_threadsafe(self._loop.stop)


async def _run_then(coro, done, on_error):
    """Awaits `coro`, then calls `done` with what it returned or `on_error(exception)`."""
    try:
        result = await coro
    except BaseException as e:  # noqa: BLE001 - the caller hears of every failure
        result = on_error(e)
    done(result)
