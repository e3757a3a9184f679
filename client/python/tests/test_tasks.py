"""Remote functions on a local cluster: placement by GPU share, results, get/wait/put."""

import os
import time

import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote(gpus=0.5)
def where(hold=0.0):
    time.sleep(hold)
    c = ember.context()
    return {
        "node": c["node"],
        "gpus": ember.get_gpu_ids(),
        "shares": c["gpu_shares"],
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "pid": os.getpid(),
    }


def test_half_gpu_tasks_pack_onto_one_gpu_and_see_only_it():
    # Four half-GPU tasks held at once on two one-GPU workers: two on each GPU.
    placed = ember.get([where.remote(1.0) for _ in range(4)], timeout=60)
    by_node = {}
    for p in placed:
        assert p["gpus"] == [0]
        assert p["shares"] == [0.5]
        assert p["visible"] == "0"
        by_node.setdefault(p["node"], 0)
        by_node[p["node"]] += 1
    assert sorted(by_node.values()) == [2, 2], placed


def test_a_whole_gpu_task_is_given_the_whole_gpu():
    p = ember.get(where.options(gpus=1).remote(), timeout=60)
    assert p["gpus"] == [0] and p["shares"] == [1.0]


def test_python_workers_are_reused_across_tasks():
    pids = {ember.get(where.remote(), timeout=60)["pid"] for _ in range(6)}
    # One executor process per GPU set per worker, kept warm: at most one per worker here.
    assert len(pids) <= 2, pids


@ember.remote
def add(a, b=0):
    return a + b


def test_get_of_one_and_of_a_list():
    assert ember.get(add.remote(1, 2)) == 3
    assert ember.get([add.remote(i, b=i) for i in range(5)]) == [0, 2, 4, 6, 8]


def test_refs_as_arguments_are_resolved_before_the_call_runs():
    x = ember.put(40)
    y = add.remote(1, 1)
    assert ember.get(add.remote(x, b=y)) == 42
    # A chain: each call takes the previous call's result.
    r = ember.put(0)
    for _ in range(5):
        r = add.remote(r, 1)
    assert ember.get(r) == 5


@ember.remote
def sum_of_squares(n):
    # Remote code calls remote functions as a driver does (joining the cluster on first use).
    return sum(ember.get([add.remote(i * i) for i in range(n)], timeout=60))


def test_a_task_calls_remote_functions_itself():
    assert ember.get(sum_of_squares.remote(5), timeout=60) == 30
    assert ember.get([sum_of_squares.remote(3) for _ in range(3)], timeout=60) == [5, 5, 5]


def test_put_keeps_large_values():
    data = bytes(range(256)) * 4096
    assert ember.get(ember.put(data)) == data
    assert ember.get(add.remote(ember.put(data), b=b"!")) == data + b"!"


@ember.remote
def bump_and_sum(arrays):
    # Arguments arrive writable, as the caller's arrays were.
    arrays["a"][0] += 1
    return float(arrays["a"].sum() + arrays["f"].sum())


def test_put_of_arrays_copies_them_once_and_gets_give_writable_copies():
    np = pytest.importorskip("numpy")
    a = np.arange(100_000, dtype=np.int64)  # 800 kB: beside the pickle, out of band
    f = np.ones((300, 200)).T  # Fortran-ordered
    ref = ember.put({"a": a, "f": f, "label": "x"})
    a[:] = 0  # put took a copy
    got = ember.get(ref)
    assert got["label"] == "x" and got["f"].shape == (200, 300)
    assert got["a"].flags.writeable and int(got["a"].sum()) == sum(range(100_000))
    got["a"][0] = 7
    assert ember.get(ref)["a"][0] == 0  # every get is its own copy
    assert ember.get(bump_and_sum.remote(ref)) == sum(range(100_000)) + 1 + 60_000


def test_arguments_plain_or_not_arrive_as_given():
    # Small plain values travel with plain pickle, long ones and functions with cloudpickle.
    plain = [1, 2.5, 1j, "s", b"b", None, True, (1, [2, {"k": 3}])]
    long = list(range(300))
    assert ember.get(echo.remote(plain, k=long)) == (plain, long)
    scale = 3
    assert ember.get(apply.remote(lambda x: x * scale, [1, 2, 3])) == [3, 6, 9]


@ember.remote
def echo(value, k=None):
    return value, k


@ember.remote
def apply(fn, xs):
    return [fn(x) for x in xs]


@ember.remote
def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_get_times_out_and_the_result_still_comes():
    r = nap.remote(1.5)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ember.get(r, timeout=0.2)
    assert time.monotonic() - start < 1.0
    assert ember.get(r, timeout=30) == 1.5


def test_wait_returns_the_ready_ones_first():
    slow = nap.remote(3.0)
    fast = nap.remote(0.0)
    ready, not_ready = ember.wait([slow, fast], num_returns=1, timeout=20)
    assert ready == [fast] and not_ready == [slow]
    ready, not_ready = ember.wait([slow], num_returns=1, timeout=0.1)
    assert ready == [] and not_ready == [slow]
    ready, _ = ember.wait([slow, fast], num_returns=2, timeout=30)
    assert len(ready) == 2


def test_await_a_ref_inside_asyncio():
    import asyncio

    async def main():
        a, b = await asyncio.gather(add.remote(1, 2), add.remote(3, 4))
        return a + b

    assert asyncio.run(main()) == 10


def test_a_remote_function_is_not_called_directly():
    with pytest.raises(TypeError, match=r"add\.remote"):
        add(1, 2)
