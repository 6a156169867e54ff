"""Whole CNNs written in PyTorch (tests/torch_models.py: MobileNetV1, MobileNetV2, DRN-C-26),
exported to ONNX at 64x64 in eval mode with random BatchNorm statistics, run by the engine.

Tolerance, per element: |engine - reference| <= RTOL * |reference| + ATOL * rms(reference).
Rounding errors of a deep network reach its outputs at the scale of the outputs as a whole, not
of each element (a logit near zero carries the error of the large sums behind it), so the bound
is mostly absolute, at the scale of the output's root mean square, and a little relative. The
reference is PyTorch run in float64 (ATOL 1e-4: MobileNetV2's 52 convolutions with random
BatchNorm statistics give the largest error, about 3e-5 rms); ONNX Runtime, a float32 peer with
errors as large as the engine's, gets twice that. The native file must reproduce the engine's
own outputs bit for bit.
"""
import collections
import copy

import numpy as np
import pytest

import engine

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import torch_models  # noqa: E402

RTOL = 1e-5
ATOL = 1e-4     # times rms(reference)
SIZE = 64


def assert_close(got, ref, atol=ATOL, rtol=RTOL):
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = np.abs(got.astype(np.float64) - ref)
    bound = rtol * np.abs(ref) + atol * np.sqrt(np.mean(ref ** 2))
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), f"error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}"


def torch64(net, x):
    """The network's output in float64 (a copy of it: the fixture's net stays float32), on one
    torch thread: a fraction of a second, where two OpenMP threads on a busy machine can take
    seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return copy.deepcopy(net).double()(torch.from_numpy(x.astype(np.float64))).numpy()
    finally:
        torch.set_num_threads(threads)


def expected_fusions(path):
    """What the load-time passes must fuse in the exported ONNX file, counted from its structure:

    - folds: BatchNormalizations of a Conv output that nothing else reads;
    - residuals: Adds of such a Conv (or Conv+BN) output, read only by the Add, and another tensor
      of the same shape;
    - activations: {"relu": n, "relu6": n}: Relu, and Clip to [0, 6], of a Conv (+BN) output or
      of a residual Add's, read only by the activation.
    """
    m = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    readers = collections.Counter(i for n in g.node for i in n.input)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    values.update({n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t)
                   for n in g.node if n.op_type == "Constant"})
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(g.value_info) + list(g.input) + list(g.output)}

    def made_by(t, op):
        return t in producer and producer[t].op_type == op

    def conv_output(t):     # a Conv's output, possibly through a BatchNormalization
        if made_by(t, "BatchNormalization"):
            src = producer[t].input[0]
            return made_by(src, "Conv") and readers[src] == 1
        return made_by(t, "Conv")

    folds = sum(conv_output(n.output[0]) for n in g.node if n.op_type == "BatchNormalization")
    residual_adds = {n.output[0] for n in g.node if n.op_type == "Add"
                     and shapes[n.input[0]] == shapes[n.input[1]]
                     and any(conv_output(t) and readers[t] == 1 for t in n.input)}
    activations = collections.Counter()
    for n in g.node:
        src = n.input[0] if n.input else ""
        if not ((conv_output(src) or src in residual_adds) and readers[src] == 1):
            continue
        if n.op_type == "Relu":
            activations["relu"] += 1
        elif n.op_type == "Clip":
            bounds = [float(values[t]) if t in values else None for t in n.input[1:3]]
            if bounds == [0.0, 6.0]:
                activations["relu6"] += 1
    return folds, len(residual_adds), activations


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
    assert_close(got, torch64(net, x))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert_close(got, sess.run(None, {"input": x})[0], atol=2 * ATOL)
    ops = [n.op for n in model.graph.nodes]
    assert "BatchNormalization" not in ops and "Relu" not in ops and "Clip" not in ops
    # every fusion the file's structure allows, each exactly once
    folds, residuals, activations = expected_fusions(path)
    assert residuals == (0 if name == "mobilenet_v1" else 10)
    convs = [n for n in model.graph.nodes if n.op == "Conv"]
    assert collections.Counter(n.attrs["activation"] for n in convs
                               if n.attrs.get("activation")) == activations
    assert sum(len(n.inputs) > 3 for n in convs) == residuals
    notes = "; ".join(model.graph.notes)
    assert f"folded {folds} BatchNormalization" in notes
    assert f"fused {sum(activations.values())} activations" in notes
    text = model.explain()
    assert "depthwise" in text or "winograd_f" in text
    # each convolution's transformed weights made once per algorithm, shared by the
    # load-time and run-time plans and by the layers a fusion remade
    model(x)
    transforms = [op.transforms for op in model._ops.values() if hasattr(op, "transforms")]
    assert len(transforms) == len(convs)
    assert all(t.made == len(t.keys()) >= 1 for t in transforms)
    # native file: bit-exact, and with the transformed weights stored none is made again
    native = tmp_path / f"{name}.safetensors"
    model.save(native)
    again = engine.load(native)
    np.testing.assert_array_equal(again(x), got)
    model.save(native, transformed=True)
    stored = engine.load(native)
    np.testing.assert_array_equal(stored(x), got)
    transforms = [op.transforms for op in stored._ops.values() if hasattr(op, "transforms")]
    assert sum(t.made for t in transforms) == 0
    assert sum(t.read for t in transforms) == sum(len(t.keys()) for t in transforms)
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
        assert_close(model(xb.numpy()), torch64(net, xb.numpy()))


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
    assert_close(model(x), torch64(net, x))
    loaded = engine.load(path)
    np.testing.assert_array_equal(loaded(x), model(x))
    ops = {n.op for n in loaded.graph.nodes}
    assert {"MaxPool", "ConvTranspose", "Resize", "Concat"} <= ops
    assert "engine interpolate" in loaded.explain()
    assert net.training is False
