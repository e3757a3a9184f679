"""How values travel: pickle protocol 5, through plain pickle for plain values (numbers,
strings, bytes and containers of them, which it carries exactly as cloudpickle does, several
times faster) and cloudpickle for the rest (functions and classes by value); results and
errors in one envelope the caller unpacks.

A value with large buffers (numpy arrays' data) is framed: its pickle with those buffers out
of band, each inline or, for a process on the same machine (a result's caller, a call's
executor), in a file in shared memory that it maps instead of copying. `ember._ember.frame`
writes the frame (the layout is in `client/python/src/envelope/frame.rs`), and `ember._ember`
chooses, for each attempt of a call, which form its arguments take; `unwrap` reads it back."""

import mmap
import os
import pickle
import secrets
import struct
import sys
import threading

import cloudpickle

from . import _ember

PROTOCOL = 5

# A frame's first bytes.
MAGIC = b"EMB3"
SHM_DIR = "/dev/shm"
# Buffers at least this large travel out of band; smaller ones in the pickle.
OUT_OF_BAND_MIN = 1 << 16
# Buffers at least this large go through shared memory when the caller is on this machine.
SHM_MIN = 1 << 20
# Where a frame's inline buffers start: a multiple of this from its start.
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


# Set by `ember.init()` when it starts an embedded cluster: every worker runs on this
# machine, so a call's large argument buffers are written straight to shared memory (an
# executor elsewhere, should one take the call, gets them inline all the same).
args_shared = False


def dumps_call(head, args, kwargs, what):
    """Pickles a call's `(head, args, kwargs)`: with plain pickle when `head` and every
    argument are plain, else with cloudpickle, its buffers of at least `SHM_MIN` bytes (numpy
    arrays' data) out of band in a frame, in shared memory when `args_shared`, else inline
    (copied once). Each attempt of the call sends them as its executor reads them: through
    shared memory when it runs on this machine, inline otherwise (`ember._ember` decides, and
    owns the files). Returns the pickle (or frame) and the actor handles pickled in it, which
    the call keeps alive until it ends (None when none; see `dumps_keeping`)."""
    call = (head, args, kwargs)
    if _plain(call):
        return pickle.dumps(call, protocol=PROTOCOL), None
    payload, handles = _keeping_handles(lambda: _dumps_framed(call, what, args_shared))
    return payload, handles or None


# The actor handles pickled by the pickling under way on this thread (`dumps_keeping`).
_pickling = threading.local()


def dumps_keeping(value, what):
    """Pickles `value` as `dumps` does, and returns the pickle with the actor handles
    pickled in it (None when none). The call that carries the pickle keeps them alive until
    it ends: by then the callee, having unpickled them, holds their actors itself, so their
    creator dropping its own handles meanwhile does not stop them. (A constructor's
    arguments travel so, in the pickle: the head keeps them to build the actor again after
    a loss.)"""
    payload, handles = _keeping_handles(lambda: dumps(value, what))
    return payload, handles or None


def _keeping_handles(pickle_it):
    """`pickle_it()` and the actor handles it pickled (a list)."""
    outer = getattr(_pickling, "handles", None)
    _pickling.handles = handles = []
    try:
        return pickle_it(), handles
    finally:
        _pickling.handles = outer


def _dumps_framed(value, what, shared):
    """`value` pickled with its contiguous buffers of at least `SHM_MIN` bytes out of band,
    framed: in shared-memory files named for this process when `shared`, else inline; a
    plain pickle when it has none."""
    try:
        main, buffers = _pickle_out_of_band(value, SHM_MIN)
    except Exception as e:  # cloudpickle raises many kinds
        raise SerializationError(f"{what} cannot be pickled: {type(e).__name__}: {e}") from e
    if not buffers:
        return main
    if shared:
        buffers = [_to_shared(b, os.getpid()) for b in buffers]
    return _ember.frame(main, buffers)


def loads(data):
    """What `dumps_call` (or `dumps`) made of a value: a plain pickle, or a frame whose
    buffers are mapped from shared memory (copy-on-write: writable, nothing copied)."""
    if data[: len(MAGIC)] == MAGIC:
        main, buffers = _unframe(data)
        return pickle.loads(main, buffers=buffers)
    return pickle.loads(data)


def keep_while_pickling(actor):
    """An actor handle's `actor` is being pickled: the call being pickled on this thread, if
    any, keeps it alive until the call ends."""
    handles = getattr(_pickling, "handles", None)
    if handles is not None:
        handles.append(actor)


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


def ok(value, shared_with=None):
    """The envelope of a result or a put value, and the actor handles pickled in it (None
    when none), which must outlive the hand-over (see `ember._executor.Handover`).

    The envelope is a pickle's bytes, or a frame (`ember._ember.Frame`) when the value has
    large contiguous buffers (numpy arrays' data), which then travel out of band, copied
    once, or actor handles, whose actors the frame names: whoever receives it holds them
    until done with it. With `shared_with`, the pid of a caller on this machine (which maps
    them rather than copying), buffers of at least `SHM_MIN` bytes go into files in shared
    memory named for it."""
    if _plain(value):
        return pickle.dumps(("ok", value), protocol=PROTOCOL), None
    (main, buffers), handles = _keeping_handles(
        lambda: _pickle_out_of_band(("ok", value), OUT_OF_BAND_MIN)
    )
    if not buffers and not handles:
        return main, None
    if shared_with is not None:
        buffers = [_to_shared(b, shared_with) if b.nbytes >= SHM_MIN else b for b in buffers]
    actors = sorted({h.id(None) for h in handles})
    return _ember.frame(main, buffers, actors), handles or None


def _pickle_out_of_band(value, min_bytes):
    """`value` pickled with cloudpickle, its contiguous buffers of at least `min_bytes` left
    out of band: the pickle and those buffers (raw memoryviews, in the pickle's order)."""
    buffers = []

    def out_of_band(buffer):
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: it travels in the pickle
            return True
        if raw.nbytes < min_bytes:
            return True
        buffers.append(raw)
        return False

    return cloudpickle.dumps(value, protocol=PROTOCOL, buffer_callback=out_of_band), buffers


def _to_shared(view, owner):
    """Writes `view` to a new file in shared memory, named for the process `owner` that
    receives it (and removes it; the next `ember.init()` sweeps it if `owner` dies first):
    `(its length, its name)`, or `view` itself when that cannot be (it travels inline)."""
    name = f"ember-buf-{owner}-{secrets.token_hex(8)}"
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return view
    try:
        os.ftruncate(fd, view.nbytes)
        with mmap.mmap(fd, view.nbytes) as m:
            m[:] = view
        return (view.nbytes, name)
    except (OSError, ValueError):
        os.unlink(path)
        return view
    finally:
        os.close(fd)


def _unframe(data):
    """The pickle of a frame and its buffers: memoryviews of `data` (inline ones), or
    copy-on-write mappings of shared files."""
    view = memoryview(data)
    count, pickle_len = struct.unpack_from("<IQ", view, 4)
    at = 16
    entries = []
    for _ in range(count):
        kind, n = struct.unpack_from("<BQ", view, at)
        at += 9
        if kind == 0:
            entries.append((n, None))
            continue
        (length,) = struct.unpack_from("<H", view, at)
        at += 2
        name = bytes(view[at : at + length]).decode()
        at += length
        if kind == 2:  # an actor its handles hold, for the receiver to hold: no buffer
            continue
        if not name or "/" in name or name.startswith("."):
            raise SerializationError(f"a result names a shared buffer {name!r} outside {SHM_DIR}")
        entries.append((n, name))
    main = view[at : at + pickle_len]
    at += pickle_len
    buffers = []
    for n, name in entries:
        if name is None:
            at = -(-at // _ALIGN) * _ALIGN
            buffers.append(view[at : at + n])
            at += n
            continue
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
        except OSError as e:
            raise SerializationError(f"a result's shared buffer {name} is gone: {e}") from e
        try:
            # Copy-on-write: the array is writable, and nothing is copied until written.
            buffers.append(memoryview(mmap.mmap(fd, n, access=mmap.ACCESS_COPY)))
        finally:
            os.close(fd)
    return main, buffers


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
    """The value in an envelope (bytes-like), or the remote exception raised."""
    record = loads(envelope)
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
