"""Whole CNNs written in PyTorch (tests/torch_models.py: MobileNetV1, MobileNetV2, DRN-C-26),
exported to ONNX at 64x64 in eval mode with random BatchNorm statistics, run by the engine.

Tolerance: max |engine - reference| <= 1e-4 * max |reference| against ONNX Runtime and against
PyTorch. The native file must reproduce the engine's own outputs bit for bit.
"""
import numpy as np
import pytest

import engine

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import torch_models  # noqa: E402

RTOL = 1e-4
SIZE = 64


def assert_close(got, ref, rtol=RTOL):
    ref = np.asarray(ref)
    assert got.shape == ref.shape
    err = float(np.abs(got.astype(np.float64) - ref).max())
    scale = float(np.abs(ref).max())
    assert err <= rtol * scale, f"max error {err:.3g} > {rtol} * {scale:.3g}"


@pytest.fixture(scope="module", params=["mobilenet_v1", "mobilenet_v2", "drn_c_26"])
def exported(request, tmp_path_factory):
    name = request.param
    net = torch_models.make(name, seed=3)
    path = tmp_path_factory.mktemp(name) / f"{name}.onnx"
    torch_models.export_onnx(net, path, size=SIZE)
    return name, net, path


def test_model_matches_onnxruntime_and_torch(exported, tmp_path):
    name, net, path = exported
    model = engine.load(path)
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
    got = model(x)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_close(got, sess.run(None, {"input": x})[0])
    with torch.no_grad():
        assert_close(got, net(torch.from_numpy(x)).numpy())
    ops = [n.op for n in model.graph.nodes]
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Clip" not in ops
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert sum(bool(n.attrs.get("activation")) for n in convs) >= len(convs) // 2
    if name != "mobilenet_v1":
        assert sum(len(n.inputs) > 3 for n in convs) == 10   # the residual adds
    text = model.explain()
    assert "depthwise" in text or "winograd_f23" in text
    # native file: bit-exact
    native = tmp_path / f"{name}.safetensors"
    model.save(native)
    again = engine.load(native)
    np.testing.assert_array_equal(again(x), got)
    assert again.outputs == model.outputs == [engine.graph.TensorSpec("output", (1, 1000),
                                                                      "float32")]


def test_free_batch_dimension_export():
    net = torch_models.make("mobilenet_v2", seed=1)
    x = torch.randn(2, 3, 32, 32)
    import io
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=13,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    model = engine.load(onnx.load_from_string(buf.getvalue()))
    assert model.inputs[0].shape == (None, 3, 32, 32)
    assert model.outputs[0].shape == (None, 1000)
    for batch in (1, 3):
        xb = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert_close(model(xb.numpy()), net(xb).numpy())


class SegNetLike(torch.nn.Module):
    """Encoder-decoder pieces beyond classification nets: transposed convolution, nearest and
    bilinear upsampling, concatenation, LeakyReLU, sigmoid. (MaxUnpool is covered by the
    hand-built ONNX tests: torch 2.13's TorchScript exporter fails to trace max_unpool2d.)"""

    def __init__(self):
        super().__init__()
        self.enc = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.MaxPool2d(2)
        self.up = torch.nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.head = torch.nn.Conv2d(8 + 4 + 8, 2, 1)

    def forward(self, x):
        e = torch.nn.functional.leaky_relu(self.bn(self.enc(x)), 0.1)
        p = self.pool(e)
        u = torch.nn.functional.interpolate(p, scale_factor=2, mode="nearest")
        t = self.up(p)
        b = torch.nn.functional.interpolate(p, scale_factor=2, mode="bilinear",
                                            align_corners=False)
        return torch.sigmoid(self.head(torch.cat([u, t, b], 1)))


def test_export_to_native_file(tmp_path):
    torch.manual_seed(0)
    net = SegNetLike().eval()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 20)).astype(np.float32)
    path = tmp_path / "seg.safetensors"
    model = engine.export(net, x, path)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    assert_close(model(x), want)
    loaded = engine.load(path)
    np.testing.assert_array_equal(loaded(x), model(x))
    ops = {n.op for n in loaded.graph.nodes}
    assert {"MaxPool", "ConvTranspose", "Resize", "Concat"} <= ops
    assert "engine interpolate" in loaded.explain()
    assert net.training is False
