import os

import numpy as np
import pytest

import engine
from engine.dispatch.conv import ASSUME_VECTOR_FLOATS_ENV

# The dispatch and layout rules as a build with AVX-512 applies them, whatever this machine has
# (8-float builds have rules of their own, which their tests set this for), so that the tests'
# expectations hold on any machine; the kernels are the ones built here, with their own block
# size (engine.ops.blocked.BLOCK).
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
