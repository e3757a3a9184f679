"""The Python side of a worker's executor process: runs the calls of the `ember::python`
task type. Each function arrives pickled with its id and is unpickled once per process."""

import pickle
import struct

from . import _ember, _serialize
from ._serialize import Dep

# This machine: a caller here gets large result buffers through shared memory.
_HOST = _ember.host_id()


def _shared_with(caller):
    """The pid of a caller (host id, pid) on this machine, which maps large result buffers
    from shared memory; None for a caller elsewhere."""
    host, pid = caller
    return pid if host == _HOST else None

_functions = {}


def _split(data):
    """The results of the call's arguments' calls, and the payload after them, as views
    into `data` (no copies): a count (u32), each result as a length (u64) and its bytes, the
    payload (`client/python/src/cluster.rs` `with_deps` writes it)."""
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
    try:
        return _serialize.ok(value, _shared_with(caller))
    except Exception as e:  # noqa: BLE001
        return _serialize.error(
            _serialize.SerializationError(
                f"the result of {getattr(fn, '__qualname__', 'the task')} cannot be pickled: "
                f"{type(e).__name__}: {e}"
            )
        )


def _args(data):
    """The call's arguments, with its arguments' calls' results in place."""
    deps, payload = _split(data)
    head, args, kwargs = pickle.loads(payload)
    if not deps:
        return head, args, kwargs
    values = [_serialize.unwrap(d) for d in deps]
    args = [values[a.index] if isinstance(a, Dep) else a for a in args]
    kwargs = {k: values[v.index] if isinstance(v, Dep) else v for k, v in kwargs.items()}
    return head, args, kwargs


class ActorBox:
    """A Python actor in its executor: the instance and its class's pickle (which travels in
    its checkpoints, so that a restore needs nothing else)."""

    def __init__(self, cls_bytes, instance):
        self.cls_bytes = cls_bytes
        self.instance = instance

    def call(self, method, data):
        """Runs one method call; returns its result's envelope."""
        try:
            if method.startswith("_") or not callable(getattr(type(self.instance), method, None)):
                raise AttributeError(
                    f"{type(self.instance).__qualname__} has no method {method!r}"
                )
            caller, args, kwargs = _args(data)
            value = getattr(self.instance, method)(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
            return _serialize.error(e)
        try:
            return _serialize.ok(value, _shared_with(caller))
        except Exception as e:  # noqa: BLE001
            return _serialize.error(
                _serialize.SerializationError(
                    f"the result of {type(self.instance).__qualname__}.{method} cannot be "
                    f"pickled: {type(e).__name__}: {e}"
                )
            )

    def save(self):
        """The checkpoint image (the class and what its `save_checkpoint` returned), or None
        when the class cannot checkpoint."""
        save = getattr(self.instance, "save_checkpoint", None)
        if save is None:
            return None
        state = _serialize.dumps(save(), f"the checkpoint of {type(self.instance).__qualname__}")
        return pickle.dumps((self.cls_bytes, state), protocol=_serialize.PROTOCOL)


def _failed(cls, when, e):
    import traceback

    tb = "".join(traceback.format_exception(e))
    return RuntimeError(
        f"{type(e).__name__} in {getattr(cls, '__qualname__', 'the actor')}.{when}: {e}\n\n"
        f"Remote traceback:\n{tb}"
    )


def new_actor(data):
    """Builds an actor from its class's pickle and its constructor's arguments."""
    (cls_bytes,), args, kwargs = _args(data)
    cls = pickle.loads(cls_bytes)
    try:
        instance = cls(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001
        raise _failed(cls, "__init__", e) from None
    return ActorBox(cls_bytes, instance)


def restore_actor(image):
    """Rebuilds an actor from a checkpoint image: `restore_checkpoint(state)` of its class."""
    cls_bytes, state = pickle.loads(image)
    cls = pickle.loads(cls_bytes)
    try:
        instance = cls.restore_checkpoint(pickle.loads(state))
    except BaseException as e:  # noqa: BLE001
        raise _failed(cls, "restore_checkpoint", e) from None
    return ActorBox(cls_bytes, instance)
