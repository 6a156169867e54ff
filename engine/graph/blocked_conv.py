"""The convolution steps the layout pass (engine/graph/layout.py) puts in a plan: a Conv on
channel-blocked tensors, by whichever blocked kernel engine.dispatch.layout chose
(kernels/_nchwc.h, nchwc.pyx, nchwc_dense.pyx, nchwc_window.pyx, nchwc_winograd.pyx,
nchwc_taps.pyx), and a pointwise layer fused into the depthwise one that reads it
(_nchwc_expand.h). Each is made per plan from the graph's Conv ops and their NCHW shapes; the
other blocked steps are in blocked_steps.py."""
from __future__ import annotations

import math

import numpy as np

from ..dispatch.layout import (POINTWISE_GROUP_SLACK, choose_depthwise_blocked_split,
                               choose_pointwise_blocked_split, dense_copy_floats,
                               dense_padded)
from ..dispatch.policy import current_policy
from ..dispatch.winograd import TILE_ALGORITHMS, choose_blocked_tile, choose_winograd_weights
from .._kernels import nchwc, nchwc_dense, nchwc_taps, nchwc_window, nchwc_winograd
from .._threads import threads_for
from ..ops import blocked
from ..ops.activation import kernel_act
from ..ops.workspace import workspace
from ..shapes import tap_rectangles, window_pixels
from .blocked_steps import MIN_CONVERT_ELEMENTS, _Internal
from .ops import F32, Info, same_shape_inputs

# Multiply-adds per thread of a blocked depthwise step, a quarter of threads_for's default:
# depthwise layers move much more data per multiply-add, so a second thread pays on smaller
# ones (bench/bench_dispatch.py layout/depthwise).
MIN_WORK_DEPTHWISE = 5e4


class BlockedConv(_Internal):
    """A Conv on blocked tensors (any kind of engine.dispatch.layout.blocked_kernel). Made per
    plan: ``conv`` is the graph's Conv op, ``ins``/``outs`` its NCHW Infos for this plan's
    shapes. Inputs: X, W, B as the Conv's (W and B unread: the weights are packed here), and
    the residual, blocked."""
    kind = "Conv"
    n_inputs = (1, 4)
    inplace_exclusive = True

    def __init__(self, node, conv, kind, ins, outs):
        super().__init__(node)
        self.logical_ins, self.logical_outs = ins, outs
        self.pads, self.conv_shape = conv.geometry(ins)
        self.conv, self.tile = conv, None
        if kind == "winograd":
            if np.isfinite(conv.w).all():
                kind = self._choose_winograd()
            else:   # U would mix an infinite weight into every product of its tile
                kind = "dense"
        self.conv_kind = kind
        self.act = kernel_act(conv.activation)
        self.macs = math.prod(self.conv_shape) * math.prod(conv.w.shape[1:])
        self._flops = conv.flops(ins, outs)
        # packed once per Conv, shared by every plan (see rewrite's side_by_side)
        self.pack_key = f"nchw{blocked.BLOCK}c_{kind}"
        shape_kind = kind
        if kind == "live_taps":
            # only the taps that read the input at this plan's size
            self._live_taps_rects(ins)
            taps = [t for t, *_ in self.rects]
            self.pack_key += "_" + "_".join(map(str, taps))
            shape_kind = f"live_taps{len(taps)}"

            def pack():
                return blocked.pack_live_taps(conv.w, taps, conv.b)
        elif kind == "grouped":
            def pack():
                return blocked.pack_grouped(conv.w, conv.w.shape[1], conv.b)
        elif kind == "winograd_taps":
            def pack():
                return blocked.pack_winograd_taps(conv.w, conv.b)
        elif self.tile is not None:
            def pack():
                return blocked.pack_winograd(conv.w, conv.b, self.tile, conv.group)
        else:
            def pack():
                if kind == "dense":
                    return blocked.pack_dense(conv.w, conv.b, conv.group)
                return {"pointwise": blocked.pack_pointwise,
                        "depthwise": blocked.pack_depthwise,
                        "direct": blocked.pack_direct}[kind](conv.w, conv.b)
        self.w, self.b = conv.transforms.get(self.pack_key, pack,
                                             blocked.packed_shapes(shape_kind, conv.w.shape))
        # how the kernel's threads share the layer (engine.dispatch.layout), None for direct
        self.split = None
        if kind == "pointwise":
            self.split = choose_pointwise_blocked_split(self.conv_shape[2:])
        elif kind == "depthwise":
            self.split = choose_depthwise_blocked_split(ins[0].shape[2:])
        # dense: the input copied with its padding as zeros (engine.dispatch.layout)
        self.padded, self.padded_floats = (False, ""), 0
        if kind == "dense":
            n, c = ins[0].shape[:2]
            kh, kw = conv.w.shape[2:]
            self.padded_floats = dense_copy_floats(
                n, c, ins[0].shape[2:], self.conv_shape[2:], (kh, kw), conv.strides,
                conv.dilations, (self.pads[0][0], self.pads[1][0]))
            plane = window_pixels(self.conv_shape[2:], (kh, kw), conv.strides, conv.dilations)
            self.padded = dense_padded(conv.group, bool(np.isfinite(conv.w).all()),
                                       4 * self.padded_floats, plane)

    def inplace_inputs(self, ins, outs):
        """A pointwise layer's residual where the kernel sums each output whole before storing
        it (at most nchwc.BATCH input blocks): the output then takes over the residual's
        buffer, and each store lands where its residual was read, one stream fewer than a
        residual and an output apart (128->256 on 56x56 with a residual, one thread: 1.96 ->
        1.88 ms, 1.84 with none)."""
        if (self.conv_kind == "pointwise"
                and blocked.blocks(self.logical_ins[0].shape[1]) <= nchwc.BATCH):
            return same_shape_inputs(ins, outs, (3,))
        return ()

    def infer(self, ins):
        if self.conv_kind == "direct":
            x = self.float_in(ins, 0, "X", 4)
            want = self.logical_ins[0].shape
        else:
            x = self.float_in(ins, 0, "X", 5)
            want = blocked.blocked_shape(self.logical_ins[0].shape)
        if x.shape != want:
            raise self.error(f"X must have the blocked shape {want}, got {x.shape}")
        return [Info(blocked.blocked_shape(self.conv_shape), F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        w, bias, act, macs = self.w, self.b, self.act, self.macs
        if self.conv_kind == "pointwise":
            r = i[3] if len(i) > 3 and i[3] >= 0 else -1

            slack = POINTWISE_GROUP_SLACK if self.split[0] == "groups" else 0.0
            channels = self.logical_ins[0].shape[1]
            strides = tuple(self.conv.strides)
            if strides == (1, 1):
                def step(env, nt):
                    nchwc.f32_pointwise_blocked(env[a], w, bias, env[r] if r >= 0 else None,
                                                env[b], act, threads_for(macs, nt), slack,
                                                channels)
                return step
            # strided: the input taken every stride pixels, then whole tiles of pixels (a dense
            # 1x1 tile runs along one output row: a 7-wide row is a tile of 6 and one of 1).
            # ResNet-50's 1x1 stride-2 shortcuts on AVX2: 2.9-3.4 ms on NCHW, 5.4-6.5 dense
            # blocked (bench/bench_zoo.py)
            taken = blocked.blocked_shape(self.logical_ins[0].shape[:2] + self.conv_shape[2:])
            size = math.prod(taken)

            def step(env, nt):
                buf = workspace.take(size)
                try:
                    xs = buf[:size].reshape(taken)
                    nchwc.f32_subsample_blocked(env[a], xs, *strides,
                                                1 if size < MIN_CONVERT_ELEMENTS else nt)
                    nchwc.f32_pointwise_blocked(xs, w, bias, env[r] if r >= 0 else None,
                                                env[b], act, threads_for(macs, nt), slack,
                                                channels)
                finally:
                    workspace.give(buf)
            return step
        (sh, sw), (dh, dw) = self.conv.strides, self.conv.dilations
        pt, pl = self.pads[0][0], self.pads[1][0]
        if self.conv_kind == "dense":
            r = i[3] if len(i) > 3 and i[3] >= 0 else -1
            channels = self.logical_ins[0].shape[1]
            kh, kw = self.conv.w.shape[2:]
            groups = self.conv.group

            if not self.padded[0]:
                def step(env, nt):
                    nchwc_dense.f32_conv2d_nchwc(env[a], channels, w, bias,
                                                 env[r] if r >= 0 else None, env[b], kh, kw, sh,
                                                 sw, pt, pl, dh, dw, act, threads_for(macs, nt),
                                                 groups)
                return step
            floats = self.padded_floats

            def step(env, nt):
                buf = workspace.take(max(1, floats))      # 0: the input read in place
                try:
                    nchwc_dense.f32_conv2d_nchwc(env[a], channels, w, bias,
                                                 env[r] if r >= 0 else None, env[b], kh, kw, sh,
                                                 sw, pt, pl, dh, dw, act, threads_for(macs, nt),
                                                 groups, buf)
                finally:
                    workspace.give(buf)
            return step
        if self.tile is not None:
            return self._winograd_step(i, a, b, pt, pl)
        if self.conv_kind == "direct":
            def step(env, nt):
                nchwc.f32_direct_to_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh, dw,
                                            act, threads_for(macs, nt))
            return step

        if self.conv_kind == "live_taps":
            channels, table = self.logical_ins[0].shape[1], self.rect_table
            live_macs = macs * self.live_pairs / (math.prod(self.conv_shape[2:])
                                                  * math.prod(self.conv.w.shape[2:]))

            h, wd = self.conv_shape[2:]
            if len(self.rects) == 1 and self.rects[0][1:] == (0, h, 0, wd, 0, 0):
                # one tap, each output reading its own pixel: a pointwise layer
                wt = w[0]
                split = choose_pointwise_blocked_split((h, wd))[0]
                slack = POINTWISE_GROUP_SLACK if split == "groups" else 0.0

                def step(env, nt):
                    nchwc.f32_pointwise_blocked(env[a], wt, bias, None, env[b], act,
                                                threads_for(live_macs, nt), slack, channels)
                return step

            def step(env, nt):
                nchwc_taps.f32_live_taps_blocked(env[a], channels, w, bias, table, env[b], act,
                                                 threads_for(live_macs, nt))
            return step

        if self.conv_kind == "grouped":
            def step(env, nt):
                nchwc_window.f32_grouped_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh,
                                                 dw, act, threads_for(macs, nt))
            return step

        by_blocks = self.split[0] == "blocks"
        kh, kw = self.conv.w.shape[2:]
        h, wd = ins[0].shape[2:4]
        if not nchwc_window.depthwise_plane_fits(h, wd, self.conv_shape[3], sw, kh, kw, dw):
            def step(env, nt):
                nchwc_window.f32_depthwise_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh,
                                                   dw, act,
                                                   threads_for(macs, nt, MIN_WORK_DEPTHWISE),
                                                   by_blocks)
            return step

        def step(env, nt):      # by whole planes, each thread's copy in a kept buffer
            nt = threads_for(macs, nt, MIN_WORK_DEPTHWISE)
            buf = workspace.take(nchwc_window.depthwise_plane_scratch(nt))
            try:
                nchwc_window.f32_depthwise_blocked(env[a], w, bias, env[b], sh, sw, pt, pl, dh,
                                                   dw, act, nt, by_blocks, True, buf)
            finally:
                workspace.give(buf)
        return step

    def _live_taps_rects(self, ins):
        """The rectangles of the taps that read the input (engine/ops/live_taps.py), as
        f32_live_taps_blocked reads them, each naming its row of the packed weights."""
        conv = self.conv
        rects = tap_rectangles(ins[0].shape[2:], self.conv_shape[2:], conv.w.shape[2:],
                               conv.strides, conv.dilations,
                               (self.pads[0][0], self.pads[1][0]))
        self.rects = [(t, *oy, *ox, *iy) for t, oy, ox, iy in rects]
        self.live_pairs = sum((r[2] - r[1]) * (r[4] - r[3]) for r in self.rects)
        self.rect_table = np.array([(k, *r[1:]) for k, r in enumerate(self.rects)],
                                   np.int32).reshape(-1, 7)

    def _choose_winograd(self) -> str:
        """The tile, and where U lives (as the NCHW Winograd layers decide it: made once, or
        per call where it would take too much memory); the kind of packed weights."""
        w, (n, _, oh, ow), dilation = self.conv.w, self.conv_shape, tuple(self.conv.dilations)
        groups = self.conv.group
        k, c = w.shape[0], w.shape[1] * groups
        self.tile, self.tile_why = choose_blocked_tile(c, k, n, (oh, ow), dilation, groups)
        forced = current_policy().winograd_weights
        if groups > 1:      # the kernel makes U per call for one group only; grouped U is small
            self.u_form = ("stored", "a grouped layer's U is stored")
        elif forced != "auto":
            self.u_form = (forced, "forced by the caller")
        else:
            self.u_form = choose_winograd_weights(
                4 * (self.tile + 2) ** 2 * c * k,
                nchwc_winograd.layer_tiles(1, oh, ow, self.tile, *dilation))
        return "winograd_taps" if self.u_form[0] == "per_call" else f"winograd{self.tile}"

    def _winograd_step(self, i, a, b, pt, pl):
        r = i[3] if len(i) > 3 and i[3] >= 0 else -1
        w, bias, act, macs, m, conv = self.w, self.b, self.act, self.macs, self.tile, self.conv
        channels = self.logical_ins[0].shape[1]
        n, k, oh, ow = self.conv_shape
        dh, dw = conv.dilations
        groups = conv.group
        per_call = self.u_form[0] == "per_call"
        g = blocked.winograd_g(m) if per_call else None
        dense_key = f"nchw{blocked.BLOCK}c_dense"

        def dense_pack():
            return blocked.pack_dense(conv.w, conv.b, groups)

        def step(env, nt):
            nt = threads_for(macs, nt)
            res = env[r] if r >= 0 else None
            buf = workspace.take(blocked.winograd_work_floats(n, channels, k, (oh, ow), m,
                                                              (dh, dw), nt, per_call, groups))
            try:
                done = nchwc_winograd.f32_winograd_blocked(env[a], channels, w, bias, res,
                                                           env[b], m, pt, pl, act, nt, buf,
                                                           dh, dw, g, groups)
            finally:
                workspace.give(buf)
            if not done:    # a non-finite input: the direct sums, whose NaN and Inf stay put
                wd, bd = conv.transforms.get(dense_key, dense_pack,
                                             blocked.packed_shapes("dense", conv.w.shape))
                nchwc_dense.f32_conv2d_nchwc(env[a], channels, wd, bd, res, env[b], 3, 3, 1, 1, pt,
                                             pl, dh, dw, act, nt, groups)
        return step

    def flops(self, ins, outs):
        return self._flops

    def describe(self, ins, outs):
        name, b = blocked.NAME, blocked.BLOCK
        if self.tile is not None:
            text = (f"{TILE_ALGORITHMS[self.tile]} on {name}: the transforms on vectors of {b} "
                    f"channels, {(self.tile + 2) ** 2} pointwise GEMMs over the tiles; "
                    f"{self.tile_why}; weights {self.u_form[0]}: {self.u_form[1]}; an input "
                    f"with a non-finite value runs the dense blocked kernel")
            dh, dw = self.conv.dilations
            if (dh, dw) != (1, 1):
                text += f" | dilated {dh}x{dw}: tiles of its {dh * dw} phase sub-images"
            return self._describe_suffix(text)
        if self.conv_kind == "live_taps":
            kh, kw = self.conv.w.shape[2:]
            pairs = kh * kw * math.prod(self.conv_shape[2:])
            text = (f"live taps on {name}: {len(self.rects)} of {kh * kw} taps read the input "
                    f"({self.live_pairs} of {pairs} tap-output pairs), each a pointwise pass "
                    f"over its rectangle of outputs")
            if self.conv.activation:
                text += f" | + {self.conv.activation} mapped over the output"
            return text
        text = {"pointwise": f"pointwise on {name}: one broadcast-FMA GEMM over the input's "
                             "channel blocks, no packing",
                "depthwise": f"depthwise on {name}: one vector of {b} channels per pixel and "
                             "tap, no transposes",
                "direct": f"direct NCHW -> {name}: few input channels, a tile of output "
                          "pixels by two blocks a time, and the layers after it read blocks",
                "grouped": f"grouped on {name}: each output block from its input block, four "
                           "pixels a time",
                "dense": f"dense on {name}: the pointwise tile with taps, six pixels of a row "
                         f"by {blocked.GROUP} output blocks, padding read as zeros, no column "
                         "matrix"
                }[self.conv_kind]
        if self.conv_kind == "dense" and self.conv.group > 1:
            text += f", each of its {self.conv.group} groups on its own blocks"
        if self.conv_kind == "dense":
            text += f"; {self.padded[1]}"
        if self.conv_kind == "pointwise" and tuple(self.conv.strides) != (1, 1):
            sh, sw = self.conv.strides
            text += f", on the input taken every {sh}x{sw} pixels"
        if self.conv_kind == "depthwise":
            h, w = ins[0].shape[2:4]
            kh, kw = self.conv.w.shape[2:]
            if nchwc_window.depthwise_plane_fits(h, w, self.conv_shape[3], self.conv.strides[1],
                                                 kh, kw, self.conv.dilations[1]):
                text += (", each block's plane whole through a zero-bordered copy, eight "
                         "columns a time (a block with a non-finite weight row by row)")
        if self.split is not None:
            text += f" | threads by {self.split[0]}: {self.split[1]}"
        return self._describe_suffix(text)

    def _describe_suffix(self, text: str) -> str:
        """What every kind's description ends with: the residual and activation it fuses."""
        if self.conv.residual:
            text += " | + residual add"
        if self.conv.activation:
            text += f" | + {self.conv.activation} in the kernel's output step"
        return text


class BlockedExpandDepthwise(_Internal):
    """A blocked pointwise layer and the blocked depthwise layer that alone reads its output,
    as one step (nchwc_window.f32_expand_depthwise_blocked): the expanded map is never stored
    whole. ``pw`` and ``dw`` are their BlockedConv ops, which keep their packed weights; the
    step reads the pointwise layer's input and writes the depthwise layer's output.
    engine.dispatch.layout.fuse_expand_depthwise decides."""
    kind = "Conv"
    n_inputs = (1, 1)

    def __init__(self, node, pw: BlockedConv, dw: BlockedConv, why: str):
        super().__init__(node)
        self.pw, self.dw, self.why = pw, dw, why

    def infer(self, ins):
        x = self.float_in(ins, 0, "X", 5)
        want = blocked.blocked_shape(self.pw.logical_ins[0].shape)
        if x.shape != want:
            raise self.error(f"X must have the blocked shape {want}, got {x.shape}")
        return [Info(blocked.blocked_shape(self.dw.conv_shape), F32)]

    def build(self, ins, outs, i, o):
        a, b = i[0], o[0]
        pw, dw = self.pw, self.dw
        channels = pw.logical_ins[0].shape[1]
        (sh, sw), (pt, pl) = dw.conv.strides, (dw.pads[0][0], dw.pads[1][0])
        kh, kw = dw.conv.w.shape[2:]
        expanded = blocked.blocks(pw.conv_shape[1])
        width, out_width = pw.conv_shape[3], dw.conv_shape[3]
        macs = pw.macs + dw.macs
        wp, bp, pact, wd, bd, dact = pw.w, pw.b, pw.act, dw.w, dw.b, dw.act

        def step(env, nt):
            nt = threads_for(macs, nt)
            buf = workspace.take(nchwc_window.expand_depthwise_scratch(
                expanded, width, out_width, sw, kh, kw, pl, nt))
            try:
                nchwc_window.f32_expand_depthwise_blocked(env[a], wp, bp, pact, channels, wd,
                                                          bd, env[b], sh, sw, pt, pl, dact, nt,
                                                          buf)
            finally:
                workspace.give(buf)
        return step

    def flops(self, ins, outs):
        return self.pw._flops + self.dw._flops

    def describe(self, ins, outs):
        text = (f"pointwise {self.pw.node.name} and this depthwise layer in one pass on "
                f"{blocked.NAME}: {self.why}")
        for conv, which in ((self.pw.conv, "pointwise"), (self.dw.conv, "depthwise")):
            if conv.activation:
                text += f" | + {conv.activation} after the {which} layer"
        return text
