"""The built-in GPU actor from Python: named device buffers put and got as numpy arrays,
the registered CUDA kernels launched by name, and CUDA C compiled with NVRTC, without torch.
On a worker without a usable CUDA GPU (or with `gpus=0`) the kernels run their CPU
references, with the same results.

    gpu = ember.GpuActor()                 # one whole GPU; GpuActor(gpus=0) on any worker
    gpu.put("x", np.ones(1024, np.float32))
    gpu.alloc("out", 1024)
    gpu.launch("scale", 3.0, GpuActor.buffer("x"), GpuActor.buffer("out"))
    gpu.get("out")                         # array([3., 3., ...], dtype=float32)
"""

import numpy as np

from . import _ember

__all__ = ["GpuActor", "Buffer"]


class Buffer:
    """A launch argument naming one of the actor's buffers."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Buffer({self.name!r})"


def _arg(value):
    if isinstance(value, Buffer):
        return ("buffer", value.name)
    if isinstance(value, (bool, np.bool_)):
        raise TypeError("a launch argument is a buffer, a float (f32) or an int (u32), not a bool")
    if isinstance(value, (int, np.integer)):
        return ("u32", int(value))
    if isinstance(value, (float, np.floating)):
        return ("f32", float(value))
    raise TypeError(
        f"a launch argument is a GpuActor.buffer(name), a float (f32) or an int (u32), "
        f"not {type(value).__name__}"
    )


class GpuActor:
    """A GPU actor on the cluster. Its options are ember.remote's (`gpus`, default 1,
    `gpu_memory`: the most its buffers may hold, `accelerator`, ...). Every method waits for
    the actor's answer; a refused call raises EmberError saying why, and the actor serves on."""

    buffer = Buffer

    def __init__(self, **options):
        self._gpu = _ember.gpu_actor(options)

    def put(self, name, array):
        """Stores `array` (float32, float16 or bfloat16) as buffer `name`; returns its
        length in elements."""
        a = np.ascontiguousarray(array)
        return self._gpu.put(name, a.tobytes(), a.dtype.name)

    def alloc(self, name, length, dtype="float32"):
        """A buffer `name` of `length` zeros."""
        self._gpu.alloc(name, np.dtype(dtype).name if dtype != "bfloat16" else dtype, length)

    def get(self, name):
        """A copy of buffer `name`, as a numpy array (bfloat16 as its uint16 bits)."""
        data, dtype = self._gpu.get(name)
        return np.frombuffer(data, dtype=np.uint16 if dtype == "bfloat16" else dtype).copy()

    def free(self, name):
        """Frees buffer `name`."""
        self._gpu.free(name)

    def launch(self, kernel, *args):
        """Runs registered kernel `kernel` on `args` and returns once it finished."""
        self._gpu.launch(kernel, [_arg(a) for a in args])

    def compile_user(self, source, entry):
        """Compiles CUDA C `source` with NVRTC on the actor's GPU and keeps its `extern "C"`
        function `entry`; returns whether its PTX came from the worker's cache. Source that
        does not compile raises EmberError with the compiler's log; an actor without a
        usable CUDA GPU refuses, saying so."""
        return self._gpu.compile_user(source, entry)

    def launch_user(self, entry, grid, block, *args, shared_mem_bytes=0):
        """Runs compiled kernel `entry` over `grid` blocks of `block` threads (3-tuples)."""
        self._gpu.launch_user(entry, tuple(grid), tuple(block), [_arg(a) for a in args], shared_mem_bytes)

    def info(self):
        """Its backend (`cpu` or `cuda:N`), device, memory in use and limit, buffers."""
        return self._gpu.info()

    def kill(self):
        """Stops the actor."""
        self._gpu.kill()
