"""Ember from Python: remote functions on a GPU cluster, with Ray's names where they fit.

    import ember
    ember.init()                      # an embedded local cluster

    @ember.remote(gpus=0.5)
    def square(x):
        return x * x

    ember.get([square.remote(i) for i in range(4)])   # [0, 1, 4, 9]
"""

import atexit
import os
import threading

from . import _actor_loop, _ember, _serialize
from ._serialize import Dep as _Dep
from ._serialize import RemoteError, SerializationError

EmberError = _ember.EmberError

# This machine: results computed here come back through shared memory.
# This process, as its calls name it: an executor on the same machine (the same host id)
# returns large result buffers through shared memory, in files named for this process.
_CALLER = (_ember.host_id(), os.getpid())
# Shared-memory files of results never collected go at exit at the latest.
atexit.register(_ember.release_buffers)

__all__ = [
    "init",
    "shutdown",
    "is_initialized",
    "remote",
    "kill",
    "get",
    "wait",
    "put",
    "ObjectRef",
    "get_gpu_ids",
    "context",
    "collective",
    "GpuActor",
    "RemoteError",
    "SerializationError",
    "EmberError",
]


def init(address=None, *, workers=1, gpus=0, cpus=None, gpu_memory=None, accelerator=None):
    """Connects this process to a cluster. With no address (and no EMBER_CLUSTER), starts an
    embedded local one: a head in this process and `workers` worker processes, each with
    `gpus` logical GPUs (this machine's real GPUs when 0). `address` (or EMBER_CLUSTER) is
    the path of a running cluster's cluster file. Returns the head's address."""
    address = address or os.environ.get("EMBER_CLUSTER")
    head = _ember.init(
        address,
        workers=workers,
        gpus=gpus,
        cpus=cpus,
        gpu_memory=gpu_memory,
        accelerator=accelerator,
    )
    # An embedded cluster's workers all run on this machine: a call's large argument
    # buffers are written to shared memory at once. (In a joined cluster they are copied
    # inline, and written to shared memory once, on the way, for an executor on this
    # machine.)
    _serialize.args_shared = address is None
    return head


def shutdown():
    """Disconnects; a local cluster stops."""
    _serialize.args_shared = False
    _ember.shutdown()
    _ember.release_buffers()


def is_initialized():
    """Whether init() ran in this process."""
    return _ember.is_initialized()


class ObjectRef:
    """The result of a remote call (or of put), to pass to get, wait, other calls, or await."""

    __slots__ = ("_pending", "__weakref__")

    def __init__(self, pending):
        self._pending = pending

    def done(self):
        return self._pending.done()

    def __await__(self):
        import asyncio  # imported here: executors and most callers never need it

        loop = asyncio.get_running_loop()
        return loop.run_in_executor(None, get, self).__await__()

    def __reduce__(self):
        raise SerializationError(
            "an ObjectRef can be passed to a remote call as a top-level argument (it is "
            "resolved before the call runs), not inside another value"
        )

    def __repr__(self):
        return f"ObjectRef(done={self.done()})"


_OPTIONS = {
    "gpus",
    "num_gpus",
    "cpus",
    "num_cpus",
    "gpu_memory",
    "accelerator",
    "accelerator_type",
    "resources",
    "priority",
    "max_retries",
    "retry_exceptions",
    "pending_timeout_s",
}


def _check_options(options, allowed=_OPTIONS):
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown option(s) for ember.remote: {', '.join(unknown)}")
    gm = options.get("gpu_memory")
    if isinstance(gm, int):
        options["gpu_memory"] = f"{gm}B"


class RemoteFunction:
    """A function to run on the cluster: `f.remote(*args)` submits a call and returns its
    ObjectRef; `f.options(**opts)` overrides its needs for the calls made through it."""

    def __init__(self, fn, options):
        _check_options(options)
        self._fn = fn
        self._options = options
        self._pickled = None
        self._id = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "function")
        self.__qualname__ = getattr(fn, "__qualname__", self.__name__)
        self._what = f"an argument of {self.__qualname__}"

    def _definition(self):
        # Pickled once per definition; workers unpickle it once per process, by its id.
        if self._pickled is None:
            import hashlib  # here: executors never need it

            _serialize.by_value(self._fn)
            self._pickled = _serialize.dumps(self._fn, f"function {self.__qualname__}")
            self._id = hashlib.blake2b(self._pickled, digest_size=16).hexdigest()
        return self._id, self._pickled

    def options(self, **options):
        merged = dict(self._options)
        merged.update(options)
        other = RemoteFunction(self._fn, merged)
        other._pickled, other._id = self._pickled, self._id
        return other

    def remote(self, *args, **kwargs):
        _joined()
        fn_id, fn_bytes = self._definition()
        args, kwargs, deps = _with_deps(args, kwargs)
        payload, keep = _serialize.dumps_call((fn_id, fn_bytes, _CALLER), args, kwargs, self._what)
        return ObjectRef(_ember.submit_task(payload, deps, self._options, keep))

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"remote function {self.__qualname__} is called with "
            f"{self.__qualname__}.remote(...), not directly"
        )


def remote(*args, **options):
    """Declares a remote function, bare (`@ember.remote`) or with its needs
    (`@ember.remote(gpus=0.5, gpu_memory="8GiB", accelerator="H100", cpus=1,
    resources={...}, max_retries=3, priority=1)`)."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make(args[0], {})
    if args:
        raise TypeError("ember.remote takes keyword options only")

    def wrap(target):
        return _make(target, dict(options))

    return wrap


_ACTOR_OPTIONS = {
    "max_restarts",
    "max_task_retries",
    "checkpoint_every",
    "checkpoint_interval_ms",
}


def _make(target, options):
    if isinstance(target, type):
        return ActorClass(target, options)
    bad = sorted(set(options) & _ACTOR_OPTIONS)
    if bad:
        raise TypeError(f"{', '.join(bad)}: options of actor classes, not of functions")
    return RemoteFunction(target, options)


def _with_deps(args, kwargs):
    """The arguments with each ObjectRef replaced by its place among the calls to wait for."""
    if not any(isinstance(a, ObjectRef) for a in args) and not any(
        isinstance(v, ObjectRef) for v in kwargs.values()
    ):
        return args, kwargs, []
    deps = []

    def dep(value):
        if isinstance(value, ObjectRef):
            deps.append(value._pending)
            return _Dep(len(deps) - 1)
        return value

    return [dep(a) for a in args], {k: dep(v) for k, v in kwargs.items()}, deps


class ActorClass:
    """A class whose instances live on the cluster: `Cls.remote(*args)` creates one and
    returns its ActorHandle; `Cls.options(**opts)` overrides its needs. A class that defines
    `save_checkpoint(self)` and the classmethod `restore_checkpoint(cls, state)` comes back
    from its newest checkpoint after its worker dies (set `checkpoint_every` calls or
    `checkpoint_interval_ms`, and `max_restarts`)."""

    def __init__(self, cls, options):
        _check_options(options, _OPTIONS | _ACTOR_OPTIONS)
        checkpoints = options.get("checkpoint_every") or options.get("checkpoint_interval_ms")
        if checkpoints and not (
            callable(getattr(cls, "save_checkpoint", None))
            and callable(getattr(cls, "restore_checkpoint", None))
        ):
            raise TypeError(
                f"{cls.__qualname__} checkpoints, so it defines save_checkpoint(self) and the "
                "classmethod restore_checkpoint(cls, state)"
            )
        self._cls = cls
        self._options = options
        # A class that can checkpoint is sealed with a final checkpoint when its node drains,
        # and moves with its state, as a Rust actor declared `checkpoint` does. Not an async
        # class without a policy: checkpointing would run its calls one at a time.
        self._can_checkpoint = (
            callable(getattr(cls, "save_checkpoint", None))
            and callable(getattr(cls, "restore_checkpoint", None))
            and (checkpoints or not _actor_loop.is_async_class(cls))
        )
        self._pickled = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__
        self.__qualname__ = cls.__qualname__

    def options(self, **options):
        merged = dict(self._options)
        merged.update(options)
        other = ActorClass(self._cls, merged)
        other._pickled = self._pickled
        return other

    def remote(self, *args, **kwargs):
        _joined()
        if self._pickled is None:
            _serialize.by_value(self._cls)
            self._pickled = _serialize.dumps(self._cls, f"class {self.__qualname__}")
        args, kwargs, deps = _with_deps(args, kwargs)
        payload, keep = _serialize.dumps_keeping(
            ((self._pickled,), args, kwargs), f"an argument of {self.__qualname__}()"
        )
        options = dict(self._options, checkpoint=True) if self._can_checkpoint else self._options
        return ActorHandle(_ember.spawn_actor(payload, deps, options, keep), self._cls)

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"actor class {self.__qualname__} is instantiated with "
            f"{self.__qualname__}.remote(...), not directly"
        )


class ActorMethod:
    """One method of an actor: `.remote(*args)` calls it and returns the ObjectRef."""

    def __init__(self, handle, name):
        # The actor itself, not its handle: the handle keeps its methods, and a cycle would
        # keep the actor past its handle's end.
        self._actor = handle._actor
        self._name = name
        self._what = f"an argument of {handle._cls.__qualname__}.{name}"

    def remote(self, *args, **kwargs):
        args, kwargs, deps = _with_deps(args, kwargs)
        payload, keep = _serialize.dumps_call(_CALLER, args, kwargs, self._what)
        return ObjectRef(self._actor.call(self._name, payload, deps, keep))


class ActorHandle:
    """A live actor: `handle.method.remote(...)` calls it, in the order calls are made.

    An actor lives while any handle to it exists, in any process: the one `Cls.remote()`
    returned, and every one unpickled elsewhere (passed to a task or another actor, which may
    keep it). Once the last is gone it stops; `ember.kill(handle)` stops it at once, whoever
    holds it."""

    def __init__(self, actor, cls):
        self._actor = actor
        self._cls = cls

    def __getattr__(self, name):
        if name.startswith("_") or not callable(getattr(self._cls, name, None)):
            raise AttributeError(f"actor {self._cls.__qualname__} has no method {name!r}")
        method = ActorMethod(self, name)
        self.__dict__[name] = method  # found without __getattr__ from now on
        return method

    def actor_id(self, timeout=None):
        """The actor's id once it exists; raises why it could not be created."""
        return self._actor.id(timeout)

    def __reduce__(self):
        # Passed to a task or another actor: there it calls the same actor, as a client of
        # the cluster, and holds it while it lives. The call carrying it keeps this handle
        # alive until it ends, so the actor cannot stop before the callee holds it.
        _serialize.keep_while_pickling(self._actor)
        return (_attach, (self._actor.id(None), self._cls))

    def __repr__(self):
        return f"ActorHandle({self._cls.__qualname__})"


_connect_lock = threading.Lock()


def _joined():
    """Joins the cluster on first use in a process that has not, when EMBER_CLUSTER names
    it: inside a task or an actor, whose worker gives it the cluster file, so that remote
    code calls remote functions, creates actors and uses handles it was passed as a driver
    does. Returns whether this process is connected."""
    if _ember.is_initialized():
        return True
    if not os.environ.get("EMBER_CLUSTER"):
        return False
    with _connect_lock:
        if not _ember.is_initialized():
            init()
    return True


def _attach(actor_id, cls):
    """An ActorHandle unpickled in another process: it joins the cluster as a client if it
    has not (`_joined`), and holds the actor (taken before it returns) until the handle is
    dropped."""
    if not _joined():
        raise EmberError(
            "an actor handle was unpickled outside the cluster: call ember.init() first"
        )
    return ActorHandle(_ember.attach_actor(actor_id), cls)


def kill(handle):
    """Stops an actor for good (no restart), whoever holds handles to it."""
    handle._actor.kill()


def get(refs, *, timeout=None):
    """The value of an ObjectRef, or the values of a list of them, waiting up to `timeout`
    seconds (TimeoutError after it). An exception the remote code raised is raised here."""
    if isinstance(refs, ObjectRef):
        return _serialize.unwrap(refs._pending.result(timeout))
    if not isinstance(refs, (list, tuple)):
        raise TypeError(f"ember.get takes an ObjectRef or a list of them, not {type(refs).__name__}")
    for r in refs:
        if not isinstance(r, ObjectRef):
            raise TypeError(f"ember.get: not an ObjectRef: {r!r}")
    if timeout is not None:
        ready, _ = wait(list(refs), num_returns=len(refs), timeout=timeout)
        if len(ready) < len(refs):
            raise TimeoutError(f"{len(refs) - len(ready)} of {len(refs)} results did not come within {timeout} s")
    return [_serialize.unwrap(r._pending.result(None)) for r in refs]


def wait(refs, *, num_returns=1, timeout=None):
    """Waits until `num_returns` of `refs` are done or `timeout` seconds pass; returns (ready,
    not ready), each in the order given."""
    refs = list(refs)
    if not 0 <= num_returns <= len(refs):
        raise ValueError(f"num_returns {num_returns} is not between 0 and {len(refs)}")
    done = set(_ember.wait_any([r._pending for r in refs], num_returns, timeout))
    ready = [r for i, r in enumerate(refs) if i in done][:num_returns]
    ready_ids = {id(r) for r in ready}
    return ready, [r for r in refs if id(r) not in ready_ids]


def put(value):
    """An ObjectRef holding `value`, to pass to remote calls (pickled once, here; large
    buffers such as numpy arrays' data are copied once, beside the pickle, and written once
    more, to shared memory, the first time a call on this machine takes it: executors here
    map them from there)."""
    envelope, handles = _serialize.ok(value)
    # The actor handles in it hold their actors while the value lives.
    return ObjectRef(_ember.completed(envelope, handles))


def context():
    """What the running task was given: a dict with `node`, `gpus` (physical indices),
    `gpu_shares`, `gpu_memory` (bytes per GPU), `cpus`, `logical_gpus`; None outside a task."""
    return _ember.task_context()


def get_gpu_ids():
    """The GPU indices the running task was given (as in its CUDA_VISIBLE_DEVICES)."""
    c = _ember.task_context()
    return [] if c is None else list(c["gpus"])


def __getattr__(name):
    # The parts over numpy load on first use: `import ember`, which every Python worker and
    # executor runs, stays quick and needs no numpy.
    import importlib

    if name == "collective":
        return importlib.import_module("ember.collective")
    if name == "GpuActor":
        return importlib.import_module("ember.gpu").GpuActor
    raise AttributeError(f"module 'ember' has no attribute {name!r}")
