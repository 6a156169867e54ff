"""FFT convolution for large kernels (stride 1, dilation 1, any groups).

By the correlation theorem, with the input zero-padded into an fh x fw plane (fh >= H + pads,
so no circular wrap reaches the outputs kept),
    y[k, oy, ox] = irfft2( sum_c conj(rfft2(w[k, c])) * rfft2(xp[c]) )[oy, ox]
for 0 <= oy < OH, 0 <= ox < OW. Per frequency the sum over input channels is a (Kg x Cg) by
(Cg x N) complex matrix product: one np.matmul over the stack of frequencies. The conjugated
weight spectra depend on (fh, fw), so they are computed once per input size and kept.

Cost: the transforms are O(HW log HW) per plane whatever the kernel size, but the products
stream the weight spectrum, K*Cg*fh*(fw/2 + 1) complex64 values (342 MB for 64->64 on 128x128),
from memory at every call; that, not arithmetic, bounds this path (see the fft rule in
engine/dispatch/conv.py for where it wins).

Threads: scipy.fft's workers= splits whole planes between threads and the products are split
by frequency, each frequency computed by one BLAS call, so results do not depend on the
thread count. numpy's BLAS is held at one thread by blas_pinned (Conv2d.run): its own threads
only slow the tiny per-frequency products (18.5 ms against 4.7 ms for 64->64 7x7 on 64x64).

NaN and infinity (IEEE semantics). A transform mixes a whole plane, so one NaN or infinity
would make every output of the layer non-finite; the direct sum puts them only in the outputs
whose window reads one. Such a value makes the DC term of its plane's spectrum (the plane's
sum) non-finite, and nothing in the transform turns a non-finite value finite again, so testing
the N*C DC terms finds those planes for free (a finite plane whose sum overflows costs a needless
second transform, no more). They are transformed again with their non-finite values taken as
zeros, and nonfinite.fix_nonfinite gives the outputs that read one the direct sum's value. The
weights are assumed finite.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.fft

from .._cache import ShapeCache
from .activation import apply_activation
from .nonfinite import fix_nonfinite

# Benchmarks only (bench/bench_ieee.py): False skips the non-finite test and fix-up.
_CHECK_NONFINITE = True

_pool = None
_pool_size = 0
_pool_lock = threading.Lock()


def _forget_pool_in_child():
    # a forked child has none of the parent's pool threads: work sent there would never run
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _executor(threads):
    """A process-wide pool for the per-frequency products (numpy's matmul releases the GIL),
    grown, never shrunk, to the largest thread count asked for."""
    global _pool, _pool_size
    with _pool_lock:
        if _pool_size < threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="convengine-fft")
            _pool_size = threads
        return _pool


def fft_plane_size(h: int, w: int, pads) -> tuple[int, int]:
    """FFT size of the zero-padded input plane: at least the padded size, rounded up to a
    length scipy.fft transforms fast (products of 2, 3, 5, 7, 11)."""
    (pt, pb), (pl, pr) = pads
    return (scipy.fft.next_fast_len(h + pt + pb, real=True),
            scipy.fft.next_fast_len(w + pl + pr, real=True))


class FFT:
    """The registry wrapper (engine.ops.conv2d_algorithms) for algorithm="fft"."""

    def __init__(self, layer):
        self.layer = layer
        self._spectra = ShapeCache(4)    # a few input sizes at most: each can be large
        p = layer.params
        if p.in_size is not None and p.pads is not None:
            self._spectrum(fft_plane_size(*p.in_size, p.pads))

    def _spectrum(self, size):
        """conj(rfft2(w)) on an fh x fw plane, laid out (freq, group, Kg, Cg), complex64."""
        def make():
            L = self.layer
            k, cg = L.weight.shape[:2]
            g = L.groups
            full = np.conj(scipy.fft.rfft2(L.weight64, s=size))        # (K, Cg, fh, fw//2+1)
            full = full.reshape(g, k // g, cg, -1).transpose(3, 0, 1, 2)
            return np.ascontiguousarray(full, dtype=np.complex64)
        # per layer, for a few sizes: a spectrum depends on the plane size, so sharing it
        # between the layers of other input sizes would only keep it alive longer
        return self._spectra.get(size, make)

    def run(self, x, out, g, threads):
        L = self.layer
        n, c, h, w = x.shape
        (pt, _), (pl, _) = g.pads
        oh, ow = g.out_size
        size = fft_plane_size(h, w, g.pads)
        spec = self._spectrum(size)
        groups, cg = L.groups, c // L.groups
        xp = np.zeros((n, c) + size, np.float32)
        xp[:, :, pt:pt + h, pl:pl + w] = x
        xf = scipy.fft.rfft2(xp, workers=threads)                  # (N, C, fh, fw//2+1)
        nonfinite = _CHECK_NONFINITE and not np.isfinite(xf[:, :, 0, 0]).all()
        if nonfinite:   # see the module docstring
            bad = ~np.isfinite(xf[:, :, 0, 0])
            planes = xp[bad]
            planes[~np.isfinite(planes)] = 0
            xf[bad] = scipy.fft.rfft2(planes, workers=threads)
        del xp
        shape_f = xf.shape[2:]
        nf = shape_f[0] * shape_f[1]
        # (freq, group, Cg, N): each frequency's input column block for the product
        xf = np.ascontiguousarray(xf.reshape(n, groups, cg, nf).transpose(3, 1, 2, 0))
        yf = np.empty((nf, groups, spec.shape[2], n), np.complex64)
        if threads == 1 or nf < 2 * threads:
            np.matmul(spec, xf, out=yf)
        else:
            bounds = np.linspace(0, nf, threads + 1).astype(int)
            list(_executor(threads).map(
                lambda a, b: np.matmul(spec[a:b], xf[a:b], out=yf[a:b]),
                bounds[:-1], bounds[1:]))
        del xf
        yf = np.ascontiguousarray(yf.transpose(3, 1, 2, 0)).reshape(
            (n, L.out_channels) + shape_f)
        y = scipy.fft.irfft2(yf, s=size, workers=threads)
        np.copyto(out, y[:, :, :oh, :ow], casting="same_kind")
        # Outputs whose window lies wholly in the zero padding are exactly zero before the
        # bias; the transforms would leave there the rounding noise of the whole plane.
        kh, kw = L.kernel_size
        out[:, :, :max(0, pt - kh + 1)] = 0
        out[:, :, max(0, pt + h):] = 0
        out[:, :, :, :max(0, pl - kw + 1)] = 0
        out[:, :, :, max(0, pl + w):] = 0
        if L.bias is not None:
            out += L.bias[None, :, None, None]
        apply_activation(out, L.activation)
        if nonfinite:
            fix_nonfinite(L, x, out, g.pads, threads)
