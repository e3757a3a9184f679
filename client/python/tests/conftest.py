"""One embedded local cluster for the whole session: a head in the test process and two
worker processes, each with one logical GPU (no GPU needed)."""

import pytest

import ember


@pytest.fixture(scope="session")
def cluster():
    ember.init(workers=2, gpus=1, cpus=4)
    yield
    ember.shutdown()
