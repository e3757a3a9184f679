"""The GPU actor from Python (here on the CPU backend: no GPU on this machine)."""

import numpy as np
import pytest

import ember
from ember import GpuActor

pytestmark = pytest.mark.usefixtures("cluster")


def test_the_gpu_actor_runs_a_registered_kernel_on_numpy_buffers():
    gpu = GpuActor(gpus=0)
    x = np.arange(1000, dtype=np.float32)
    assert gpu.put("x", x) == 1000
    gpu.alloc("out", 1000)
    gpu.launch("scale", 3.0, GpuActor.buffer("x"), GpuActor.buffer("out"))
    assert np.array_equal(gpu.get("out"), x * 3.0)
    halves = np.linspace(-2, 2, 64, dtype=np.float16)
    gpu.put("h", halves)
    assert np.array_equal(gpu.get("h"), halves)
    info = gpu.info()
    assert info["backend"] == "cpu"
    assert info["buffers"] == {"x": 1000, "out": 1000, "h": 64}
    gpu.kill()


def test_the_gpu_actor_refuses_bad_calls_clearly_and_serves_on():
    gpu = GpuActor(gpus=0)
    gpu.put("x", np.ones(8, np.float32))
    with pytest.raises(ember.EmberError, match="unknown kernel"):
        gpu.launch("conv2d")
    with pytest.raises(ember.EmberError, match="nope"):
        gpu.launch("scale", 2.0, GpuActor.buffer("x"), GpuActor.buffer("nope"))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        gpu.put("i", np.ones(4, np.int64))
    with pytest.raises(TypeError, match="launch argument"):
        gpu.launch("scale", "x")
    # No CUDA here: compiling a user kernel is refused, saying so.
    with pytest.raises(ember.EmberError, match="CUDA"):
        gpu.compile_user('extern "C" __global__ void k(float* x) {}', "k")
    assert np.array_equal(gpu.get("x"), np.ones(8, np.float32))
    gpu.kill()
