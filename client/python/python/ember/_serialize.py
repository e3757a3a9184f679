"""How values travel: pickle protocol 5, through plain pickle for plain values (numbers,
strings, bytes and containers of them, which it carries exactly as cloudpickle does, several
times faster) and cloudpickle for the rest (functions and classes by value); results and
errors in one envelope the caller unpacks. A `put` value's large buffers (numpy arrays'
data) travel out of band, beside the pickle (`ember._ember.completed_out_of_band` lays the
envelope out; `unwrap` reads it)."""

import pickle
import struct
import sys

import cloudpickle

PROTOCOL = 5

# Buffers at least this large travel out of band in a put value; smaller ones in its pickle.
OUT_OF_BAND_MIN = 1 << 16

# The first bytes of an envelope with out-of-band buffers (see `client/python/src/put.rs`).
_OUT_OF_BAND = b"EMBOOB01"
_ALIGN = 64

_PLAIN_SCALARS = frozenset({int, float, complex, str, bytes, bool, type(None)})
_CONTAINERS = (list, tuple, dict)
# At most this many values are looked at to call a value plain; past that, cloudpickle.
_PLAIN_BUDGET = 256


class RemoteError(Exception):
    """An exception raised by remote code. Raised itself when the original exception cannot be
    rebuilt in the caller (`type_name` names it); otherwise it is the `__cause__` of the
    original one. `remote_traceback` is the traceback as the remote process printed it."""

    def __init__(self, type_name, message, remote_traceback):
        super().__init__(f"{type_name}: {message}\n\nRemote traceback:\n{remote_traceback}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback


class SerializationError(TypeError):
    """A value that cannot be pickled (an argument, a result, a class)."""


class Dep:
    """Stands in an argument list for the result of another call (an ObjectRef): the index
    of that call among the call's dependencies."""

    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __reduce__(self):
        return (Dep, (self.index,))


def _plain(value):
    """Whether plain pickle carries `value` exactly as cloudpickle would: a built-in scalar,
    a Dep, or lists, tuples and dicts of them, at most `_PLAIN_BUDGET` values in all. (A
    function or class is never plain: pickle would send it by reference, which a worker may
    not be able to import.)"""
    t = type(value)
    if t in _PLAIN_SCALARS or t is Dep:
        return True
    if t not in _CONTAINERS:
        return False
    todo = [value]
    budget = _PLAIN_BUDGET
    while todo:
        value = todo.pop()
        t = type(value)
        if t in _PLAIN_SCALARS or t is Dep:
            continue
        if t not in _CONTAINERS:
            return False
        budget -= len(value)
        if budget < 0:
            return False
        todo.extend(value.items() if t is dict else value)
    return True


def dumps(value, what):
    """Pickles `value`, raising SerializationError naming `what` when it cannot be."""
    try:
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    except Exception as e:  # cloudpickle raises many kinds
        raise SerializationError(f"{what} cannot be pickled: {type(e).__name__}: {e}") from e


def dumps_call(head, args, kwargs, what):
    """Pickles a call's `(head, args, kwargs)`: with plain pickle when `head` and every
    argument are plain, else as `dumps` does."""
    call = (head, args, kwargs)
    if _plain(call):
        return pickle.dumps(call, protocol=PROTOCOL)
    return dumps(call, what)


def by_value(obj):
    """Makes functions and classes of `obj`'s module travel by value when that module is not
    installed (a script, a test file, a notebook): workers need not be able to import it."""
    name = getattr(obj, "__module__", None)
    module = sys.modules.get(name) if name else None
    if module is None or name == "__main__" or name.startswith("ember"):
        return
    path = getattr(module, "__file__", None) or ""
    if "site-packages" in path or "dist-packages" in path or path.startswith(sys.base_prefix):
        return
    try:
        cloudpickle.register_pickle_by_value(module)
    except Exception:
        pass


def ok(value):
    """The envelope of a result."""
    return pickle.dumps(("ok", value), protocol=PROTOCOL) if _plain(value) else \
        cloudpickle.dumps(("ok", value), protocol=PROTOCOL)


def ok_out_of_band(value):
    """The envelope of a put value as its pickle and the large contiguous buffers it leaves
    out of band (numpy arrays' data, bytearrays), for `completed_out_of_band` to lay out
    with one copy each. No buffers (an empty list, or None for a plain value) for a value
    that has none that large."""
    if _plain(value):
        return pickle.dumps(("ok", value), protocol=PROTOCOL), None
    buffers = []

    def out_of_band(buffer):
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: it travels in the pickle
            return True
        if raw.nbytes < OUT_OF_BAND_MIN:
            return True
        buffers.append(raw)
        return False

    return cloudpickle.dumps(("ok", value), protocol=PROTOCOL, buffer_callback=out_of_band), buffers


def _load_out_of_band(envelope):
    """The record in an envelope laid out with its buffers (`completed_out_of_band`). The
    buffers are read in place, so arrays over them share the envelope's memory: they are
    writable when it is a bytearray (made one here otherwise, a copy)."""
    if type(envelope) is not bytearray:
        envelope = bytearray(envelope)
    view = memoryview(envelope)
    header_len, count = struct.unpack_from("<QQ", envelope, 8)
    lengths = struct.unpack_from(f"<{count}Q", envelope, 24)
    at = 24 + 8 * count
    header = view[at : at + header_len]
    at += header_len
    buffers = []
    for n in lengths:
        at = -(-at // _ALIGN) * _ALIGN
        buffers.append(view[at : at + n])
        at += n
    return pickle.loads(header, buffers=buffers)


def error(exc):
    """The envelope of an exception raised remotely, with its traceback."""
    import traceback  # only on errors: it costs every process's start otherwise

    tb = "".join(traceback.format_exception(exc))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        exc_bytes = cloudpickle.dumps(exc, protocol=PROTOCOL)
        pickle.loads(exc_bytes)
    except Exception:
        exc_bytes = None
    return pickle.dumps(("err", exc_bytes, name, str(exc), tb), protocol=PROTOCOL)


def unwrap(envelope):
    """The value in a result's envelope (bytes-like), or the remote exception raised."""
    if envelope[: len(_OUT_OF_BAND)] == _OUT_OF_BAND:
        record = _load_out_of_band(envelope)
    else:
        record = pickle.loads(envelope)
    if record[0] == "ok":
        return record[1]
    _, exc_bytes, name, message, tb = record
    remote = RemoteError(name, message, tb)
    if exc_bytes is not None:
        try:
            exc = pickle.loads(exc_bytes)
        except Exception:
            exc = None
        if isinstance(exc, BaseException):
            raise exc from remote
    raise remote
