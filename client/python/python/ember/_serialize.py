"""How values travel: pickle protocol 5 through cloudpickle (functions and classes by value),
results and errors in one envelope the caller unpacks."""

import pickle
import sys
import traceback

import cloudpickle

PROTOCOL = 5


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


def ok(value):
    """The envelope of a result."""
    return pickle.dumps(("ok", value), protocol=PROTOCOL) if _plain(value) else \
        cloudpickle.dumps(("ok", value), protocol=PROTOCOL)


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
