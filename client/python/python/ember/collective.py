"""Collective operations across Python actors, with the same bits on every rank: Ember's
engine (rings, recursive doubling, shared memory between actors on one machine) on numpy
arrays of float32, float64, float16, int32 or int64.

From the driver, form a group from actor handles (ranks in the order given); inside the
actors' methods, combine arrays by the group's name:

    ember.collective.create_group("grads", trainers)

    class Trainer:
        def step(self):
            g = self.gradients()
            ember.collective.allreduce(g, "grads", op="mean")   # g now holds the mean
"""

import numpy as np

from . import _ember

__all__ = [
    "create_group",
    "join_group",
    "rank",
    "size",
    "allreduce",
    "reduce_scatter",
    "allgather",
    "broadcast",
    "barrier",
]


def create_group(name, actors):
    """Forms a new generation of group `name` from `actors` (handles, in rank order) and
    returns its generation. Forming it again (after a member failed) starts a new one."""
    return _ember.form_group(name, [a._actor for a in actors])


def join_group(name, world, timeout=60.0):
    """From inside an actor: joins the next generation of group `name`, which forms once
    `world` actors joined (ranks in the actors' creation order); returns this rank."""
    return _ember.join_group(name, world, timeout)


def rank(group):
    """This actor's rank in `group`."""
    return _ember.rank_and_size(group)[0]


def size(group):
    """How many actors `group` has."""
    return _ember.rank_and_size(group)[1]


def _raw(array):
    array = np.asarray(array)
    return np.ascontiguousarray(array), array.dtype.name


def _result(bytes_, dtype, shape):
    return np.frombuffer(bytes_, dtype=dtype).reshape(shape).copy()


def _into(array, result):
    """Writes `result` into `array` when it can be written in place; returns the result."""
    if isinstance(array, np.ndarray) and array.flags.writeable and array.shape == result.shape:
        array[...] = result
        return array
    return result


def allreduce(array, group, op="sum"):
    """Combines `array` across every rank of `group` with `op` (sum, mean, min, max,
    product); every rank ends with the same bits. In place when `array` is a writable numpy
    array; returns the result either way."""
    data, dtype = _raw(array)
    out = _result(_ember.allreduce(group, data.tobytes(), dtype, op), dtype, data.shape)
    return _into(array, out)


def reduce_scatter(array, group, op="sum"):
    """Combines `array` across the ranks and returns this rank's share of the result: rank r
    gets the flat elements r*n/size .. (r+1)*n/size."""
    data, dtype = _raw(array)
    out = _ember.reduce_scatter(group, data.tobytes(), dtype, op)
    return np.frombuffer(out, dtype=dtype).copy()


def allgather(array, group):
    """Every rank's `array` (all of one shape), stacked in rank order: shape (size, *shape)."""
    data, dtype = _raw(array)
    out = np.frombuffer(_ember.allgather(group, data.tobytes(), dtype), dtype=dtype)
    return out.reshape((-1,) + data.shape).copy()


def broadcast(array, group, root=0):
    """`root`'s `array` on every rank: in place when writable; returns it either way."""
    data, dtype = _raw(array)
    out = _result(_ember.broadcast(group, data.tobytes(), dtype, root), dtype, data.shape)
    return _into(array, out)


def barrier(group):
    """Returns once every rank of `group` has called it."""
    _ember.barrier(group)
