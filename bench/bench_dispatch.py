"""The dispatcher's thresholds, measured: each choice in engine/dispatch/ timed on the layers
around its threshold, every option forced on the same layer and run in alternation, and the
option the dispatcher picks marked with *. The constants' comments point at the groups below;
their timing tables are this script's output, not comments in the code.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/bench_dispatch.py [--threads 1]
        [--repeat 15] [--only conv/fft]

Groups (section/group):
  conv/direct_blocked, conv/blocked_bands, conv/winograd_min, conv/winograd_tile,
  conv/dilated_phases, conv/live_taps, conv/fft, conv/separable
                                          engine/dispatch/conv.py
  conv/one_pixel                          engine/ops/conv2d_algorithms.py Pointwise.one_pixel
  depthwise/blocks, depthwise/rows,       engine/dispatch/depthwise.py
  depthwise/wide
  transposed/col2im                       engine/dispatch/transposed.py
  gemm/dense                              engine/dispatch/gemm.py
  gemm/se_gates                           engine/graph/ops/se.py MIN_THREADED_GATE_WEIGHTS
  winograd/weights                        engine/dispatch/winograd.py (U kept or made per
                                          call) and engine/ops/winograd.py TAPS_PANELS_BYTES
  layout/convert, layout/depthwise        the thread thresholds of engine/graph/blocked_steps.py
                                          and blocked_conv.py
                                          (1 against 2 threads, whatever --threads says)
  layout/dw_planes                        kernels/_nchwc_dw.h CE_NC_DW_PLANE_VECS: blocked
                                          depthwise by whole planes or row by row
  layout/dense_padded                     engine/dispatch/layout.py DENSE_PADDED_MAX_BYTES,
                                          GROUPED_PADDED_MAX_PIXELS: the dense blocked kernel
                                          with checked taps or on a padded copy of its input
  layout/grouped                          engine/dispatch/layout.py GROUPED_MIN_WIDTH
  layout/winograd                         engine/dispatch/layout.py WINOGRAD_BLOCKED_MIN_IN,
                                          WINOGRAD_BLOCKED_MAX_IN
  layout/grouped_winograd                 engine/dispatch/layout.py
                                          GROUPED_WINOGRAD_MIN_PIXELS: groups of whole blocks,
                                          the grouped kernel against Winograd, weights cold
  layout/live_taps                        engine/dispatch/layout.py live_taps_blocked: dilated
                                          layers past the map, NCHW against blocked
  layout/dense                            engine/dispatch/layout.py DENSE_ALONE_MIN_TAPS: a
                                          lone dense layer on NCHW against blocked with a
                                          layout change each way
  layout/pointwise                        engine/dispatch/layout.py POINTWISE_ALONE_MIN_WASTE:
                                          the same for a lone 1x1 layer (a one-node model)
The layout's own choices (which layers run blocked, how blocked kernels split their threads)
only show in whole models: bench/bench_models.py --layout auto|nchw|nchwc.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _harness import onnx_single_node, time_alternating  # noqa: E402

import engine  # noqa: E402
from engine._kernels import (dense, nchwc, nchwc_dense, nchwc_taps, nchwc_window,  # noqa: E402
                             nchwc_winograd, squeeze_excite)
from engine._threads import blas_pinned, threads_for  # noqa: E402
from engine.dispatch import choose_gemm  # noqa: E402
from engine.dispatch.layout import (DENSE_ALONE_MIN_TAPS, GROUPED_MIN_WIDTH,  # noqa: E402
                                    dense_padded, live_taps_blocked, winograd_blocked,
                                    winograd_shaped)
from engine.shapes import tap_rectangles  # noqa: E402
from engine.dispatch.conv import vector_floats  # noqa: E402
from engine.dispatch.winograd import choose_blocked_tile  # noqa: E402
from engine.ops.workspace import workspace  # noqa: E402
from engine.dispatch.layout import POINTWISE_ALONE_MIN_WASTE  # noqa: E402
from engine.ops.activation import kernel_act  # noqa: E402
from engine.graph.blocked_conv import MIN_WORK_DEPTHWISE  # noqa: E402
from engine.graph.blocked_steps import MIN_CONVERT_ELEMENTS  # noqa: E402
from engine.graph.ops.se import MIN_THREADED_GATE_WEIGHTS  # noqa: E402
from engine.ops import blocked  # noqa: E402
from engine.ops.packed_gemm import ConstantRight  # noqa: E402
from engine.ops.depthwise import Depthwise  # noqa: E402
from engine.shapes import input_extent  # noqa: E402

rng = np.random.default_rng(0)


def _rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# -- conv: (C, K, size, kernel, stride, pad, dilation, groups, rank-1 weights) -------------------
def L(c, k, size, kernel, stride=1, pad=None, dilation=1, groups=1, rank1=False):
    return (c, k, size, kernel, stride, kernel // 2 * dilation if pad is None else pad,
            dilation, groups, rank1)


CONV = {
    "direct_blocked": [L(3, 16, 224, 7), L(3, 16, 224, 3), L(16, 16, 224, 3), L(32, 32, 112, 3),
                       L(16, 64, 112, 3), L(64, 16, 112, 3), L(64, 64, 56, 3),
                       L(128, 128, 28, 3), L(32, 32, 56, 5), L(3, 32, 224, 3, 2),
                       L(16, 32, 224, 3, 2), L(32, 64, 112, 3, 2), L(64, 128, 56, 3, 2),
                       L(48, 96, 56, 3, 2), L(128, 256, 28, 3, 2), L(3, 64, 224, 7, 2),
                       L(16, 32, 224, 1, 2), L(64, 128, 56, 1, 2), L(256, 512, 56, 1, 2),
                       L(128, 128, 28, 3, groups=8), L(32, 32, 14, 3), L(24, 24, 7, 3),
                       L(32, 64, 14, 3, 2), L(208, 208, 14, 3, groups=26),
                       L(440, 440, 7, 3, groups=55), L(208, 208, 28, 3, 2, groups=26)],
    "blocked_bands": [L(16, 32, 112, 3, 2), L(32, 64, 56, 3, 2), L(64, 128, 56, 3, 2),
                      L(48, 96, 56, 3, 2), L(128, 256, 28, 3, 2), L(256, 512, 14, 3, 2),
                      L(24, 40, 56, 5, 2), L(96, 96, 28, 3, 2), L(3, 64, 224, 7, 2),
                      L(8, 16, 112, 3, 2)],
    "winograd_min": [L(4, 4, 56, 3), L(8, 8, 56, 3), L(16, 16, 56, 3)],
    # the layers the tile cost model (engine/dispatch/winograd.py) was fitted to, and dilated
    # ones, where F(4x4,3x3) is taken from F43_MIN_CHANNELS_DILATED channels
    "winograd_tile": [L(c, c, size, 3) for c, size in
                      [(16, 224), (64, 224), (32, 112), (64, 112), (128, 112), (64, 56),
                       (128, 56), (256, 56), (128, 28), (256, 28), (512, 28), (128, 14),
                       (256, 14), (512, 14), (512, 7)]]
                     + [L(256, 256, 28, 3, dilation=2), L(256, 512, 28, 3, dilation=4),
                        L(512, 512, 28, 3, dilation=2)],
    "dilated_phases": [L(960, 256, 14, 3, dilation=d) for d in (4, 6, 8, 12)]
                      + [L(512, 256, 28, 3, dilation=d) for d in (4, 6, 8, 12)],
    "live_taps": [L(960, 256, 14, 3, dilation=d) for d in (2, 3, 4, 6, 12)]
                 + [L(512, 256, 28, 3, dilation=d) for d in (4, 6, 8, 12, 24)]
                 + [L(128, 128, 14, 3, dilation=12), L(64, 64, 14, 3, dilation=12),
                    L(16, 16, 14, 3, dilation=12)],
    "fft": [L(8, 8, 64, 7), L(16, 16, 128, 7), L(64, 64, 64, 7), L(32, 32, 56, 7),
            L(4, 32, 128, 7), L(3, 64, 128, 7), L(16, 16, 64, 11), L(64, 64, 128, 15),
            L(16, 16, 64, 5), L(64, 64, 64, 5)],
    "separable": [L(1, 1, 512, 3, rank1=True), L(1, 1, 512, 5, rank1=True),
                  L(32, 32, 112, 3, groups=32, rank1=True),
                  L(32, 32, 112, 5, groups=32, rank1=True),
                  L(32, 32, 112, 7, groups=32, rank1=True),
                  L(32, 64, 112, 5, groups=32, rank1=True)],
}
# the options each group compares (those that cannot run a layer are shown as "-")
CONV_OPTIONS = {"direct_blocked": ["direct_blocked", "im2col", "winograd_f23"],
                "blocked_bands": ["blocked_bands", "blocked_dense", "direct_blocked",
                                  "im2col"],
                "winograd_min": ["im2col", "winograd_f23"],
                "winograd_tile": ["winograd_f23", "dilated_s2b", "winograd_f43", "winograd_f63"],
                "dilated_phases": ["im2col", "dilated_s2b", "winograd_f43"],
                "live_taps": ["im2col", "dilated_s2b", "live_taps"],
                "fft": ["im2col", "fft"],
                "separable": ["im2col", "depthwise", "separable"]}


def conv_rows(group):
    for c, k, size, ks, s, p, d, g, rank1 in CONV[group]:
        if rank1:   # outer products: every slice rank 1, as for a Gaussian or box filter
            u, v = _rand(k, c // g, ks, 1), _rand(k, c // g, 1, ks)
            w = (u * v).astype(np.float32)
        else:
            w = _rand(k, c // g, ks, ks) / np.float32(np.sqrt(c // g * ks * ks))
        b = _rand(k)
        x = _rand(1, c, size, size)
        label = (f"{ks}x{ks} s{s}" + (f" d{d}" if d > 1 else "") + (f" g{g}" if g > 1 else "")
                 + f" {c}->{k} {size}")
        fns = {}
        for a in CONV_OPTIONS[group]:
            try:
                layer = engine.Conv2d(w, b, s, p, d, g, "relu", a, input_size=(size, size))
            except ValueError:
                continue
            out = np.empty(layer.output_shape(x.shape), np.float32)
            fns[a] = (lambda layer, out: lambda: layer(x, out=out))(layer, out)
        auto = engine.Conv2d(w, b, s, p, d, g, "relu", input_size=(size, size)).algorithm
        yield label, fns, auto


def one_pixel_rows():
    """A 1x1 layer on a map of one pixel (after a global pool: DeepLabV3's image pooling,
    LR-ASPP's scale branch): the pointwise algorithm's product of the pixel by the transposed
    weights ("rows", what it runs) against its GEMM on panels of pixels ("panels")."""
    for c, k in ((960, 128), (960, 256), (2048, 256), (576, 144)):
        w = _rand(k, c, 1, 1) / np.float32(np.sqrt(c))
        layer = engine.Conv2d(w, _rand(k), activation="relu", algorithm="pointwise")
        x, out = _rand(1, c, 1, 1), np.empty((1, k, 1, 1), np.float32)
        impl = layer._impl
        yield (f"1x1 {c}->{k} on 1x1", {"rows": lambda layer=layer, x=x, out=out: layer(
            x, out=out), "panels": lambda impl=impl, x=x, out=out: impl.run_panels(
            x, out, engine.get_num_threads())},
            "rows")


# -- depthwise: (C, size, stride) on 3x3, multiplier 1, relu6 -------------------------------------
DEPTHWISE = {
    "blocks": [(256, n, s) for s in (1, 2) for n in (12, 14, 16, 20, 24, 28)]
    + [(144, 56, 2), (96, 112, 2)],
    "rows": [(32, 112, 1), (96, 112, 2), (144, 56, 1), (128, 56, 1), (144, 56, 2), (144, 28, 1),
             (192, 28, 1), (384, 14, 1), (96, 42, 1), (672, 14, 1), (64, 20, 1),
             (256, 28, 1), (240, 56, 2), (192, 28, 2), (240, 28, 2), (576, 28, 2)],
    # 5x5 and 7x7 kernels (the fourth number): channel blocks against planes
    "wide": [(c, size, s, k) for k in (5, 7) for c, size, s in
             [(576, 7, 1), (240, 14, 1), (672, 14, 1), (240, 28, 1), (144, 56, 1),
              (288, 14, 2), (96, 28, 2), (672, 28, 2), (144, 56, 2)]],
}


def depthwise_rows(group, threads):
    options = SECTIONS["depthwise"][2](group)
    for c, size, s, *k in DEPTHWISE[group]:
        k = k[0] if k else 3
        layer = engine.Conv2d(_rand(c, 1, k, k), _rand(c), s, k // 2, 1, c, "relu6",
                              "depthwise")
        x = _rand(1, c, size, size)
        g = layer.geometry(x.shape)
        out = np.empty(layer.output_shape(x.shape), np.float32)
        nt = threads_for(g.macs, threads)
        fns = {}
        for kernel in options:
            impl = Depthwise(layer, kernel=kernel)
            fns[kernel] = (lambda impl: lambda: impl.run(x, out, g, nt))(impl)
        yield f"{k}x{k} {c}ch {size}x{size} s{s}", fns, layer._impl.kernel_choice(g)[0]


# -- transposed ------------------------------------------------------------------------------------
def transposed_rows(group):
    for c, k, size, ks, s, p in [(64, 32, 56, 4, 2, 1), (64, 64, 56, 3, 1, 1)]:
        w, b, x = _rand(c, k, ks, ks) * np.float32(0.05), _rand(k), _rand(1, c, size, size)
        fns = {}
        for a in ("col2im", "zero_insert"):
            layer = engine.ConvTranspose2d(w, b, s, p, algorithm=a)
            fns[a] = (lambda layer: lambda: layer(x))(layer)
        auto = engine.ConvTranspose2d(w, b, s, p).algorithm
        yield f"{ks}x{ks} s{s} {c}->{k} {size}", fns, auto


# -- gemm: the classifier of MobileNetV2 (1280 -> 1000) at a few batch sizes ---------------------
def se_gate_rows(cold=False):
    """A squeeze-excite's two products on one thread and on two (engine/graph/ops/se.py
    MIN_THREADED_GATE_WEIGHTS), on the shapes of MobileNetV3 (72->24, 672->168, 960->240),
    EfficientNet-B0 (1152->48) and RegNetY-400MF (440->110), weights read from cache; cold:
    each call reads the next of copies of the weights filling 64 MiB, as in a model."""
    for c, r in [(72, 24), (440, 110), (1152, 48), (672, 168), (960, 240)]:
        p = _rand(1, c)
        copies = -(-(64 << 20) // (8 * c * r)) if cold else 1
        ring = [(_rand(c, r), _rand(r, c)) for _ in range(copies)]
        b1, b2 = _rand(r), _rand(c)
        out = np.empty((1, c), np.float32)
        turn = itertools.count()

        def gates(t):
            def run():
                w1t, w2t = ring[next(turn) % copies]
                squeeze_excite.f32_se_gates(p, w1t, b1, w2t, b2, kernel_act("relu"), 1, 0.2,
                                            0.5, out, t)
            return run
        fns = {f"{t} thread": gates(t) for t in (1, 2)}
        pick = "2 thread" if c * r >= MIN_THREADED_GATE_WEIGHTS else "1 thread"
        yield f"{c}->{r}->{c} ({c * r // 1024}K weights a product)", fns, pick


def gemm_rows(group, threads):
    """A classifier's product (RegNetX's 400->1000, MobileNetV3's 1280->1000) and ConvNeXt's
    768->3072 for 1, 2, 8 and 32 rows: the dense kernel with the rows of w one after another
    or eight side by side (kernels/dense.pyx SINGLE_ROW_MAX_M), the packed micro-kernel
    (engine/ops/packed_gemm.py) and NumPy's matmul (engine/dispatch/gemm.py). Each call reads
    the next of copies of the weights filling 64 MiB, so that they come from memory, as after a
    model's convolutions."""
    if group.startswith("se_gates"):
        yield from se_gate_rows(cold=group == "se_gates_cold")
        return
    for k, n in ((400, 1000), (1280, 1000), (768, 3072)):
        bmat = _rand(k, n)
        copies = -(-(64 << 20) // bmat.nbytes)
        ring = [(np.ascontiguousarray(bmat.T), bmat.copy(), ConstantRight(bmat))
                for _ in range(copies)]
        for rows in (1, 2, 8, 32):
            a = _rand(rows, k)
            out = np.empty((rows, n), np.float32)
            nt = threads_for(rows * k * n, threads)
            turn = itertools.count()

            def dense_fn(together, a=a, out=out, nt=nt, turn=turn):
                def run():
                    w = ring[next(turn) % copies][0]
                    dense.f32_dense_rows(a, w, out, nt, together)
                return run

            def run_matmul(a=a, out=out, turn=turn):
                b = ring[next(turn) % copies][1]
                with blas_pinned():            # as the model runs it
                    np.matmul(a, b, out=out)

            def run_packed(a=a, out=out, turn=turn):
                ring[next(turn) % copies][2].run(a, out, threads_for(rows * k * n, threads))
            fns = {"1 row": dense_fn(1), "8 rows": dense_fn(8), "packed": run_packed,
                   "matmul": run_matmul}
            pick = choose_gemm(rows, True, False)[0]
            if pick == "dense":
                pick = "1 row" if rows <= dense.SINGLE_ROW_MAX_M else "8 rows"
            yield f"{rows}x{k} @ {k}x{n}", fns, pick


# -- layout: where a second thread starts to pay --------------------------------------------------
def dense_rows(threads):
    """(C, K, size, (kh, kw), stride): ResNet's downsampling layers, Inception's 1x7, and
    narrow layers around the threshold."""
    for c, k, size, (kh, kw), s in [(8, 32, 28, (1, 7), 1), (16, 32, 56, (3, 3), 2),
                                    (3, 64, 112, (7, 7), 2), (32, 64, 56, (3, 3), 2),
                                    (64, 128, 56, (3, 3), 2), (256, 512, 56, (1, 1), 2),
                                    (128, 128, 17, (1, 7), 1), (512, 512, 14, (3, 3), 2)]:
        x, w = _rand(1, c, size, size), _rand(k, c, kh, kw)
        pads = (kh // 2, kw // 2)
        layer = engine.Conv2d(w, stride=s, padding=pads)
        wp, bp = blocked.pack_dense(w, None)
        oh, ow = (size + 2 * pads[0] - kh) // s + 1, (size + 2 * pads[1] - kw) // s + 1
        xb = np.empty(blocked.blocked_shape(x.shape), np.float32)
        ob = np.empty(blocked.blocked_shape((1, k, oh, ow)), np.float32)
        y = np.empty((1, k, oh, ow), np.float32)

        def blocked_run():
            nchwc.f32_to_blocked(x, xb, threads)
            nchwc_dense.f32_conv2d_nchwc(xb, c, wp, bp, None, ob, kh, kw, s, s, pads[0], pads[1],
                                     1, 1, kernel_act(None), threads)
            nchwc.f32_from_blocked(ob, y, threads)
        taps = c * kh * kw
        pick = "blocked" if taps >= DENSE_ALONE_MIN_TAPS and kh * kw > 1 else "nchw"
        yield (f"{c}->{k} {kh}x{kw} s{s} {size}x{size} ({taps} taps)",
               {"nchw": lambda: layer(x), "blocked": blocked_run}, pick)


def pointwise_alone_rows(threads):
    """A lone 1x1 layer (a one-node ONNX model) planned on NCHW against blocked with a layout
    change each way, on maps whose NCHW GEMM wastes more or fewer columns."""
    engine.set_num_threads(threads)
    for c, k, size in [(512, 2048, 7), (2048, 512, 7), (512, 512, 7), (160, 960, 7),
                       (64, 256, 7), (256, 1024, 14), (1024, 256, 14), (128, 512, 28),
                       (64, 256, 56)]:
        x, w = _rand(1, c, size, size), _rand(k, c, 1, 1) / np.float32(np.sqrt(c))
        yield (f"1x1 {c}->{k} {size}x{size} (waste limit {POINTWISE_ALONE_MIN_WASTE})",
               *lone_layer_fns(x, w, dict(kernel_shape=[1, 1])))


def lone_layer_fns(x, w, attrs):
    """A one-Conv ONNX model run planned on NCHW ("nchw") and blocked with a layout change each
    way ("blocked"), and which of the two the dispatcher picks."""
    model, feeds = onnx_single_node("Conv", [("x", x)], [("w", w)], attrs)
    fns = {name: (lambda m: lambda: m.run(feeds))(engine.load(model, layout=lay))
           for name, lay in (("nchw", "nchw"), ("blocked", "nchwc"))}
    return fns, "blocked" if "layout nchwc" in engine.load(model).explain() else "nchw"


def depthwise_alone_rows(threads):
    """A lone depthwise layer (a one-node ONNX model) planned on NCHW against blocked with a
    layout change each way: ConvNeXt-Tiny's 7x7 layers, 5x5 ones (EfficientNet, MnasNet), and
    a 3x3 one."""
    engine.set_num_threads(threads)
    for c, size, k in [(96, 56, 7), (192, 28, 7), (384, 14, 7), (768, 7, 7), (96, 56, 5),
                       (240, 28, 5), (672, 14, 5), (144, 56, 3)]:
        x, w = _rand(1, c, size, size), _rand(c, 1, k, k) / np.float32(k)
        yield (f"dw {k}x{k} {c}ch {size}x{size}",
               *lone_layer_fns(x, w, dict(kernel_shape=[k, k], group=c, pads=[k // 2] * 4)))


def grouped_rows(threads):
    """Grouped 3x3 layers with groups inside blocks: the blocked grouped kernel against the
    NCHW algorithm the dispatcher gives the same layer (no layout change counted)."""
    for c, g, size, s in [(128, 2, 56, 1), (128, 4, 56, 1), (256, 8, 28, 1), (512, 16, 14, 1),
                          (256, 8, 56, 2), (64, 8, 56, 1)]:
        wt, x = _rand(c, g, 3, 3), _rand(1, c, size, size)
        wp, bp = blocked.pack_grouped(wt, g, np.zeros(c, np.float32))
        xb = blocked.to_blocked(x)
        o = (size + 2 - 3) // s + 1
        out = np.empty(blocked.blocked_shape((1, c, o, o)), np.float32)
        layer = engine.Conv2d(wt, None, s, 1, 1, c // g, "relu", input_size=(size, size))
        o2 = np.empty(layer.output_shape(x.shape), np.float32)
        fns = {"blocked": lambda: nchwc_window.f32_grouped_blocked(xb, wp, bp, out, s, s, 1, 1, 1, 1,
                                                            kernel_act("relu"), threads),
               "nchw": lambda: layer(x, out=o2)}
        pick = "blocked" if g >= GROUPED_MIN_WIDTH else "nchw"
        yield f"3x3 s{s} {c}ch groups of {g} {size} (nchw: {layer.algorithm})", fns, pick


def grouped_winograd_rows(threads):
    """RegNet-X's 3x3 layers in 16-channel groups and ResNeXt-50's 14x14 one (16-float builds):
    the blocked grouped kernel against Winograd on blocks with the tile the blocked model
    picks. Each call reads the next of copies of the weights (U or the taps) filling 64 MiB,
    so that they come from memory, as in a model."""
    if vector_floats() < 16:
        return
    for c, g, size in [(32, 2, 56), (64, 4, 56), (64, 4, 28), (128, 8, 28), (160, 10, 14),
                       (512, 32, 14), (400, 25, 7)]:
        cg = c // g
        wt, x = _rand(c, cg, 3, 3) / np.float32(np.sqrt(9 * cg)), _rand(1, c, size, size)
        xb = blocked.to_blocked(x)
        ob = np.empty_like(xb)
        m, _ = choose_blocked_tile(c, c, 1, (size, size), (1, 1), g)
        packs = {"blocked": blocked.pack_grouped(wt, cg, None),
                 "winograd_blocked": blocked.pack_winograd(wt, None, m, g)}
        work = workspace.take(blocked.winograd_work_floats(1, c, c, (size, size), m,
                                                           threads=threads, groups=g))
        act = kernel_act("relu")

        def ring_of(pack):
            copies = -(-(64 << 20) // pack[0].nbytes)
            return [(pack[0].copy(), pack[1]) for _ in range(copies)], itertools.count()
        rings = {k: ring_of(v) for k, v in packs.items()}

        def grouped_run(ring=rings["blocked"]):
            w, b = ring[0][next(ring[1]) % len(ring[0])]
            nchwc_window.f32_grouped_blocked(xb, w, b, ob, 1, 1, 1, 1, 1, 1, act, threads)

        def winograd_run(ring=rings["winograd_blocked"], m=m, work=work, g=g):
            u, b = ring[0][next(ring[1]) % len(ring[0])]
            nchwc_winograd.f32_winograd_blocked(xb, c, u, b, None, ob, m, 1, 1, act, threads,
                                                work, 1, 1, None, g)
        p = engine.Conv2d(wt, None, 1, 1, 1, g, input_size=(size, size)).params._replace(
            pads=((1, 1), (1, 1)))
        pick = "winograd_blocked" if winograd_blocked(p) else "blocked"
        yield (f"3x3 {c}ch groups of {cg} {size}x{size} F({m}x{m})",
               {"blocked": grouped_run, "winograd_blocked": winograd_run}, pick)


def winograd_layout_rows(threads):
    """3x3 stride-1 layers: NCHW's algorithm, the dense blocked kernel and (16-float builds)
    Winograd on blocks with the tile engine/dispatch/winograd.py's blocked model picks, on the
    same layer (no layout change counted): WINOGRAD_BLOCKED_MIN_IN, WINOGRAD_BLOCKED_MAX_IN,
    DENSE_8F_SMALL_*."""
    wide = vector_floats() >= 16
    for c, k, size in [(8, 8, 56), (12, 24, 56), (16, 16, 56), (16, 64, 55), (32, 128, 27),
                       (48, 192, 13), (64, 256, 13), (96, 128, 28),
                       (128, 128, 14), (256, 256, 14), (64, 64, 56), (128, 32, 56),
                       (128, 32, 28), (128, 32, 14), (128, 32, 7), (256, 64, 14),
                       (256, 256, 7), (512, 512, 7)]:
        x, w = _rand(1, c, size, size), _rand(k, c, 3, 3) / np.float32(np.sqrt(9 * c))
        layer = engine.Conv2d(w, padding=1, input_size=(size, size))
        y = np.empty(layer.output_shape(x.shape), np.float32)
        wp, bp = blocked.pack_dense(w, None)
        xb = blocked.to_blocked(x)
        ob = np.empty(blocked.blocked_shape((1, k, size, size)), np.float32)
        # the blocked kernel in the form its step takes (on a padded copy where that pays)
        floats = nchwc_dense.dense_padded_floats(1, xb.shape[1], size, size, 3, 3, 1, 1, 1, 1)
        scratch = (np.zeros(floats, np.float32)
                   if dense_padded(1, True, 4 * floats, input_extent(size, 3, 1, 1) ** 2)[0]
                   else None)
        fns = {"nchw": lambda: layer(x, out=y),
               "blocked": lambda: nchwc_dense.f32_conv2d_nchwc(xb, c, wp, bp, None, ob, 3, 3, 1, 1,
                                                           1, 1, 1, 1, kernel_act(None),
                                                           threads, 1, scratch)}
        p = layer.params._replace(pads=((1, 1), (1, 1)))
        pick = "nchw" if winograd_shaped(p) else "blocked"
        m = None
        if wide:
            m, _ = choose_blocked_tile(c, k, 1, (size, size))
            up, ub = blocked.pack_winograd(w, None, m)
            work = workspace.take(blocked.winograd_work_floats(1, c, k, (size, size), m,
                                                               threads=threads))
            fns["winograd_blocked"] = (lambda up, ub, m, work: lambda: (
                nchwc_winograd.f32_winograd_blocked(xb, c, up, ub, None, ob, m, 1, 1,
                                                    kernel_act(None), threads, work)))(
                up, ub, m, work)
            if winograd_blocked(p):
                pick = "winograd_blocked"
        tile = f", blocked F({m}x{m})" if m else ""
        yield f"3x3 {c}->{k} {size}x{size} (nchw: {layer.algorithm}{tile})", fns, pick


def live_taps_layout_rows(threads):
    """Dilated 3x3 layers whose taps mostly read padding, their plane kept (DeepLabV3's ASPP
    at 224x224: rates 6, 12, 24 on MobileNetV3's 14x14 and ResNet-50's 28x28, and a rate of 4
    where most taps are live): NCHW's algorithm against the live-taps kernel on blocks, the
    same layer (no layout change counted). live_taps_blocked."""
    for c, k, size, rate in [(960, 256, 14, 6), (960, 256, 14, 12), (960, 256, 14, 24),
                             (512, 256, 28, 12), (512, 256, 28, 24), (256, 256, 28, 4)]:
        x = _rand(1, c, size, size)
        w = _rand(k, c, 3, 3) / np.float32(np.sqrt(9 * c))
        layer = engine.Conv2d(w, None, 1, rate, rate, input_size=(size, size),
                              activation="relu")
        y = np.empty(layer.output_shape(x.shape), np.float32)
        pads = ((rate, rate), (rate, rate))
        rects = tap_rectangles((size, size), (size, size), (3, 3), (1, 1), (rate, rate),
                               (rate, rate))
        wt, bt = blocked.pack_live_taps(w, [t for t, *_ in rects], None)
        table = np.array([(i, *oy, *ox, *iy) for i, (_, oy, ox, iy) in enumerate(rects)],
                         np.int32).reshape(-1, 7)
        xb = blocked.to_blocked(x)
        ob = np.empty(blocked.blocked_shape((1, k, size, size)), np.float32)
        fns = {"nchw": lambda: layer(x, out=y),
               "blocked": lambda: nchwc_taps.f32_live_taps_blocked(
                   xb, c, wt, bt, table, ob, kernel_act("relu"), threads)}
        p = layer.params._replace(pads=pads)
        pick = "blocked" if live_taps_blocked(p) else "nchw"
        yield (f"3x3 {c}->{k} {size}x{size} rate {rate}, {len(rects)} taps live (nchw: "
               f"{layer.algorithm})"), fns, pick


def dw_plane_rows(threads):
    """Blocked depthwise (relu6) by zero-bordered whole planes against row by row, on the maps
    of MobileNetV3, MNASNet and EfficientNet and around the plane buffer's size."""
    for c, size, s, k in [(1152, 7, 1, 5), (1152, 7, 1, 3), (480, 14, 1, 5), (480, 14, 1, 3),
                          (240, 28, 1, 5), (240, 28, 1, 3), (144, 56, 2, 5), (144, 56, 1, 3),
                          (96, 112, 2, 3), (32, 112, 1, 3), (96, 56, 1, 7), (192, 28, 1, 7)]:
        p = k // 2
        wp, bp = blocked.pack_depthwise(_rand(c, 1, k, k), _rand(c))
        xb = blocked.to_blocked(_rand(1, c, size, size))
        o = (size + 2 * p - k) // s + 1
        out = np.empty(blocked.blocked_shape((1, c, o, o)), np.float32)
        fns = {form: (lambda planes: lambda: nchwc_window.f32_depthwise_blocked(
            xb, wp, bp, out, s, s, p, p, 1, 1, kernel_act("relu6"), threads, False, planes))(
                form == "planes") for form in ("rows", "planes")}
        pick = "planes" if nchwc_window.depthwise_plane_fits(size, size, o, s, k, k, 1) else "rows"
        yield f"{k}x{k} {c}ch {size}x{size} s{s}", fns, pick


def dense_padded_rows(threads):
    """The dense blocked kernel (relu) with taps checked on its input against the same on a
    copy of the input with the padding as zeros (tiles across rows), copy included:
    SqueezeNet's expand layers, DenseNet's 3x3 on 14x14 and 7x7, a strided one, VGG-like;
    then RegNet's grouped 3x3 (16 channels a group) and two of 32 and 64 channels a group."""
    for c, k, size, s, per_group in [
            (16, 64, 55, 1, 0), (32, 128, 27, 1, 0), (48, 192, 13, 1, 0), (64, 256, 13, 1, 0),
            (128, 32, 14, 1, 0), (128, 32, 7, 1, 0), (64, 128, 56, 2, 0), (128, 128, 28, 1, 0),
            (400, 400, 7, 1, 16), (400, 400, 14, 2, 16), (160, 160, 14, 1, 16),
            (160, 160, 28, 2, 16), (64, 64, 28, 1, 16), (64, 64, 56, 2, 16),
            (32, 32, 112, 2, 16), (128, 128, 28, 1, 32), (256, 256, 14, 1, 64)]:
        groups = c // per_group if per_group else 1
        w = _rand(k, c // groups, 3, 3) / np.float32(np.sqrt(9 * c // groups))
        wp, bp = blocked.pack_dense(w, None, groups)
        xb = blocked.to_blocked(_rand(1, c, size, size))
        o = (size + 2 - 3) // s + 1
        out = np.empty(blocked.blocked_shape((1, k, o, o)), np.float32)
        scratch = np.zeros(nchwc_dense.dense_padded_floats(1, xb.shape[1], o, o, 3, 3, s, s, 1, 1),
                           np.float32)
        fns = {form: (lambda scr: lambda: nchwc_dense.f32_conv2d_nchwc(
            xb, c, wp, bp, None, out, 3, 3, s, s, 1, 1, 1, 1, kernel_act("relu"), threads,
            groups, scr))(scratch if form == "padded" else None)
            for form in ("checked", "padded")}
        plane = input_extent(o, 3, s, 1) ** 2
        pick = "padded" if dense_padded(groups, True, 4 * scratch.size, plane)[0] else "checked"
        yield f"3x3 {c}->{k}" + (f" g{groups}" if groups > 1 else "") + \
            f" {size}x{size} s{s}", fns, pick


def layout_rows(group, threads=1):
    rows = {"dense": dense_rows, "pointwise": pointwise_alone_rows,
            "depthwise_alone": depthwise_alone_rows,
            "winograd": winograd_layout_rows, "grouped": grouped_rows,
            "grouped_winograd": grouped_winograd_rows, "live_taps": live_taps_layout_rows,
            "dw_planes": dw_plane_rows, "dense_padded": dense_padded_rows}.get(group)
    if rows is not None:
        yield from rows(threads)
        return
    if group == "convert":
        for c, hw in [(32, 8), (64, 16), (128, 16), (256, 16)]:
            x = _rand(1, c, hw, hw)
            out = np.empty(blocked.blocked_shape(x.shape), np.float32)
            fns = {f"{t} thread": (lambda t: lambda: nchwc.f32_to_blocked(x, out, t))(t)
                   for t in (1, 2)}
            pick = "1 thread" if x.size < MIN_CONVERT_ELEMENTS else "2 thread"
            yield f"to NCHW16c, {x.size // 1024}K floats", fns, pick
        return
    for c, size, s in [(576, 14, 2), (256, 14, 1), (96, 14, 2)]:
        wp, bp = blocked.pack_depthwise(_rand(c, 1, 3, 3), _rand(c))
        xb = blocked.to_blocked(_rand(1, c, size, size))
        o = (size + 2 - 3) // s + 1
        out = np.empty(blocked.blocked_shape((1, c, o, o)), np.float32)
        macs = c * o * o * 9
        fns = {f"{t} thread": (lambda t: lambda: nchwc_window.f32_depthwise_blocked(
            xb, wp, bp, out, s, s, 1, 1, 1, 1, kernel_act("relu6"), t, True))(t)
            for t in (1, 2)}
        pick = f"{threads_for(macs, 2, MIN_WORK_DEPTHWISE)} thread"
        yield f"depthwise {c}ch {size}x{size} s{s} ({macs // 1000}k MACs)", fns, pick


# -- winograd/weights: U kept or made per call, on F(4x4,3x3) layers of 8 MiB of U and more
WINOGRAD_WEIGHTS = [L(256, 256, 14, 3), L(256, 256, 28, 3), L(256, 256, 56, 3),
                    L(512, 512, 14, 3), L(512, 512, 28, 3), L(512, 512, 28, 3, dilation=2),
                    L(512, 512, 28, 3, dilation=4), L(256, 256, 56, 3, dilation=2)]


def winograd_weight_rows(group, threads):
    for c, k, size, ks, s, p, d, g, _ in WINOGRAD_WEIGHTS:
        w, b, x = _rand(k, c, 3, 3) / np.float32(np.sqrt(9 * c)), _rand(k), _rand(1, c, size, size)
        fns, pick = {}, None
        for form in ("stored", "per_call"):
            layer = engine.Conv2d(w, b, 1, p, d, 1, "relu", "winograd_f43",
                                  input_size=(size, size), winograd_weights=form)
            out = np.empty(layer.output_shape(x.shape), np.float32)
            fns[form] = (lambda layer, out: lambda: layer(x, out=out))(layer, out)
        auto = engine.Conv2d(w, b, 1, p, d, 1, "relu", "winograd_f43", input_size=(size, size))
        pick = auto.kernel_choice(auto.geometry(x.shape))[0]
        yield ("3x3" + (f" d{d}" if d > 1 else "") + f" {c}->{k} {size}"), fns, pick


# section: (groups, rows(group, threads), the options a group's columns show)
SECTIONS = {
    "conv": (list(CONV) + ["one_pixel"],
             lambda g, t: one_pixel_rows() if g == "one_pixel" else conv_rows(g),
             lambda g: ["rows", "panels"] if g == "one_pixel" else CONV_OPTIONS[g]),
    "depthwise": (list(DEPTHWISE), depthwise_rows,
                  lambda g: {"blocks": ["blocks", "rows", "planes"],
                             "wide": ["blocks", "planes"]}.get(g, [g, "planes"])),
    "transposed": (["col2im"], lambda g, t: transposed_rows(g),
                   lambda g: ["col2im", "zero_insert"]),
    "gemm": (["dense", "se_gates", "se_gates_cold"], gemm_rows,
             lambda g: ["1 thread", "2 thread"] if g.startswith("se_gates")
             else ["1 row", "8 rows", "packed", "matmul"]),
    "winograd": (["weights"], winograd_weight_rows, lambda g: ["stored", "per_call"]),
    "layout": (["convert", "depthwise", "dw_planes", "dense_padded", "dense", "pointwise",
                "depthwise_alone", "grouped", "winograd", "grouped_winograd", "live_taps"],
               layout_rows,
               lambda g: ["nchw", "blocked", "winograd_blocked"] if g == "winograd"
               else ["blocked", "winograd_blocked"] if g == "grouped_winograd"
               else ["nchw", "blocked"] if g in ("dense", "pointwise", "depthwise_alone",
                                                 "grouped", "live_taps")
               else ["rows", "planes"] if g == "dw_planes"
               else ["checked", "padded"] if g == "dense_padded" else ["1 thread", "2 thread"]),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", default="", help="substring of section/group, e.g. conv/fft")
    args = ap.parse_args(argv)
    for threads in args.threads:
        engine.set_num_threads(threads)
        for section, (groups, rows, options) in SECTIONS.items():
            for group in groups:
                name = f"{section}/{group}"
                if args.only not in name:
                    continue
                print(f"\n## {name}, {threads} thread{'s' if threads > 1 else ''}: median ms, "
                      f"* the dispatcher's pick")
                header = options(group)
                print(f"{'layer':<40}" + "".join(f"{o:>17}" for o in header))
                for label, fns, pick in rows(group, threads):
                    times = time_alternating(fns, args.repeat)
                    cells = []
                    for o in header:
                        if o not in times:
                            cells.append(f"{'-':>17}")
                            continue
                        mark = "*" if o == pick else " "
                        cells.append(f"{times[o][0]:16.3f}{mark}")
                    extra = "" if pick in header else f"  (auto: {pick})"
                    print(f"{label:<40}" + "".join(cells) + extra, flush=True)


if __name__ == "__main__":
    main()
