"""What the tests of arrays crossing through shared memory call remotely: whether an array's
data is a mapping of a shared-memory file, seen from a task and from an actor."""

import mmap

import numpy as np

import ember


def mapped(array):
    """Whether `array`'s data is a mapping of a shared-memory file (not a copy in memory)."""
    base = array.base
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap)


@ember.remote
def inspect_argument(a):
    """Whether its argument arrived mapped, and the sum of all but its first element, which
    it overwrites (arguments arrive writable, copy-on-write: nobody else's data touched)."""
    a[0] = -1.0
    return mapped(a), float(a[1:].sum())


@ember.remote
class Inspector:
    """An actor saying whether its argument arrived mapped, and its sum."""

    def inspect(self, a):
        return mapped(a), float(a.sum())
