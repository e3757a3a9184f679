"""The Python side of a worker's executor process: runs the calls of the `ember::python`
task type. Each function arrives pickled with its id and is unpickled once per process."""

import pickle
import struct

from . import _serialize

_functions = {}


class _Dep:
    """Stands in an argument list for the result of another call (an ObjectRef)."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (_Dep, (self.index,))


def _split(data):
    """The results of the call's arguments' calls, and the payload after them."""
    (count,) = struct.unpack_from("<I", data, 0)
    at = 4
    deps = []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, at)
        at += 4
        deps.append(data[at : at + n])
        at += n
    return deps, data[at:]


def _function(fn_id, fn_bytes):
    fn = _functions.get(fn_id)
    if fn is None:
        fn = pickle.loads(fn_bytes)
        _functions[fn_id] = fn
    return fn


def run_task(data):
    """Runs one call; returns its result's envelope (what it returned, or what it raised)."""
    try:
        deps, payload = _split(data)
        fn_id, fn_bytes, args, kwargs = pickle.loads(payload)
        values = [_serialize.unwrap(d) for d in deps]
        args = [values[a.index] if isinstance(a, _Dep) else a for a in args]
        kwargs = {k: values[v.index] if isinstance(v, _Dep) else v for k, v in kwargs.items()}
        fn = _function(fn_id, fn_bytes)
        value = fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - everything goes back to the caller
        return _serialize.error(e)
    try:
        return _serialize.ok(value)
    except Exception as e:  # noqa: BLE001
        return _serialize.error(
            _serialize.SerializationError(
                f"the result of {getattr(fn, '__qualname__', 'the task')} cannot be pickled: "
                f"{type(e).__name__}: {e}"
            )
        )
