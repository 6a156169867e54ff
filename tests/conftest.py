import os

import numpy as np
import pytest

import engine
from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV

# The layout rules as a build with AVX-512 applies them, whatever this machine has: a narrower
# build keeps every layer on NCHW (engine/dispatch/layout.py BLOCKED_MIN_VECTOR_FLOATS), which
# would leave the blocked kernels' tests nothing to run; the kernels are the ones built here.
# Set for the whole session, so that worker processes (dask clusters, forks) share it; the
# test of the narrow rule sets it itself.
os.environ[ASSUME_VECTOR_FLOATS_ENV] = "16"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run a test with 1 and with 2 kernel threads, restoring the setting afterwards."""
    old = engine.get_num_threads()
    engine.set_num_threads(request.param)
    yield request.param
    engine.set_num_threads(old)


def torch_or_skip():
    return pytest.importorskip("torch")
