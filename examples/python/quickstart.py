"""Ember from Python on an embedded local cluster: two workers with two logical 80 GiB H100s
each (no GPU needed). Quarter-GPU tasks pack onto one GPU, a CPU task runs beside them, and a
request no node can hold is refused naming what is missing.

    pip install ./client/python && python3 examples/python/quickstart.py
"""

import os
import time

import ember


@ember.remote(gpus=0.25)
def where_am_i(label):
    c = ember.context()
    return f"{label}: {c['node']} GPUs {ember.get_gpu_ids()} x{c['gpu_shares'][0]} CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']}"


@ember.remote(cpus=1)
def cpu_sum(n):
    return sum(range(n))


def main():
    start = time.monotonic()
    ember.init(workers=2, gpus=2, gpu_memory="80GiB", accelerator="H100")
    first = ember.get(cpu_sum.remote(10))
    print(f"cluster up, first result ({first}) after {time.monotonic() - start:.2f} s")
    for line in ember.get([where_am_i.remote(f"task {i}") for i in range(4)]):
        print(line)
    print("cpu task:", ember.get(cpu_sum.remote(1_000_000)))
    try:
        ember.get(where_am_i.options(gpus=8).remote("too big"))
    except ember.EmberError as e:
        print("8 GPUs: refused:", e)
    ember.shutdown()


if __name__ == "__main__":
    main()
