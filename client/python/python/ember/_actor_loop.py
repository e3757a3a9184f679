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
        cancelled."""
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)

        def finished(f):
            try:
                result = f.result()
            except BaseException as e:  # noqa: BLE001 - the caller hears of every failure
                result = on_error(e)
            done(result)

        future.add_done_callback(finished)

    def close(self):
        """Stops the loop (the calls still in it never end) and lets its thread end."""
        self._loop.call_soon_threadsafe(self._loop.stop)
