"""The rest of the layer suite (shared/BENCHMARKS.md): transposed, 1-D, 3-D, deformable
convolution, max pooling and max-unpooling, the exp-based activations and layer
normalisation, matrix products by constant weights, next to ONNX Runtime and PyTorch, 1 and 2
threads.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_family.py [--threads 1 2]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import Case, onnx_single_node, run_cases  # noqa: E402

import engine  # noqa: E402
from engine.ops.pool import max_unpool2d_onnx  # noqa: E402

rng = np.random.default_rng(0)


def _rand(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _torch_call(fn, *arrays, **kw):
    def make():
        import torch
        tensors = [torch.from_numpy(a) for a in arrays]

        def run():
            with torch.no_grad():
                return fn(torch)(*tensors, **kw)
        return run
    return make


def conv_transpose_case():
    x, w, b = _rand(1, 64, 56, 56), _rand(64, 32, 4, 4, scale=0.05), _rand(32)
    layer = engine.ConvTranspose2d(w, b, stride=2, padding=1)
    out = np.empty((1, 32, 112, 112), np.float32)
    flops = 2.0 * 64 * 56 * 56 * 32 * 16
    model, feeds = onnx_single_node("ConvTranspose", [("x", x)], [("w", w), ("b", b)],
                                    dict(kernel_shape=[4, 4], strides=[2, 2], pads=[1] * 4))
    return Case("convT4x4_s2_c64_56", flops, lambda: (lambda: layer(x, out=out)), model, feeds,
                _torch_call(lambda t: t.nn.functional.conv_transpose2d, x, w, b, stride=2,
                            padding=1), note=getattr(layer, "algorithm", ""))


def conv1d_case():
    x, w, b = _rand(1, 64, 4096), _rand(64, 64, 3, scale=0.05), _rand(64)
    layer = engine.Conv1d(w, b, padding=8, dilation=8)
    flops = 2.0 * 64 * 64 * 3 * 4096
    model, feeds = onnx_single_node("Conv", [("x", x)], [("w", w), ("b", b)],
                                    dict(kernel_shape=[3], pads=[8, 8], dilations=[8]))
    return Case("conv1d_k3_d8_c64_4096", flops, lambda: (lambda: layer(x)), model, feeds,
                _torch_call(lambda t: t.nn.functional.conv1d, x, w, b, padding=8, dilation=8),
                note=getattr(layer, "algorithm", ""))


def conv3d_case():
    x, w, b = _rand(1, 32, 16, 28, 28), _rand(32, 32, 3, 3, 3, scale=0.05), _rand(32)
    layer = engine.Conv3d(w, b, padding=1)
    flops = 2.0 * 32 * 32 * 27 * 16 * 28 * 28
    model, feeds = onnx_single_node("Conv", [("x", x)], [("w", w), ("b", b)],
                                    dict(kernel_shape=[3, 3, 3], pads=[1] * 6))
    return Case("conv3d_3_c32_16x28", flops, lambda: (lambda: layer(x)), model, feeds,
                _torch_call(lambda t: t.nn.functional.conv3d, x, w, b, padding=1),
                note="vol2col")


def deform_case():
    x, w, b = _rand(1, 64, 56, 56), _rand(64, 64, 3, 3, scale=0.05), _rand(64)
    offset = _rand(1, 18, 56, 56, scale=2.0)
    mask = rng.random((1, 9, 56, 56), dtype=np.float32)
    layer = engine.DeformConv2d(w, b, padding=1)
    flops = 2.0 * 64 * 64 * 9 * 56 * 56
    model, feeds = onnx_single_node("DeformConv", [("x", x)],
                                    [("w", w), ("offset", offset), ("b", b), ("mask", mask)],
                                    dict(kernel_shape=[3, 3], pads=[1] * 4), opset=19)
    return Case("deform3x3_c64_56", flops, lambda: (lambda: layer(x, offset, mask)), model,
                feeds, None, note="bilinear im2col")


def unpool_case():
    src = _rand(1, 64, 224, 224)
    y, idx = engine.max_pool2d(src, 2, return_indices=True)
    # ONNX MaxUnpool takes whole-tensor indices
    onnx_idx = idx + (np.arange(64, dtype=np.int64) * 224 * 224)[None, :, None, None]
    shape = np.array([1, 64, 224, 224], np.int64)
    model, feeds = onnx_single_node("MaxUnpool", [("x", y), ("i", onnx_idx)], [],
                                    dict(kernel_shape=[2, 2], strides=[2, 2]), opset=11)
    return Case("maxunpool2_c64_112", 64 * 112 * 112,
                lambda: (lambda: max_unpool2d_onnx(y, onnx_idx, shape)), model, feeds,
                _torch_call(lambda t: t.nn.functional.max_unpool2d, y, idx, kernel_size=2),
                note="scatter (ONNX indices)")


def maxpool_cases():
    """3x3 stride-2 max pools: ResNet's stem (padded) and SqueezeNet's (ceil mode)."""
    cases = []
    for c, side, pad, ceil in ((64, 112, 1, False), (64, 111, 0, True), (128, 55, 0, True)):
        x = _rand(1, c, side, side)
        out = (side + 2 * pad - 3 + (1 if ceil else 0)) // 2 + 1
        model, feeds = onnx_single_node("MaxPool", [("x", x)], [],
                                        dict(kernel_shape=[3, 3], strides=[2, 2],
                                             pads=[pad] * 4, ceil_mode=int(ceil)), opset=12)
        cases.append(Case(f"maxpool3_s2_c{c}_{side}{'_ceil' if ceil else ''}",
                          9.0 * c * out * out,
                          lambda x=x, pad=pad, ceil=ceil: (lambda: engine.max_pool2d(
                              x, 3, 2, pad, ceil_mode=ceil)),
                          model, feeds,
                          _torch_call(lambda t: t.nn.functional.max_pool2d, x, kernel_size=3,
                                      stride=2, padding=pad, ceil_mode=ceil),
                          note="rows, then columns"))
    return cases


def conv_then(op, attrs, x, w):
    """A 3x3 convolution (padding 1) and the activation ``op`` after it, as an ONNX model."""
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
             helper.make_node(op, ["c"], ["y"], **attrs)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model, {"x": x}


def activation_cases():
    """The activations on ConvNeXt's largest activation (1.2M floats), and its layer norm
    (3136 rows of 96): one-node models, run by the engine's graph runner as by ONNX Runtime.
    FLOPs: one per element, for the GFLOP/s column to read as elements per ns. Then a 3x3
    convolution with each activation after it (YOLO's LeakyRelu, a generator's Tanh, Mish):
    the engine fuses it into the output step; FLOPs those of the convolution."""
    x = _rand(1, 384, 56, 56, scale=3.0)
    cases = []
    def F(name):
        return lambda t: getattr(t.nn.functional, name)

    for op, opset, attrs, torch_fn in (
            ("Sigmoid", 17, {}, lambda t: t.sigmoid), ("Gelu", 20, {}, F("gelu")),
            ("Tanh", 17, {}, lambda t: t.tanh), ("Mish", 18, {}, F("mish")),
            ("Softplus", 17, {}, F("softplus")), ("Elu", 17, {}, F("elu")),
            ("LeakyRelu", 17, {"alpha": 0.1}, F("leaky_relu")),
            ("HardSigmoid", 17, {}, F("hardsigmoid"))):
        model, feeds = onnx_single_node(op, [("x", x)], [], attrs, opset=opset)
        cases.append(Case(f"{op.lower()}_1x384x56x56", float(x.size),
                          lambda model=model, feeds=feeds: (
                              lambda m=engine.load(model): lambda: m.run(feeds))(),
                          model, feeds, _torch_call(torch_fn, x), note="vector pass"))
    xc, w = _rand(1, 64, 56, 56), _rand(64, 64, 3, 3, scale=0.05)
    for op, attrs in (("LeakyRelu", {"alpha": 0.1}), ("Tanh", {}), ("Mish", {})):
        model, feeds = conv_then(op, attrs, xc, w)
        cases.append(Case(f"conv3x3_c64_56+{op.lower()}", 2.0 * 64 * 64 * 9 * 56 * 56,
                          lambda model=model, feeds=feeds: (
                              lambda m=engine.load(model): lambda: m.run(feeds))(),
                          model, feeds, None, note="fused in the output step"))
    rows = _rand(1, 56, 56, 96)
    scale, bias = _rand(96), _rand(96)
    model, feeds = onnx_single_node("LayerNormalization", [("x", rows)],
                                    [("s", scale), ("b", bias)], {"axis": -1}, opset=17)
    cases.append(Case("layer_norm_3136x96", float(rows.size),
                      lambda: (lambda m=engine.load(model): lambda: m.run(feeds))(),
                      model, feeds,
                      _torch_call(lambda t: t.nn.functional.layer_norm, rows,
                                  normalized_shape=(96,)),
                      note="one pass per row"))
    return cases


def matmul_cases():
    """ConvNeXt-Tiny's MLP products on its first stage's 3136 pixels (96 -> 384 -> 96) and on
    its last stage's 49 (768 -> 3072 -> 768): a MatMul of activations by constant weights, the
    engine's packed GEMM reading the activations in place."""
    cases = []
    for m, k, n in ((3136, 96, 384), (3136, 384, 96), (49, 768, 3072), (49, 3072, 768)):
        a, w = _rand(1, m, k), _rand(k, n, scale=k ** -0.5)
        model, feeds = onnx_single_node("MatMul", [("a", a)], [("w", w)], {}, opset=17)
        cases.append(Case(f"matmul_{m}x{k}x{n}", 2.0 * m * k * n,
                          lambda model=model, feeds=feeds: (
                              lambda m=engine.load(model): lambda: m.run(feeds))(),
                          model, feeds, _torch_call(lambda t: t.matmul, a, w),
                          note="packed B, A in place"))
    return cases


CASES = [conv_transpose_case, conv1d_case, conv3d_case, deform_case, unpool_case]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", help="cases whose name contains this")
    args = ap.parse_args(argv)
    cases = ([make() for make in CASES] + maxpool_cases() + activation_cases()
             + matmul_cases())
    if args.only:
        cases = [c for c in cases if args.only in c.name]
    results = run_cases(cases, args.threads, args.repeat)
    for t in args.threads:
        rows = [r for r in results if r["threads"] == t and "onnxruntime" in r]
        worst = max((r["engine_ms"] / r["onnxruntime"], r["case"]) for r in rows)
        print(f"# {t} thread(s): worst vs ONNX Runtime: {worst[1]} {worst[0]:.2f}x")


if __name__ == "__main__":
    main()
