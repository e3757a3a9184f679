"""The Python side of a worker's executor process: runs the calls of the `ember::python`
task type and of Python actors. Each function arrives pickled with its id and is unpickled
once per process."""

import inspect
import pickle
import struct
import threading
import time

from . import _ember, _serialize
from ._actor_loop import ActorLoop, is_async_class
from ._serialize import Dep

# This machine: a caller here gets large result buffers through shared memory.
_HOST = _ember.host_id()


def _shared_with(caller):
    """The pid of a caller (host id, pid) on this machine, which maps large result buffers
    from shared memory; None for a caller elsewhere."""
    host, pid = caller
    return pid if host == _HOST else None

_functions = {}


class Handover:
    """The actor handles pickled into results this process returned, kept `WINDOW` seconds.

    A task that creates an actor and returns its handle drops its own handle as it returns,
    and the actor would stop with it before the caller's copy (unpickled later, maybe much
    later) held it. So the result's frame names the actor, its caller holds it as soon as
    the result arrives (`Pending::complete_from`, before anyone can see the result), and this
    keeps the handles (their holds) over that hand-over: milliseconds, kept 10 s. (Across a
    head restart the caller's hold claims the actor in the head's next life, within its
    re-join window.)"""

    WINDOW = 10.0

    def __init__(self):
        import collections

        self._kept = collections.deque()  # (deadline, handles), deadlines in order
        self._lock = threading.Lock()
        self._reaper = None

    def keep(self, handles):
        """Keeps `handles` for `WINDOW` seconds."""
        with self._lock:
            self._kept.append((time.monotonic() + self.WINDOW, handles))
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="ember-handover", daemon=True)
                self._reaper.start()

    def _reap(self):
        while True:
            with self._lock:
                now = time.monotonic()
                while self._kept and self._kept[0][0] <= now:
                    self._kept.popleft()
                if not self._kept:
                    self._reaper = None
                    return
                wait = self._kept[0][0] - now
            time.sleep(wait)


_handover = Handover()


def _result(value, caller, what):
    """The envelope of `value`, returned to `caller` by `what` (for an error saying it cannot
    be pickled); the actor handles pickled in it are kept over the hand-over."""
    try:
        envelope, handles = _serialize.ok(value, _shared_with(caller))
    except Exception as e:  # noqa: BLE001
        return _serialize.error(
            _serialize.SerializationError(
                f"the result of {what} cannot be pickled: {type(e).__name__}: {e}"
            )
        )
    if handles:
        _handover.keep(handles)
    return envelope


def _split(data):
    """The results of the call's arguments' calls, and the payload after them, as views
    into `data` (no copies): a count (u32), each result as a length (u64) and its bytes, the
    payload (`client/python/src/call_args.rs` `PythonArgs` writes it)."""
    (count,) = struct.unpack_from("<I", data, 0)
    if count == 0:
        return (), memoryview(data)[4:]
    view = memoryview(data)
    at = 4
    deps = []
    for _ in range(count):
        (n,) = struct.unpack_from("<Q", data, at)
        at += 8
        deps.append(view[at : at + n])
        at += n
    return deps, view[at:]


def _function(fn_id, fn_bytes):
    fn = _functions.get(fn_id)
    if fn is None:
        fn = pickle.loads(fn_bytes)
        _functions[fn_id] = fn
    return fn


def run_task(data):
    """Runs one call; returns its result's envelope (what it returned, or what it raised)."""
    try:
        (fn_id, fn_bytes, caller), args, kwargs = _args(data)
        fn = _function(fn_id, fn_bytes)
        value = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        return _serialize.error(e)
    return _result(value, caller, getattr(fn, "__qualname__", "the task"))


def _args(data):
    """The call's arguments, with its arguments' calls' results in place."""
    deps, payload = _split(data)
    head, args, kwargs = _serialize.loads(payload)
    if not deps:
        return head, args, kwargs
    values = [_serialize.unwrap(d) for d in deps]
    args = [values[a.index] if isinstance(a, Dep) else a for a in args]
    kwargs = {k: values[v.index] if isinstance(v, Dep) else v for k, v in kwargs.items()}
    return head, args, kwargs


class ActorBox:
    """A Python actor in its executor: the instance and its class's pickle (which travels in
    its checkpoints, so that a restore needs nothing else).

    An async actor (a class with a public `async def` method) has an `ActorLoop`: the Rust
    side starts each of its calls with `start`, and the call runs on that loop, concurrently
    with the others, its sync methods included (they block the loop while they run, as in
    Ray). Any other actor's calls run one at a time through `call`, on the actor's thread."""

    def __init__(self, cls_bytes, instance, loop=None):
        self.cls_bytes = cls_bytes
        self.instance = instance
        self.loop = loop

    @property
    def is_async(self):
        """Whether its calls run on its event loop (through `start`)."""
        return self.loop is not None

    def _method(self, method):
        """The bound method called `method`; public methods only."""
        if method.startswith("_") or not callable(getattr(type(self.instance), method, None)):
            raise AttributeError(f"{type(self.instance).__qualname__} has no method {method!r}")
        return getattr(self.instance, method)

    def call(self, method, data):
        """Runs one method call; returns its result's envelope."""
        try:
            fn = self._method(method)
            caller, args, kwargs = _args(data)
            value = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
            return _serialize.error(e)
        return self._envelope(method, caller, value)

    def start(self, method, data, done):
        """Starts one method call on the actor's event loop and returns at once; `done` is
        called with its result's envelope when it ends."""
        self.loop.start(self._run(method, data), done, _serialize.error)

    async def _run(self, method, data):
        """One call on the event loop: what its method returned is awaited when it can be (an
        `async def` method's coroutine, or a decorated one's)."""
        try:
            fn = self._method(method)
            caller, args, kwargs = _args(data)
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                value = await value
        except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
            return _serialize.error(e)
        return self._envelope(method, caller, value)

    def _envelope(self, method, caller, value):
        """The envelope of what `method` returned to `caller`."""
        return _result(value, caller, f"{type(self.instance).__qualname__}.{method}")

    def save(self):
        """The checkpoint image (the class and what its `save_checkpoint` returned), or None
        when the class cannot checkpoint."""
        save = getattr(self.instance, "save_checkpoint", None)
        if save is None:
            return None
        what = f"the checkpoint of {type(self.instance).__qualname__}"
        # An async actor's state is read on its loop, between the awaits of its calls.
        state = self._on_loop(lambda: _serialize.dumps(save(), what))
        return pickle.dumps((self.cls_bytes, state), protocol=_serialize.PROTOCOL)

    def _on_loop(self, fn):
        """`fn()`, on the actor's event loop if it has one."""
        return self.loop.run(fn) if self.loop is not None else fn()


def _failed(cls, when, e):
    import traceback

    tb = "".join(traceback.format_exception(e))
    return RuntimeError(
        f"{type(e).__name__} in {getattr(cls, '__qualname__', 'the actor')}.{when}: {e}\n\n"
        f"Remote traceback:\n{tb}"
    )


def _build(cls, cls_bytes, when, make):
    """The box of the instance `make()` builds; an async actor's is built on its new event
    loop (where its calls will run, so that it may create tasks and loop-bound objects)."""
    loop = ActorLoop(f"ember-actor-{cls.__qualname__}") if is_async_class(cls) else None
    try:
        instance = loop.run(make) if loop is not None else make()
    except BaseException as e:  # noqa: BLE001
        if loop is not None:
            loop.close()
        raise _failed(cls, when, e) from None
    return ActorBox(cls_bytes, instance, loop)


def new_actor(data):
    """Builds an actor from its class's pickle and its constructor's arguments."""
    (cls_bytes,), args, kwargs = _args(data)
    cls = pickle.loads(cls_bytes)
    return _build(cls, cls_bytes, "__init__", lambda: cls(*args, **kwargs))


def restore_actor(image):
    """Rebuilds an actor from a checkpoint image: `restore_checkpoint(state)` of its class."""
    cls_bytes, state = pickle.loads(image)
    cls = pickle.loads(cls_bytes)
    return _build(
        cls, cls_bytes, "restore_checkpoint", lambda: cls.restore_checkpoint(pickle.loads(state))
    )
