"""Collective groups of Python actors: the same bits on every rank, through Ember's engine."""

import numpy as np
import pytest

import ember

pytestmark = pytest.mark.usefixtures("cluster")


@ember.remote(cpus=0.5)
class Rank:
    def __init__(self, seed):
        self.data = np.random.default_rng(seed).standard_normal(100_003).astype(np.float32)

    def allreduce(self, op):
        a = self.data.copy()
        ember.collective.allreduce(a, "ranks", op=op)
        return a.tobytes()

    def others(self):
        me = ember.collective.rank("ranks")
        gathered = ember.collective.allgather(np.array([me, me * 10], dtype=np.int64), "ranks")
        share = ember.collective.reduce_scatter(np.arange(8, dtype=np.float64), "ranks")
        b = np.full(4, float(me))
        ember.collective.broadcast(b, "ranks", root=2)
        ember.collective.barrier("ranks")
        return me, ember.collective.size("ranks"), gathered.tolist(), share.tolist(), b.tolist()

    def bad(self):
        return ember.collective.allreduce(np.array(["x"]), "ranks")


def test_an_allreduce_across_four_actors_gives_identical_bits_on_every_rank():
    ranks = [Rank.remote(seed) for seed in range(4)]
    assert ember.collective.create_group("ranks", ranks) >= 1
    for op in ["sum", "mean", "max"]:
        results = ember.get([r.allreduce.remote(op) for r in ranks], timeout=120)
        assert len(set(results)) == 1, f"{op}: ranks differ"
        # And a rerun gives the same bits again.
        again = ember.get([r.allreduce.remote(op) for r in ranks], timeout=120)
        assert again == results
    total = np.frombuffer(results[0], dtype=np.float32)  # max, the last
    inputs = [np.random.default_rng(s).standard_normal(100_003).astype(np.float32) for s in range(4)]
    assert np.array_equal(total, np.maximum.reduce(inputs))

    out = ember.get([r.others.remote() for r in ranks], timeout=120)
    for me, (rank, size, gathered, share, b) in enumerate(out):
        assert rank == me and size == 4
        assert gathered == [[0, 0], [1, 10], [2, 20], [3, 30]]
        assert share == [4.0 * 2 * me, 4.0 * (2 * me + 1)]
        assert b == [2.0] * 4

    with pytest.raises(TypeError, match="float32.*not str32"):
        ember.get(ranks[0].bad.remote(), timeout=60)


def test_collective_operations_outside_an_actor_are_refused():
    with pytest.raises(ember.EmberError, match="inside an Ember actor"):
        ember.collective.barrier("ranks")
