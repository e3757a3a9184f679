"""How values travel: pickle protocol 5 through cloudpickle (functions and classes by value),
results and errors in one envelope the caller unpacks."""

import mmap
import os
import pickle
import secrets
import struct
import sys
import traceback

import cloudpickle

PROTOCOL = 5

# Results with out-of-band buffers (numpy arrays and the like) are framed: MAGIC, the buffer
# count, each buffer (inline, or the name of a file in SHM_DIR), then the pickle. The Rust
# side reads the same framing (client/python/src/envelope.rs).
MAGIC = b"EMB2"
SHM_DIR = "/dev/shm"
# Buffers at least this large go through shared memory when the caller is on this machine.
SHM_MIN = 1 << 20


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


def dumps(value, what):
    """Pickles `value`, raising SerializationError naming `what` when it cannot be."""
    try:
        return cloudpickle.dumps(value, protocol=PROTOCOL)
    except Exception as e:  # cloudpickle raises many kinds
        raise SerializationError(f"{what} cannot be pickled: {type(e).__name__}: {e}") from e


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


def ok(value, shared=False):
    """The envelope of a result. Its large buffers (a numpy array's data) go out of band:
    into files in shared memory when `shared` (the caller is on this machine, and maps them
    rather than copying), else inline after the pickle."""
    if _plain(value):
        return pickle.dumps(("ok", value), protocol=PROTOCOL)
    buffers = []
    main = cloudpickle.dumps(("ok", value), protocol=PROTOCOL, buffer_callback=buffers.append)
    if not buffers:
        return main
    return _frame(main, buffers, shared)


def _frame(main, buffers, shared):
    parts = [MAGIC, struct.pack("<I", len(buffers))]
    for b in buffers:
        view = b.raw()
        name = _to_shared(view) if shared and view.nbytes >= SHM_MIN else None
        if name is None:
            parts += [struct.pack("<BQ", 0, view.nbytes), view]
        else:
            encoded = name.encode()
            parts += [struct.pack("<BQH", 1, view.nbytes, len(encoded)), encoded]
    parts.append(main)
    return b"".join(parts)


def _to_shared(view):
    """Writes `view` to a new file in shared memory; its name, or None if that cannot be."""
    name = f"ember-buf-{os.getpid()}-{secrets.token_hex(8)}"
    path = os.path.join(SHM_DIR, name)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return None
    try:
        os.ftruncate(fd, view.nbytes)
        with mmap.mmap(fd, view.nbytes) as m:
            m[:] = view
        return name
    except (OSError, ValueError):
        os.unlink(path)
        return None
    finally:
        os.close(fd)


def _unframe(data):
    """The buffers (memoryviews of `data`, or copy-on-write mappings of shared files) and the
    pickle of a framed result."""
    view = memoryview(data)
    (count,) = struct.unpack_from("<I", view, 4)
    at = 8
    buffers = []
    for _ in range(count):
        kind, n = struct.unpack_from("<BQ", view, at)
        at += 9
        if kind == 0:
            buffers.append(view[at : at + n])
            at += n
            continue
        (length,) = struct.unpack_from("<H", view, at)
        at += 2
        name = bytes(view[at : at + length]).decode()
        at += length
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
        except OSError as e:
            raise SerializationError(f"a result's shared buffer {name} is gone: {e}") from e
        try:
            # Copy-on-write: the array is writable, and nothing is copied until written.
            buffers.append(memoryview(mmap.mmap(fd, n, access=mmap.ACCESS_COPY)))
        finally:
            os.close(fd)
    return buffers, view[at:]


def _plain(value):
    return isinstance(value, (int, float, str, bytes, bool, type(None)))


def error(exc):
    """The envelope of an exception raised remotely, with its traceback."""
    tb = "".join(traceback.format_exception(exc))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        exc_bytes = cloudpickle.dumps(exc, protocol=PROTOCOL)
        pickle.loads(exc_bytes)
    except Exception:
        exc_bytes = None
    return pickle.dumps(("err", exc_bytes, name, str(exc), tb), protocol=PROTOCOL)


def unwrap(envelope):
    """The value in a result's envelope, or the remote exception raised."""
    if envelope[:4] == MAGIC:
        buffers, main = _unframe(envelope)
        record = pickle.loads(main, buffers=buffers)
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
