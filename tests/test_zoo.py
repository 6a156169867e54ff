"""torchvision's models, exported as a user would (tests/zoo.py: random weights and BatchNorm
statistics, TorchScript exporter, free batch axis), load and agree with ONNX Runtime.

Agreement is max |engine - ONNX Runtime| / max |ONNX Runtime| <= 1e-4 over the whole output,
at batch 1 and at batch 4 through the free batch axis. The default run takes a few small
models at reduced resolution and one of each family's opsets; ``pytest -m zoo`` runs every
model of tests/zoo.py at full resolution at opsets 17 and 13 (about 15 minutes on 2 cores),
and bench/bench_zoo.py adds timings beside ONNX Runtime.
"""
import numpy as np
import pytest

import engine

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
zoo = pytest.importorskip("zoo")
try:
    zoo.import_torchvision()
except ImportError:
    pytest.skip("torchvision is not installed", allow_module_level=True)

RELATIVE_TOLERANCE = 1e-4

# (model, opset, side): small inputs keep the default run short; every family's operators
SMALL = [("resnet18", 17, 64), ("mobilenet_v3_small", 13, 64), ("shufflenet_v2_x1_0", 17, 64),
         ("squeezenet1_1", 13, 64), ("efficientnet_b0", 17, 64), ("regnet_y_400mf", 13, 64),
         ("convnext_tiny", 17, 64), ("convnext_tiny", 13, 64), ("mnasnet1_0", 13, 64),
         ("googlenet", 17, 64), ("lraspp_mobilenet_v3_large", 17, 64), ("r3d_18", 17, 32)]


def relative_error(got, want):
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def check_model(name, opset, side=None, batches=(1, 4)):
    import onnxruntime as ort
    data = zoo.export(name, opset, side=side)
    model = engine.load(data)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(7)
    for batch in batches:
        x = rng.standard_normal(zoo.input_shape(name, batch, side)).astype(np.float32)
        got = model.run({"x": x})["y"]
        want = session.run(None, {"x": x})[0]
        assert got.shape == want.shape
        err = relative_error(got, want)
        assert err <= RELATIVE_TOLERANCE, f"{name} opset {opset} batch {batch}: {err:.2e}"
    # the plans of both batch sizes share each convolution's transformed weights: every one
    # was made once
    for op in model._ops.values():
        if hasattr(op, "transforms"):
            assert op.transforms.made == len(op.transforms.keys()), (op.name,
                                                                     op.transforms.keys())


@pytest.mark.parametrize("name,opset,side", SMALL, ids=[f"{n}-op{o}" for n, o, _ in SMALL])
def test_small_model(name, opset, side):
    check_model(name, opset, side)


@pytest.mark.zoo
@pytest.mark.parametrize("opset", [17, 13])
@pytest.mark.parametrize("name", list(zoo.MODELS))
def test_zoo_model(name, opset):
    check_model(name, opset)
