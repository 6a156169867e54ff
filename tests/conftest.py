import numpy as np
import pytest

import engine


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
